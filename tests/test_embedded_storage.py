"""Embedded SQLite storages (src/rag/storage): parity with LightRAG's file storages, incremental
persistence, group-commit ordering and coalescing, legacy import, and a full LightRAG round trip."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lightrag.base import DocStatus
from lightrag.kg import shared_storage
from lightrag.kg.json_doc_status_impl import JsonDocStatusStorage
from lightrag.kg.json_kv_impl import JsonKVStorage
from lightrag.kg.nano_vector_db_impl import NanoVectorDBStorage
from lightrag.kg.networkx_impl import NetworkXStorage
from lightrag.utils import EmbeddingFunc

from src.core.config import Settings
from src.rag.embedding import hash_embed_sync
from src.rag.storage import sqlite_store
from src.rag.storage.embedded import (
    SqliteDocStatusStorage,
    SqliteGraphStorage,
    SqliteKVStorage,
    SqliteVectorStorage,
    commit_for,
    register_embedded_storages,
)
from src.rag.storage.selection import storage_kwargs_from_env

pytestmark = pytest.mark.integration
DIM = 64


async def _embed(texts: list[str], **_: Any) -> np.ndarray:
    return hash_embed_sync(texts, DIM)


EMBED = EmbeddingFunc(embedding_dim=DIM, max_token_size=512, func=_embed)


def _config(tmp_path: Path, threshold: float = 0.0) -> dict[str, Any]:
    return {
        "working_dir": str(tmp_path),
        "embedding_batch_num": 8,
        "vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": threshold},
    }


@pytest.fixture(autouse=True)
def shared_data():
    """Fresh LightRAG process-global namespaces per test (and per simulated restart)."""
    shared_storage.finalize_share_data()
    shared_storage.initialize_share_data()
    sqlite_store.configure(flush_interval=0.05)
    yield
    sqlite_store.configure(
        flush_interval=sqlite_store.FLUSH_INTERVAL_SECONDS, commit_delay=sqlite_store.COMMIT_DELAY_SECONDS
    )
    shared_storage.finalize_share_data()


def restart_process_memory() -> None:
    """What a process restart does to LightRAG's in-memory namespaces."""
    shared_storage.finalize_share_data()
    shared_storage.initialize_share_data()


async def open_storage(cls: type, tmp_path: Path, namespace: str, ws: str = "ws", **kw: Any) -> Any:
    extra: dict[str, Any] = {}
    if cls in (SqliteVectorStorage, NanoVectorDBStorage):
        extra["meta_fields"] = kw.pop("meta_fields", {"content", "src_id", "tgt_id"})
    storage = cls(
        namespace=namespace,
        workspace=ws,
        global_config=_config(tmp_path, **kw),
        embedding_func=EMBED,
        **extra,
    )
    await storage.initialize()
    return storage


def rows(tmp_path: Path, table: str, ws: str = "ws") -> list[tuple]:
    with sqlite3.connect(tmp_path / ws / sqlite_store.DB_FILE_NAME) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def store_of(storage: Any) -> sqlite_store.WorkspaceStore:
    return storage._store


def _strip_times(d: dict | None) -> dict | None:
    return None if d is None else {k: v for k, v in d.items() if k not in ("create_time", "update_time")}


# --- key-value ------------------------------------------------------------------------------------
async def _kv_script(kv: Any) -> list[Any]:
    out: list[Any] = []
    await kv.upsert({"a": {"content": "alpha"}, "b": {"content": "beta"}, "c": {"content": "gamma"}})
    out.append(_strip_times(await kv.get_by_id("a")))
    out.append([_strip_times(r) for r in await kv.get_by_ids(["c", "missing", "b"])])
    out.append(sorted(await kv.filter_keys({"a", "x", "y"})))
    await kv.upsert({"a": {"content": "alpha2"}})
    out.append(_strip_times(await kv.get_by_id("a")))
    await kv.delete(["b", "nope"])
    out.append(await kv.get_by_id("b"))
    out.append(await kv.is_empty())
    out.append(await kv.drop())
    out.append(await kv.is_empty())
    return out


async def test_kv_parity_with_json_kv_storage(tmp_path: Path) -> None:
    """Catches any divergence from JsonKVStorage in reads after upsert/update/delete/drop."""
    json_kv = await open_storage(JsonKVStorage, tmp_path / "json", "text_chunks")
    sql_kv = await open_storage(SqliteKVStorage, tmp_path / "sql", "text_chunks")
    assert await _kv_script(sql_kv) == await _kv_script(json_kv)
    await sql_kv.finalize()


