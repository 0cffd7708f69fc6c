"""POST /query/async: queries run as tasks in a lane of their own (src/tasks/keys.py), through the
HTTP API of the in-process service. Stalls come from the mock LLM hanging on chat calls, or from
the documents' progress writes being held, never from sleeps."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.tasks.models import Stage
from tests.helpers import (
    ADMIN_TOKEN,
    Service,
    llm_settings,
    make_settings,
    make_tenant,
    start_service,
    story,
    upload,
    wait_for_status,
    wait_for_task,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Every chat call of the mock LLM hangs (embeddings answer): queries that need the LLM stall.
HANGING_CHAT = MockConfig(hang_rate=1.0, hang_seconds=120, error_endpoints=["chat"])


async def submit(svc: Service, body: dict, **params) -> dict:
    response = await svc.client.post("/query/async", json=body, params=params or None)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert response.headers["location"] == accepted["status_url"] == f"/task/{accepted['task_id']}"
    assert accepted["kind"] == "query" and accepted["status"] == "pending"
    return accepted


async def test_query_task_completes_with_the_answer_and_the_context(tmp_path, redis_url) -> None:
    """Catches a query task that never runs, ends without result.response, or drops the context
    asked for with only_need_context."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        doc = (await upload(svc.client, "tides.txt", story("tidal power", "Qtaskmarker").encode())).json()
        await wait_for_task(svc.client, doc["task_id"], expect="completed")
        answered = await submit(
            svc, {"query": "What is the Qtaskmarker project?", "mode": "naive"}, priority=8
        )
        final = await wait_for_task(svc.client, answered["task_id"], expect="completed")
        assert final["kind"] == "query" and final["priority"] == 8 and final["doc_id"] == ""
        assert (
            final["query"]["text"] == "What is the Qtaskmarker project?" and final["query"]["mode"] == "naive"
        )
        result = final["result"]
        assert result["response"] and result["mode"] == "naive" and "context" not in result, result
        context = await submit(
            svc, {"query": "Qtaskmarker project", "mode": "naive", "only_need_context": True}
        )
        final = await wait_for_task(svc.client, context["task_id"], expect="completed")
        assert final["result"]["only_need_context"] is True
        assert "Qtaskmarker" in final["result"]["context"] == final["result"]["response"]


async def test_query_task_is_not_delayed_by_a_full_ingestion_window(tmp_path, redis_url) -> None:
    """Catches queries queued behind documents: with every MAX_CONCURRENT_TASKS slot held by a
    stalled document and more documents waiting, a query task still completes."""
    settings = make_settings(tmp_path, redis_url, max_concurrent_tasks=2)
    async with start_service(settings) as svc:
        store = svc.services.store
        real = store.report_progress
        held = asyncio.Event()
        stalled: set[str] = set()

        async def hold(task_id: str, epoch: int, stage: str, progress: float):
            if str(stage) == Stage.PARSING:
                stalled.add(task_id)
                await held.wait()
            return await real(task_id, epoch, stage, progress)

        store.report_progress = hold
        try:
            docs = [
                (await upload(svc.client, f"d{i}.txt", story("wind farms", f"Stall{i}x").encode())).json()
                for i in range(4)
            ]
            await wait_until(
                lambda: asyncio.sleep(0, result=len(stalled) == 2), message="2 stalled documents"
            )
            assert svc.services.runner.running_count == 2
            query = await submit(svc, {"query": "anything at all?", "mode": "naive"})
            final = await wait_for_task(svc.client, query["task_id"], expect="completed")
            assert "response" in final["result"]
            waiting = [(await svc.client.get(f"/task/{d['task_id']}")).json()["status"] for d in docs]
            assert waiting.count("pending") == 2 and waiting.count("processing") == 2, waiting
        finally:
            held.set()
        for doc in docs:
            await wait_for_task(svc.client, doc["task_id"], expect="completed")


