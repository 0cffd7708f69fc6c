"""Re-indexing a document under the same id: the new version is indexed beside the old one, swapped
in at once, and only then is the old one purged — so a query sees the old version or the new one,
never a mix of their chunks.

Two internal versions of document ``D`` exist while a re-index runs (``#`` is never in a client's
document id, `src.ingestion.submission.check_doc_id`):

- ``D#next``: the new content, indexed like any document. Chunks it shares with ``D`` (same text,
  same chunk id) are listed in its chunk list but not written, extracted or merged again: they are
  already in the graph, and merging a chunk twice would duplicate its descriptions.
- ``D#retired``: after the swap, the old version's records, listing only the chunks the new version
  does not have; purging it takes exactly those out (and rebuilds the entities they fed).

The swap is a handful of record writes under the workspace's graph gate; the switch itself is one
write (``doc_status[D]`` becomes the new record). Every step is idempotent, so a task that dies
anywhere resumes: the next attempt finishes the swap or the purge.

Queries hide a chunk whose record belongs to a version (``full_doc_id`` with ``#``) unless the
visible record ``D`` lists it: before the switch the new version's own chunks are hidden, after it
the old version's. Entity and relation descriptions are LightRAG's merged summaries: between the
merge of the new version and the purge of the old one they may mention both (the purge rebuilds
them from the chunks that remain).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from lightrag import LightRAG

log = logging.getLogger(__name__)

SEPARATOR = "#"
NEXT = "next"
RETIRED = "retired"

#: Set while a query reads the knowledge base: chunk reads then hide versions in flight.
_querying: contextvars.ContextVar[bool] = contextvars.ContextVar("ragsvc_querying", default=False)


def next_id(doc_id: str) -> str:
    return f"{doc_id}{SEPARATOR}{NEXT}"


def retired_id(doc_id: str) -> str:
    return f"{doc_id}{SEPARATOR}{RETIRED}"


def is_version(doc_id: str) -> bool:
    """An internal version record, never shown as a document."""
    return SEPARATOR in doc_id


def base_of(doc_id: str) -> str:
    return doc_id.split(SEPARATOR, 1)[0]


async def chunk_list(rag: LightRAG, doc_id: str) -> list[str]:
    record = await rag.doc_status.get_by_id(doc_id)
    return list((record or {}).get("chunks_list") or [])


async def base_chunks(rag: LightRAG, doc_id: str) -> set[str]:
    """For a version id, the chunks its visible document lists (never to be written or deleted
    through the version); for a document id, none."""
    if not is_version(doc_id):
        return set()
    return set(await chunk_list(rag, base_of(doc_id)))


async def swap(rag: LightRAG, doc_id: str) -> bool:
    """Make ``D#next`` (PROCESSED) the visible ``D`` and keep the old version's own chunks as
    ``D#retired``, to be purged next. Call under the graph gate, exclusively. Returns False when
    there is nothing to swap (done by an earlier attempt)."""
    staging, retired = next_id(doc_id), retired_id(doc_id)
    new = await rag.doc_status.get_by_id(staging)
    if new is None:
        return False
    new_chunks = list(new.get("chunks_list") or [])
    old = await rag.doc_status.get_by_id(doc_id)
    old_entities = await rag.full_entities.get_by_id(doc_id) or {}
    old_relations = await rag.full_relations.get_by_id(doc_id) or {}
    switched = old is not None and old.get("track_id") == new.get("track_id")
    if old is not None and not switched and await rag.doc_status.get_by_id(retired) is None:
        keep = set(new_chunks)
        old_only = [c for c in old.get("chunks_list") or [] if c not in keep]
        # The old version's own chunks move to the retired record first (hidden from then on,
        # once the switch below has happened); the retired doc-status record is written last: it
        # marks this step as done.
        await _set_owner(rag, old_only, retired)
        await rag.full_docs.upsert({retired: await rag.full_docs.get_by_id(doc_id) or {"content": ""}})
        if old_entities:
            await rag.full_entities.upsert({retired: old_entities})
        if old_relations:
            await rag.full_relations.upsert({retired: old_relations})
        retired_record = {**old, "chunks_list": old_only, "chunks_count": len(old_only)}
        await rag.doc_status.upsert({retired: retired_record})
    # The switch: one record write. Then the new version's records take the document's name.
    created = (old or new).get("created_at") or new.get("created_at")
    await rag.doc_status.upsert({doc_id: {**new, "created_at": created}})
    staged_doc = await rag.full_docs.get_by_id(staging)
    if staged_doc is not None:
        await rag.full_docs.upsert({doc_id: staged_doc})
    await _set_owner(rag, new_chunks, doc_id, only_from=staging)
    new_entities = await rag.full_entities.get_by_id(staging) or {}
    new_relations = await rag.full_relations.get_by_id(staging) or {}
    if not switched:  # the document's entities: the new version's and the shared chunks' (a superset)
        names = sorted({*(new_entities.get("entity_names") or []), *(old_entities.get("entity_names") or [])})
        both = [*(new_relations.get("relation_pairs") or []), *(old_relations.get("relation_pairs") or [])]
        pairs = {tuple(p) for p in both}
        await rag.full_entities.upsert({doc_id: {"entity_names": names, "count": len(names)}})
        await rag.full_relations.upsert(
            {doc_id: {"relation_pairs": [list(p) for p in sorted(pairs)], "count": len(pairs)}}
        )
    for storage in (rag.full_entities, rag.full_relations, rag.full_docs):
        await storage.delete([staging])
    await rag.doc_status.delete([staging])
    log.info("document %s: new version swapped in (%d chunks)", doc_id, len(new_chunks))
    return True


async def restore_unswapped(rag: LightRAG, doc_id: str) -> bool:
    """Undo a retired record whose swap never switched (the task died, or was abandoned, between
    the two steps): the visible ``D`` still lists those chunks, so purging them would cut pieces out
    of the version queries see. Its chunks go back to ``D`` and the record is dropped. Returns True
    when it did that; False when there is no such record or it is a real leftover to purge."""
    retired = retired_id(doc_id)
    record = await rag.doc_status.get_by_id(retired)
    if record is None:
        return False
    own = list(record.get("chunks_list") or [])
    if not own or not set(own) & set(await chunk_list(rag, doc_id)):
        return False
    await _set_owner(rag, own, doc_id, only_from=retired)
    for storage in (rag.full_entities, rag.full_relations, rag.full_docs):
        await storage.delete([retired])
    await rag.doc_status.delete([retired])
    log.info("document %s: an unfinished swap undone (%d chunks back)", doc_id, len(own))
    return True


async def _set_owner(
    rag: LightRAG, chunk_ids: list[str], owner: str, *, only_from: str | None = None
) -> None:
    """Point chunk records at ``owner`` (``only_from``: only those recorded under that id)."""
    if not chunk_ids:
        return
    records = await rag.text_chunks.get_by_ids(chunk_ids)
    changed = {
        chunk_id: {**record, "full_doc_id": owner}
        for chunk_id, record in zip(chunk_ids, records, strict=True)
        if record is not None
        and record.get("full_doc_id") != owner
        and (only_from is None or record.get("full_doc_id") == only_from)
    }
    if changed:
        await rag.text_chunks.upsert(changed)


# ---------------------------------------------------------------------- what queries see
@contextlib.contextmanager
def query_view() -> Iterator[None]:
    """Reads inside this block are a query's: chunks of versions in flight are hidden."""
    token = _querying.set(True)
    try:
        yield
    finally:
        _querying.reset(token)


