"""Tests for src/rag: offline tokenizer, embeddings, offline LLM, parsers, LightRAG/RAG-Anything assembly."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from src.core.config import Settings
from src.rag.embedding import build_embedding_func, hash_embed_sync
from src.rag.llm import (
    COMPLETION_DELIMITER,
    OFFLINE_LABEL,
    OfflineExtractiveLLM,
    build_llm_func,
    llm_description,
)
from src.rag.parsers import (
    DocumentParseError,
    OfflineParser,
    read_text_document,
    register_offline_parser,
)
from src.rag.tokenizer import build_tokenizer
from tests import helpers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOC_TEXT = (
    "The Zorblax reactor was designed by Helena Marwick at the Northfield Energy Institute. "
    "It produces hydrogen fuel from seawater using a ceramic membrane. "
    "Northfield Energy Institute partnered with Caldera Systems to build a pilot plant near Lake Varna. "
    "The pilot plant used three Zorblax reactor units and powers buses in Varna Falls.\n\n"
    "Critics at the Global Water Council argued that the ceramic membrane degrades in warm seawater. "
    "Helena Marwick replied that the membrane lasts five years. Caldera Systems reported an efficiency "
    "of 61 percent for the pilot plant, and the hydrogen fuel output doubled in the second year."
)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """tests/helpers.py's settings without Redis, with onnx embeddings and one gleaning pass."""
    values: dict[str, object] = {"embedding_provider": "onnx", "entity_extract_max_gleaning": 1}
    values.update(overrides)
    return helpers.make_settings(tmp_path, None, **values)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------------- tokenizer


def test_tokenizer_offline_and_lossless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    import tiktoken.registry

    # Force a real load from the (empty) cache dir, not tiktoken's in-process cache.
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "o200k_base", raising=False)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    cache = tmp_path / "tiktoken"
    assert not cache.exists()

    tokenizer = build_tokenizer(cache)

    assert any(cache.iterdir())
    samples = [
        "Hello, world!",
        "Ünïcödé — naïve café, 東京 and 城市体检系统, emoji 🚀🧪, zero\u200bwidth, tabs\tand\nnewlines",
        "A document that literally contains <|endoftext|> and <|im_start|> markers.",
        "",
    ]
    for text in samples:
        ids = tokenizer.encode(text)
        assert isinstance(ids, list)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("The quick brown fox jumps over the lazy dog")) == 9  # o200k_base


# ----------------------------------------------------------------------------------- embeddings


@pytest.mark.asyncio
async def test_onnx_embedding_semantic_sanity(tmp_path: Path, no_network: None) -> None:
    func = build_embedding_func(make_settings(tmp_path, embedding_batch_size=2))
    assert func.embedding_dim == 384
    assert func.max_token_size == 256
    texts = ["a cat sat on the mat", "a kitten rested on the rug", "quarterly tax filing deadline"]
    vectors = await func(texts)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
    # Batching and length-sorting must not change results or their order.
    again = await func([texts[2], "x " * 400, texts[0]])
    assert np.allclose(again[0], vectors[2], atol=1e-4)
    assert np.allclose(again[2], vectors[0], atol=1e-4)


@pytest.mark.asyncio
async def test_hash_embedding_deterministic(tmp_path: Path) -> None:
    func = build_embedding_func(make_settings(tmp_path, embedding_provider="hash"))
    assert func.embedding_dim == 384
    a = await func(["The Zorblax reactor", "", "城市体检系统"])
    b = await func(["The Zorblax reactor", "", "城市体检系统"])
    assert a.shape == (3, 384)
    assert np.array_equal(a, b)
    assert np.isfinite(a).all()
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(hash_embed_sync(["zorblax reactor"], 64), hash_embed_sync(["zorblax reactor"], 64))
    related = hash_embed_sync(["zorblax reactor fuel", "zorblax reactor output", "tax filing deadline"], 384)
    assert float(related[0] @ related[1]) > float(related[0] @ related[2])


