"""LightRAG storages that keep LightRAG's in-memory view and persist incrementally to SQLite.

From LightRAG's side they behave like its file storages (JsonKVStorage, JsonDocStatusStorage,
NanoVectorDBStorage, NetworkXStorage): same reads, same result shapes, same thresholds. What
differs is persistence: ``index_done_callback`` no longer rewrites whole files on the event loop;
it only wakes the workspace's group-commit flusher (see ``sqlite_store``), which writes the dirty
records in a worker thread at most once per flush interval. ``commit_for(rag)`` gives the
per-document indexer a way to wait until its document is durable (a flush within the short
commit delay, shared by the documents finishing meanwhile).

Single process per workspace, like LightRAG's own file storages with one worker.

The four storages share one dirty-tracking and snapshot contract with the flusher, which is why
they stay together in one module (~780 lines) rather than four that import each other's internals.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from lightrag.base import BaseVectorStorage
from lightrag.utils import compute_mdhash_id, load_json

from src.rag.lightrag_compat import (
    JsonDocStatusStorage,
    JsonKVStorage,
    JsonStorageState,
    NetworkXState,
    NetworkXStorage,
    join_namespace,
    register_storage,
    update_flag,
    validate_embedding_func,
)

from .sqlite_store import WorkspaceStore, WriteSet, acquire_store, store_for

logger = logging.getLogger(__name__)

KV_STORAGE = "SqliteKVStorage"
DOC_STATUS_STORAGE = "SqliteDocStatusStorage"
VECTOR_STORAGE = "SqliteVectorStorage"
GRAPH_STORAGE = "SqliteGraphStorage"

#: LightRAG Server's environment names; each overrides one embedded default.


#: Characters of one string encoded per call: one json.dumps of a 99 MB document's text holds the
#: GIL, and so the event loop, for as long as it runs (seconds on a loaded machine).
JSON_PIECE_CHARS = 1 << 20


def _dumps(value: Any) -> str:
    # ensure_ascii keeps lone surrogates (seen in LLM output) encodable as UTF-8 in SQLite.
    if type(value) is dict and any(type(v) is str and len(v) > JSON_PIECE_CHARS for v in value.values()):
        # Exactly json.dumps' output, its big strings escaped piece by piece (escaping is per
        # character, and a slice never cuts a character).
        fields = (
            f"{json.dumps(k, default=str)}: {_string_in_pieces(v) if type(v) is str else _dumps(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(fields) + "}"
    return json.dumps(value, default=str)


def _string_in_pieces(text: str) -> str:
    if len(text) <= JSON_PIECE_CHARS:
        return json.dumps(text)
    pieces = (json.dumps(text[i : i + JSON_PIECE_CHARS])[1:-1] for i in range(0, len(text), JSON_PIECE_CHARS))
    return '"' + "".join(pieces) + '"'


class _JsonAtWrite:
    """A record as it was at the flush's snapshot, turned into JSON by sqlite3 in the flush thread.

    Encoding every dirty record on the event loop held it for seconds when a big document's text
    (full_docs) and its thousands of chunks were dirty at once. The snapshot copies only the
    containers (dicts, lists, sets: the loop may change them after the cut); strings and numbers
    are immutable and shared, so taking it costs per object, not per byte."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = _containers_copied(value)


#: Leaves shared as they are (immutable); checked inline, a call per leaf doubled the snapshot's cost.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _containers_copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else _containers_copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [v if type(v) in _SCALARS else _containers_copied(v) for v in value]
    return value


sqlite3.register_adapter(_JsonAtWrite, lambda record: _dumps(record.value))


def _workspace_dir(global_config: dict[str, Any], workspace: str) -> str:
    base = global_config["working_dir"]
    return os.path.join(base, workspace) if workspace else base


