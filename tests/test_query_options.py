"""LightRAG Server's query options on /query, /query/stream, /query/async and /query/data.

Real Redis and LightRAG storages; the LLM is the mock OpenAI-compatible server (which records the
messages it is sent and serves a Jina/Cohere-style rerank endpoint), so what reaches the LLM and
what the reranker changes can be observed.
"""

from __future__ import annotations

import json

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import llm_settings, make_settings, start_service, story, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def _ingest(svc, name: str, text: str) -> None:
    accepted = await svc.client.post("/insert/text", json={"text": text, "filename": name})
    assert accepted.status_code == 202, accepted.text
    await wait_for_task(svc.client, accepted.json()["task_id"], expect="completed")


def _chats(mock: MockServer) -> list[dict]:
    return httpx.get(f"{mock.root_url}/_mock/chats", timeout=10).json()


async def test_references_prompt_history_keywords_and_bypass_reach_lightrag(tmp_path, redis_url) -> None:
    """Catches options accepted by the schema but dropped on the way to LightRAG: references missing
    from the answer (and from the stream's first line and a query task's result), a user prompt or
    conversation history that never reaches the LLM, client keywords that still cost a keyword
    extraction call, a bypass query that retrieves anyway."""
    with MockServer(MockConfig()) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock)) as svc:
            await _ingest(svc, "orchards.md", story("orchards", "Pomaréa"))
            await _ingest(svc, "rivers.md", story("rivers", "Fluvianto"))

            asked = await svc.client.post(
                "/query",
                json={
                    "query": "What did the Pomaréa team publish?",
                    "mode": "mix",
                    "include_references": True,
                    "include_chunk_content": True,
                },
            )
            assert asked.status_code == 200, asked.text
            references = asked.json()["references"]
            assert "orchards.md" in {r["file_path"] for r in references}, references
            assert all(r["reference_id"] and r["content"] for r in references), references
            assert any("Pomaréa" in c for r in references for c in r["content"])
            plain = await svc.client.post("/query", json={"query": "What did the Pomaréa team publish?"})
            assert plain.json()["references"] is None  # not asked for: not computed into the body

            async with svc.client.stream(
                "POST",
                "/query/stream",
                json={"query": "Pomaréa report", "mode": "naive", "include_references": True},
            ) as streamed:
                lines = [json.loads(line) async for line in streamed.aiter_lines() if line.strip()]
            first = lines[0]
            assert "references" in first and "orchards.md" in {r["file_path"] for r in first["references"]}
            assert all("response" in line for line in lines[1:]) and len(lines) > 1

            prompt = await svc.client.post(
                "/query",
                json={
                    "query": "What did the Pomaréa team publish?",
                    "mode": "hybrid",
                    "only_need_prompt": True,
                    "user_prompt": "Answer like a ship's captain (marker Quoddle).",
                },
            )
            assert prompt.status_code == 200 and "Quoddle" in prompt.json()["response"], prompt.text

            keyword_calls = (await _stats(mock))["kinds"]["keywords"]
            history = [
                {"role": "user", "content": "My name is Zebulon Quarry."},
                {"role": "assistant", "content": "Hello Zebulon."},
            ]
            chosen = await svc.client.post(
                "/query",
                json={
                    "query": "Who leads the Fluvianto collaboration?",
                    "mode": "hybrid",
                    "hl_keywords": ["collaboration"],
                    "ll_keywords": ["Fluvianto", "Maria Costa"],
                    "conversation_history": history,
                },
            )
            assert chosen.status_code == 200, chosen.text
            assert (await _stats(mock))["kinds"]["keywords"] == keyword_calls  # no extraction call
            answer_call = _chats(mock)[-1]
            sent = json.dumps(answer_call["messages"])
            assert "Zebulon Quarry" in sent and "Fluvianto" in sent, answer_call

            before = len(_chats(mock))
            bypass = await svc.client.post(
                "/query",
                json={"query": "Say hello to Ottoline.", "mode": "bypass", "conversation_history": history},
            )
            assert bypass.status_code == 200 and bypass.json()["mode"] == "bypass", bypass.text
            (call,) = _chats(mock)[before:]  # one LLM call, no keyword extraction
            roles = [m["role"] for m in call["messages"]]
            assert roles[-3:] == ["user", "assistant", "user"], call
            assert "Pomaréa" not in json.dumps(call["messages"])  # nothing retrieved

            body = {"query": "Fluvianto rivers", "mode": "naive", "include_references": True}
            task = await svc.client.post("/query/async", json=body)
            assert task.status_code == 202, task.text
            final = await wait_for_task(svc.client, task.json()["task_id"], expect="completed")
            assert "rivers.md" in {r["file_path"] for r in final["result"]["references"]}, final


