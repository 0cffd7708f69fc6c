"""The embedded storages' flush encodes records in its thread, from a snapshot taken at the cut
(issue 25 item 8): a 99 MB text file made full_docs and ~21,000 chunks dirty at once, and encoding
them to JSON on the event loop held it for seconds at a time (/health p99 over 1.6 s, loop lag
p99 ~1 s while the document was chunked)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from src.rag.storage import embedded
from src.rag.storage.embedded import SqliteGraphStorage, SqliteKVStorage, SqliteVectorStorage
from tests.test_embedded_storage import open_storage, rows, shared_data, store_of  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_records_are_encoded_in_the_flush_thread(tmp_path: Path, monkeypatch) -> None:
    """Catches JSON encoding of dirty records on the event loop (KV records, vector metadata, graph
    nodes and edges alike)."""
    threads: list[str] = []
    dumps = embedded._dumps

    def recorded(value):
        threads.append(threading.current_thread().name)
        return dumps(value)

    monkeypatch.setattr(embedded, "_dumps", recorded)
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    vectors = await open_storage(SqliteVectorStorage, tmp_path, "chunks")
    graph = await open_storage(SqliteGraphStorage, tmp_path, "chunk_entity_relation")
    await kv.upsert({"doc-1": {"content": "text " * 10_000}})
    await vectors.upsert({"chunk-1": {"content": "a chunk"}})
    await graph.upsert_node("A", {"entity_type": "person"})
    await graph.upsert_node("B", {"entity_type": "city"})
    await graph.upsert_edge("A", "B", {"weight": 1.0})
    await store_of(kv).commit()
    assert len(threads) >= 5, threads
    assert all(name.startswith("sqlite-flush") for name in threads), threads
    for storage in (kv, vectors, graph):
        await storage.finalize()


async def test_a_record_changed_after_the_cut_is_written_as_it_was_at_the_cut(tmp_path: Path) -> None:
    """Catches a snapshot that shares the record's containers with the loop: a change made while the
    write is under way would leak into it, half applied (or fail the encoding mid-way)."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "doc_status")
    store = store_of(kv)
    record = {"status": "processing", "chunks_list": ["chunk-1"], "metadata": {"attempt": 1}}
    await kv.upsert({"d": record})
    live = kv.records["d"]  # the record the loop keeps changing in place
    real_write = store._write
    started, proceed = threading.Event(), threading.Event()

    def held_write(sets):
        started.set()
        assert proceed.wait(60), "the write was never released"
        return real_write(sets)

    store._write = held_write
    flush = asyncio.create_task(store.commit())
    assert await asyncio.to_thread(started.wait, 60), "the flush never started writing"
    live["chunks_list"].append("chunk-2")
    live["metadata"]["attempt"] = 2
    live["status"] = "processed"
    proceed.set()
    await flush
    store._write = real_write
    written = {key: json.loads(value) for _ns, key, value, *_ in rows(tmp_path, "kv") if key == "d"}
    assert written["d"]["chunks_list"] == ["chunk-1"]
    assert written["d"]["metadata"] == {"attempt": 1}
    assert written["d"]["status"] == "processing"
    await kv.finalize()


def test_a_big_string_is_encoded_in_pieces_exactly_as_a_whole(monkeypatch) -> None:
    """Catches one json.dumps call over a big document's whole text in the flush thread (it holds
    the GIL, and so the event loop, for all of it), and pieces that change the JSON."""
    monkeypatch.setattr(embedded, "JSON_PIECE_CHARS", 10)
    record = {
        "content": 'text "quoted" \\ back\nslash 中文 \ud800 lone 🙂 emoji ' * 7,
        "file_path": "a.txt",
        "n": 3,
        "nested": {"list": [1, "x" * 5]},
    }
    calls: list[int] = []
    real = json.dumps

    def longest(value) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, dict):
            value = list(value.values())
        return max((longest(v) for v in value), default=0) if isinstance(value, list) else 0

    def recorded(value, **kwargs):
        calls.append(longest(value))
        return real(value, **kwargs)

    monkeypatch.setattr(embedded.json, "dumps", recorded)
    encoded = embedded._dumps(record)
    monkeypatch.setattr(embedded.json, "dumps", real)
    assert encoded == json.dumps(record, default=str)
    assert json.loads(encoded) == record
    assert max(calls) <= 10, calls
