"""Token usage and budgets: a task's tokens are what the provider reported, a tenant's usage is the
sum of its tasks and queries, a spent budget refuses new work with 402 and loses nothing, and the
offline stand-ins cost nothing.

Real Redis and LightRAG storages, the mock OpenAI-compatible LLM (which reports `usage`).
"""

from __future__ import annotations

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import (
    ADMIN,
    llm_settings,
    make_settings,
    make_tenant,
    mock_stats,
    start_service,
    story,
    wait_for_task,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def tokens(mock) -> tuple[int, int]:  # noqa: ANN001 - MockServer
    reported = mock_stats(mock)["tokens"]
    return reported["prompt"], reported["completion"]


async def test_a_tasks_and_a_tenants_tokens_are_what_the_llm_reported(tmp_path, redis_url) -> None:
    """Catches usage not counted, counted twice, or taken from our tokenizer although the provider
    reported its own: the document's task, then a query, each equal the mock's reported sums, and
    GET /usage is their total."""
    with MockServer(MockConfig()) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock)) as svc:
            c = svc.client
            accepted = await c.post("/insert/text", json={"text": story("glaciers", "Frostvane")})
            task = await wait_for_task(c, accepted.json()["task_id"], expect="completed")
            prompt, completion = tokens(mock)
            usage = task["result"]["usage"]
            assert prompt > 0 and usage["llm_input_tokens"] == prompt, (usage, prompt)
            assert usage["llm_output_tokens"] == completion and usage["llm_calls"] > 0
            assert usage["total_tokens"] >= prompt + completion

            answered = await c.post("/query", json={"query": "What is Frostvane?", "mode": "hybrid"})
            assert answered.status_code == 200, answered.text
            prompt_2, completion_2 = tokens(mock)
            assert prompt_2 > prompt

            spent = (await c.get("/usage")).json()
            for period in ("day", "month"):
                assert spent[period]["llm_input_tokens"] == prompt_2, spent
                assert spent[period]["llm_output_tokens"] == completion_2, spent
            assert spent["budgets"] == {"daily_tokens": None, "monthly_tokens": None}


async def test_a_spent_budget_refuses_new_work_with_402_and_loses_nothing(tmp_path, redis_url) -> None:
    """Catches a budget that is not enforced on one of the ways in (upload, text, batch, query, async
    query, LightRAG's routes, the Ollama chat), one that refuses with another status, or one that
    touches work accepted before it was spent."""
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, admin_token="admin-secret")
        async with start_service(settings) as svc:
            c = svc.client
            created = await c.post("/admin/tenants", json={"name": "acme", "daily_tokens": 50}, headers=ADMIN)
            assert created.status_code == 201 and created.json()["daily_tokens"] == 50, created.text
            key = await c.post("/admin/tenants/acme/keys", json={"label": "t"}, headers=ADMIN)
            acme = {"Authorization": f"Bearer {key.json()['api_key']}"}

            first = await c.post("/insert/text", json={"text": story("glaciers", "Frostvane")}, headers=acme)
            assert first.status_code == 202, first.text  # the budget is not spent yet
            done = await wait_for_task(c, first.json()["task_id"], headers=acme, expect="completed")
            assert done["result"]["usage"]["total_tokens"] > 50

            refusals = [
                await c.post("/insert/text", json={"text": story("rivers", "Fluvia")}, headers=acme),
                await c.post("/insert", files={"file": ("a.md", b"# A\n\nSome text.")}, headers=acme),
                await c.post("/batch", files={"files": ("b.md", b"# B\n\nMore text.")}, headers=acme),
                await c.post("/query", json={"query": "What is Frostvane?"}, headers=acme),
                await c.post("/query/async", json={"query": "What is Frostvane?"}, headers=acme),
                await c.post("/lightrag/query", json={"query": "What is Frostvane?"}, headers=acme),
                await c.post("/lightrag/documents/text", json={"text": "x y z"}, headers=acme),
                await c.post(
                    "/lightrag/api/chat",
                    json={"model": "lightrag:latest", "messages": [{"role": "user", "content": "Hi there"}]},
                    headers=acme,
                ),
            ]
            for refused in refusals:
                assert refused.status_code == 402, (refused.request.url, refused.text)
                assert refused.json()["code"] == "token_budget_exhausted", refused.text
                assert "daily token budget of 50" in refused.json()["detail"]

            # Nothing lost: the document indexed before is there, the usage says why the refusals came.
            assert (await c.get(f"/documents/{done['doc_id']}", headers=acme)).status_code == 200
            spent = (await c.get("/usage", headers=acme)).json()
            assert spent["day"]["total_tokens"] > 50 and spent["budgets"]["daily_tokens"] == 50
            metrics = (await c.get("/metrics", headers=ADMIN)).text
            assert 'ragsvc_tokens_total{kind="llm_input",tenant="acme"}' in metrics or (
                'ragsvc_tokens_total{tenant="acme",kind="llm_input"}' in metrics
            ), [line for line in metrics.splitlines() if "tokens" in line]
            # Another tenant (no budget) is not refused.
            other = await c.post(
                "/insert/text",
                json={"text": story("bridges", "Pontavel")},
                headers=await make_tenant(svc, "other"),
            )
            assert other.status_code == 202, other.text


async def test_the_offline_stand_ins_cost_nothing(tmp_path, redis_url) -> None:
    """Catches invented costs: with the offline LLM and local embeddings a document and a query
    report zero tokens (nothing was billed by anyone)."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        accepted = await svc.client.post("/insert/text", json={"text": story("orchards", "Pomarea")})
        task = await wait_for_task(svc.client, accepted.json()["task_id"], expect="completed")
        assert task["result"]["usage"]["total_tokens"] == 0, task["result"]["usage"]
        await svc.client.post("/query", json={"query": "What is Pomarea?"})
        spent = (await svc.client.get("/usage")).json()
        assert spent["day"]["total_tokens"] == 0 and spent["month"]["total_tokens"] == 0


async def test_embedding_tokens_of_shared_batches_add_up_per_document(tmp_path, redis_url) -> None:
    """Catches embedding tokens lost in the micro-batcher (its batches mix several documents' texts
    and run outside any document's work) or counted twice: two documents indexed at once report
    embedding tokens that add up to exactly what the embedding endpoint reported meanwhile."""
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(
            tmp_path,
            redis_url,
            mock,
            embedding_provider="openai",
            embedding_base_url=mock.base_url,
            embedding_api_key="test-key",
            embedding_model="mock-embedding",
            embedding_dim=384,
        )
        async with start_service(settings) as svc:
            c = svc.client
            before = mock_stats(mock)["tokens"]["embedding"]
            accepted = [
                await c.post("/insert/text", json={"text": story(topic, name)})
                for topic, name in (("glaciers", "Frostvane"), ("rivers", "Fluvianto"))
            ]
            done = [await wait_for_task(c, a.json()["task_id"], expect="completed") for a in accepted]
            reported = mock_stats(mock)["tokens"]["embedding"] - before
            counted = [d["result"]["usage"]["embedding_tokens"] for d in done]
            assert all(n > 0 for n in counted) and sum(counted) == reported, (counted, reported)
