"""Purges of many documents at once: the ones that never touched the graph without the graph gate,
the others together, in one LightRAG deletion per pass.

Why: a cancel storm (hundreds of running documents sharing entities cancelled at once) made every
document take the workspace's graph gate exclusively for its own `adelete_by_doc_id`, which
rebuilds each shared entity from all its remaining chunks: purges ran one at a time, seconds each,
and a new document's merge (which needs the gate shared) queued behind all of them.

- A document whose merge never started (no merge intent recorded, no entity/relation lists) wrote
  only its own records: chunks, doc status, full text. Dropping them needs no gate, and the drops
  of a storm run side by side.
- The other documents wait for the next pass; a pass takes every document waiting at that moment
  and deletes them under one exclusive hold of the gate, as ONE LightRAG deletion of a document
  made of all their chunks, entities and relations (an overlay holds that document in memory
  only), so a shared entity is rebuilt once per pass instead of once per document. The documents'
  own records are removed only after that deletion succeeded: a crash mid-pass leaves them, and the
  purge of each is simply run again (LightRAG's deletion is idempotent on what is already gone).
  If the joint deletion fails, each document is deleted alone.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from lightrag import LightRAG
from lightrag.base import DeletionResult, DocStatus

from src.rag.lightrag_compat import deletion_view

log = logging.getLogger(__name__)

PassRunner = Callable[[list[str]], Awaitable[dict[str, DeletionResult]]]


def never_merged(record: dict[str, Any], entities: Any, relations: Any) -> bool:
    """True when nothing of the document can be in the graph: it is not PROCESSED, no merge intent
    was recorded (the indexer records it before a merge starts) and LightRAG has no entity or
    relation list for it."""
    if record.get("status") == DocStatus.PROCESSED:
        return False
    metadata = record.get("metadata") or {}
    if metadata.get("merge_entities") or metadata.get("merge_relations"):
        return False
    return not entities and not relations


async def drop_unmerged(rag: LightRAG, doc_id: str, record: dict[str, Any]) -> DeletionResult:
    """Delete a document that never reached the graph: its chunks, then its doc status and full
    text (LightRAG's order: the status first, so a retry never finds a status without its text).
    Its extraction cache stays, as a cancel's purge keeps it."""
    chunk_ids = [c for c in record.get("chunks_list") or [] if c]
    if chunk_ids:
        await rag.chunks_vdb.delete(chunk_ids)
        await rag.text_chunks.delete(chunk_ids)
    await rag.doc_status.delete([doc_id])
    await rag.full_docs.delete([doc_id])
    file_path = str(record.get("file_path") or "")
    return DeletionResult("success", doc_id, f"Document {doc_id} deleted (never merged)", 200, file_path)


class _Overlay:
    """A storage with one extra record that exists only here (the joint document of a pass)."""

    def __init__(self, storage: Any, key: str, value: dict[str, Any] | None) -> None:
        self._storage = storage
        self._key = key
        self._value = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get_by_id(self, id: str) -> Any:
        if id == self._key:
            return copy.deepcopy(self._value)
        return await self._storage.get_by_id(id)

    async def get_by_ids(self, ids: list[str]) -> list[Any]:
        if self._key not in ids:
            return await self._storage.get_by_ids(ids)
        return [await self.get_by_id(i) for i in ids]

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        data = dict(data)
        if self._key in data:
            self._value = {**(self._value or {}), **data.pop(self._key)}
        if data:
            await self._storage.upsert(data)

    async def delete(self, ids: list[str]) -> None:
        if self._key in ids:
            self._value = None
        rest = [i for i in ids if i != self._key]
        if rest:
            await self._storage.delete(rest)


async def delete_together(
    rag: LightRAG, doc_ids: list[str], records: dict[str, dict[str, Any]]
) -> DeletionResult:
    """One `adelete_by_doc_id` for a joint document made of ``doc_ids`` (their chunks, entity and
    relation lists); on success their own records are removed. The caller holds the graph gate
    exclusively and has prepared every unfinished document (`prepare_partial_delete`)."""
    key = f"purge-pass-{uuid.uuid4().hex}"
    chunks: list[str] = []
    names: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for doc_id in doc_ids:
        chunks.extend(c for c in records[doc_id].get("chunks_list") or [] if c)
        entities = await rag.full_entities.get_by_id(doc_id) or {}
        relations = await rag.full_relations.get_by_id(doc_id) or {}
        names |= set(entities.get("entity_names") or [])
        pairs |= {tuple(sorted(p)) for p in relations.get("relation_pairs") or [] if len(p) == 2}  # type: ignore[misc]
    chunk_list = list(dict.fromkeys(chunks))
    joint_status = {
        "status": DocStatus.PROCESSING,
        "chunks_list": chunk_list,
        "chunks_count": len(chunk_list),
        "file_path": f"{len(doc_ids)} documents",
        "metadata": {},
    }
    entities = {"entity_names": sorted(names), "count": len(names)} if names else None
    relations = {"relation_pairs": [list(p) for p in sorted(pairs)], "count": len(pairs)} if pairs else None
    joint = deletion_view(
        rag,
        {
            "doc_status": _Overlay(rag.doc_status, key, joint_status),
            "full_docs": _Overlay(rag.full_docs, key, {"content": ""}),
            "full_entities": _Overlay(rag.full_entities, key, entities),
            "full_relations": _Overlay(rag.full_relations, key, relations),
        },
    )
    result = await joint.adelete_by_doc_id(key, False)
    if result.status != "success":
        return result
    await rag.full_entities.delete(doc_ids)
    await rag.full_relations.delete(doc_ids)
    await rag.doc_status.delete(doc_ids)
    await rag.full_docs.delete(doc_ids)
    return result


class PurgeBatches:
    """One purge pass at a time per workspace; a pass takes every document waiting when it starts."""

    def __init__(self, run_pass: PassRunner) -> None:
        self._run_pass = run_pass
        self._pending: dict[str, list[asyncio.Future[DeletionResult]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Observability (and what the tests count).
        self.passes = 0
        self.largest_pass = 0

    async def purge(self, doc_id: str) -> DeletionResult:
        """Return once ``doc_id`` was deleted in a pass (this one's, or the next)."""
        future: asyncio.Future[DeletionResult] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(doc_id, []).append(future)
        self._pump()
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Stop the pass in flight (shutdown): its documents keep their records and are purged
        again by the next attempt of their tasks."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    def _pump(self) -> None:
        if self._task is not None or not self._pending:
            return
        if self._closed:  # shutting down: the waiters' tasks purge again on their next attempt
            for futures in self._pending.values():
                for future in futures:
                    future.cancel()
            self._pending.clear()
            return
        batch, self._pending = self._pending, {}
        self._task = asyncio.get_running_loop().create_task(self._run(batch), name="purge-pass")

    async def _run(self, batch: dict[str, list[asyncio.Future[DeletionResult]]]) -> None:
        self.passes += 1
        self.largest_pass = max(self.largest_pass, len(batch))
        log.info("purge pass %d started: %d document(s)", self.passes, len(batch))
        try:
            results = await self._run_pass(list(batch))
        except BaseException as exc:  # delivered to every waiter
            for futures in batch.values():
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                        future.exception()  # a waiter that gave up must not log it as never retrieved
            if not isinstance(exc, Exception):
                raise
        else:
            for doc_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(results[doc_id])
        finally:
            if self._task is asyncio.current_task():
                self._task = None
            self._pump()