async def test_kv_persists_across_restart_including_deletes(tmp_path: Path) -> None:
    """Catches lost updates or resurrected deleted keys after a restart."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    await kv.upsert({f"d{i}": {"content": f"text {i}"} for i in range(10)})
    await store_of(kv).commit()
    await kv.delete(["d3"])
    await kv.upsert({"d4": {"content": "changed"}})
    await kv.finalize()  # shutdown flush
    restart_process_memory()
    kv2 = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    assert await kv2.get_by_id("d3") is None
    assert (await kv2.get_by_id("d4"))["content"] == "changed"
    assert await kv2.filter_keys({f"d{i}" for i in range(10)}) == {"d3"}
    await kv2.finalize()


async def test_only_dirty_records_are_written(tmp_path: Path) -> None:
    """Catches whole-store rewrites: after 500 records, changing one writes one row."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "llm_response_cache")
    store = store_of(kv)
    await kv.upsert({f"k{i}": {"return": "x" * 100} for i in range(500)})
    await store.commit()
    assert store.rows_written == 500
    await kv.upsert({"k7": {"return": "y"}})
    await kv.delete(["k9"])
    await store.commit()
    assert store.rows_written == 502
    await store.commit()  # nothing changed: no flush, no rows
    assert store.rows_written == 502
    await kv.finalize()


async def _kv_script_with_flushes(kv: Any) -> list[Any]:
    """The KV script with a flush after every step: reads then come from disk, not memory."""
    out: list[Any] = []
    flush = store_of(kv).commit if isinstance(kv, SqliteKVStorage) else (lambda: asyncio.sleep(0))
    await kv.upsert({"a": {"content": "alpha"}, "b": {"content": "beta"}, "c": {"content": "gamma"}})
    await flush()
    out.append(_strip_times(await kv.get_by_id("a")))
    out.append([_strip_times(r) for r in await kv.get_by_ids(["c", "missing", "b", "c"])])
    out.append(sorted(await kv.filter_keys({"a", "x", "y"})))
    await kv.upsert({"a": {"content": "alpha2"}})
    out.append(_strip_times(await kv.get_by_id("a")))
    await flush()
    out.append(_strip_times(await kv.get_by_id("a")))
    await kv.delete(["b", "nope"])
    out.append(await kv.get_by_id("b"))  # deleted, deletion not written yet
    out.append(sorted(await kv.filter_keys({"a", "b"})))
    await flush()
    out.append(await kv.get_by_id("b"))
    await kv.upsert({"b": {"content": "beta again"}})
    out.append(_strip_times(await kv.get_by_id("b")))
    out.append(await kv.is_empty())
    await kv.delete(["a", "b", "c"])
    out.append(await kv.is_empty())  # everything deleted, nothing written yet
    await flush()
    out.append(await kv.is_empty())
    return out


@pytest.mark.parametrize("namespace", ["llm_response_cache", "full_docs"])
async def test_disk_backed_kv_parity_with_json_kv_storage(tmp_path: Path, namespace: str) -> None:
    """Catches a disk-backed namespace (records evicted from memory once written) answering a read
    differently from JsonKVStorage: a stale, resurrected or missing record around a flush."""
    json_kv = await open_storage(JsonKVStorage, tmp_path / "json", namespace)
    sql_kv = await open_storage(SqliteKVStorage, tmp_path / "sql", namespace)
    assert await _kv_script_with_flushes(sql_kv) == await _kv_script_with_flushes(json_kv)
    await sql_kv.finalize()