async def _stats(mock: MockServer) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{mock.root_url}/_mock/stats")).json()


async def test_query_data_and_token_budgets(tmp_path, redis_url) -> None:
    """Catches /query/data missing (404) or shaped differently from LightRAG Server's, and the
    token budgets (max_*_tokens) not reaching retrieval."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        await _ingest(svc, "harbour.md", story("harbours", "Kelpstone", sentences=30))
        data = await svc.client.post("/query/data", json={"query": "Kelpstone harbours", "mode": "mix"})
        assert data.status_code == 200, data.text
        body = data.json()
        assert body["status"] == "success", body
        assert set(body["data"]) == {"entities", "relationships", "chunks", "references"}
        assert body["data"]["chunks"] and body["data"]["entities"], body
        assert body["metadata"]["query_mode"] == "mix", body["metadata"]
        assert {"harbour.md"} == {r["file_path"] for r in body["data"]["references"]}

        def context(**options: int) -> dict:
            return {"query": "Kelpstone harbours", "mode": "mix", "only_need_context": True, **options}

        wide = await svc.client.post("/query", json=context())
        narrow = await svc.client.post("/query", json=context(max_total_tokens=1500, max_entity_tokens=200))
        assert wide.status_code == narrow.status_code == 200, narrow.text
        assert len(narrow.json()["response"]) < len(wide.json()["response"])


@pytest.mark.parametrize(
    "extra, code",
    [
        ({"conversation_history": [{"role": "user", "content": "x"}] * 101}, "validation_error"),
        ({"conversation_history": [{"role": "robot", "content": "x"}]}, "validation_error"),
        ({"hl_keywords": ["k" * 201]}, "validation_error"),
        ({"ll_keywords": ["k"] * 51}, "validation_error"),
        ({"user_prompt": "u" * 4001}, "validation_error"),
        ({"max_total_tokens": 0}, "validation_error"),
        ({"mode": "psychic"}, "validation_error"),
        ({"conversation_history": [{"role": "user", "content": "c" * 20_000}] * 11}, "query_too_long"),
    ],
)
async def test_query_options_are_bounded(tmp_path, redis_url, extra, code) -> None:
    """Catches an unbounded option (a history or prompt of any size sent on to the LLM) or one
    refused with a 500 instead of a 422 naming the problem."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        for path in ("/query", "/query/stream", "/query/data", "/query/async"):
            refused = await svc.client.post(path, json={"query": "anything?", **extra})
            assert refused.status_code == 422, (path, refused.text)
            assert refused.json()["code"] == code, refused.text


async def test_reranker_configured_by_lightrag_server_names(tmp_path, redis_url) -> None:
    """Catches RERANK_BINDING/RERANK_MODEL/RERANK_BINDING_HOST being ignored, or enable_rerank not
    reaching LightRAG: the mock reranker scores only chunks with every query word high, and
    MIN_RERANK_SCORE drops the rest."""
    with MockServer(MockConfig()) as mock:
        settings = make_settings(
            tmp_path,
            redis_url,
            rerank_binding="jina",
            rerank_model="mock-reranker",
            rerank_binding_host=f"{mock.root_url}/v1/rerank",
            rerank_binding_api_key="rerank-key",
            min_rerank_score=0.5,
        )
        async with start_service(settings) as svc:
            await _ingest(svc, "a.md", "Wexbridge turbines hum in the valley. " * 40)
            await _ingest(svc, "b.md", "Turbines of another town, far from any bridge. " * 40)
            query = {"query": "wexbridge turbines", "mode": "naive", "only_need_context": True}
            reranked = await svc.client.post("/query", json={**query, "enable_rerank": True})
            unranked = await svc.client.post("/query", json={**query, "enable_rerank": False})
            assert reranked.status_code == unranked.status_code == 200, reranked.text
            assert "another town" in unranked.json()["response"]
            assert "another town" not in reranked.json()["response"]
            assert "Wexbridge" in reranked.json()["response"]
            assert (await _stats(mock))["calls"]["rerank"] >= 1