def test_openai_embedding_requires_dim(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        embedding_provider="openai",
        embedding_base_url="http://127.0.0.1:9/v1",
        embedding_model="bge-m3",
    )
    with pytest.raises(ValueError, match="EMBEDDING_DIM"):
        build_embedding_func(settings)
    known = make_settings(tmp_path, embedding_provider="openai", embedding_base_url="http://127.0.0.1:9/v1")
    assert build_embedding_func(known).embedding_dim == 1536


# ----------------------------------------------------------------------------------- offline LLM


@pytest.mark.asyncio
async def test_offline_llm_extraction_parses_with_lightrag(tmp_path: Path) -> None:
    from lightrag.operate import PROMPTS, _process_extraction_result

    llm = build_llm_func(make_settings(tmp_path))
    assert isinstance(llm, OfflineExtractiveLLM)
    assert llm_description(make_settings(tmp_path)).startswith("offline-extractive")

    base = {
        "tuple_delimiter": PROMPTS["DEFAULT_TUPLE_DELIMITER"],
        "completion_delimiter": PROMPTS["DEFAULT_COMPLETION_DELIMITER"],
        "entity_types": ",".join(["Person", "Organization", "Location", "Event", "Concept"]),
        "language": "English",
        "examples": "\n".join(PROMPTS["entity_extraction_examples"]),
    }
    system = PROMPTS["entity_extraction_system_prompt"].format(**base)
    user = PROMPTS["entity_extraction_user_prompt"].format(**{**base, "input_text": DOC_TEXT})
    result = await llm(user, system_prompt=system, hashing_kv=None, _priority=8)
    assert result.rstrip().endswith(COMPLETION_DELIMITER)
    nodes, edges = await _process_extraction_result(result, "chunk-1", int(time.time()), "doc.txt")
    names = set(nodes)
    assert {"Zorblax", "Helena Marwick", "Northfield Energy Institute", "Caldera Systems"} <= names
    assert len(nodes) <= 25
    assert edges, "co-occurring entities should yield relations"
    for (src, tgt), records in edges.items():
        assert src in names and tgt in names
        assert records[0]["description"]

    glean = PROMPTS["entity_continue_extraction_user_prompt"].format(**{**base, "input_text": DOC_TEXT})
    history = [{"role": "user", "content": user}, {"role": "assistant", "content": result}]
    assert (await llm(glean, system_prompt=system, history_messages=history)).strip() == COMPLETION_DELIMITER

    summary_prompt = PROMPTS["summarize_entity_descriptions"].format(
        description_type="Entity",
        description_name="Zorblax",
        description_list="\n".join(
            json.dumps({"Description": d})
            for d in ["Zorblax is a reactor.", "Zorblax is a reactor.", "It makes hydrogen."]
        ),
        summary_length=100,
        language="English",
    )
    summary = await llm(summary_prompt)
    assert summary == "Zorblax is a reactor. It makes hydrogen."


@pytest.mark.asyncio
async def test_offline_llm_cjk_extraction(tmp_path: Path) -> None:
    from lightrag.operate import _process_extraction_result

    from src.rag.llm import extract_graph_records

    text = "城市体检系统使用Redis队列处理任务。城市体检系统的任务优先级由负载决定。Redis队列保存任务状态。"
    result = extract_graph_records(text, ["Concept"])
    nodes, _ = await _process_extraction_result(result, "chunk-cjk", 0)
    assert "Redis队列" in nodes  # a mixed-script noun phrase stays one entity (the jieba extractor)
    assert {"任务", "系统"} <= set(nodes)
    assert not any(name.isdigit() for name in nodes)


