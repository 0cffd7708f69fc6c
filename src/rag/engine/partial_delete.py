"""Making LightRAG's `adelete_by_doc_id` see everything an unfinished document may have written.

LightRAG finds a document's entities through full_entities/full_relations, which it only writes at
the end of a successful merge. The indexer records the merge's entity and relation names in the
doc-status metadata before merging; here they are written where the delete looks, and the
chunk-tracking records of entities the graph never received are cleaned up directly.
"""

from __future__ import annotations

from typing import Any

from lightrag import LightRAG
from lightrag.utils import make_relation_chunk_key


async def prepare_partial_delete(rag: LightRAG, doc_id: str, record: dict[str, Any]) -> None:
    """Before deleting a document that is not PROCESSED (``record``: its doc-status record)."""
    metadata = record.get("metadata") or {}
    names = set(metadata.get("merge_entities") or [])
    pairs = {tuple(sorted(p)) for p in (metadata.get("merge_relations") or []) if len(p) == 2}
    if not names and not pairs:
        return
    chunk_ids = set(record.get("chunks_list") or [])
    known_entities = await rag.full_entities.get_by_id(doc_id) or {}
    known_relations = await rag.full_relations.get_by_id(doc_id) or {}
    names |= set(known_entities.get("entity_names") or [])
    pairs |= {tuple(sorted(p)) for p in (known_relations.get("relation_pairs") or []) if len(p) == 2}
    graph = rag.chunk_entity_relation_graph
    if names:
        await rag.full_entities.upsert({doc_id: {"entity_names": sorted(names), "count": len(names)}})
    if pairs:
        await rag.full_relations.upsert(
            {doc_id: {"relation_pairs": [list(p) for p in sorted(pairs)], "count": len(pairs)}}
        )
    for name in names:
        if rag.entity_chunks is not None and not await graph.has_node(name):
            await _subtract_chunks(rag.entity_chunks, name, chunk_ids)
    for src, tgt in pairs:
        if rag.relation_chunks is not None and not await graph.has_edge(src, tgt):
            await _subtract_chunks(rag.relation_chunks, make_relation_chunk_key(src, tgt), chunk_ids)


async def _subtract_chunks(storage: Any, key: str, chunk_ids: set[str]) -> None:
    stored = await storage.get_by_id(key)
    if not stored or not isinstance(stored, dict):
        return
    remaining = [c for c in stored.get("chunk_ids", []) if c and c not in chunk_ids]
    if remaining == stored.get("chunk_ids"):
        return
    if remaining:
        await storage.upsert({key: {"chunk_ids": remaining, "count": len(remaining)}})
    else:
        await storage.delete([key])