async def test_disk_backed_kv_keeps_only_unwritten_records_in_memory(tmp_path: Path) -> None:
    """Catches the extraction cache growing the process with every document: once written, records
    leave memory; an update keeps the record's create_time; a restart loads nothing into memory."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "llm_response_cache")
    await kv.upsert({f"k{i}": {"return": f"answer {i}"} for i in range(500)})
    assert len(kv._data) == 500  # not written yet: memory is the write-back buffer
    await store_of(kv).commit()
    assert len(kv._data) == 0
    first = await kv.get_by_id("k7")
    assert first["return"] == "answer 7" and first["_id"] == "k7"
    await kv.upsert({"k7": {"return": "changed"}})
    updated = await kv.get_by_id("k7")
    assert updated["return"] == "changed" and updated["create_time"] == first["create_time"]
    assert await kv.filter_keys({"k1", "k499", "k500"}) == {"k500"}
    await kv.finalize()
    restart_process_memory()
    kv2 = await open_storage(SqliteKVStorage, tmp_path, "llm_response_cache")
    assert len(kv2._data) == 0 and not await kv2.is_empty()
    assert (await kv2.get_by_id("k7"))["return"] == "changed"
    assert [r["return"] for r in await kv2.get_by_ids(["k3", "k4"])] == ["answer 3", "answer 4"]
    await kv2.finalize()


async def test_disk_backed_kv_never_evicts_a_record_changed_during_its_write(tmp_path: Path) -> None:
    """Catches a record replaced while the flush writing its previous version runs being evicted
    (it would then be written as a deletion, or lost)."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)
    await kv.upsert({"d": {"content": "v1"}})
    real_write = store._write

    started, proceed = threading.Event(), threading.Event()

    def held_write(sets):  # the loop runs the upsert below while this write is under way
        started.set()
        assert proceed.wait(60), "the write was never released"
        return real_write(sets)

    store._write = held_write
    flush = asyncio.create_task(store.commit())
    assert await asyncio.to_thread(started.wait, 60), "the flush never started writing"
    async with asyncio.timeout(30):  # the upsert must not wait for the write in flight
        await kv.upsert({"d": {"content": "v2"}})
    proceed.set()
    await flush
    store._write = real_write
    assert (await kv.get_by_id("d"))["content"] == "v2"
    await store.commit()
    await kv.finalize()
    restart_process_memory()
    kv2 = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    assert (await kv2.get_by_id("d"))["content"] == "v2"
    await kv2.finalize()


# --- doc status -----------------------------------------------------------------------------------
def _doc(status: DocStatus, track: str, path: str) -> dict[str, Any]:
    return {
        "status": status.value,
        "content_summary": "s",
        "content_length": 1,
        "created_at": "2026-01-01T00:00:00",
        "updated_at": "2026-01-01T00:00:00",
        "file_path": path,
        "track_id": track,
        "chunks_count": 1,
    }


async def _doc_status_script(ds: Any) -> list[Any]:
    await ds.upsert(
        {
            "doc-1": _doc(DocStatus.PENDING, "t1", "a.txt"),
            "doc-2": _doc(DocStatus.PROCESSED, "t1", "b.txt"),
            "doc-3": _doc(DocStatus.FAILED, "t2", "c.txt"),
        }
    )
    out: list[Any] = [await ds.get_status_counts(), await ds.get_all_status_counts()]
    out.append(sorted(await ds.get_docs_by_status(DocStatus.PROCESSED)))
    out.append(sorted(await ds.get_docs_by_statuses([DocStatus.PENDING, DocStatus.FAILED])))
    out.append({k: v.status for k, v in (await ds.get_docs_by_track_id("t1")).items()})
    out.append(await ds.get_by_ids(["doc-3", "zzz"]))
    out.append(await ds.get_doc_by_file_path("b.txt"))
    out.append(sorted(await ds.filter_keys({"doc-1", "doc-9"})))
    page, total = await ds.get_docs_paginated(page=1, page_size=10, sort_field="id", sort_direction="asc")
    out.append(([k for k, _ in page], total))
    await ds.delete(["doc-1"])
    out.append(await ds.get_status_counts())
    out.append(await ds.drop())
    out.append(await ds.is_empty())
    return out


async def test_doc_status_parity_with_json_doc_status_storage(tmp_path: Path) -> None:
    """Catches divergent counts, status/track_id queries or pagination vs JsonDocStatusStorage."""
    json_ds = await open_storage(JsonDocStatusStorage, tmp_path / "json", "doc_status")
    sql_ds = await open_storage(SqliteDocStatusStorage, tmp_path / "sql", "doc_status")
    assert await _doc_status_script(sql_ds) == await _doc_status_script(json_ds)
    await sql_ds.finalize()


