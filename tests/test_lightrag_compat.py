"""LightRAG Server's API under /lightrag: the exact requests its WebUI's API module sends
(lightrag/api/webui/assets/index-*.js: axios with baseURL '' and the WebUI's bodies), answered in
LightRAG Server 1.4.16's shapes, scoped to the caller's tenant, backed by our tasks.

Real Redis and LightRAG storages, the offline LLM; the app in-process through httpx.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import (
    ADMIN,
    extraction_calls,
    llm_settings,
    make_settings,
    make_tenant,
    mock_stats,
    start_service,
    story,
    wait_for_task,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

L = "/lightrag"


def doc_keys() -> set[str]:
    return {
        "id",
        "content_summary",
        "content_length",
        "status",
        "created_at",
        "updated_at",
        "track_id",
        "chunks_count",
        "error_msg",
        "metadata",
        "file_path",
    }


async def test_webui_requests_work_end_to_end_in_lightrag_shapes(tmp_path, redis_url) -> None:
    """Catches a compatible route missing or answering in another shape than LightRAG Server's:
    guest auth, upload -> track_status -> paginated/status_counts, queries with references, the
    graph reads and edits, deletes with the LLM cache, cache clearing, the pipeline routes."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        c = svc.client
        status = (await c.get(f"{L}/auth-status", headers={"X-Skip-Interceptor": "true"})).json()
        assert status["auth_configured"] is False and status["auth_mode"] == "disabled", status
        token = status["access_token"]
        assert token.count(".") == 2 and status["core_version"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        health = (await c.get(f"{L}/health", headers=auth)).json()
        assert health["status"] == "healthy" and "pipeline_busy" in health, health
        assert int(health["configuration"]["max_graph_nodes"]) > 0

        text = story("orchards", "Pomaréa")
        uploaded = await c.post(
            f"{L}/documents/upload",
            files={"file": ("orchards.md", text.encode())},
            headers={"Authorization": auth["Authorization"]},
        )
        assert uploaded.status_code == 200, uploaded.text
        body = uploaded.json()
        assert body["status"] == "success" and body["track_id"], body
        await wait_for_task(c, body["track_id"], expect="completed")
        again = await c.post(
            f"{L}/documents/upload",
            files={"file": ("orchards.md", text.encode())},
            headers={"Authorization": auth["Authorization"]},
        )
        assert again.json()["status"] == "duplicated" and again.json()["track_id"] == body["track_id"]

        tracked = (await c.get(f"{L}/documents/track_status/{body['track_id']}", headers=auth)).json()
        assert tracked["total_count"] == 1 and tracked["status_summary"] == {"processed": 1}, tracked
        (doc,) = tracked["documents"]
        assert set(doc) == doc_keys() and doc["file_path"] == "orchards.md"

        texts = await c.post(
            f"{L}/documents/texts",
            json={
                "texts": [story("rivers", "Fluvianto"), story("bridges", "Pontavel")],
                "file_sources": ["r.txt", "b.txt"],
            },
            headers=auth,
        )
        assert texts.status_code == 200 and texts.json()["status"] == "success", texts.text
        batch = (await c.get(f"/batch/{texts.json()['track_id']}")).json()
        for task in batch["tasks"]:
            await wait_for_task(c, task["task_id"], expect="completed")
        tracked = (await c.get(f"{L}/documents/track_status/{texts.json()['track_id']}", headers=auth)).json()
        assert tracked["total_count"] == 2 and {d["file_path"] for d in tracked["documents"]} == {
            "r.txt",
            "b.txt",
        }, tracked

        page = await c.post(
            f"{L}/documents/paginated",
            json={
                "status_filter": None,
                "page": 1,
                "page_size": 10,
                "sort_field": "file_path",
                "sort_direction": "asc",
            },
            headers=auth,
        )
        assert page.status_code == 200, page.text
        page = page.json()
        assert [d["file_path"] for d in page["documents"]] == ["b.txt", "orchards.md", "r.txt"]
        assert page["pagination"] == {
            "page": 1,
            "page_size": 10,
            "total_count": 3,
            "total_pages": 1,
            "has_next": False,
            "has_prev": False,
        }
        assert page["status_counts"]["processed"] == 3 and page["status_counts"]["all"] == 3
        desc = await c.post(
            f"{L}/documents/paginated",
            json={"page": 1, "page_size": 10, "sort_field": "file_path", "sort_direction": "desc"},
            headers=auth,
        )
        assert [d["file_path"] for d in desc.json()["documents"]] == ["r.txt", "orchards.md", "b.txt"]
        counts = (await c.get(f"{L}/documents/status_counts", headers=auth)).json()
        assert counts["status_counts"]["processed"] == 3
        grouped = (await c.get(f"{L}/documents", headers=auth)).json()
        assert len(grouped["statuses"]["processed"]) == 3
        pipeline = (await c.get(f"{L}/documents/pipeline_status", headers=auth)).json()
        assert pipeline["busy"] is False and isinstance(pipeline["history_messages"], list), pipeline

        # The retrieval tester: /query with the WebUI's body, /query/stream (fetch), /query/data.
        webui_query = {
            "query": "What did the Pomaréa team publish?",
            "mode": "mix",
            "response_type": "Multiple Paragraphs",
            "top_k": 40,
            "chunk_top_k": 20,
            "max_entity_tokens": 6000,
            "max_relation_tokens": 8000,
            "max_total_tokens": 30000,
            "only_need_context": False,
            "only_need_prompt": False,
            "stream": False,
            "history_turns": 0,
            "user_prompt": "",
            "enable_rerank": True,
            "conversation_history": [],
        }
        answered = await c.post(f"{L}/query", json=webui_query, headers=auth)
        assert answered.status_code == 200, answered.text
        assert "Pomaréa" in answered.json()["response"]
        assert "orchards.md" in {r["file_path"] for r in answered.json()["references"]}
        async with c.stream(
            "POST", f"{L}/query/stream", json={**webui_query, "stream": True}, headers=auth
        ) as streamed:
            assert streamed.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(x) async for x in streamed.aiter_lines() if x.strip()]
        assert "references" in lines[0] and any("response" in line for line in lines[1:]), lines
        one = await c.post(f"{L}/query/stream", json={**webui_query, "stream": False}, headers=auth)
        (line,) = [json.loads(x) for x in one.text.splitlines() if x.strip()]
        assert set(line) == {"response", "references"}
        data = (
            await c.post(f"{L}/query/data", json={"query": "Pomaréa orchards", "mode": "mix"}, headers=auth)
        ).json()
        assert data["status"] == "success" and data["data"]["entities"], data
        too_short = await c.post(f"{L}/query", json={"query": "hi"}, headers=auth)
        assert too_short.status_code == 422  # LightRAG Server's min_length=3

        # The graph viewer.
        popular = (await c.get(f"{L}/graph/label/popular?limit=300", headers=auth)).json()
        assert popular and all(isinstance(x, str) for x in popular)
        found = (await c.get(f"{L}/graph/label/search?q={popular[0][:4]}&limit=50", headers=auth)).json()
        assert popular[0] in found
        assert popular[0] in (await c.get(f"{L}/graph/label/list", headers=auth)).json()
        graph = (
            await c.get(f"{L}/graphs?label={popular[0]}&max_depth=3&max_nodes=1000", headers=auth)
        ).json()
        assert set(graph) == {"nodes", "edges", "is_truncated"} and graph["nodes"], graph
        node = graph["nodes"][0]
        assert {"id", "labels", "properties"} <= set(node)
        whole = (await c.get(f"{L}/graphs?label=*&max_depth=3&max_nodes=1000", headers=auth)).json()
        assert len(whole["nodes"]) >= len(graph["nodes"])
        exists = await c.get(f"{L}/graph/entity/exists?name={popular[0]}", headers=auth)
        assert exists.json() == {"exists": True}

        edited = await c.post(
            f"{L}/graph/entity/edit",
            json={
                "entity_name": popular[0],
                "updated_data": {"description": "Edited by the WebUI."},
                "allow_rename": False,
                "allow_merge": False,
            },
            headers=auth,
        )
        assert edited.status_code == 200 and edited.json()["status"] == "success", edited.text
        assert edited.json()["data"]["graph_data"]["description"] == "Edited by the WebUI."
        assert {"operation_summary", "message", "data"} <= set(edited.json())
        created = await c.post(
            f"{L}/graph/entity/create",
            json={
                "entity_name": "Quillwort Ltd",
                "entity_data": {"description": "A firm.", "entity_type": "ORG"},
            },
            headers=auth,
        )
        assert created.status_code == 200, created.text
        duplicate = await c.post(
            f"{L}/graph/entity/create",
            json={"entity_name": "Quillwort Ltd", "entity_data": {"description": "again"}},
            headers=auth,
        )
        assert duplicate.status_code == 400 and duplicate.json()["code"] == "graph_edit_refused"
        related = await c.post(
            f"{L}/graph/relation/create",
            json={
                "source_entity": "Quillwort Ltd",
                "target_entity": popular[0],
                "relation_data": {"description": "works with", "keywords": "partner", "weight": 1.0},
            },
            headers=auth,
        )
        assert related.status_code == 200, related.text
        rel_edit = await c.post(
            f"{L}/graph/relation/edit",
            json={
                "source_id": "Quillwort Ltd",
                "target_id": popular[0],
                "updated_data": {"description": "rivals"},
            },
            headers=auth,
        )
        assert rel_edit.status_code == 200, rel_edit.text
        assert rel_edit.json()["data"]["graph_data"]["description"] == "rivals"
        await c.post(
            f"{L}/graph/entity/create",
            json={"entity_name": "Quillwort", "entity_data": {"description": "x"}},
            headers=auth,
        )
        merged = await c.post(
            f"{L}/graph/entities/merge",
            json={"entities_to_change": ["Quillwort"], "entity_to_change_into": "Quillwort Ltd"},
            headers=auth,
        )
        assert merged.status_code == 200, merged.text
        assert (await c.get(f"{L}/graph/entity/exists?name=Quillwort", headers=auth)).json() == {
            "exists": False
        }
        gone = await c.request(
            "DELETE", f"{L}/documents/delete_entity", json={"entity_name": "Quillwort Ltd"}, headers=auth
        )
        assert gone.status_code == 200 and gone.json()["status"] == "success", gone.text
        missing = await c.request(
            "DELETE", f"{L}/documents/delete_entity", json={"entity_name": "Nobody"}, headers=auth
        )
        assert missing.status_code == 404 and missing.json()["code"] == "graph_item_not_found"

        # Deletes (the WebUI sends delete_file / delete_llm_cache), cache, pipeline.
        deleted = await c.request(
            "DELETE",
            f"{L}/documents/delete_document",
            json={"doc_ids": [doc["id"]], "delete_file": False, "delete_llm_cache": True},
            headers=auth,
        )
        assert deleted.status_code == 200 and deleted.json()["status"] == "deletion_started", deleted.text
        assert (await c.get(f"/documents/{doc['id']}")).status_code == 404
        cleared = await c.post(f"{L}/documents/clear_cache", json={}, headers=auth)
        assert cleared.json()["status"] == "success"
        assert (await c.post(f"{L}/documents/cancel_pipeline", headers=auth)).json()["status"] == "not_busy"
        wiped = await c.request("DELETE", f"{L}/documents", headers=auth)
        assert wiped.json()["status"] == "success", wiped.text
        assert (await c.get(f"{L}/documents/status_counts", headers=auth)).json()["status_counts"]["all"] == 0