def install_query_view(rag: LightRAG) -> None:
    """Wrap the chunk reads LightRAG's queries make (``text_chunks`` by id, ``chunks_vdb`` search)
    so that, inside `query_view`, they leave out chunks no visible document lists. Indexing and
    deleting read the storages unfiltered."""
    text_chunks, vdb = rag.text_chunks, rag.chunks_vdb
    get_by_ids, get_by_id, search = text_chunks.get_by_ids, text_chunks.get_by_id, vdb.query

    async def visible_ids(chunk_ids: list[str], records: list[dict[str, Any] | None]) -> set[str]:
        lists: dict[str, set[str]] = {}
        shown: set[str] = set()
        for chunk_id, record in zip(chunk_ids, records, strict=True):
            owner = str((record or {}).get("full_doc_id") or "")
            if not is_version(owner):
                shown.add(chunk_id)
                continue
            base = base_of(owner)
            if base not in lists:
                lists[base] = set(await chunk_list(rag, base))
            if chunk_id in lists[base]:
                shown.add(chunk_id)
        return shown

    async def filtered_get_by_ids(ids: list[str], *args: Any, **kwargs: Any) -> list[dict[str, Any] | None]:
        records = await get_by_ids(ids, *args, **kwargs)
        if not _querying.get():
            return records
        shown = await visible_ids(list(ids), list(records))
        return [record if chunk_id in shown else None for chunk_id, record in zip(ids, records, strict=True)]

    async def filtered_get_by_id(chunk_id: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        record = await get_by_id(chunk_id, *args, **kwargs)
        if not _querying.get() or record is None:
            return record
        return record if chunk_id in await visible_ids([chunk_id], [record]) else None

    async def filtered_search(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        results = await search(*args, **kwargs)
        if not _querying.get() or not results:
            return results
        # The vector rows' own full_doc_id is not rewritten by a swap: the chunk records decide.
        ids = [str(r.get("id") or "") for r in results]
        shown = await visible_ids(ids, list(await get_by_ids(ids)))
        return [r for r, chunk_id in zip(results, ids, strict=True) if chunk_id in shown]

    text_chunks.get_by_ids = filtered_get_by_ids  # type: ignore[method-assign]
    text_chunks.get_by_id = filtered_get_by_id  # type: ignore[method-assign]
    vdb.query = filtered_search  # type: ignore[method-assign]
