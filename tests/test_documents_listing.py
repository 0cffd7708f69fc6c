"""`GET /documents`: the tenant's knowledge-base documents from LightRAG's doc-status storage, newest
first, with paging, a status filter and counts per status. Real Redis, real LightRAG storages
(the embedded SQLite doc status), offline LLM."""

from __future__ import annotations

import pytest

from tests.helpers import ADMIN_TOKEN, make_settings, make_tenant, start_service, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def _insert(client, marker: str, headers: dict[str, str], name: str | None = None) -> dict:
    body = {"text": story("lagoons", marker, 3), "doc_id": f"doc-{marker.lower()}"}
    if name:
        body["filename"] = name
    answered = await client.post("/insert/text", params={"wait": 60}, json=body, headers=headers)
    assert answered.status_code == 200 and answered.json()["status"] == "completed", answered.text
    return answered.json()


async def test_documents_are_listed_newest_first_with_paging_filter_and_counts(tmp_path, redis_url) -> None:
    """Catches a listing in the wrong order, off-by-one paging, a status filter or counts that do
    not match LightRAG's records, another tenant's documents showing, and a deleted document that
    stays listed."""
    settings = make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN)
    async with start_service(settings) as svc:
        acme = await make_tenant(svc, "acme")
        other = await make_tenant(svc, "other")
        markers = ["Listone", "Listtwo", "Listthree"]
        for marker in markers:
            await _insert(svc.client, marker, acme, name=f"{marker}.txt")

        listed = await svc.client.get("/documents", headers=acme)
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert body["total"] == 3 and body["limit"] == 50 and body["offset"] == 0
        assert body["counts"]["processed"] == 3 and body["counts"]["failed"] == 0
        assert set(body["counts"]) >= {"pending", "processing", "preprocessed", "processed", "failed"}
        ids = [d["doc_id"] for d in body["documents"]]
        assert ids == ["doc-listthree", "doc-listtwo", "doc-listone"], ids
        created = [d["created_at"] for d in body["documents"]]
        assert created == sorted(created, reverse=True)
        first = body["documents"][0]
        assert first["status"] == "processed" and first["chunks_count"] >= 1
        assert first["file_path"] and first["content_length"] > 0 and first["updated_at"]
        assert "content" not in first
        single = (await svc.client.get("/documents/doc-listthree", headers=acme)).json()
        assert single["status"] == first["status"] and single["file_path"] == first["file_path"]

        page = (await svc.client.get("/documents", params={"limit": 2}, headers=acme)).json()
        assert [d["doc_id"] for d in page["documents"]] == ids[:2] and page["total"] == 3
        rest = (await svc.client.get("/documents", params={"limit": 2, "offset": 2}, headers=acme)).json()
        assert [d["doc_id"] for d in rest["documents"]] == ids[2:]
        beyond = (await svc.client.get("/documents", params={"offset": 10}, headers=acme)).json()
        assert beyond["documents"] == [] and beyond["total"] == 3

        processed = (await svc.client.get("/documents", params={"status": "processed"}, headers=acme)).json()
        assert processed["total"] == 3
        failed = (await svc.client.get("/documents", params={"status": "failed"}, headers=acme)).json()
        assert failed["total"] == 0 and failed["documents"] == [] and failed["counts"]["processed"] == 3

        theirs = (await svc.client.get("/documents", headers=other)).json()
        assert theirs["total"] == 0 and theirs["documents"] == [] and theirs["counts"]["processed"] == 0

        deleted = await svc.client.delete("/documents/doc-listtwo", headers=acme)
        assert deleted.status_code == 200, deleted.text
        after = (await svc.client.get("/documents", headers=acme)).json()
        assert [d["doc_id"] for d in after["documents"]] == ["doc-listthree", "doc-listone"]
        assert after["total"] == 2 and after["counts"]["processed"] == 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"offset": -1},
        {"offset": 1_000_001},
        {"status": "done"},
        {"status": "PROCESSED"},
    ],
)
async def test_bad_listing_parameters_are_422(service, params: dict) -> None:
    """Catches an unbounded page, a negative offset or an unknown status reaching the storage (or
    answered as a 500 / an empty page)."""
    refused = await service.client.get("/documents", params=params)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "validation_error"
    assert next(iter(params)) in refused.json()["detail"]


async def test_an_empty_knowledge_base_lists_nothing(service) -> None:
    listed = await service.client.get("/documents", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 0 and listed.json()["documents"] == []
    assert listed.json()["counts"]["processed"] == 0 and listed.json()["limit"] == 1000


def test_a_page_of_in_memory_records_is_newest_first_and_reads_enum_statuses() -> None:
    """Catches statuses stored as `DocStatus` members (LightRAG writes both forms) counted or shown
    as "DocStatus.PROCESSED", a tie on created_at ordered at random, and the content leaking out."""
    from lightrag.base import DocStatus

    from src.rag.doc_listing import _page_of
    from src.rag.knowledge import DocumentStatus

    items = [
        ("doc-a", {"status": DocStatus.PROCESSED, "created_at": "2026-01-01T00:00:01+00:00", "content": "x"}),
        ("doc-b", {"status": "failed", "created_at": "2026-01-01T00:00:02+00:00", "error_msg": "boom"}),
        ("doc-c", {"status": DocStatus.PROCESSED, "created_at": "2026-01-01T00:00:02+00:00"}),
        ("doc-d", {"status": "processing"}),  # no created_at: oldest
    ]
    page = _page_of(items, None, 10, 0)
    assert [d.doc_id for d in page.documents] == ["doc-c", "doc-b", "doc-a", "doc-d"]
    assert page.counts == {"pending": 0, "processing": 1, "preprocessed": 0, "processed": 2, "failed": 1}
    shown = page.documents[2].as_dict()
    assert shown["status"] == "processed" and "content" not in shown
    processed = _page_of(items, DocumentStatus.PROCESSED, 1, 1)
    assert [d.doc_id for d in processed.documents] == ["doc-a"] and processed.total == 2
    assert _page_of(items, DocumentStatus.FAILED, 5, 0).documents[0].error_msg == "boom"
    assert _page_of(items, None, 5, 4).documents == [] and _page_of([], None, 5, 0).total == 0