async def test_delete_with_llm_cache_asks_the_llm_again(tmp_path, redis_url) -> None:
    """Catches delete_llm_cache being ignored: re-indexing the same content after a delete with it
    must ask the LLM again instead of replaying the cached extraction (LightRAG #2442)."""
    with MockServer(MockConfig()) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock)) as svc:
            text = story("glaciers", "Frostvane")

            async def index_and_delete(delete_llm_cache: bool) -> int:
                before = extraction_calls(mock_stats(mock))
                accepted = await svc.client.post("/insert/text", json={"text": text, "doc_id": "glacier"})
                await wait_for_task(svc.client, accepted.json()["task_id"], expect="completed")
                calls = extraction_calls(mock_stats(mock)) - before
                body = {"doc_ids": ["glacier"], "delete_llm_cache": delete_llm_cache}
                deleted = await svc.client.request("DELETE", f"{L}/documents/delete_document", json=body)
                assert deleted.json()["status"] == "deletion_started", deleted.text
                return calls

            assert await index_and_delete(False) > 0
            assert await index_and_delete(True) == 0  # the cache kept by the first delete answered
            assert await index_and_delete(False) > 0  # the second delete took the cache with it


async def test_every_compatible_route_is_tenant_scoped(tmp_path, redis_url) -> None:
    """Catches a compatible route that reads or writes another tenant's documents, tracks or graph,
    a guest token still accepted once keys exist, and a login that does not name the key's tenant."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        c = svc.client
        guest = (await c.get(f"{L}/auth-status")).json()["access_token"]
        acme = await make_tenant(svc, "acme")
        other = await make_tenant(svc, "other")
        assert (await c.get(f"{L}/health", headers={"Authorization": f"Bearer {guest}"})).status_code == 401
        status = (await c.get(f"{L}/auth-status")).json()
        assert (
            status == {**status, "auth_configured": True, "auth_mode": "enabled"}
            and "access_token" not in status
        )
        assert (await c.get(f"{L}/health")).status_code == 401

        acme_key = acme["Authorization"].split()[1]
        refused = await c.post(
            f"{L}/login", data={"username": "ann", "password": "wrong", "grant_type": "password"}
        )
        assert refused.status_code == 401
        login = await c.post(
            f"{L}/login", data={"username": "ann", "password": acme_key, "grant_type": "password"}
        )
        assert login.status_code == 200, login.text
        session = {"Authorization": f"Bearer {login.json()['access_token']}"}
        x_api_key = {"X-API-Key": acme_key}

        up = await c.post(
            f"{L}/documents/upload",
            files={"file": ("a.md", story("orchards", "Acmeberry").encode())},
            headers=session,
        )
        track = up.json()["track_id"]
        await wait_for_task(c, track, headers=acme, expect="completed")
        assert (await c.get(f"{L}/documents/track_status/{track}", headers=x_api_key)).status_code == 200
        assert (await c.get(f"{L}/documents/track_status/{track}", headers=other)).status_code == 404
        doc_id = (await c.get(f"{L}/documents/track_status/{track}", headers=session)).json()["documents"][0][
            "id"
        ]

        def count(response) -> int:
            return response.json()["status_counts"]["all"]

        assert count(await c.get(f"{L}/documents/status_counts", headers=session)) == 1
        assert count(await c.get(f"{L}/documents/status_counts", headers=other)) == 0
        page = await c.post(f"{L}/documents/paginated", json={"page": 1, "page_size": 10}, headers=other)
        assert page.json()["documents"] == []
        assert (await c.get(f"{L}/documents", headers=other)).json()["statuses"] == {}
        labels = (await c.get(f"{L}/graph/label/list", headers=acme)).json()
        assert labels and (await c.get(f"{L}/graph/label/list", headers=other)).json() == []
        assert (await c.get(f"{L}/graph/entity/exists?name={labels[0]}", headers=other)).json() == {
            "exists": False
        }
        assert (await c.get(f"{L}/graphs?label=*", headers=other)).json()["nodes"] == []
        edit = {"entity_name": labels[0], "updated_data": {"description": "hijacked"}}
        assert (await c.post(f"{L}/graph/entity/edit", json=edit, headers=other)).status_code == 404
        q = {"query": "Acmeberry orchards", "mode": "naive", "only_need_context": True}
        assert "Acmeberry" in (await c.post(f"{L}/query", json=q, headers=acme)).json()["response"]
        assert "Acmeberry" not in (await c.post(f"{L}/query", json=q, headers=other)).json()["response"]
        data = (await c.post(f"{L}/query/data", json=q, headers=other)).json()
        assert not data["data"].get("chunks")
        delete = {"doc_ids": [doc_id]}
        refused = await c.request("DELETE", f"{L}/documents/delete_document", json=delete, headers=other)
        assert refused.json()["status"] == "not_allowed"
        assert (await c.request("DELETE", f"{L}/documents", headers=other)).json()["status"] == "success"
        assert count(await c.get(f"{L}/documents/status_counts", headers=acme)) == 1
        assert (await c.post(f"{L}/documents/cancel_pipeline", headers=other)).json()["status"] == "not_busy"
        assert (await c.get("/admin/tenants", headers=ADMIN)).status_code == 200


async def test_scan_queues_the_input_directory_as_tasks(tmp_path, redis_url) -> None:
    """Catches POST /documents/scan ignoring INPUT_DIR, indexing a file twice on a second scan,
    or reading another tenant's directory."""
    inbox = tmp_path / "inbox"
    (inbox / "acme").mkdir(parents=True)
    (inbox / "a.md").write_text(story("orchards", "Scanberry"))
    (inbox / "b.txt").write_text(story("rivers", "Scanriver"))
    (inbox / "skip.exe").write_bytes(b"MZ")
    (inbox / "acme" / "c.md").write_text(story("bridges", "Acmescan"))
    async with start_service(make_settings(tmp_path, redis_url, input_dir=inbox)) as svc:
        scanned = await svc.client.post(f"{L}/documents/scan")
        assert scanned.status_code == 200 and scanned.json()["status"] == "scanning_started", scanned.text
        batch = (await svc.client.get(f"/batch/{scanned.json()['track_id']}")).json()
        assert sorted(t["filename"] for t in batch["tasks"]) == ["a.md", "b.txt"]
        for task in batch["tasks"]:
            await wait_for_task(svc.client, task["task_id"], expect="completed")
        rescanned = (await svc.client.post(f"{L}/documents/scan")).json()
        assert rescanned["track_id"] == "", rescanned  # nothing new
        counts = (await svc.client.get(f"{L}/documents/status_counts")).json()["status_counts"]
        assert counts["processed"] == 2
    async with start_service(make_settings(tmp_path / "2", redis_url)) as svc:
        unset = await svc.client.post(f"{L}/documents/scan")
        assert unset.status_code == 422 and "INPUT_DIR" in unset.json()["detail"]


