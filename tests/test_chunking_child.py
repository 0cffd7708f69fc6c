"""A big text is chunked in a child process (src/rag/engine/chunking.py) into exactly LightRAG's
chunks: same contents, token counts and order, so the same chunk ids; a cancel kills the child; a
child over its memory bound fails the document with a message naming the setting."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from lightrag.operate import chunking_by_token_size

from src.rag.engine.chunk_child import token_chunks
from src.rag.engine.chunking import ChunkingFailed, chunk_in_child
from src.rag.engine.indexer import DocumentIndexer
from src.rag.tokenizer import build_tokenizer, lossless_encoding_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEXTS = {
    "english": "The ferry to Harbour Island leaves at nine. " * 900,
    "chinese": "东湖街道城市体检报告：排水管网老化，雨季低洼路段积水。幸福小区消防通道被违规占用。" * 400,
    "mixed and odd": (
        "Intro <|endoftext|> special-token text stays text. 中文 and English 🙂 emoji,\n\n"
        "   leading spaces, tabs\t\tand\r\nline ends; "
    )
    * 300,
    "shorter than a chunk": "One short line.",
    "whitespace edges": "\n\n   " + "word " * 2399 + "   \n",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tiktoken"))


def lightrag_chunks(tokenizer, text: str, size: int = 1200, overlap: int = 100) -> list[dict]:
    return chunking_by_token_size(tokenizer, text, None, False, overlap, size)


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize(("size", "overlap"), [(1200, 100), (64, 16), (17, 0)])
def test_token_chunks_are_lightrags(tokenizer, name: str, size: int, overlap: int) -> None:
    """Catches any difference between the child's windows and LightRAG's (boundaries, overlap, the
    last short window, stripping, special-token text, multi-byte characters cut mid-token)."""
    import numpy as np

    text = TEXTS[name]
    encoding = tokenizer.tokenizer._encoding
    tokens = encoding.encode_to_numpy(text, disallowed_special=())
    ours = [
        {"tokens": n, "content": c, "chunk_order_index": i}
        for i, (n, c) in enumerate(token_chunks(tokens, encoding.decode, size, overlap))
    ]
    assert isinstance(tokens, np.ndarray)
    assert ours == lightrag_chunks(tokenizer, text, size, overlap)


async def test_the_child_returns_lightrags_chunks(tokenizer) -> None:
    """Catches a protocol that loses or reorders chunks, or mangles text on the way (UTF-8 slices
    cut mid-character, newlines inside a chunk's JSON line)."""
    text = "".join(TEXTS.values()) * 3
    encoding = lossless_encoding_name(tokenizer)
    assert encoding == "o200k_base"
    ours = await chunk_in_child(text, encoding, 1200, 100, 2 * 1024**3)
    assert ours == lightrag_chunks(tokenizer, text)


async def test_indexer_records_are_the_same_in_the_child(tokenizer, monkeypatch) -> None:
    """Catches chunk records (ids, contents, order) that differ between the child and the thread,
    and a big text that does not take the child."""
    from src.rag.engine import indexer as indexer_module

    class Rag:  # what DocumentIndexer._chunks reads of a LightRAG instance
        chunking_func = staticmethod(chunking_by_token_size)
        chunk_token_size = 1200
        chunk_overlap_token_size = 100
        llm_model_max_async = 4

    Rag.tokenizer = tokenizer
    children = []

    async def counted(*args, **kwargs):
        children.append(args[1:])
        return await chunk_in_child(*args, **kwargs)

    monkeypatch.setattr(indexer_module, "chunk_in_child", counted)
    text = TEXTS["english"] + TEXTS["chinese"]
    in_child = DocumentIndexer(Rag(), child_chunking_chars=len(text))  # type: ignore[arg-type]
    in_thread = DocumentIndexer(Rag(), child_chunking_chars=len(text) + 1)  # type: ignore[arg-type]
    child_records = await in_child._chunks("doc-1", text, "a.txt")
    assert children == [("o200k_base", 1200, 100, 2 * 1024**3)]
    thread_records = await in_thread._chunks("doc-1", text, "a.txt")
    assert len(children) == 1, "a text under the bound started a child"
    assert list(child_records.items()) == list(thread_records.items())


async def test_cancelling_kills_the_child(tokenizer) -> None:  # the fixture seeds TIKTOKEN_CACHE_DIR
    """Catches a cancelled big document whose chunking child keeps running (and holding memory)."""
    text = "Records of the ferry line, one after another. " * 400_000  # ~18 MB: seconds of work
    me = psutil.Process()
    before = {c.pid for c in me.children()}
    job = asyncio.create_task(chunk_in_child(text, "o200k_base", 1200, 100, 2 * 1024**3))
    child = None
    for _ in range(2000):
        await asyncio.sleep(0.005)
        new = [c for c in me.children() if c.pid not in before]
        if new:
            child = new[0]
            break
    assert child is not None, "no chunking child was started"
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


async def test_a_child_over_its_memory_bound_fails_with_the_setting_named(tokenizer) -> None:
    """Catches a memory failure reported as something else (or hanging)."""
    text = "Memory bound test. " * 200_000
    with pytest.raises(ChunkingFailed, match="PARSE_MEMORY_BYTES"):
        await chunk_in_child(text, "o200k_base", 1200, 100, 64 * 1024**2)