@pytest.mark.asyncio
async def test_offline_llm_keywords_and_answer(tmp_path: Path) -> None:
    from lightrag.operate import PROMPTS

    llm = OfflineExtractiveLLM()
    kw_prompt = PROMPTS["keywords_extraction"].format(
        query="What does the Zorblax reactor produce?",
        examples="\n".join(PROMPTS["keywords_extraction_examples"]),
        language="English",
    )
    keywords = json.loads(await llm(kw_prompt, keyword_extraction=True, _priority=5))
    assert keywords["high_level_keywords"] and keywords["low_level_keywords"]
    assert "Zorblax" in keywords["low_level_keywords"]
    assert "What" not in keywords["low_level_keywords"]

    context = PROMPTS["naive_query_context"].format(
        text_chunks_str=json.dumps({"reference_id": "1", "content": DOC_TEXT}),
        reference_list_str="[1] reactor.txt",
    )
    system = PROMPTS["naive_rag_response"].format(
        response_type="Multiple Paragraphs", user_prompt="n/a", content_data=context
    )
    answer = await llm("What does the Zorblax reactor produce?", system_prompt=system, enable_cot=True)
    assert answer.startswith(OFFLINE_LABEL)
    assert "hydrogen fuel" in answer
    assert "[1] reactor.txt" in answer
    assert len(answer) < len(system)  # LightRAG mangles answers longer than the system prompt

    stream = await llm("What does the Zorblax reactor produce?", system_prompt=system, stream=True)
    pieces = [piece async for piece in stream]
    assert len(pieces) > 1 and "".join(pieces) == answer


# ----------------------------------------------------------------------------------- parsers


def make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def make_docx(path: Path, paragraphs: list[str], table: list[list[str]]) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Zorblax report", level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            grid.cell(r, c).text = value
    document.save(str(path))
    return path


@pytest.mark.asyncio
async def test_read_text_documents(tmp_path: Path) -> None:
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffCafé Zorblax\r\nsecond line".encode("utf-8"))
    assert await read_text_document(bom) == "Café Zorblax\nsecond line"

    utf16 = tmp_path / "utf16.md"
    utf16.write_bytes("# Titel\n\nÜbersicht".encode("utf-16"))
    assert await read_text_document(utf16) == "# Titel\n\nÜbersicht"

    legacy = tmp_path / "legacy.txt"
    legacy.write_bytes("caf\xe9 \x93quoted\x94".encode("latin-1"))
    assert await read_text_document(legacy) == "café “quoted”"

    html = tmp_path / "page.html"
    html.write_text(
        "<html><head><title>Reactor page</title><style>body{color:red}</style>"
        "<script>var secret = 'do-not-index';</script></head>"
        "<body><h1>Zorblax</h1><p>Makes&nbsp;hydrogen &amp; heat.</p><noscript>enable js</noscript>"
        "<table><tr><td>a</td><td>b</td></tr></table></body></html>",
        encoding="utf-8",
    )
    text = await read_text_document(html)
    assert "Zorblax" in text and "Makes hydrogen & heat." in text and "Reactor page" in text
    assert "do-not-index" not in text and "color:red" not in text and "enable js" not in text

    empty = tmp_path / "empty.html"
    empty.write_text("<html><script>x()</script></html>", encoding="utf-8")
    with pytest.raises(DocumentParseError):
        await read_text_document(empty)

    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DocumentParseError):
        await read_text_document(binary)


def test_offline_parser_pdf_docx_and_errors(tmp_path: Path) -> None:
    parser = OfflineParser()
    assert parser.check_installation()

    pdf = make_pdf(
        tmp_path / "r.pdf", ["Page one mentions the Zorblax reactor.", "Page two: Caldera Systems."]
    )
    blocks = parser.parse_pdf(pdf)
    assert [b["page_idx"] for b in blocks] == [0, 1]
    assert all(b["type"] == "text" for b in blocks)
    assert "Zorblax" in blocks[0]["text"] and "Caldera" in blocks[1]["text"]
    assert parser.parse_document(pdf) == blocks

    docx_path = make_docx(
        tmp_path / "r.docx",
        ["The Zorblax reactor produces hydrogen."],
        [["Metric", "Value"], ["Efficiency", "61 percent"]],
    )
    items = parser.parse_office_doc(docx_path, output_dir=str(tmp_path / "parsed"))
    text = "\n".join(b["text"] for b in items if b["type"] == "text")
    assert "Zorblax report" in text
    assert "The Zorblax reactor produces hydrogen." in text
    tables = [b["table_body"] for b in items if b["type"] == "table"]
    assert tables == ["| Metric | Value |\n|---|---|\n| Efficiency | 61 percent |"]

    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n%%EOF")
    with pytest.raises(DocumentParseError):
        parser.parse_pdf(corrupt)
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(pdf.read_bytes()[:200])
    with pytest.raises(DocumentParseError):
        parser.parse_pdf(truncated)
    blank = make_pdf(tmp_path / "blank.pdf", [""])
    with pytest.raises(DocumentParseError, match="no extractable text"):
        parser.parse_pdf(blank)
    bad_docx = tmp_path / "bad.docx"
    bad_docx.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DocumentParseError):
        parser.parse_office_doc(bad_docx)
    not_an_image = tmp_path / "x.png"
    not_an_image.write_bytes(b"plain text, not a picture")
    with pytest.raises(DocumentParseError, match="not a readable image"):
        parser.parse_image(not_an_image, output_dir=str(tmp_path / "parsed"))

    register_offline_parser()
    register_offline_parser()
    from raganything.parser import get_parser

    assert isinstance(get_parser("offline"), OfflineParser)