# --- key-value and doc status -----------------------------------------------------------------
#: Namespaces whose records stay on disk once flushed: the extraction cache (read only when a chunk
#: is extracted again; ~50 KB per document with its prompts, most of the memory a knowledge base
#: used) and the full documents (read only to resume or delete one). Memory holds just what the
#: next flush has not written yet, so RSS no longer grows with them. The other namespaces are read
#: by every query or merge and stay in memory.
DISK_BACKED_NAMESPACES = ("llm_response_cache", "full_docs")


class _SqliteKVMixin(JsonStorageState):
    """Dirty-key tracking over LightRAG's in-memory JSON storages; rows live in table ``kv``.

    In a namespace of ``DISK_BACKED_NAMESPACES`` the in-memory dict is only a write-back buffer:
    a record leaves it once written (unless it changed meanwhile), deleted keys are remembered as
    tombstones until their deletion is written, and reads that miss memory go to SQLite in the
    store's worker thread."""

    is_doc_status = False
    global_config: dict[str, Any]

    def _init_dirty(self) -> None:
        self._dirty: dict[str, None] = {}  # ordered: rows are written in change order
        self._dropped = False
        self._store: WorkspaceStore | None = None
        self._on_disk = not self.is_doc_status and self.namespace.endswith(DISK_BACKED_NAMESPACES)
        self._tombstones: set[str] = set()  # deleted keys whose deletion is not written yet

    async def initialize(self) -> None:
        self._store = acquire_store(self.global_config, self.workspace)
        self._store.register(self)  # type: ignore[arg-type]
        async with join_namespace(self) as need_init:
            if need_init:
                await self._import_legacy()
                if self._on_disk:
                    count = await self._store.count("kv", self.namespace)
                    logger.info("[%s] SQLite %s: %d records on disk", self.workspace, self.namespace, count)
                    return
                rows = await self._store.select(
                    "SELECT id, value FROM kv WHERE ns = ? ORDER BY rowid", self.namespace
                )
                loaded = await asyncio.to_thread(lambda: {k: json.loads(v) for k, v in rows})
                async with self.records_lock:
                    self.records.update(loaded)
                logger.info(
                    "[%s] SQLite load %s with %d records", self.workspace, self.namespace, len(loaded)
                )

    async def _import_legacy(self) -> None:
        path, ns = self.legacy_file, self.namespace

        def load() -> list[WriteSet] | None:
            if not os.path.exists(path):
                return None
            data = load_json(path) or {}
            return [WriteSet("kv", ns, upserts=[(k, _dumps(v)) for k, v in data.items()])]

        assert self._store is not None
        await self._store.import_legacy("kv", ns, load, path)

    def _touch(self, keys: Any) -> None:
        self._dirty.update(dict.fromkeys(keys))
        if self._store is not None:
            self._store.mark_dirty()

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        created = await self._stored_create_times(data) if self._on_disk and data else {}
        await super().upsert(data)  # type: ignore[misc]
        if data:
            for key, when in created.items():  # an update of a record that only disk holds
                data[key]["create_time"] = when
            self._tombstones.difference_update(data)
            self._touch(data.keys())

    async def delete(self, ids: list[str]) -> None:
        await super().delete(ids)  # type: ignore[misc]
        if ids:
            if self._on_disk:
                self._tombstones.update(ids)
            self._touch(ids)

    # --- reads of a disk-backed namespace (memory first, then SQLite) ----------------------------
    async def _stored_create_times(self, data: dict[str, dict[str, Any]]) -> dict[str, Any]:
        async with self.records_lock:
            absent = [k for k in data if k not in self.records]
        assert self._store is not None
        stored = await self._store.read_kv(self.namespace, absent)
        return {k: v.get("create_time", 0) for k, v in stored.items() if k not in self._tombstones}

    async def get_by_id(self, id: str) -> dict[str, Any] | None:
        if not self._on_disk:
            return await super().get_by_id(id)  # type: ignore[misc]
        return (await self.get_by_ids([id]))[0]

    async def get_by_ids(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not self._on_disk:
            return await super().get_by_ids(ids)  # type: ignore[misc]
        async with self.records_lock:
            found = {i: self.records[i] for i in ids if i in self.records}
            gone = {i for i in ids if i in self._tombstones and i not in found}
        assert self._store is not None
        missing = [i for i in dict.fromkeys(ids) if i not in found and i not in gone]
        found.update(await self._store.read_kv(self.namespace, missing))
        out: list[dict[str, Any] | None] = []
        for i in ids:
            record = found.get(i)
            if record:
                record = dict(record)
                record.setdefault("create_time", 0)
                record.setdefault("update_time", 0)
                record["_id"] = i
            out.append(record or None)
        return out

    async def filter_keys(self, keys: set[str]) -> set[str]:
        if not self._on_disk:
            return await super().filter_keys(keys)  # type: ignore[misc]
        async with self.records_lock:
            in_memory = {k for k in keys if k in self.records}
            gone = {k for k in keys if k in self._tombstones} - in_memory
        assert self._store is not None
        stored = await self._store.kv_ids(self.namespace, list(set(keys) - in_memory - gone))
        return set(keys) - in_memory - stored

    async def is_empty(self) -> bool:
        if not self._on_disk:
            return await super().is_empty()  # type: ignore[misc]
        if self.records:
            return False
        assert self._store is not None
        stored = await self._store.count("kv", self.namespace)
        if stored == 0:
            return True
        deleted = await self._store.kv_ids(self.namespace, list(self._tombstones))
        return stored - len(deleted) <= 0

    async def index_done_callback(self) -> None:
        if self._store is not None:
            self._store.request_flush()

    async def drop(self) -> dict[str, str]:
        try:
            async with self.records_lock:
                self.records.clear()
                self._dirty.clear()
                self._tombstones.clear()
                self._dropped = True
            assert self._store is not None
            self._store.mark_dirty()
            await self._store.flush_now()  # like LightRAG: a drop is persisted at once
            logger.info("[%s] Process %s drop %s", self.workspace, os.getpid(), self.namespace)
            return {"status": "success", "message": "data dropped"}
        except Exception as e:
            logger.error("[%s] Error dropping %s: %s", self.workspace, self.namespace, e)
            return {"status": "error", "message": str(e)}

    async def finalize(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.release(self)  # type: ignore[arg-type]

    def collect_dirty(self) -> list[WriteSet]:
        if not self._dirty and not self._dropped:
            return []
        keys, dropped = self._dirty, self._dropped
        self._dirty, self._dropped = {}, False
        ws = WriteSet("kv", self.namespace, drop=dropped)
        snapshot: dict[str, Any] = {}
        for k in keys:
            v = self.records.get(k)
            snapshot[k] = v
            if v is None:
                ws.deletes.append((k,))
            else:
                ws.upserts.append((k, _JsonAtWrite(v)))

        def restore() -> None:
            self._dirty = {**keys, **self._dirty}
            self._dropped = self._dropped or dropped

        def written() -> None:
            # Evict exactly what was written: a record replaced since (another object) stays, and
            # is dirty again; a key upserted again after its deletion keeps its new record.
            for k, v in snapshot.items():
                if k in self._dirty:  # changed again since the snapshot: the next flush owns it
                    continue
                current = self.records.get(k)
                if v is None and current is None:
                    self._tombstones.discard(k)
                elif v is not None and current is v:
                    del self.records[k]

        ws.restore = restore
        if self._on_disk:
            ws.written = written
        return [ws]


@dataclass
class SqliteKVStorage(_SqliteKVMixin, JsonKVStorage):
    """JsonKVStorage semantics; only changed keys are written, in a worker thread."""

    def __post_init__(self) -> None:
        JsonKVStorage.__post_init__(self)
        self._init_dirty()


@dataclass
class SqliteDocStatusStorage(_SqliteKVMixin, JsonDocStatusStorage):
    """JsonDocStatusStorage semantics; written last in every flush."""

    is_doc_status = True

    def __post_init__(self) -> None:
        JsonDocStatusStorage.__post_init__(self)
        self._init_dirty()


# --- vectors ---------------------------------------------------------------------------------------
def _top_k(matrix: np.ndarray, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of normalised rows, best first, ties broken exactly like NanoVectorDB.

    Runs in a worker thread; numpy releases the GIL for the product and the sort.
    """
    scores = matrix @ query
    order = np.argsort(scores)[-top_k:][::-1]  # NanoVectorDB's slice: top_k <= 0 keeps everything
    return order, scores[order]


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class SqliteVectorStorage(BaseVectorStorage):
    """NanoVectorDBStorage semantics with an in-memory numpy matrix; search runs in a thread."""

    is_doc_status = False

    def __post_init__(self) -> None:
        validate_embedding_func(self)
        kwargs = self.global_config.get("vector_db_storage_cls_kwargs", {})
        cosine_threshold = kwargs.get("cosine_better_than_threshold")
        if cosine_threshold is None:
            raise ValueError("cosine_better_than_threshold must be specified in vector_db_storage_cls_kwargs")
        self.cosine_better_than_threshold = cosine_threshold
        if not self.workspace:
            self.workspace = ""
        workspace_dir = _workspace_dir(self.global_config, self.workspace)
        os.makedirs(workspace_dir, exist_ok=True)
        self._legacy_file = os.path.join(workspace_dir, f"vdb_{self.namespace}.json")
        self._max_batch_size = self.global_config["embedding_batch_num"]
        self._dim = int(self.embedding_func.embedding_dim)
        self._reset()
        self.storage_updated = None
        self._dirty: dict[str, None] = {}  # ordered: rows are written in change order
        self._dropped = False
        self._store: WorkspaceStore | None = None

    def _reset(self) -> None:
        self._matrix = np.zeros((0, self._dim), dtype=np.float32)  # normalised rows; capacity >= n
        self._n = 0
        self._ids: list[str] = []
        self._meta: list[dict[str, Any]] = []  # NanoVectorDB's data records (incl. "vector")
        self._index: dict[str, int] = {}

    async def initialize(self) -> None:
        self.storage_updated = await update_flag(self.namespace, self.workspace)
        self._store = acquire_store(self.global_config, self.workspace)
        self._store.register(self)
        await self._import_legacy()
        rows = await self._store.select(
            "SELECT id, data, vec FROM vectors WHERE ns = ? ORDER BY rowid", self.namespace
        )

        def build() -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
            ids = [r[0] for r in rows]
            metas = [json.loads(r[1]) for r in rows]
            matrix = np.zeros((max(16, len(rows)), self._dim), dtype=np.float32)
            for i, r in enumerate(rows):
                matrix[i] = np.frombuffer(r[2], dtype=np.float32)
            return ids, metas, matrix

        ids, metas, matrix = await asyncio.to_thread(build)
        self._ids, self._meta, self._matrix, self._n = ids, metas, matrix, len(ids)
        self._index = {k: i for i, k in enumerate(ids)}
        logger.info("[%s] SQLite load %s with %d vectors", self.workspace, self.namespace, self._n)

    async def _import_legacy(self) -> None:
        path, ns, dim = self._legacy_file, self.namespace, self._dim

        def load() -> list[WriteSet] | None:
            from nano_vectordb.dbs import load_storage

            if not os.path.exists(path):
                return None
            storage = load_storage(path)
            if storage is None:
                return None
            if storage["embedding_dim"] != dim:
                raise ValueError(f"{path}: embedding dim {storage['embedding_dim']} != {dim}")
            matrix = (
                _normalize(storage["matrix"].astype(np.float32))
                if len(storage["data"])
                else storage["matrix"]
            )
            upserts = [
                (d["__id__"], _dumps(d), np.ascontiguousarray(matrix[i], dtype=np.float32).tobytes())
                for i, d in enumerate(storage["data"])
            ]
            return [WriteSet("vectors", ns, upserts=upserts)]

        assert self._store is not None
        await self._store.import_legacy("vectors", ns, load, path)

    def _touch(self, ids: Any) -> None:
        self._dirty.update(dict.fromkeys(ids))
        if self._store is not None:
            self._store.mark_dirty()

    def _put(self, record: dict[str, Any], vector: np.ndarray) -> None:
        key = record["__id__"]
        i = self._index.get(key)
        if i is not None:
            self._matrix[i] = vector
            self._meta[i] = record
            return
        if self._n >= len(self._matrix):  # grow by copy: a search running in a thread keeps its array
            grown = np.zeros((max(16, 2 * len(self._matrix)), self._dim), dtype=np.float32)
            grown[: self._n] = self._matrix[: self._n]
            self._matrix = grown
        self._matrix[self._n] = vector
        self._ids.append(key)
        self._meta.append(record)
        self._index[key] = self._n
        self._n += 1

    def _remove(self, ids: set[str]) -> None:
        keep = [i for i, k in enumerate(self._ids) if k not in ids]
        if len(keep) == self._n:
            return
        matrix = np.zeros((max(16, len(keep)), self._dim), dtype=np.float32)  # new array: see _put
        matrix[: len(keep)] = self._matrix[keep] if keep else matrix[:0]
        self._matrix = matrix
        self._ids = [self._ids[i] for i in keep]
        self._meta = [self._meta[i] for i in keep]
        self._n = len(keep)
        self._index = {k: i for i, k in enumerate(self._ids)}

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        """Embed and store ``data``, a few batches at a time, each stored as soon as it is embedded.

        All at once (LightRAG's way), a 99 MB document's ~800 batches became ~25,000 batcher tasks
        in one turn of the event loop (1.7 s without a `/health` answer), and its vectors were
        stored only when the last of hours of e5 embeddings was done."""
        if not data:
            return
        current_time = int(time.time())
        items = list(data.items())
        size = max(1, int(self._max_batch_size))
        all_batches = [items[i : i + size] for i in range(0, len(items), size)]
        batches = iter(all_batches)
        in_flight = min(64, max(4, 2 * int(self.global_config.get("embedding_func_max_async", 4))))

        async def embed_batches() -> None:
            for batch in batches:  # shared: each worker takes the next batch
                rows = await self.embedding_func([v["content"] for _, v in batch], context="document")
                if len(rows) != len(batch):
                    raise ValueError(f"embedding returned {len(rows)} rows for {len(batch)} texts")
                for (key, value), row in zip(batch, rows, strict=True):
                    record = {"__id__": key, "__created_at__": current_time}
                    record.update({k: v for k, v in value.items() if k in self.meta_fields})
                    vector_f16 = np.asarray(row).astype(np.float16)
                    record["vector"] = base64.b64encode(zlib.compress(vector_f16.tobytes())).decode("utf-8")
                    self._put(record, _normalize(np.asarray(row, dtype=np.float32)))
                self._touch([key for key, _ in batch])

        workers = [asyncio.ensure_future(embed_batches()) for _ in range(min(in_flight, len(all_batches)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()  # one failed or the caller was cancelled: the others stop too

    async def query(
        self, query: str, top_k: int, query_embedding: list[float] | None = None
    ) -> list[dict[str, Any]]:
        if query_embedding is not None:
            embedding = query_embedding
        else:
            embedding = (await self.embedding_func([query], context="query", _priority=5))[0]
        q = _normalize(np.asarray(embedding, dtype=np.float32))
        if self._n == 0:
            return []
        matrix, ids = self._matrix[: self._n], self._ids[: self._n]  # snapshot; writers never resize in place
        order, scores = await asyncio.to_thread(_top_k, matrix, q, top_k)
        results = []
        for i, score in zip(order.tolist(), scores.tolist(), strict=True):
            if self.cosine_better_than_threshold is not None and score < self.cosine_better_than_threshold:
                break
            j = self._index.get(ids[i])
            if j is None:  # deleted while the search ran
                continue
            dp = self._meta[j]
            results.append(
                {
                    **{k: v for k, v in dp.items() if k != "vector"},
                    "__metrics__": score,
                    "id": dp["__id__"],
                    "distance": score,
                    "created_at": dp.get("__created_at__"),
                }
            )
        return results

    @property
    async def client_storage(self) -> dict[str, Any]:
        """NanoVectorDB's storage shape (used by LightRAG's export helpers)."""
        return {"embedding_dim": self._dim, "data": list(self._meta), "matrix": self._matrix[: self._n]}

    async def delete(self, ids: list[str]) -> None:
        present = {i for i in ids if i in self._index}
        self._remove(present)
        if present:
            self._touch(present)

    async def delete_entity(self, entity_name: str) -> None:
        await self.delete([compute_mdhash_id(entity_name, prefix="ent-")])

    async def delete_entity_relation(self, entity_name: str) -> None:
        ids = [
            dp["__id__"]
            for dp in self._meta
            if dp.get("src_id") == entity_name or dp.get("tgt_id") == entity_name
        ]
        if ids:
            await self.delete(ids)

    async def index_done_callback(self) -> bool:
        if self._store is not None:
            self._store.request_flush()
        return True

    def _record(self, dp: dict[str, Any]) -> dict[str, Any]:
        return {
            **{k: v for k, v in dp.items() if k != "vector"},
            "id": dp.get("__id__"),
            "created_at": dp.get("__created_at__"),
        }

    async def get_by_id(self, id: str) -> dict[str, Any] | None:
        i = self._index.get(id)
        return None if i is None else self._record(self._meta[i])

    async def get_by_ids(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        return [await self.get_by_id(str(i)) for i in ids]

    async def get_vectors_by_ids(self, ids: list[str]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for key in ids:
            i = self._index.get(key)
            if i is None or "vector" not in self._meta[i]:
                continue
            raw = zlib.decompress(base64.b64decode(self._meta[i]["vector"]))
            out[key] = np.frombuffer(raw, dtype=np.float16).astype(np.float32).tolist()
        return out

    async def drop(self) -> dict[str, str]:
        try:
            self._reset()
            self._dirty.clear()
            self._dropped = True
            assert self._store is not None
            self._store.mark_dirty()
            await self._store.flush_now()
            return {"status": "success", "message": "data dropped"}
        except Exception as e:
            logger.error("[%s] Error dropping %s: %s", self.workspace, self.namespace, e)
            return {"status": "error", "message": str(e)}

    async def finalize(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.release(self)

    def collect_dirty(self) -> list[WriteSet]:
        if not self._dirty and not self._dropped:
            return []
        keys, dropped = self._dirty, self._dropped
        self._dirty, self._dropped = {}, False
        ws = WriteSet("vectors", self.namespace, drop=dropped)
        for k in sorted(keys, key=lambda k: self._index.get(k, -1)):  # rows keep the in-memory order
            i = self._index.get(k)
            if i is None:
                ws.deletes.append((k,))
            else:
                ws.upserts.append((k, _JsonAtWrite(self._meta[i]), self._matrix[i].tobytes()))

        def restore() -> None:
            self._dirty = {**keys, **self._dirty}
            self._dropped = self._dropped or dropped

        ws.restore = restore
        return [ws]


# --- graph -------------------------------------------------------------------------------------
def _edge_key(u: str, v: str) -> tuple[str, str]:
    return (u, v) if u <= v else (v, u)


@dataclass
class SqliteGraphStorage(NetworkXState, NetworkXStorage):
    """NetworkXStorage semantics; dirty nodes and edges are rows instead of a rewritten GraphML file."""

    is_doc_status = False

    def __post_init__(self) -> None:
        if not self.workspace:
            self.workspace = ""
        workspace_dir = _workspace_dir(self.global_config, self.workspace)
        os.makedirs(workspace_dir, exist_ok=True)
        self.init_graph_state(os.path.join(workspace_dir, f"graph_{self.namespace}.graphml"))
        self._dirty_nodes: dict[str, None] = {}  # ordered, like _dirty
        self._dirty_edges: dict[tuple[str, str], None] = {}
        self._dropped = False
        self._store: WorkspaceStore | None = None

    async def initialize(self) -> None:
        await super().initialize()
        self._store = acquire_store(self.global_config, self.workspace)
        self._store.register(self)
        await self._import_legacy()
        nodes = await self._store.select(
            "SELECT id, data FROM graph_nodes WHERE ns = ? ORDER BY rowid", self.namespace
        )
        edges = await self._store.select(
            "SELECT src, tgt, data FROM graph_edges WHERE ns = ? ORDER BY rowid", self.namespace
        )

        def build() -> nx.Graph:
            g = nx.Graph()
            g.add_nodes_from((n, json.loads(d)) for n, d in nodes)
            g.add_edges_from((s, t, json.loads(d)) for s, t, d in edges)
            return g

        self.nx_graph = await asyncio.to_thread(build)
        logger.info(
            "[%s] SQLite load graph %s: %d nodes, %d edges",
            self.workspace,
            self.namespace,
            self.nx_graph.number_of_nodes(),
            self.nx_graph.number_of_edges(),
        )

    async def _import_legacy(self) -> None:
        path, ns = self.legacy_graph_file, self.namespace
        assert self._store is not None

        def load() -> list[WriteSet] | None:
            if not os.path.exists(path):
                return None
            g = nx.read_graphml(path)
            nodes = [(n, _dumps(d)) for n, d in g.nodes(data=True)]
            edges = [(*_edge_key(u, v), _dumps(d)) for u, v, d in g.edges(data=True)]
            return [WriteSet("graph_nodes", ns, upserts=nodes), WriteSet("graph_edges", ns, upserts=edges)]

        # The marker is per nodes table: nodes and edges are imported in one transaction.
        await self._store.import_legacy("graph_nodes", ns, load, path)

    async def _get_graph(self) -> nx.Graph:
        return self.nx_graph  # one process owns the workspace: no reload from another writer's file

    def _touch(self, nodes: Any = (), edges: Any = ()) -> None:
        self._dirty_nodes.update(dict.fromkeys(nodes))
        self._dirty_edges.update(dict.fromkeys(_edge_key(u, v) for u, v in edges))
        if self._store is not None:
            self._store.mark_dirty()

    async def upsert_node(self, node_id: str, node_data: dict[str, str]) -> None:
        await super().upsert_node(node_id, node_data)
        self._touch(nodes=[node_id])

    async def upsert_edge(self, source_node_id: str, target_node_id: str, edge_data: dict[str, str]) -> None:
        await super().upsert_edge(source_node_id, target_node_id, edge_data)
        self._touch(nodes=[source_node_id, target_node_id], edges=[(source_node_id, target_node_id)])

    async def upsert_nodes_batch(self, nodes: list[tuple[str, dict[str, str]]]) -> None:
        await super().upsert_nodes_batch(nodes)
        self._touch(nodes=[n for n, _ in nodes])

    async def upsert_edges_batch(self, edges: list[tuple[str, str, dict[str, str]]]) -> None:
        await super().upsert_edges_batch(edges)
        self._touch(nodes=[n for s, t, _ in edges for n in (s, t)], edges=[(s, t) for s, t, _ in edges])

    def _incident(self, nodes: list[str]) -> list[tuple[str, str]]:
        graph = self.nx_graph
        return [e for n in nodes if graph.has_node(n) for e in graph.edges(n)]

    async def delete_node(self, node_id: str) -> None:
        incident = self._incident([node_id])
        await super().delete_node(node_id)
        self._touch(nodes=[node_id], edges=incident)

    async def remove_nodes(self, nodes: list[str]) -> None:
        incident = self._incident(nodes)
        await super().remove_nodes(nodes)
        self._touch(nodes=nodes, edges=incident)

    async def remove_edges(self, edges: list[tuple[str, str]]) -> None:
        await super().remove_edges(edges)
        self._touch(edges=edges)

    async def index_done_callback(self) -> bool:
        if self._store is not None:
            self._store.request_flush()
        return True

    async def drop(self) -> dict[str, str]:
        try:
            self.nx_graph = nx.Graph()
            self._dirty_nodes.clear()
            self._dirty_edges.clear()
            self._dropped = True
            assert self._store is not None
            self._store.mark_dirty()
            await self._store.flush_now()
            return {"status": "success", "message": "data dropped"}
        except Exception as e:
            logger.error("[%s] Error dropping graph %s: %s", self.workspace, self.namespace, e)
            return {"status": "error", "message": str(e)}

    async def finalize(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.release(self)

    def collect_dirty(self) -> list[WriteSet]:
        if not (self._dirty_nodes or self._dirty_edges or self._dropped):
            return []
        nodes, edges, dropped = self._dirty_nodes, self._dirty_edges, self._dropped
        self._dirty_nodes, self._dirty_edges, self._dropped = {}, {}, False
        g = self.nx_graph
        nws = WriteSet("graph_nodes", self.namespace, drop=dropped)
        for n in nodes:
            if g.has_node(n):
                nws.upserts.append((n, _JsonAtWrite(g.nodes[n])))
            else:
                nws.deletes.append((n,))
        ews = WriteSet("graph_edges", self.namespace, drop=dropped)
        for u, v in edges:
            if g.has_edge(u, v):
                ews.upserts.append((u, v, _JsonAtWrite(g.edges[u, v])))
            else:
                ews.deletes.append((u, v))

        def restore() -> None:
            self._dirty_nodes = {**nodes, **self._dirty_nodes}
            self._dirty_edges = {**edges, **self._dirty_edges}
            self._dropped = self._dropped or dropped

        nws.restore = restore
        return [nws, ews]


# --- registration and builder hooks ---------------------------------------------------------------
_KINDS = {
    KV_STORAGE: "KV_STORAGE",
    DOC_STATUS_STORAGE: "DOC_STATUS_STORAGE",
    VECTOR_STORAGE: "VECTOR_STORAGE",
    GRAPH_STORAGE: "GRAPH_STORAGE",
}


def register_embedded_storages() -> None:
    """Make the four classes selectable by name in ``LightRAG(kv_storage=...)`` (idempotent)."""
    for name, kind in _KINDS.items():
        register_storage(kind, name, __name__)


def commit_for(rag: Any) -> Callable[[], Awaitable[None]]:
    """What the indexer awaits after a document is PROCESSED: returns once it is durable.

    With the embedded storages this is the workspace flusher's group commit; storages chosen
    otherwise (LIGHTRAG_*_STORAGE) get LightRAG's own ``index_done_callback``. Doc status last.
    """
    names = (
        "full_docs",
        "text_chunks",
        "full_entities",
        "full_relations",
        "entity_chunks",
        "relation_chunks",
        "entities_vdb",
        "relationships_vdb",
        "chunks_vdb",
        "chunk_entity_relation_graph",
        "llm_response_cache",
    )

    async def commit() -> None:
        foreign = [
            s for n in names if (s := getattr(rag, n, None)) is not None and not hasattr(s, "collect_dirty")
        ]
        await asyncio.gather(*(s.index_done_callback() for s in foreign))
        store = store_for(rag.working_dir, rag.workspace)
        if store is not None:
            await store.commit()
        if not hasattr(rag.doc_status, "collect_dirty"):
            await rag.doc_status.index_done_callback()

    return commit