# --- flusher --------------------------------------------------------------------------------------
async def test_flush_writes_doc_status_last_in_one_atomic_cut(tmp_path: Path) -> None:
    """Catches a PROCESSED doc status reaching disk before (or without) its chunk and vector."""
    ds = await open_storage(SqliteDocStatusStorage, tmp_path, "doc_status")  # registered FIRST on purpose
    chunks = await open_storage(SqliteKVStorage, tmp_path, "text_chunks")
    vdb = await open_storage(SqliteVectorStorage, tmp_path, "chunks")
    await ds.upsert({"doc-1": _doc(DocStatus.PROCESSING, "t", "a.txt")})
    await chunks.upsert({"chunk-1": {"content": "hello world", "full_doc_id": "doc-1"}})
    await vdb.upsert({"chunk-1": {"content": "hello world"}})
    await ds.upsert({"doc-1": _doc(DocStatus.PROCESSED, "t", "a.txt")})
    store = store_of(ds)
    await store.commit()
    assert store.last_flush_order[-1] == "doc_status"
    assert set(store.last_flush_order[:-1]) == {"text_chunks", "chunks"}
    assert [r[1] for r in rows(tmp_path, "kv") if r[0] == "text_chunks"] == ["chunk-1"]
    assert [r[1] for r in rows(tmp_path, "vectors")] == ["chunk-1"]
    for s in (chunks, vdb, ds):
        await s.finalize()


async def test_concurrent_commits_are_coalesced(tmp_path: Path) -> None:
    """Catches one flush per commit (no group commit): 30 concurrent commits share few flushes."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)

    async def writer(i: int) -> None:
        await kv.upsert({f"d{i}": {"content": str(i)}})
        await store.commit()

    await asyncio.gather(*(writer(i) for i in range(30)))
    assert store.rows_written == 30
    assert store.flush_count <= 2
    restart_process_memory()
    await kv.finalize()
    kv2 = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    assert len(await kv2.get_by_ids([f"d{i}" for i in range(30)])) == 30
    assert await kv2.filter_keys({f"d{i}" for i in range(30)}) == set()
    await kv2.finalize()


@pytest.mark.parametrize("interval", [0.05, 30.0])
async def test_failed_flush_fails_commit_and_keeps_records_dirty(tmp_path: Path, interval: float) -> None:
    """Catches a commit that returns although nothing reached disk, or records lost after a failure
    (also when the retry is driven by the commit delay rather than the interval)."""
    sqlite_store.configure(flush_interval=interval)
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)
    real_write = store._write
    calls = {"n": 0}

    def failing_write(sets: list) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_write(sets)

    store._write = failing_write  # type: ignore[method-assign]
    await kv.upsert({"d1": {"content": "one"}})
    async with asyncio.timeout(10):  # the failure detector; the interval may be 30 s
        with pytest.raises(RuntimeError, match="storage flush failed"):
            await store.commit()
        await kv.upsert({"d2": {"content": "two"}})
        await store.commit()
    assert sorted(r[1] for r in rows(tmp_path, "kv")) == ["d1", "d2"]
    await kv.finalize()


async def test_commit_does_not_wait_for_the_flush_interval(tmp_path: Path) -> None:
    """Catches a commit that sleeps out the flush interval, and background changes (mark_dirty,
    index_done_callback) flushed before the interval: with a 30 s interval, background changes stay
    in memory, and a commit arriving during that wait flushes them with its own after the delay."""
    sqlite_store.configure(flush_interval=30.0)
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)
    await kv.upsert({"d0": {"content": "zero"}})
    async with asyncio.timeout(10):
        await store.commit()
    assert store.flush_count == 1
    await kv.upsert({"d1": {"content": "one"}})  # background: nobody waits
    await kv.index_done_callback()
    await asyncio.sleep(0.2)  # the flusher is now in its 30 s background wait
    assert store.flush_count == 1
    assert [r[1] for r in rows(tmp_path, "kv")] == ["d0"]
    await kv.upsert({"d2": {"content": "two"}})
    async with asyncio.timeout(10):  # the failure detector: far below the 30 s interval
        await store.commit()
    assert store.flush_count == 2
    assert sorted(r[1] for r in rows(tmp_path, "kv")) == ["d0", "d1", "d2"]
    await kv.finalize()


async def test_fifty_concurrent_commits_share_few_flushes_without_the_interval(tmp_path: Path) -> None:
    """Catches one flush per commit, or a group commit that waits for the (30 s) interval."""
    sqlite_store.configure(flush_interval=30.0)
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)

    async def writer(i: int) -> None:
        await kv.upsert({f"d{i}": {"content": str(i)}})
        await store.commit()

    async with asyncio.timeout(10):
        await asyncio.gather(*(writer(i) for i in range(50)))
    assert store.rows_written == 50
    assert store.flush_count <= 2
    assert len(rows(tmp_path, "kv")) == 50
    await kv.finalize()


async def test_commit_during_a_flush_is_covered_by_the_next_flush(tmp_path: Path) -> None:
    """Catches a commit issued while a flush writes being lost, settled by a flush that did not
    contain its change, or left waiting for the (30 s) interval."""
    sqlite_store.configure(flush_interval=30.0)
    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    store = store_of(kv)
    real_write = store._write
    entered, release = threading.Event(), threading.Event()
    written: list[list[str]] = []

    def blocking_write(sets: list) -> int:
        if not written:
            entered.set()
            release.wait(10)
        written.append(sorted(u[0] for ws in sets for u in ws.upserts))
        return real_write(sets)

    store._write = blocking_write  # type: ignore[method-assign]
    await kv.upsert({"d1": {"content": "one"}})
    first = asyncio.create_task(store.commit())
    assert await asyncio.to_thread(entered.wait, 10)
    await kv.upsert({"d2": {"content": "two"}})
    second = asyncio.create_task(store.commit())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()
    release.set()
    async with asyncio.timeout(10):
        await asyncio.gather(first, second)
    assert written == [["d1"], ["d2"]]
    assert store.flush_count == 2
    assert sorted(r[1] for r in rows(tmp_path, "kv")) == ["d1", "d2"]
    await kv.finalize()


def test_commit_delay_setting_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches STORAGE_COMMIT_DELAY_SECONDS not read from the environment, or accepted out of 0-60."""
    from pydantic import ValidationError

    assert Settings(_env_file=None).storage_commit_delay_seconds == sqlite_store.COMMIT_DELAY_SECONDS
    monkeypatch.setenv("STORAGE_COMMIT_DELAY_SECONDS", "0")
    assert Settings(_env_file=None).storage_commit_delay_seconds == 0.0
    for bad in ("-0.01", "60.5"):
        monkeypatch.setenv("STORAGE_COMMIT_DELAY_SECONDS", bad)
        with pytest.raises(ValidationError, match="storage_commit_delay_seconds"):
            Settings(_env_file=None)


