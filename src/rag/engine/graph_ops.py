"""Reading and editing one tenant's knowledge graph through LightRAG's own graph functions.

Reads use the graph storage's label functions and `get_knowledge_graph`. Edits (LightRAG's
`aedit_entity`, `acreate_relation`, `amerge_entities`, `adelete_by_entity`, ...) take the
indexer's graph gate exclusively: merges of documents hold it shared, so an edit never interleaves
with a merge, of the same entity or any other (LightRAG's keyed locks alone would let an edit
rename an entity a merge is about to upsert). The edit is then committed like a document.
"""

from __future__ import annotations

from typing import Any

from src.rag.engine.tenant_engines import TenantEngine
from src.rag.errors import GraphEditRefused, GraphItemNotFound
from src.rag.knowledge import GraphEdit, GraphEditKind, Subgraph


async def labels(engine: TenantEngine, limit: int) -> list[str]:
    return (await engine.rag.get_graph_labels())[:limit]


async def popular(engine: TenantEngine, limit: int) -> list[str]:
    return list(await engine.rag.chunk_entity_relation_graph.get_popular_labels(limit))


async def search(engine: TenantEngine, query: str, limit: int) -> list[str]:
    return list(await engine.rag.chunk_entity_relation_graph.search_labels(query, limit))


async def subgraph(engine: TenantEngine, label: str, max_depth: int, max_nodes: int) -> Subgraph:
    graph = await engine.rag.get_knowledge_graph(node_label=label, max_depth=max_depth, max_nodes=max_nodes)
    data = graph.model_dump()
    return Subgraph(
        list(data.get("nodes") or []), list(data.get("edges") or []), bool(data.get("is_truncated"))
    )


async def exists(engine: TenantEngine, name: str) -> bool:
    return bool(await engine.rag.chunk_entity_relation_graph.has_node(name))


#: Edits of one relation: LightRAG locks both of its ends, so a relation from an entity to itself
#: would take the same (non-reentrant) keyed lock twice and hang, holding the graph gate.
_RELATION_EDITS = (GraphEditKind.EDIT_RELATION, GraphEditKind.CREATE_RELATION, GraphEditKind.DELETE_RELATION)


async def edit(engine: TenantEngine, change: GraphEdit) -> dict[str, Any]:
    if change.kind in _RELATION_EDITS and change.source == change.target:
        raise GraphEditRefused(f"a relation links two different entities, not '{change.source}' to itself")
    rag = engine.rag
    async with engine.indexer.gate.exclusive():
        try:
            result = await _apply(rag, change)
        except ValueError as exc:  # LightRAG's way of saying "not like this"
            message = str(exc)
            if "not exist" in message or "not found" in message:
                raise GraphItemNotFound(message) from None
            raise GraphEditRefused(message) from None
        await engine.indexer.flush()
    return result


async def _apply(rag: Any, change: GraphEdit) -> dict[str, Any]:
    kind = change.kind
    if kind == GraphEditKind.EDIT_ENTITY:
        return await rag.aedit_entity(
            change.entity, change.data, allow_rename=change.allow_rename, allow_merge=change.allow_merge
        )
    if kind == GraphEditKind.EDIT_RELATION:
        return await rag.aedit_relation(change.source, change.target, change.data)
    if kind == GraphEditKind.CREATE_ENTITY:
        return await rag.acreate_entity(change.entity, change.data)
    if kind == GraphEditKind.CREATE_RELATION:
        return await rag.acreate_relation(change.source, change.target, change.data)
    if kind == GraphEditKind.MERGE_ENTITIES:
        return await rag.amerge_entities(source_entities=list(change.sources), target_entity=change.entity)
    if kind == GraphEditKind.DELETE_ENTITY:
        if not await rag.chunk_entity_relation_graph.has_node(change.entity):
            raise GraphItemNotFound(f"entity '{change.entity}' does not exist")
        result = await rag.adelete_by_entity(change.entity)
    else:
        if not await rag.chunk_entity_relation_graph.has_edge(change.source, change.target):
            raise GraphItemNotFound(f"relation '{change.source}' - '{change.target}' does not exist")
        result = await rag.adelete_by_relation(change.source, change.target)
    if result.status != "success":
        raise GraphEditRefused(result.message or f"could not {kind.value.replace('_', ' ')}")
    return {"status": result.status, "message": result.message}
