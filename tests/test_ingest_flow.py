"""End to end through the ASGI app: upload -> 202 -> completed -> query finds the content."""

from __future__ import annotations

import pytest

from tests.helpers import Service, make_docx, make_pdf, story, upload, upload_files, wait_for_task, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_every_format_is_ingested_and_queryable(service: Service) -> None:
    docs = {
        "notes.txt": ("Zephyrine", story("tidal turbines", "Zephyrine").encode()),
        "guide.md": ("Quillotrax", ("# Guide\n\n" + story("solar glass", "Quillotrax")).encode()),
        "page.html": (
            "Marvolenta",
            f"<html><head><script>var hidden='Scriptonite';</script></head><body><p>"
            f"{story('wind farms', 'Marvolenta')}</p></body></html>".encode(),
        ),
        "report.pdf": ("Brantwhistle", make_pdf([story("heat pumps", "Brantwhistle", 8)])),
        "memo.docx": (
            "Cindravelle",
            make_docx([story("hydrogen", "Cindravelle", 8)], [["Cindravelle", "2024"]]),
        ),
    }
    accepted = {}
    for name, (marker, data) in docs.items():
        response = await upload(service.client, name, data)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["filename"] == name and body["status_url"] == f"/task/{body['task_id']}"
        assert response.headers["location"] == body["status_url"]
        accepted[marker] = body

    for body in accepted.values():
        final = await wait_for_task(service.client, body["task_id"])
        assert final["status"] == "completed", final
        assert final["stage"] == "done" and final["progress"] == 100.0
        assert final["result"]["doc_id"] == body["doc_id"] and final["result"]["chunks_count"] >= 1
        assert final["started_at"] and final["finished_at"] and final["created_at"] <= final["finished_at"]
        doc = await service.client.get(f"/documents/{body['doc_id']}")
        assert doc.status_code == 200 and doc.json()["status"] == "processed"

    for marker in accepted:
        response = await service.client.post(
            "/query",
            json={"query": f"What is the {marker} project?", "mode": "naive", "only_need_context": True},
        )
        assert response.status_code == 200, response.text
        assert marker in response.json()["response"], marker

    # The script content of the HTML page is not indexed text.
    response = await service.client.post(
        "/query", json={"query": "Scriptonite", "mode": "naive", "only_need_context": True}
    )
    assert "Scriptonite" not in response.json()["response"]

    # Graph modes go through the offline stand-in, which says what it is.
    response = await service.client.post("/query", json={"query": "Who founded Zephyrine?", "mode": "hybrid"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "offline" in answer["response"].lower() and "offline" in answer["llm"].lower()
    assert "Zephyrine" in answer["response"]


async def test_upload_uploads_dir_is_emptied_after_completion(service: Service) -> None:
    response = await upload(service.client, "a.txt", story("geothermal", "Orvandel").encode())
    final = await wait_for_task(service.client, response.json()["task_id"])
    assert final["status"] == "completed"

    # Removed by the task's end-of-task step, which runs just after the final status is written.
    async def uploads_gone() -> bool:
        return not list(upload_files(service.settings.uploads_dir))

    await wait_until(uploads_gone, timeout=10, message="the upload's file is removed")


async def test_text_insert_and_streaming_query(service: Service) -> None:
    response = await service.client.post(
        "/insert/text", json={"text": story("batteries", "Pellucidor"), "doc_id": "text-001"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["doc_id"] == "text-001"
    final = await wait_for_task(service.client, response.json()["task_id"])
    assert final["status"] == "completed" and final["kind"] == "text"

    async with service.client.stream(
        "POST", "/query/stream", json={"query": "Tell me about Pellucidor", "mode": "mix"}
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        import json

        pieces = [json.loads(line) async for line in streamed.aiter_lines() if line]
    assert pieces and all("response" in p for p in pieces)
    assert "Pellucidor" in "".join(p["response"] for p in pieces)


async def test_same_doc_id_is_refused_while_indexing_and_same_content_is_deduplicated(
    service: Service,
) -> None:
    first = await upload(service.client, "a.txt", story("tides", "Garnivex").encode(), doc_id="doc_001")
    assert first.status_code == 202
    again = await upload(service.client, "b.txt", b"other content", doc_id="doc_001")
    assert again.status_code == 409
    assert again.json()["code"] in {"doc_in_progress", "doc_exists"}
    await wait_for_task(service.client, first.json()["task_id"])
    # Once indexed, other content under the id re-indexes it (tests/test_reindex.py).
    after = await upload(service.client, "b.txt", b"other content", doc_id="doc_001")
    assert after.status_code == 202 and after.json()["doc_id"] == "doc_001", after.text
    assert (await wait_for_task(service.client, after.json()["task_id"]))["status"] == "completed"
    # Identical content without a doc id maps to the same content-derived id: the existing task answers.
    one = await upload(service.client, "x.txt", story("dams", "Hexamoor").encode())
    two = await upload(service.client, "y.txt", story("dams", "Hexamoor").encode())
    assert one.status_code == 202 and two.status_code in (200, 202)
    assert two.json()["duplicate"] is True and two.json()["task_id"] == one.json()["task_id"]
    await wait_for_task(service.client, one.json()["task_id"])
    three = await upload(service.client, "z.txt", story("dams", "Hexamoor").encode())
    assert three.status_code == 200 and three.json()["duplicate"] and three.json()["status"] == "completed"
    assert list(p.suffix for p in upload_files(service.settings.uploads_dir) if p.suffix == ".part") == []


async def test_delete_document(service: Service) -> None:
    response = await upload(service.client, "a.txt", story("biomass", "Trellisand").encode(), doc_id="del-1")
    await wait_for_task(service.client, response.json()["task_id"])
    deleted = await service.client.delete("/documents/del-1")
    assert deleted.status_code == 200, deleted.text
    assert (await service.client.get("/documents/del-1")).status_code == 404
    context = await service.client.post(
        "/query", json={"query": "Trellisand", "mode": "naive", "only_need_context": True}
    )
    assert "Trellisand" not in context.json()["response"]
    missing = await service.client.delete("/documents/del-1")
    assert missing.status_code == 404 and missing.json()["code"] == "doc_not_found"
    # After deletion the same id can be indexed again.
    again = await upload(service.client, "a.txt", story("biomass", "Trellisand").encode(), doc_id="del-1")
    assert again.status_code == 202


async def test_health_and_queue_stats(service: Service) -> None:
    health = await service.client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body == {"status": "ok"}  # details need the admin token (tests/test_hardening_access.py)
    await upload(service.client, "a.txt", story("wave power", "Ostrelline").encode())
    stats = (await service.client.get("/api/queue/stats")).json()
    assert stats["capacity"] == service.settings.max_concurrent_tasks
    assert sum(stats["counts"].values()) == 1