async def test_flush_io_runs_in_worker_thread_and_loop_keeps_running(tmp_path: Path) -> None:
    """Catches flush I/O on the event loop: while a large store flushes, a probe keeps ticking."""
    kv = await open_storage(SqliteKVStorage, tmp_path, "llm_response_cache")
    store = store_of(kv)
    await kv.upsert({f"k{i}": {"return": "x" * 2000, "n": i} for i in range(20_000)})
    ticks = 0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    probe_task = asyncio.create_task(probe())
    await store.commit()
    done.set()
    await probe_task
    assert store.write_threads and all(name.startswith("sqlite-flush") for name in store.write_threads)
    # The loop ran the probe many times while the 40 MB transaction was written and fsynced.
    assert ticks >= 20
    await kv.finalize()


# --- vectors --------------------------------------------------------------------------------------
TEXTS = {
    f"chunk-{i}": t
    for i, t in enumerate(
        [
            "the reactor produces hydrogen fuel from seawater",
            "a ceramic membrane degrades in warm seawater",
            "buses in the city run on hydrogen",
            "the council argued about the membrane",
            "efficiency of the pilot plant doubled",
            "seawater hydrogen reactor pilot",
            "unrelated text about music and guitars",
        ]
    )
}


async def test_vector_query_matches_nano_vectordb(tmp_path: Path) -> None:
    """Catches ranking, distance, threshold or record-shape differences vs NanoVectorDBStorage."""
    nano = await open_storage(NanoVectorDBStorage, tmp_path / "nano", "chunks", threshold=0.05)
    sql = await open_storage(SqliteVectorStorage, tmp_path / "sql", "chunks", threshold=0.05)
    data = {k: {"content": v, "src_id": "x", "tgt_id": "y"} for k, v in TEXTS.items()}
    for s in (nano, sql):
        await s.upsert({k: dict(v) for k, v in data.items()})
        await s.upsert({"chunk-2": {"content": "buses run on hydrogen fuel", "src_id": "z", "tgt_id": "y"}})
    for q, k in [
        ("hydrogen seawater reactor", 5),
        ("membrane", 3),
        ("guitars", 10),
        ("nothing matches zzz", 4),
    ]:
        a, b = await nano.query(q, k), await sql.query(q, k)
        assert [r["id"] for r in b] == [r["id"] for r in a]
        assert np.allclose([r["distance"] for r in b], [float(r["distance"]) for r in a], atol=1e-5)
        strip = ("distance", "__metrics__", "created_at", "__created_at__")
        assert [{k2: v for k2, v in r.items() if k2 not in strip} for r in b] == [
            {k2: v for k2, v in r.items() if k2 not in strip} for r in a
        ]
    ids = ["chunk-1", "missing", "chunk-4"]
    assert [r and r["content"] for r in await sql.get_by_ids(ids)] == [
        r and r["content"] for r in await nano.get_by_ids(ids)
    ]
    assert (await sql.get_vectors_by_ids(ids)) == (await nano.get_vectors_by_ids(ids))
    for s in (nano, sql):
        await s.delete(["chunk-0"])
        await s.delete_entity_relation("x")  # removes every record with src_id x
    assert await sql.get_by_id("chunk-1") is None and await nano.get_by_id("chunk-1") is None
    assert (await sql.get_by_id("chunk-2"))["content"] == (await nano.get_by_id("chunk-2"))["content"]
    assert [r["id"] for r in await sql.query("buses", 5)] == [r["id"] for r in await nano.query("buses", 5)]
    await sql.finalize()