async def test_graph_edit_errors_are_4xx_and_never_hold_the_graph(tmp_path, redis_url) -> None:
    """Catches a refused graph edit answered with a 500, or one that hangs holding the graph gate:
    a relation from an entity to itself made LightRAG take the same keyed lock twice and wait
    forever, and every later edit of the tenant waited behind it."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        c = svc.client

        async def call(method: str, path: str, body: dict) -> tuple[int, str]:
            response = await asyncio.wait_for(c.request(method, f"{L}{path}", json=body), 60)
            return response.status_code, response.json()["code"] if response.status_code >= 400 else ""

        assert (
            await call(
                "POST",
                "/graph/entity/create",
                {"entity_name": "Ada", "entity_data": {"description": "a person"}},
            )
        )[0] == 200
        selfish = {"source_entity": "Ada", "target_entity": "Ada", "relation_data": {"description": "x"}}
        assert await call("POST", "/graph/relation/create", selfish) == (400, "graph_edit_refused")
        self_edit = {"source_id": "Ada", "target_id": "Ada", "updated_data": {"description": "x"}}
        assert await call("POST", "/graph/relation/edit", self_edit) == (400, "graph_edit_refused")
        self_delete = {"source_entity": "Ada", "target_entity": "Ada"}
        assert await call("DELETE", "/documents/delete_relation", self_delete) == (400, "graph_edit_refused")

        unknown_edit = {"entity_name": "Nobody", "updated_data": {"description": "x"}}
        assert await call("POST", "/graph/entity/edit", unknown_edit) == (404, "graph_item_not_found")
        unknown_rel = {"source_id": "Ada", "target_id": "Nobody", "updated_data": {"description": "x"}}
        assert await call("POST", "/graph/relation/edit", unknown_rel) == (404, "graph_item_not_found")
        gone_rel = {"source_entity": "Ada", "target_entity": "Nobody"}
        assert await call("DELETE", "/documents/delete_relation", gone_rel) == (404, "graph_item_not_found")
        dangling = {"source_entity": "Ada", "target_entity": "Nobody", "relation_data": {"description": "x"}}
        assert (await call("POST", "/graph/relation/create", dangling))[0] in (400, 404)
        merge = {"entities_to_change": ["Nobody"], "entity_to_change_into": "Ada"}
        assert (await call("POST", "/graph/entities/merge", merge))[0] in (400, 404)

        # The graph is still free: an edit after all of them goes through.
        renamed = {"entity_name": "Ada", "updated_data": {"description": "still editable"}}
        assert (await call("POST", "/graph/entity/edit", renamed))[0] == 200


async def test_a_graph_edit_waits_for_a_merge_in_flight(tmp_path, redis_url) -> None:
    """Catches a graph edit that runs while a document merges into the graph (it could rename or
    delete an entity the merge is about to upsert): with the indexer's graph gate held shared, as
    a merge holds it, the edit waits as a writer and changes nothing until the merge is over."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        c = svc.client
        create = {"entity_name": "Gatekeeper", "entity_data": {"description": "before"}}
        assert (await c.post(f"{L}/graph/entity/create", json=create)).status_code == 200
        async with svc.services.engines.use("default") as engine:
            gate = engine.indexer.gate
            async with gate.shared():  # a merge in flight
                edit = {"entity_name": "Gatekeeper", "updated_data": {"description": "after"}}
                pending = asyncio.create_task(c.post(f"{L}/graph/entity/edit", json=edit))

                async def edit_is_waiting() -> bool:
                    return gate._writers_waiting == 1

                await wait_until(edit_is_waiting, message="the edit waiting for the graph gate")
                assert not pending.done()
                node = await engine.rag.chunk_entity_relation_graph.get_node("Gatekeeper")
                assert node["description"] == "before"
            edited = await asyncio.wait_for(pending, 60)
        assert edited.status_code == 200, edited.text
        graph = (await c.get(f"{L}/graphs?label=Gatekeeper&max_depth=1&max_nodes=10")).json()
        (node,) = [n for n in graph["nodes"] if n["id"] == "Gatekeeper"]
        assert node["properties"]["description"] == "after"
