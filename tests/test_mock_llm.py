"""Tests for the OpenAI-compatible mock LLM/embedding server (benchmarks/mock_llm.py)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time

import httpx
import openai
import pytest
from httpx import ASGITransport
from lightrag.constants import DEFAULT_ENTITY_TYPES
from lightrag.operate import _process_extraction_result
from lightrag.prompt import PROMPTS
from lightrag.types import GPTKeywordExtractionFormat
from openai import AsyncOpenAI

from benchmarks.mock_llm import (
    COMPLETION_DELIMITER,
    MockConfig,
    MockServer,
    build_parser,
    config_from_args,
    create_mock_app,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]
BASE = "http://mock.test"

SAMPLE_TEXT = (
    "At the World Athletics Championship in Tokyo, Noah Carter broke the 100m sprint record using "
    "cutting-edge carbon-fiber spikes. The World Athletics Federation validated the record. "
    "Later, Noah Carter thanked his coach Maria Lopez in Tokyo."
)


def make_client(app, **kwargs) -> AsyncOpenAI:
    http_client = httpx.AsyncClient(transport=ASGITransport(app=app), base_url=BASE)
    return AsyncOpenAI(base_url=f"{BASE}/v1", api_key="test-key", http_client=http_client, **kwargs)


def raw_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=ASGITransport(app=app), base_url=BASE)


def extraction_messages(text: str = SAMPLE_TEXT) -> list[dict]:
    """The exact messages LightRAG 1.4.16 sends for the first extraction pass of a chunk."""
    examples = "\n".join(PROMPTS["entity_extraction_examples"])
    examples = examples.format(
        tuple_delimiter=PROMPTS["DEFAULT_TUPLE_DELIMITER"],
        completion_delimiter=PROMPTS["DEFAULT_COMPLETION_DELIMITER"],
        entity_types=", ".join(DEFAULT_ENTITY_TYPES),
        language="English",
    )
    ctx = dict(
        tuple_delimiter=PROMPTS["DEFAULT_TUPLE_DELIMITER"],
        completion_delimiter=PROMPTS["DEFAULT_COMPLETION_DELIMITER"],
        entity_types=",".join(DEFAULT_ENTITY_TYPES),
        examples=examples,
        language="English",
    )
    return [
        {"role": "system", "content": PROMPTS["entity_extraction_system_prompt"].format(**ctx)},
        {"role": "user", "content": PROMPTS["entity_extraction_user_prompt"].format(**ctx, input_text=text)},
    ]


def glean_messages(first_answer: str) -> list[dict]:
    msgs = extraction_messages()
    ctx = dict(
        tuple_delimiter=PROMPTS["DEFAULT_TUPLE_DELIMITER"],
        completion_delimiter=PROMPTS["DEFAULT_COMPLETION_DELIMITER"],
        language="English",
    )
    return [
        *msgs,
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": PROMPTS["entity_continue_extraction_user_prompt"].format(**ctx)},
    ]


def keywords_prompt(query: str) -> str:
    return PROMPTS["keywords_extraction"].format(
        query=query, examples="\n".join(PROMPTS["keywords_extraction_examples"]), language="English"
    )


def summary_prompt(name: str, descriptions: list[str]) -> str:
    return PROMPTS["summarize_entity_descriptions"].format(
        description_type="Entity",
        description_name=name,
        description_list="\n".join(json.dumps({"Description": d}) for d in descriptions),
        summary_length=500,
        language="English",
    )


def rag_system_prompt(chunks: list[str]) -> str:
    context = PROMPTS["naive_query_context"].format(
        text_chunks_str="\n".join(
            json.dumps({"reference_id": str(i + 1), "content": c}) for i, c in enumerate(chunks)
        ),
        reference_list_str="\n".join(f"[{i + 1}] doc{i + 1}.txt" for i in range(len(chunks))),
    )
    return PROMPTS["naive_rag_response"].format(
        response_type="Multiple Paragraphs", user_prompt="n/a", content_data=context
    )


async def get_stats(app) -> dict:
    async with raw_client(app) as c:
        r = await c.get("/_mock/stats")
        r.raise_for_status()
        return r.json()


# --------------------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_non_stream_and_stream_match():
    app = create_mock_app(MockConfig(stream_chunk_words=2))
    client = make_client(app, max_retries=0)
    messages = [
        {"role": "system", "content": rag_system_prompt(["Noah Carter won the race in Tokyo."])},
        {"role": "user", "content": "Who won the race?"},
    ]
    resp = await client.chat.completions.create(model="mock-gpt", messages=messages)
    content = resp.choices[0].message.content
    assert content and resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens > 0

    stream = await client.chat.completions.create(
        model="mock-gpt", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage, n_chunks = [], None, None, 0
    async for chunk in stream:
        n_chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(pieces) == content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    assert n_chunks > 3  # really chunked

    stats = await get_stats(app)
    assert stats["calls"]["chat"] == 2
    assert stats["streams"] == 1
    assert stats["kinds"]["answer"] == 2
    assert stats["in_flight"] == 0
    await client.close()


@pytest.mark.asyncio
async def test_stream_wire_format_ends_with_done():
    app = create_mock_app(MockConfig())
    async with raw_client(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello there"}]},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: ") :])
    assert first["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.asyncio
async def test_rag_answer_quotes_context_line():
    app = create_mock_app(MockConfig())
    client = make_client(app, max_retries=0)
    chunks = [
        "The harbour of Valmora was rebuilt in 1902 after a storm.",
        "Maria Lopez coaches sprinters at the Tokyo academy.",
    ]
    resp = await client.chat.completions.create(
        model="mock-gpt",
        messages=[
            {"role": "system", "content": rag_system_prompt(chunks)},
            {"role": "user", "content": "Who coaches sprinters in Tokyo?"},
        ],
    )
    content = resp.choices[0].message.content
    assert chunks[1] in content
    assert "doc2.txt" in content  # reference list carried over
    await client.close()


@pytest.mark.asyncio
async def test_extraction_answer_parses_with_lightrag():
    app = create_mock_app(MockConfig())
    client = make_client(app, max_retries=0)
    resp = await client.chat.completions.create(model="mock-gpt", messages=extraction_messages())
    content = resp.choices[0].message.content
    assert content.rstrip().endswith(COMPLETION_DELIMITER)
    nodes, edges = await _process_extraction_result(content, "chunk-1", int(time.time()), "doc.txt")
    assert len(nodes) >= 1
    assert len(edges) >= 1
    assert "Noah Carter" in nodes
    for name, records in nodes.items():
        assert records[0]["description"], name
        assert records[0]["entity_type"]

    glean = await client.chat.completions.create(model="mock-gpt", messages=glean_messages(content))
    assert glean.choices[0].message.content.strip() == COMPLETION_DELIMITER

    stats = await get_stats(app)
    assert stats["kinds"]["extract"] == 1
    assert stats["kinds"]["glean"] == 1
    await client.close()


@pytest.mark.asyncio
async def test_keywords_summary_and_kind_counters():
    app = create_mock_app(MockConfig())
    client = make_client(app, max_retries=0)
    # LightRAG sends keyword extraction through chat.completions.parse with a response_format
    parsed = await client.chat.completions.parse(
        model="mock-gpt",
        messages=[
            {"role": "user", "content": keywords_prompt("How did Noah Carter break the record in Tokyo?")}
        ],
        response_format=GPTKeywordExtractionFormat,
    )
    kw = parsed.choices[0].message.parsed
    assert kw is not None
    assert kw.high_level_keywords and kw.low_level_keywords
    assert "Noah Carter" in kw.low_level_keywords

    summary = await client.chat.completions.create(
        model="mock-gpt",
        messages=[
            {"role": "user", "content": summary_prompt("Noah Carter", ["A sprinter.", "Holds a record."])}
        ],
    )
    text = summary.choices[0].message.content
    assert text.startswith("Noah Carter")
    assert "A sprinter." in text and "Holds a record." in text

    stats = await get_stats(app)
    assert stats["kinds"] == {"extract": 0, "glean": 0, "summary": 1, "keywords": 1, "answer": 0}
    await client.close()


# --------------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------------


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.asyncio
async def test_embeddings_shape_normalisation_determinism():
    app = create_mock_app(MockConfig(embedding_dim=384))
    client = make_client(app, max_retries=0)
    texts = [
        "apple banana cherry",
        "apple banana",
        "quantum chromodynamics lattice",
        "",
        "Noah Carter broke the record",
    ]
    # openai client defaults to base64 encoding
    resp = await client.embeddings.create(model="mock-embedding", input=texts)
    assert [d.index for d in resp.data] == list(range(len(texts)))
    vecs = [d.embedding for d in resp.data]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in vecs)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2])

    # float encoding, single string, fresh app instance: same vectors (deterministic)
    other = create_mock_app(MockConfig(embedding_dim=384))
    async with raw_client(other) as c:
        r = await c.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "float"})
        r.raise_for_status()
        single = r.json()["data"][0]["embedding"]
        assert len(r.json()["data"]) == 1
        r = await c.post("/v1/embeddings", json={"input": ["x y z"], "dimensions": 64})
        assert len(r.json()["data"][0]["embedding"]) == 64
        r = await c.post("/v1/embeddings", json={"input": []})
        assert r.status_code == 400
        assert "input" in r.json()["error"]["message"]
    assert max(abs(a - b) for a, b in zip(single, vecs[0], strict=True)) < 1e-6

    stats = await get_stats(app)
    assert stats["calls"]["embeddings"] == 1
    assert stats["embedding_inputs"] == len(texts)
    await client.close()


# --------------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------------


async def _error_pattern(app, n: int) -> list[int]:
    statuses = []
    async with raw_client(app) as c:
        for _ in range(n):
            r = await c.post("/v1/embeddings", json={"input": "ping"})
            statuses.append(r.status_code)
    return statuses


@pytest.mark.asyncio
async def test_error_rate_is_seeded_and_roughly_honoured():
    n, rate, seed = 200, 0.3, 1234
    app = create_mock_app(MockConfig(error_rate=rate, error_status=503, seed=seed))
    first = await _error_pattern(app, n)
    errors = first.count(503)
    assert set(first) == {200, 503}
    # the documented contract: one draw of random.Random(seed) per eligible call, in arrival order
    rng = random.Random(seed)
    assert errors == sum(rng.random() < rate for _ in range(n))
    assert 0.2 * n <= errors <= 0.4 * n
    stats = await get_stats(app)
    assert stats["errors_injected"]["total"] == errors
    assert stats["errors_injected"]["by_status"] == {"503": errors}
    assert stats["calls"]["embeddings"] == n

    # same seed after a reset -> the very same sequence
    async with raw_client(app) as c:
        (await c.post("/_mock/reset")).raise_for_status()
    assert await _error_pattern(app, n) == first
    # error body is OpenAI-shaped
    async with raw_client(app) as c:
        (await c.post("/_mock/config", json={"error_rate": 1.0})).raise_for_status()
        r = await c.post("/v1/embeddings", json={"input": "ping"})
    assert r.status_code == 503
    assert set(r.json()["error"]) >= {"message", "type", "code"}


@pytest.mark.asyncio
async def test_429_has_retry_after_and_openai_raises_rate_limit():
    app = create_mock_app(MockConfig(error_rate=1.0, error_status=429, retry_after=2.5))
    async with raw_client(app) as c:
        r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"  # whole seconds, rounded up
    assert r.headers["retry-after-ms"] == "2500"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"

    client = make_client(app, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    await client.close()


@pytest.mark.asyncio
async def test_fail_first_then_openai_client_retry_succeeds():
    app = create_mock_app(MockConfig(fail_first=2, error_status=429, retry_after=0.01))
    client = make_client(app, max_retries=2)
    resp = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content
    stats = await get_stats(app)
    assert stats["calls"]["chat"] == 3
    assert stats["errors_injected"]["by_status"] == {"429": 2}
    await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "message", "exc_type"),
    [
        (401, None, openai.AuthenticationError),
        (400, "model 'mock-gpt' is not allowed for this key", openai.BadRequestError),
    ],
)
async def test_permanent_error_message_surfaces(status, message, exc_type):
    app = create_mock_app(
        MockConfig(permanent_error=True, permanent_error_status=status, permanent_error_message=message)
    )
    client = make_client(app, max_retries=3)
    with pytest.raises(exc_type) as excinfo:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    exc = excinfo.value
    assert exc.status_code == status
    expected = message or "permanent_error mode"
    assert expected in str(exc)
    assert expected in exc.message
    assert exc.body["message"].startswith(expected) or expected in exc.body["message"]
    with pytest.raises(exc_type):
        await client.embeddings.create(model="e", input="x")
    stats = await get_stats(app)
    # 4xx are not retried by the client: one call per attempt
    assert stats["calls"]["chat"] == 1
    assert stats["errors_injected"]["permanent"] == 2
    await client.close()


@pytest.mark.asyncio
async def test_error_endpoints_limits_faults():
    app = create_mock_app(MockConfig(permanent_error=True, error_endpoints=["chat"]))
    client = make_client(app, max_retries=0)
    emb = await client.embeddings.create(model="e", input="still works")
    assert len(emb.data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    await client.close()


@pytest.mark.asyncio
async def test_hang_can_be_timed_out_and_releases_slot():
    app = create_mock_app(MockConfig(hang_rate=1.0, hang_seconds=30))
    async with raw_client(app) as c:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}),
                timeout=0.1,
            )
    stats = await get_stats(app)
    assert stats["hangs"] == 1
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_api_key_required_when_configured():
    app = create_mock_app(MockConfig(api_key="secret"))
    client = make_client(app, max_retries=0)  # sends "test-key"
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()
    http_client = httpx.AsyncClient(transport=ASGITransport(app=app), base_url=BASE)
    ok = AsyncOpenAI(base_url=f"{BASE}/v1", api_key="secret", http_client=http_client, max_retries=0)
    models = await ok.models.list()
    assert {m.id for m in models.data} == {"mock-gpt", "mock-embedding"}
    await ok.close()


# --------------------------------------------------------------------------------------------------
# latency / concurrency
# --------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_latency_is_applied_concurrently():
    """Catches a latency that blocks (calls queue behind each other) or is not applied: all 10
    concurrent calls are in flight at once (a count, not a timing) and each waited its latency."""
    app = create_mock_app(MockConfig(latency=0.2))
    client = make_client(app, max_retries=0)
    messages = [{"role": "user", "content": "hello"}]

    async def one():
        r = await client.chat.completions.create(model="m", messages=messages)
        assert r.choices[0].message.content

    await asyncio.gather(*(one() for _ in range(10)))

    async with raw_client(app) as c:
        stats = (await c.get("/_mock/stats", params={"include_calls": "true"})).json()
    assert stats["max_in_flight"] == 10
    assert stats["in_flight"] == 0
    assert stats["latency"]["chat"]["count"] == 10
    # asyncio.sleep never returns early by more than the clock's resolution
    assert all(call["latency_s"] >= 0.19 for call in stats["calls_detail"]), stats["calls_detail"]
    await client.close()


@pytest.mark.asyncio
async def test_held_calls_wait_until_released_and_other_kinds_pass():
    """Catches a hold that does not hold (a test relying on it would race), holds every kind, or is
    never released (a test would hang): held extraction calls wait, are counted, and answer once
    released; keyword calls and embeddings pass meanwhile; a reset releases too."""
    app = create_mock_app(MockConfig())
    client = make_client(app, max_retries=0)
    async with raw_client(app) as c:
        assert (await c.post("/_mock/hold", json={"kinds": ["nonsense"]})).status_code == 400
        assert (await c.post("/_mock/hold", json={"kinds": ["extract"]})).status_code == 200
        held = [
            asyncio.create_task(client.chat.completions.create(model="m", messages=extraction_messages()))
            for _ in range(2)
        ]
        deadline = time.monotonic() + 10
        while (stats := (await c.get("/_mock/stats")).json())["held"] < 2:
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.01)
        assert stats["hold_kinds"] == ["extract"] and not any(task.done() for task in held)
        # Another kind is not held.
        other = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": keywords_prompt("Who is Noah Carter?")}]
        )
        assert other.choices[0].message.content
        assert (await c.get("/_mock/stats")).json()["kinds"]["extract"] == 0
        assert (await c.post("/_mock/release")).json() == {"released": 2}
        answers = await asyncio.wait_for(asyncio.gather(*held), 10)
        assert all(COMPLETION_DELIMITER in a.choices[0].message.content for a in answers)
        stats = (await c.get("/_mock/stats")).json()
        assert stats["held"] == 0 and stats["held_total"] == 2 and stats["hold_kinds"] == []
        # Released means no longer holding; a reset also lets held calls go.
        await client.chat.completions.create(model="m", messages=extraction_messages())
        await c.post("/_mock/hold", json={"kinds": ["embeddings"]})
        embedding = asyncio.create_task(client.embeddings.create(model="e", input=["x"]))
        while (await c.get("/_mock/stats")).json()["held"] < 1:
            assert time.monotonic() < deadline + 10
            await asyncio.sleep(0.01)
        await c.post("/_mock/reset")
        assert len((await asyncio.wait_for(embedding, 10)).data) == 1
    await client.close()


@pytest.mark.asyncio
async def test_releasing_one_kind_keeps_the_others_held():
    """Catches a partial release that lets every held call go (a test moving a task from a held
    extraction into a held merge would race past the merge) or keeps holding the released kind."""
    app = create_mock_app(MockConfig())
    client = make_client(app, max_retries=0)
    async with raw_client(app) as c:
        assert (await c.post("/_mock/hold", json={"kinds": ["extract"]})).status_code == 200
        extraction = asyncio.create_task(
            client.chat.completions.create(model="m", messages=extraction_messages())
        )
        deadline = time.monotonic() + 10
        while (await c.get("/_mock/stats")).json()["held"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await c.post("/_mock/hold", json={"kinds": ["extract", "embeddings"]})
        embedding = asyncio.create_task(client.embeddings.create(model="e", input=["x"]))
        while (stats := (await c.get("/_mock/stats")).json())["held"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert stats["held_by_kind"] == {"extract": 1, "embeddings": 1}
        assert (await c.post("/_mock/release", json={"kinds": "extract"})).status_code == 400
        assert (await c.post("/_mock/release", json={"kinds": ["extract"]})).json() == {"released": 1}
        assert COMPLETION_DELIMITER in (await asyncio.wait_for(extraction, 10)).choices[0].message.content
        stats = (await c.get("/_mock/stats")).json()
        assert stats["hold_kinds"] == ["embeddings"] and stats["held_by_kind"] == {"embeddings": 1}
        assert not embedding.done()
        # A new extraction passes; a new embedding waits beside the first.
        await client.chat.completions.create(model="m", messages=extraction_messages())
        second = asyncio.create_task(client.embeddings.create(model="e", input=["y"]))
        while (await c.get("/_mock/stats")).json()["held"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await c.post("/_mock/release")).json() == {"released": 2}
        assert len((await asyncio.wait_for(embedding, 10)).data) == 1
        assert len((await asyncio.wait_for(second, 10)).data) == 1
        assert (await c.get("/_mock/stats")).json()["held_by_kind"] == {}
    await client.close()


# --------------------------------------------------------------------------------------------------
# control endpoints, CLI, real socket
# --------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_control_endpoints():
    app = create_mock_app(MockConfig(latency=0.0))
    async with raw_client(app) as c:
        r = await c.post("/_mock/config", json={"error_rate": 0.5, "error_status": 500})
        assert r.status_code == 200
        assert r.json()["error_rate"] == 0.5
        assert (await c.get("/_mock/config")).json()["error_status"] == 500
        assert (await c.post("/_mock/config", json={"error_rate": 2})).status_code == 422
        assert (await c.post("/_mock/config", json={"no_such_knob": 1})).status_code == 422
        await c.get("/v1/models")
        stats = (await c.get("/_mock/stats", params={"include_calls": "true"})).json()
        assert stats["calls"]["models"] == 1
        assert "calls_detail" in stats
        r = await c.post("/_mock/reset", params={"restore_config": "true"})
        assert r.json()["config"]["error_rate"] == 0.0
        stats = (await c.get("/_mock/stats")).json()
        assert stats["calls"]["models"] == 0
        assert (await c.get("/_mock/health")).json() == {"status": "ok"}


def test_cli_parser_builds_config():
    args = build_parser().parse_args(
        [
            "--port",
            "9001",
            "--latency",
            "0.5",
            "--error-rate",
            "0.3",
            "--error-status",
            "503",
            "--permanent-error",
            "--permanent-error-status",
            "400",
            "--error-endpoints",
            "chat",
            "--embedding-dim",
            "128",
        ]
    )
    cfg = config_from_args(args)
    assert args.port == 9001
    assert cfg.latency == 0.5 and cfg.error_rate == 0.3 and cfg.error_status == 503
    assert cfg.permanent_error and cfg.permanent_error_status == 400
    assert cfg.error_endpoints == ["chat"]
    assert cfg.embedding_dim == 128


@pytest.mark.asyncio
async def test_mock_server_on_real_socket():
    with MockServer(MockConfig(embedding_dim=16)) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        client = AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        emb = await client.embeddings.create(model="e", input=["a", "b"])
        assert [len(d.embedding) for d in emb.data] == [16, 16]
        await client.close()