async def test_vectors_persist_across_restart(tmp_path: Path) -> None:
    """Catches vectors or metadata lost, or deleted vectors resurrected, after a restart."""
    vdb = await open_storage(SqliteVectorStorage, tmp_path, "entities")
    await vdb.upsert({k: {"content": v} for k, v in TEXTS.items()})
    await vdb.delete(["chunk-6"])
    before = await vdb.query("hydrogen reactor", 4)
    await vdb.finalize()
    restart_process_memory()
    vdb2 = await open_storage(SqliteVectorStorage, tmp_path, "entities")
    after = await vdb2.query("hydrogen reactor", 4)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert await vdb2.get_by_id("chunk-6") is None
    assert (await vdb2.drop())["status"] == "success"
    assert rows(tmp_path, "vectors") == []
    await vdb2.finalize()


async def test_a_big_upsert_embeds_a_few_batches_at_a_time_and_stores_each_at_once(tmp_path: Path) -> None:
    """Catches a big document's hundreds of embedding batches all started in one turn of the event
    loop (a 99 MB text: 1.7 s with no `/health` answer), and its vectors held back until the last
    batch is embedded (hours of e5: nothing stored before, all lost to a restart)."""
    in_flight = peak = 0
    gate = asyncio.Event()
    calls = 0

    async def slow_embed(texts: list[str], **_: Any) -> np.ndarray:
        nonlocal in_flight, peak, calls
        in_flight += 1
        peak = max(peak, in_flight)
        calls += 1
        try:
            if calls > 6:  # the first batches go through; the rest wait for the gate
                await gate.wait()
            return await _embed(texts)
        finally:
            in_flight -= 1

    vdb = SqliteVectorStorage(
        namespace="chunks",
        workspace="ws",
        global_config={**_config(tmp_path), "embedding_func_max_async": 2},
        embedding_func=EmbeddingFunc(embedding_dim=DIM, max_token_size=512, func=slow_embed),
        meta_fields={"content"},
    )
    await vdb.initialize()
    data = {f"c{i}": {"content": f"chunk number {i} about storage"} for i in range(8 * 40)}  # 40 batches
    upsert = asyncio.ensure_future(vdb.upsert(data))
    for _ in range(200):
        if in_flight == 4:
            break
        await asyncio.sleep(0.01)
    assert peak == 4  # 2 x embedding_func_max_async, not 40
    stored = [k for k in data if await vdb.get_by_id(k) is not None]
    assert len(stored) == 6 * 8  # the batches embedded so far are stored already
    gate.set()
    await asyncio.wait_for(upsert, 30)
    assert peak == 4 and calls == 40
    assert all([await vdb.get_by_id(k) is not None for k in data])
    await vdb.finalize()


# --- graph ----------------------------------------------------------------------------------------
async def _graph_script(g: Any) -> list[Any]:
    out: list[Any] = []
    await g.upsert_node(
        "A", {"entity_id": "A", "entity_type": "person", "description": "a", "source_id": "c1"}
    )
    await g.upsert_nodes_batch(
        [(n, {"entity_id": n, "entity_type": "org", "description": n, "source_id": "c1"}) for n in "BCD"]
    )
    await g.upsert_edge("A", "B", {"weight": 1.0, "description": "ab", "keywords": "k", "source_id": "c1"})
    await g.upsert_edges_batch(
        [("B", "C", {"weight": 2.0, "description": "bc", "source_id": "c1"}), ("C", "D", {"weight": 1.0})]
    )
    out += [
        await g.has_node("A"),
        await g.has_edge("B", "A"),
        await g.get_node("B"),
        await g.get_edge("B", "A"),
    ]
    out += [await g.node_degree("B"), await g.edge_degree("A", "B"), sorted(await g.get_node_edges("C"))]
    out.append(sorted(await g.get_all_labels()))
    kg = await g.get_knowledge_graph("A", max_depth=2)
    out.append((sorted(n.id for n in kg.nodes), sorted((e.source, e.target) for e in kg.edges)))
    await g.delete_node("C")
    out += [await g.has_edge("B", "C"), await g.node_degree("D")]
    await g.remove_edges([("A", "B")])
    out.append(await g.get_edge("A", "B"))
    out.append(sorted(n["id"] for n in await g.get_all_nodes()))
    return out


