"""Event-loop cost of persisting one pass, vs knowledge-base size: LightRAG's file storages vs ours.

``python -m benchmarks.storage_cost [--sizes 500,2000,5000]``

For each size it fills the four storages with synthetic records shaped like the soak's knowledge
base (per document: full text 5 KB, 2 chunks, 2 chunk vectors of 384 floats, 8 LLM-cache entries
of 4 KB, one doc-status record), then changes ONE document and persists, measuring CPU time of the
event-loop thread only (``time.thread_time``), which stays meaningful on a busy machine:

* ``lightrag``: JsonKVStorage / NanoVectorDBStorage / JsonDocStatusStorage ``index_done_callback``
  (what LightRAG runs after every pass and, for doc status, after every status change);
* ``embedded``: the SQLite storages' group commit (snapshot of dirty records on the loop; the
  SQLite write runs in the flusher thread and is not on the loop).

Also: one top-10 vector search (NanoVectorDB on the loop vs numpy in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from lightrag.kg import shared_storage
from lightrag.kg.json_doc_status_impl import JsonDocStatusStorage
from lightrag.kg.json_kv_impl import JsonKVStorage
from lightrag.kg.nano_vector_db_impl import NanoVectorDBStorage
from lightrag.utils import EmbeddingFunc

from src.rag.storage.embedded import SqliteDocStatusStorage, SqliteKVStorage, SqliteVectorStorage

DIM = 384
RNG = np.random.default_rng(7)


async def _embed(texts: list[str], **_: Any) -> np.ndarray:
    return RNG.standard_normal((len(texts), DIM)).astype(np.float32)


EMBED = EmbeddingFunc(embedding_dim=DIM, max_token_size=512, func=_embed)


def _doc_records(i: int) -> dict[str, dict[str, dict[str, Any]]]:
    text = (f"document {i} " * 400)[:5000]
    return {
        "full_docs": {f"doc-{i}": {"content": text, "file_path": f"d{i}.txt"}},
        "text_chunks": {
            f"chunk-{i}-{j}": {
                "content": text[:2500],
                "full_doc_id": f"doc-{i}",
                "tokens": 600,
                "chunk_order_index": j,
            }
            for j in range(2)
        },
        "llm_response_cache": {
            f"default:extract:{i:08d}{j:024d}": {
                "return": "x" * 4000,
                "cache_type": "extract",
                "chunk_id": f"c{i}",
            }
            for j in range(8)
        },
        "doc_status": {
            f"doc-{i}": {
                "status": "processed",
                "content_summary": text[:100],
                "content_length": 5000,
                "chunks_count": 2,
                "chunks_list": [f"chunk-{i}-0", f"chunk-{i}-1"],
                "created_at": "2026-01-01T00:00:00",
                "updated_at": "2026-01-01T00:00:00",
                "file_path": f"d{i}.txt",
                "track_id": f"t{i}",
            }
        },
    }


async def _open(kind: str, workdir: Path) -> dict[str, Any]:
    cfg = {
        "working_dir": str(workdir),
        "embedding_batch_num": 64,
        "vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": -1.0},
    }
    kv_cls, ds_cls, vec_cls = (
        (JsonKVStorage, JsonDocStatusStorage, NanoVectorDBStorage)
        if kind == "lightrag"
        else (SqliteKVStorage, SqliteDocStatusStorage, SqliteVectorStorage)
    )
    stores: dict[str, Any] = {}
    for ns in ("full_docs", "text_chunks", "llm_response_cache"):
        stores[ns] = kv_cls(namespace=ns, workspace=kind, global_config=cfg, embedding_func=EMBED)
    stores["doc_status"] = ds_cls(
        namespace="doc_status", workspace=kind, global_config=cfg, embedding_func=EMBED
    )
    stores["chunks"] = vec_cls(
        namespace="chunks",
        workspace=kind,
        global_config=cfg,
        embedding_func=EMBED,
        meta_fields={"full_doc_id"},
    )
    for s in stores.values():
        await s.initialize()
    return stores


async def _fill(stores: dict[str, Any], start: int, stop: int) -> None:
    for i in range(start, stop):
        recs = _doc_records(i)
        for ns, data in recs.items():
            await stores[ns].upsert(data)
        await stores["chunks"].upsert(
            {k: {"content": "c", "full_doc_id": f"doc-{i}"} for k in recs["text_chunks"]}
        )


async def _persist(kind: str, stores: dict[str, Any]) -> None:
    if kind == "lightrag":
        for s in stores.values():
            await s.index_done_callback()
    else:
        await stores["doc_status"]._store.commit()


async def measure(sizes: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in ("lightrag", "embedded"):
        shared_storage.finalize_share_data()
        shared_storage.initialize_share_data()
        workdir = Path(tempfile.mkdtemp(prefix=f"storage-cost-{kind}-"))
        stores = await _open(kind, workdir)
        filled = 0
        for size in sizes:
            await _fill(stores, filled, size)
            filled = size
            await _persist(kind, stores)  # settle: everything so far on disk
            await _fill(stores, size, size + 1)  # one new document: one pass's worth of changes
            filled = size + 1
            t0 = time.thread_time()
            await _persist(kind, stores)
            persist_ms = (time.thread_time() - t0) * 1000
            q = RNG.standard_normal(DIM).astype(np.float32).tolist()
            t0 = time.thread_time()
            await stores["chunks"].query("", top_k=10, query_embedding=q)
            query_ms = (time.thread_time() - t0) * 1000
            rows.append({"storages": kind, "docs": size, "persist_loop_cpu_ms": round(persist_ms, 2),
                         "query_loop_cpu_ms": round(query_ms, 3)})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for s in stores.values():
            await s.finalize()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    sizes = sorted({r["docs"] for r in rows})
    by = {(r["storages"], r["docs"]): r for r in rows}
    lines = [
        "### Event-loop CPU per persistence pass (`python -m benchmarks.storage_cost`)",
        "",
        "One more document added, then persisted; CPU time of the event-loop thread only (robust to a busy "
        "machine). LightRAG's file storages rewrite every file; the SQLite storages serialise only the "
        "dirty records on the loop and write them in the flusher thread.",
        "",
        "| documents in the KB | LightRAG files: persist (ms) | SQLite group commit: persist (ms) "
        "| vector top-10, NanoVectorDB on loop (ms) | vector top-10, ours (loop ms) |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        a, b = by.get(("lightrag", n), {}), by.get(("embedded", n), {})
        lines.append(f"| {n:,} | {a.get('persist_loop_cpu_ms')} | {b.get('persist_loop_cpu_ms')} "
                     f"| {a.get('query_loop_cpu_ms')} | {b.get('query_loop_cpu_ms')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.storage_cost")
    ap.add_argument("--sizes", default="500,2000,5000")
    ap.add_argument("--results", default="")
    args = ap.parse_args(argv)
    rows = asyncio.run(measure([int(s) for s in args.sizes.split(",")]))
    if args.results:
        Path(args.results).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