def test_encrypted_pdf_is_rejected(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    plain = make_pdf(tmp_path / "plain.pdf", ["secret Zorblax numbers"])
    writer = PdfWriter()
    for page in PdfReader(str(plain)).pages:
        writer.add_page(page)
    writer.encrypt(user_password="hunter2", owner_password="owner", algorithm="RC4-128")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(DocumentParseError, match="password|encrypted"):
        OfflineParser().parse_pdf(locked)


# ----------------------------------------------------------------------------------- end to end


async def _doc_status(rag: object, doc_id: str) -> dict:
    docs = await rag.aget_docs_by_ids([doc_id])  # type: ignore[attr-defined]
    record = docs[doc_id]
    return record if isinstance(record, dict) else record.__dict__


@pytest.mark.asyncio
async def test_lightrag_end_to_end_offline(tmp_path: Path, no_network: None) -> None:
    from lightrag import QueryParam

    from src.rag.builder import build_lightrag

    rag = await build_lightrag(make_settings(tmp_path), workspace="e2e_text")
    try:
        await rag.ainsert(DOC_TEXT, ids=["doc-x"], file_paths=["reactor.txt"])
        status = await _doc_status(rag, "doc-x")
        assert str(getattr(status["status"], "value", status["status"])) == "processed", status
        assert status["chunks_count"] >= 1

        nodes = await rag.chunk_entity_relation_graph.get_all_labels()
        assert "Zorblax" in nodes and "Helena Marwick" in nodes

        for mode in ("hybrid", "naive"):
            answer = await rag.aquery(
                "What does the Zorblax reactor produce?", param=QueryParam(mode=mode, enable_rerank=False)
            )
            assert isinstance(answer, str)
            assert answer.startswith(OFFLINE_LABEL), answer
            assert "Zorblax" in answer and "hydrogen" in answer, answer
    finally:
        await rag.finalize_storages()


@pytest.mark.asyncio
async def test_raganything_pdf_and_docx_offline(tmp_path: Path, no_network: None) -> None:
    from lightrag import QueryParam

    from src.rag.builder import build_lightrag
    from src.rag.parsers import build_raganything

    settings = make_settings(tmp_path, entity_extract_max_gleaning=0)
    rag = await build_lightrag(settings, workspace="e2e_files")
    rag_anything = build_raganything(rag, settings)
    try:
        pdf = make_pdf(
            tmp_path / "plant.pdf",
            [
                "The Quorvath turbine at Lake Varna was built by Caldera Systems.",
                "The Quorvath turbine generates electricity for Varna Falls.",
            ],
        )
        docx_path = make_docx(
            tmp_path / "membrane.docx",
            ["The Velmora membrane filters seawater for the Zorblax reactor."],
            [["Membrane", "Lifetime"], ["Velmora", "five years"]],
        )
        for path, doc_id in ((pdf, "doc-pdf"), (docx_path, "doc-docx")):
            await rag_anything.process_document_complete(str(path), doc_id=doc_id, file_name=path.name)
            status = await _doc_status(rag, doc_id)
            assert str(getattr(status["status"], "value", status["status"])) == "processed", status
            assert status["file_path"] == path.name

        answer = await rag.aquery("What does the Quorvath turbine generate?", param=QueryParam(mode="hybrid"))
        assert "Quorvath" in answer and "electricity" in answer, answer
        answer = await rag.aquery("How long does the Velmora membrane last?", param=QueryParam(mode="naive"))
        assert "Velmora" in answer and "five years" in answer, answer

        corrupt = tmp_path / "broken.pdf"
        corrupt.write_bytes(b"%PDF-1.7 garbage")
        with pytest.raises(DocumentParseError):
            await rag_anything.process_document_complete(str(corrupt), doc_id="doc-broken")
        failed = await _doc_status(rag, "doc-broken")
        assert str(getattr(failed["status"], "value", failed["status"])) == "failed"
        assert "broken.pdf" in failed["error_msg"]
    finally:
        await rag_anything.finalize_storages()  # its parse cache + LightRAG's storages


# ----------------------------------------------------------------------------------- OpenAI-compatible


def _mock_client(handler):  # type: ignore[no-untyped-def]
    import httpx
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url="http://llm.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


def _completion(content: str) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


@pytest.mark.asyncio
async def test_openai_llm_retries_strips_kwargs_and_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    import httpx

    import src.rag.retry as retry_module
    from src.rag.llm import OpenAICompatibleLLM

    # The real wait policy runs (Retry-After parsing included); only its jitter is pinned, and the
    # waits it chose are recorded: the 503 and 429 below advertise 10 ms and 20 ms.
    waits: list[float] = []
    real_wait = retry_module._wait
    monkeypatch.setattr(retry_module.random, "uniform", lambda low, high: low)
    monkeypatch.setattr(retry_module, "_wait", lambda state: waits.append(real_wait(state)) or waits[-1])
    settings = make_settings(
        tmp_path, llm_provider="openai", llm_base_url="http://llm.test/v1", llm_model="m", llm_max_retries=3
    )
    assert llm_description(settings) == "openai-compatible model=m at llm.test"
    llm = build_llm_func(settings)
    assert isinstance(llm, OpenAICompatibleLLM)

    requests: list[dict] = []
    failures = {"left": 2}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        if failures["left"]:
            failures["left"] -= 1
            if failures["left"]:  # milliseconds (the header the openai SDK reads), then seconds
                return httpx.Response(
                    503, json={"error": {"message": "busy"}}, headers={"retry-after-ms": "10"}
                )
            return httpx.Response(
                429, json={"error": {"message": "slow down"}}, headers={"retry-after": "0.02"}
            )
        if body.get("stream"):
            chunks = [
                {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                for piece in ("Hel", "lo")
            ]  # fmt: skip
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        if body.get("response_format"):
            return httpx.Response(200, json=_completion('```json\n{"high_level_keywords": ["a"]}\n```'))
        return httpx.Response(200, json=_completion("answer"))

    llm._client.set(_mock_client(handler))  # type: ignore[attr-defined]
    result = await llm(
        "q", system_prompt="s", history_messages=[{"role": "user", "content": "h"}],
        hashing_kv=object(), _priority=5, enable_cot=True, temperature=0.1,
    )  # fmt: skip
    assert result == "answer"
    assert len(requests) == 3  # two transient failures, then success
    assert waits == [0.01, 0.02]  # each server's hint was honoured (retry-after-ms, then Retry-After)
    sent = requests[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "user"]
    assert sent["temperature"] == 0.1
    assert not {"hashing_kv", "_priority", "enable_cot", "keyword_extraction"} & set(sent)

    keywords = await llm("kw prompt", keyword_extraction=True)
    assert json.loads(keywords) == {"high_level_keywords": ["a"]}
    assert requests[-1]["response_format"] == {"type": "json_object"}

    stream = await llm("q", stream=True)
    assert [piece async for piece in stream] == ["Hel", "lo"]

    def unauthorized(request: httpx.Request) -> httpx.Response:
        requests.append({})
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    import openai

    llm._client.set(_mock_client(unauthorized))  # type: ignore[attr-defined]
    before = len(requests)
    with pytest.raises(openai.AuthenticationError):
        await llm("q")
    assert len(requests) == before + 1  # permanent: no retry

    failures["left"] = 5
    llm._client.set(_mock_client(handler))  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError):
        await llm("q")
    assert failures["left"] == 2  # gave up after llm_max_retries=3 attempts


def test_retry_wait_honours_the_server_hint_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a Retry-After ignored, read in the wrong unit, or obeyed without a cap (a provider
    asking for an hour would stall a task that long); an HTTP-date falls back to our own backoff."""
    import httpx
    import openai
    import tenacity

    import src.rag.retry as retry_module

    monkeypatch.setattr(retry_module.random, "uniform", lambda low, high: high)

    def wait_after(headers: dict[str, str], attempt: int = 1) -> float:
        request = httpx.Request("POST", "http://llm.test/v1/chat/completions")
        response = httpx.Response(429, headers=headers, request=request)
        error = openai.RateLimitError("slow down", response=response, body=None)
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((type(error), error, None))
        return retry_module._wait(state)

    assert wait_after({"retry-after": "2"}) == 2.25  # seconds, plus at most 0.25 s of jitter
    assert wait_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.75  # the exact one wins
    assert wait_after({"retry-after": "3600"}) == retry_module.MAX_BACKOFF_SECONDS + 0.25
    date = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert wait_after(date, attempt=1) == 0.5 and wait_after(date, attempt=3) == 2.0  # own backoff
    assert wait_after({}, attempt=20) == retry_module.MAX_BACKOFF_SECONDS


@pytest.mark.asyncio
async def test_openai_embedding_batches_with_one_client(tmp_path: Path, no_network: None) -> None:
    import httpx

    settings = make_settings(
        tmp_path,
        embedding_provider="openai",
        embedding_base_url="http://emb.test/v1",
        embedding_model="bge-m3",
        embedding_dim=4,
        embedding_batch_size=2,
    )
    func = build_embedding_func(settings)
    sizes: list[int] = []
    formats: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sizes.append(len(body["input"]))
        formats.append(body.get("encoding_format"))
        vectors = [np.array([len(text), 1.0, 0.0, 0.0], dtype="<f4") for text in body["input"]]
        data = [
            {
                "object": "embedding",
                "index": i,
                # base64 when asked for it; a list from a server that ignores the parameter
                "embedding": base64.b64encode(v.tobytes()).decode() if i % 2 else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": data[::-1],
                "model": "bge-m3",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    func.func.embedder._client.set(_mock_client(handler))  # the one shared client
    vectors = await func(["a", "bb", "ccc", ""])
    assert vectors.shape == (4, 4)
    assert sizes == [2, 2]
    assert vectors[:, 0].tolist() == [1.0, 2.0, 3.0, 1.0]  # order kept although the server reversed it
    assert formats == ["base64", "base64"]

    plain = build_embedding_func(settings.model_copy(update={"embedding_use_base64": False}))
    plain.func.embedder._client.set(_mock_client(handler))
    assert (await plain(["dddd"]))[:, 0].tolist() == [4.0]
    assert formats[-1] == "float"


async def test_provider_client_is_built_once_and_off_the_event_loop(monkeypatch) -> None:
    """Catches the OpenAI client (an SSL context: ~20 ms loading the CA bundle) being built on the
    event loop at a provider's first call, and concurrent first calls building several."""
    import asyncio
    import threading

    import openai

    from src.rag.retry import LazyOpenAIClient

    built_on: list[int] = []
    real = openai.AsyncOpenAI

    def recording(*args, **kwargs):
        built_on.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(openai, "AsyncOpenAI", recording)
    lazy = LazyOpenAIClient("http://llm.test/v1", "k", 5.0)
    clients = await asyncio.gather(*(lazy.aget() for _ in range(20)))
    assert len(built_on) == 1 and built_on[0] != threading.get_ident()
    assert all(client is clients[0] for client in clients)
    await lazy.aclose()