async def test_graph_parity_with_networkx_storage(tmp_path: Path) -> None:
    """Catches node/edge CRUD, degree or knowledge-graph differences vs NetworkXStorage."""
    nx_g = await open_storage(NetworkXStorage, tmp_path / "nx", "chunk_entity_relation")
    sql_g = await open_storage(SqliteGraphStorage, tmp_path / "sql", "chunk_entity_relation")
    assert await _graph_script(sql_g) == await _graph_script(nx_g)
    await sql_g.finalize()


async def test_graph_persists_incrementally(tmp_path: Path) -> None:
    """Catches a deleted node's incident edges surviving on disk, or edges lost across a restart."""
    g = await open_storage(SqliteGraphStorage, tmp_path, "chunk_entity_relation")
    await _graph_script(g)
    expected_nodes = sorted(n["id"] for n in await g.get_all_nodes())
    expected_edges = sorted(tuple(sorted((e["source"], e["target"]))) for e in await g.get_all_edges())
    await g.finalize()
    assert sorted((r[1], r[2]) for r in rows(tmp_path, "graph_edges")) == expected_edges
    restart_process_memory()
    g2 = await open_storage(SqliteGraphStorage, tmp_path, "chunk_entity_relation")
    assert sorted(n["id"] for n in await g2.get_all_nodes()) == expected_nodes
    assert await g2.get_node("A") == {
        "entity_id": "A",
        "entity_type": "person",
        "description": "a",
        "source_id": "c1",
    }
    store = store_of(g2)
    await g2.upsert_node("E", {"entity_id": "E"})
    await store.commit()
    assert store.rows_written == 1  # one node row, not the whole graph
    await g2.finalize()


# --- migration ------------------------------------------------------------------------------------
async def test_legacy_files_are_imported_once(tmp_path: Path) -> None:
    """Catches an existing knowledge base (JSON/NanoVectorDB/GraphML) invisible after the upgrade,
    or re-imported over a later drop."""
    old_kv = await open_storage(JsonKVStorage, tmp_path, "full_docs")
    old_ds = await open_storage(JsonDocStatusStorage, tmp_path, "doc_status")
    old_vdb = await open_storage(NanoVectorDBStorage, tmp_path, "chunks")
    old_g = await open_storage(NetworkXStorage, tmp_path, "chunk_entity_relation")
    await old_kv.upsert({"doc-1": {"content": "old document"}})
    await old_ds.upsert({"doc-1": _doc(DocStatus.PROCESSED, "t", "a.txt")})
    await old_vdb.upsert({k: {"content": v} for k, v in TEXTS.items()})
    await _graph_script(old_g)
    expected_query = [r["id"] for r in await old_vdb.query("hydrogen", 3)]
    expected_nodes = sorted(n["id"] for n in await old_g.get_all_nodes())
    for s in (old_kv, old_ds, old_vdb, old_g):
        await s.index_done_callback()
    restart_process_memory()

    kv = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    ds = await open_storage(SqliteDocStatusStorage, tmp_path, "doc_status")
    vdb = await open_storage(SqliteVectorStorage, tmp_path, "chunks")
    g = await open_storage(SqliteGraphStorage, tmp_path, "chunk_entity_relation")
    assert (await kv.get_by_id("doc-1"))["content"] == "old document"
    assert (await ds.get_status_counts())["processed"] == 1
    assert [r["id"] for r in await vdb.query("hydrogen", 3)] == expected_query
    assert sorted(n["id"] for n in await g.get_all_nodes()) == expected_nodes
    await kv.drop()
    for s in (kv, ds, vdb, g):
        await s.finalize()
    restart_process_memory()
    kv2 = await open_storage(SqliteKVStorage, tmp_path, "full_docs")
    assert await kv2.is_empty()  # the marker stops a second import over the drop
    await kv2.finalize()