async def test_cancel_pending_and_running_query_tasks(tmp_path, redis_url) -> None:
    """Catches a query task that cannot be cancelled: a waiting one must be cancelled at once (200),
    a running one (its LLM call hanging) must stop and end cancelled (202 then cancelled)."""
    with MockServer(HANGING_CHAT) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, max_concurrent_queries=1)
        async with start_service(settings) as svc:
            running = await submit(svc, {"query": "who founded it?", "mode": "hybrid"})
            await wait_for_status(svc.client, running["task_id"], "processing")
            waiting = await submit(svc, {"query": "and when?", "mode": "hybrid"})
            cancelled = await svc.client.delete(f"/task/{waiting['task_id']}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            stopping = await svc.client.delete(f"/task/{running['task_id']}")
            assert stopping.status_code == 202 and stopping.json()["status"] == "cancelling", stopping.text
            final = await wait_for_task(svc.client, running["task_id"], expect="cancelled")
            assert final["history"][-1]["outcome"] == "cancelled", final
            assert svc.services.runner.running_queries == 0
            refused = await svc.client.delete(f"/task/{running['task_id']}")
            assert refused.status_code == 409 and refused.json()["code"] == "task_finished"


async def test_query_task_of_another_tenant_is_404(tmp_path, redis_url) -> None:
    """Catches a query task (and its answer) visible to, or cancellable by, another tenant."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        acme = await make_tenant(svc, "acme")
        globex = await make_tenant(svc, "globex")
        response = await svc.client.post("/query/async", json={"query": "secret plans?"}, headers=acme)
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        for method in ("GET", "DELETE"):
            other = await svc.client.request(method, f"/task/{task_id}", headers=globex)
            assert other.status_code == 404 and other.json()["code"] == "task_not_found", other.text
        final = await wait_for_task(svc.client, task_id, headers=acme, expect="completed")
        assert final["kind"] == "query"
        listed = (await svc.client.get("/tasks", headers=globex)).json()
        assert all(t["task_id"] != task_id for t in listed["tasks"])


async def test_pending_queries_are_bounded(tmp_path, redis_url) -> None:
    """Catches an unbounded query lane: past MAX_PENDING_QUERIES waiting queries, 429 JSON with
    Retry-After (per tenant: TENANT_MAX_PENDING_QUERIES), while documents are still accepted."""
    # ROLE=api claims nothing, so every accepted query keeps waiting.
    settings = make_settings(
        tmp_path, redis_url, role="api", max_pending_queries=2, tenant_max_pending_queries=0
    )
    async with start_service(settings) as svc:
        await submit(svc, {"query": "one?"})
        await submit(svc, {"query": "two?"})
        full = await svc.client.post("/query/async", json={"query": "three?"})
        assert full.status_code == 429 and full.json()["code"] == "query_queue_full", full.text
        assert full.headers["retry-after"]
        doc = await upload(svc.client, "still.txt", b"documents have their own lane")
        assert doc.status_code == 202, doc.text
    settings = make_settings(tmp_path, redis_url, role="api", tenant_max_pending_queries=1)
    async with start_service(settings) as svc:
        await submit(svc, {"query": "one?"})
        full = await svc.client.post("/query/async", json={"query": "two?"})
        assert full.status_code == 429 and full.json()["code"] == "tenant_query_queue_full", full.text


async def test_one_tenants_query_flood_leaves_room_for_the_others_by_default(tmp_path, redis_url) -> None:
    """Catches a query lane without a default per-tenant share: one tenant flooding /query/async
    filled MAX_PENDING_QUERIES and every other tenant got 429 query_queue_full. By default a tenant
    may hold a quarter of the lane (TENANT_MAX_PENDING_QUERIES unset): the flooder gets
    429 tenant_query_queue_full, another tenant is still accepted, and nothing accepted is lost."""
    settings = make_settings(tmp_path, redis_url, role="api", max_pending_queries=8, admin_token=ADMIN_TOKEN)
    async with start_service(settings) as svc:
        flooder, other = await make_tenant(svc, "flooder"), await make_tenant(svc, "other")
        answers = [
            await svc.client.post("/query/async", json={"query": f"flood {i}?"}, headers=flooder)
            for i in range(12)
        ]
        codes = [a.status_code for a in answers]
        assert codes == [202] * 2 + [429] * 10, codes
        assert {a.json()["code"] for a in answers[2:]} == {"tenant_query_queue_full"}
        for i in range(2):
            ok = await svc.client.post("/query/async", json={"query": f"other {i}?"}, headers=other)
            assert ok.status_code == 202, ok.text
        for answer in answers[:2]:  # what was acknowledged is still waiting to be answered
            view = await svc.client.get(f"/task/{answer.json()['task_id']}", headers=flooder)
            assert view.json()["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "params"),
    [
        ({}, {}),
        ({"query": ""}, {}),
        ({"query": "x", "mode": "psychic"}, {}),
        ({"query": "x", "top_k": 0}, {}),
        ({"query": "x" * 8001}, {}),
        ({"query": "x"}, {"priority": "10"}),
        ({"query": "x"}, {"callback_url": "ftp://example.com/hook"}),
    ],
    ids=["empty", "blank-query", "bad-mode", "bad-top-k", "too-long", "bad-priority", "bad-callback"],
)
async def test_bad_query_task_request_is_422(service: Service, body: dict, params: dict) -> None:
    """Catches a malformed /query/async request that is queued (or answered 500) instead of a 422."""
    response = await service.client.post("/query/async", json=body, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("validation_error", "invalid_callback_url")
    total = (await service.client.get("/tasks")).json()["total"]
    assert total == 0


async def test_api_role_delegated_query_answers_like_a_direct_one(tmp_path, redis_url) -> None:
    """Catches an api-role /query or /query/stream that hides a provider failure (must be 502 as in
    ROLE=all), answers from a knowledge base of its own, or leaves its task waiting after a timeout
    (504, the task cancelled)."""
    with MockServer(MockConfig(permanent_error=True, permanent_error_status=400)) as mock:
        worker_settings = llm_settings(tmp_path / "w", redis_url, mock, max_attempts=1)
        api_settings = worker_settings.model_copy(update={"role": "api"})
        async with start_service(worker_settings) as worker:
            async with start_service(api_settings, prefix=worker.prefix) as api:
                for path in ("/query", "/query/stream"):
                    failed = await api.client.post(path, json={"query": "who?", "mode": "hybrid"})
                    assert failed.status_code == 502 and failed.json()["code"] == "query_failed", failed.text
                ok = await api.client.post(
                    "/query", json={"query": "who?", "mode": "naive", "only_need_context": True}
                )
                assert ok.status_code == 200, ok.text
                assert api.services.knowledge_bases.loaded() == []  # answered by the worker's knowledge base
    lonely = make_settings(tmp_path / "a", redis_url, role="api", query_timeout_seconds=0.5)
    async with start_service(lonely) as api:  # no worker at all
        timed_out = await api.client.post("/query", json={"query": "anyone there?"})
        assert timed_out.status_code == 504 and timed_out.json()["code"] == "query_timeout", timed_out.text
        task = (await api.client.get(f"/task/{timed_out.json()['task_id']}")).json()
        assert task["status"] == "cancelled", task


async def test_transient_provider_error_retries_the_query_task(tmp_path, redis_url) -> None:
    """Catches a query task failed at once by a transient provider error (503) instead of being
    retried with backoff like any other task."""
    config = MockConfig(fail_first=1, error_status=503, error_endpoints=["chat"], retry_after=0.01)
    with MockServer(config) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_retries=1, max_attempts=3)
        async with start_service(settings) as svc:
            accepted = await submit(svc, {"query": "who founded it?", "mode": "hybrid"})
            final = await wait_for_task(svc.client, accepted["task_id"], expect="completed")
    assert [h["outcome"] for h in final["history"]] == ["retry", "completed"], final["history"]
    assert "503" in final["history"][0]["error"] or "InternalServerError" in final["history"][0]["error"]


async def test_query_task_runs_at_its_priority_for_its_tenant(tmp_path, redis_url, monkeypatch) -> None:
    """Catches a query task whose provider calls are admitted at the default priority or as another
    tenant's (the LLM scheduler reads the call context the handler sets)."""
    from src.rag.engine import queries
    from src.rag.scheduler import current_call_context

    seen = []
    real = queries.whole

    async def observed(rag, spec):
        seen.append((current_call_context(), rag.workspace))
        return await real(rag, spec)

    monkeypatch.setattr(queries, "whole", observed)
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        acme = await make_tenant(svc, "acme")
        response = await svc.client.post(
            "/query/async", params={"priority": 9}, json={"query": "q?", "mode": "naive"}, headers=acme
        )
        assert response.status_code == 202, response.text
        await wait_for_task(svc.client, response.json()["task_id"], headers=acme, expect="completed")
    ((context, workspace),) = seen
    assert (context.priority, context.tenant) == (9, "acme") and workspace.endswith("--acme")