# --- builder and a full LightRAG round trip ----------------------------------------------------------
def test_env_names_override_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches LIGHTRAG_*_STORAGE being ignored (LightRAG Server's names must keep working)."""
    monkeypatch.delenv("LIGHTRAG_KV_STORAGE", raising=False)
    monkeypatch.setenv("LIGHTRAG_GRAPH_STORAGE", "NetworkXStorage")
    kwargs = storage_kwargs_from_env(os.environ)
    assert kwargs["kv_storage"] == "SqliteKVStorage"
    assert kwargs["graph_storage"] == "NetworkXStorage"
    assert kwargs["vector_storage"] == "SqliteVectorStorage"
    assert kwargs["doc_status_storage"] == "SqliteDocStatusStorage"
    from lightrag.kg import STORAGES, verify_storage_implementation

    register_embedded_storages()
    verify_storage_implementation("VECTOR_STORAGE", "SqliteVectorStorage")
    assert STORAGES["SqliteGraphStorage"] == "src.rag.storage.embedded"


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        llm_provider="offline",
        embedding_provider="hash",
        workspace="kb1",
        storage_flush_interval_seconds=0.05,
        storage_commit_delay_seconds=0.01,
    )


DOC = (
    "The Zorblax reactor was designed by Helena Marwick at the Northfield Energy Institute. "
    "Northfield Energy Institute partnered with Caldera Systems to build a pilot plant near Lake Varna."
)


async def test_lightrag_insert_and_query_on_embedded_storages(tmp_path: Path) -> None:
    """Catches the SQLite storages breaking LightRAG's own pipeline, or a processed document missing
    (doc status, chunks, vectors, graph) after a restart."""
    from lightrag import QueryParam

    from src.rag.builder import build_lightrag

    settings = _settings(tmp_path)
    rag = await build_lightrag(settings)
    assert type(rag.doc_status).__name__ == "SqliteDocStatusStorage"
    assert (store_of(rag.doc_status).flush_interval, store_of(rag.doc_status).commit_delay) == (0.05, 0.01)
    await rag.ainsert(DOC, ids=["doc-zorblax"], file_paths=["z.txt"])
    await commit_for(rag)()
    status = (await rag.doc_status.get_by_ids(["doc-zorblax"]))[0]
    assert status["status"] == DocStatus.PROCESSED.value
    ctx = await rag.aquery(
        "Who designed the Zorblax reactor?", param=QueryParam(mode="naive", only_need_context=True)
    )
    assert "Zorblax" in ctx
    nodes_before = len(await rag.chunk_entity_relation_graph.get_all_nodes())
    await rag.finalize_storages()
    restart_process_memory()

    rag2 = await build_lightrag(settings)
    status = (await rag2.doc_status.get_by_ids(["doc-zorblax"]))[0]
    assert status["status"] == DocStatus.PROCESSED.value
    chunk_ids = status["chunks_list"]
    assert chunk_ids and all(await rag2.text_chunks.get_by_ids(chunk_ids))
    assert all(await rag2.chunks_vdb.get_by_ids(chunk_ids))
    assert len(await rag2.chunk_entity_relation_graph.get_all_nodes()) == nodes_before
    ctx = await rag2.aquery("Zorblax reactor", param=QueryParam(mode="naive", only_need_context=True))
    assert "Zorblax" in ctx
    assert not (tmp_path / "data" / "rag" / "kb1" / "kv_store_doc_status.json").exists()
    await rag2.finalize_storages()


async def test_commit_for_falls_back_to_lightrag_persistence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches commit_for doing nothing when the env selects LightRAG's JSON storages."""
    from src.rag.builder import build_lightrag

    for env in ("LIGHTRAG_KV_STORAGE", "LIGHTRAG_VECTOR_STORAGE", "LIGHTRAG_GRAPH_STORAGE"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("LIGHTRAG_DOC_STATUS_STORAGE", "JsonDocStatusStorage")
    monkeypatch.setenv("LIGHTRAG_KV_STORAGE", "JsonKVStorage")
    rag = await build_lightrag(_settings(tmp_path))
    await rag.full_docs.upsert({"doc-x": {"content": "x"}})
    await commit_for(rag)()
    saved = json.loads((tmp_path / "data" / "rag" / "kb1" / "kv_store_full_docs.json").read_text())
    assert "doc-x" in saved
    await rag.finalize_storages()
