"""LightRAG Server's knowledge-graph routes: labels, the graph around an entity, and edits.

Edits take the indexer's graph gate exclusively (no document merges meanwhile) and are durable
when answered (src/rag/engine/graph_ops.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.body_limits import BoundedJsonRoute
from api.deps import ServicesDep
from api.lightrag.auth import CompatTenantDep
from api.lightrag.mount import PREFIX
from src.rag.knowledge import GraphEdit, GraphEditKind

router = APIRouter(prefix=PREFIX, tags=["lightrag: graph"], route_class=BoundedJsonRoute)

#: Bounds of what one request may ask for (LightRAG Server's MAX_GRAPH_NODES default is 1000).
MAX_GRAPH_NODES = 1000
MAX_LABELS = 100_000
Name = Field(min_length=1, max_length=500)


class EntityUpdateRequest(BaseModel):
    entity_name: str = Name
    updated_data: dict[str, Any]
    allow_rename: bool = False
    allow_merge: bool = False


class RelationUpdateRequest(BaseModel):
    source_id: str = Name
    target_id: str = Name
    updated_data: dict[str, Any]


class EntityCreateRequest(BaseModel):
    entity_name: str = Name
    entity_data: dict[str, Any]


class RelationCreateRequest(BaseModel):
    source_entity: str = Name
    target_entity: str = Name
    relation_data: dict[str, Any]


class EntityMergeRequest(BaseModel):
    entities_to_change: list[str] = Field(min_length=1, max_length=100)
    entity_to_change_into: str = Name


@router.get("/graph/label/list", summary="LightRAG Server: every entity name, sorted")
async def label_list(tenant: CompatTenantDep, services: ServicesDep) -> list[str]:
    return await services.knowledge.graph_labels(tenant, MAX_LABELS)


@router.get("/graph/label/popular", summary="LightRAG Server: the most connected entities")
async def label_popular(
    tenant: CompatTenantDep, services: ServicesDep, limit: int = Query(300, ge=1, le=1000)
) -> list[str]:
    return await services.knowledge.popular_labels(tenant, limit)


@router.get("/graph/label/search", summary="LightRAG Server: entity names matching a search")
async def label_search(
    tenant: CompatTenantDep,
    services: ServicesDep,
    q: str = Query(..., min_length=1, max_length=200),
    limit: int = Query(50, ge=1, le=100),
) -> list[str]:
    return await services.knowledge.search_labels(tenant, q, limit)


@router.get("/graphs", summary="LightRAG Server: the graph around an entity ('*': all of it)")
async def graphs(
    tenant: CompatTenantDep,
    services: ServicesDep,
    label: str = Query(..., min_length=1, max_length=500),
    max_depth: int = Query(3, ge=1, le=10),
    max_nodes: int = Query(1000, ge=1, le=MAX_GRAPH_NODES),
) -> dict[str, Any]:
    return (await services.knowledge.subgraph(tenant, label, max_depth, max_nodes)).as_dict()


@router.get("/graph/entity/exists", summary="LightRAG Server: whether an entity exists")
async def entity_exists(
    tenant: CompatTenantDep, services: ServicesDep, name: str = Query(..., min_length=1, max_length=500)
) -> dict[str, bool]:
    return {"exists": await services.knowledge.entity_exists(tenant, name)}


@router.post("/graph/entity/edit", summary="LightRAG Server: edit (or rename) an entity")
async def entity_edit(
    body: EntityUpdateRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(
        GraphEditKind.EDIT_ENTITY,
        entity=body.entity_name,
        data=body.updated_data,
        allow_rename=body.allow_rename,
        allow_merge=body.allow_merge,
    )
    result = dict(await services.knowledge.edit_graph(tenant, edit))
    final = body.updated_data.get("entity_name", body.entity_name)
    summary = result.pop(
        "operation_summary",
        {
            "merged": False,
            "merge_status": "not_attempted",
            "merge_error": None,
            "operation_status": "success",
            "target_entity": None,
            "final_entity": final,
            "renamed": final != body.entity_name,
        },
    )
    message = (
        f"Entity merged successfully into '{summary['final_entity']}'"
        if summary.get("merged")
        else "Entity updated successfully"
    )
    return {"status": "success", "message": message, "data": result, "operation_summary": summary}


@router.post("/graph/relation/edit", summary="LightRAG Server: edit a relation")
async def relation_edit(
    body: RelationUpdateRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(
        GraphEditKind.EDIT_RELATION, source=body.source_id, target=body.target_id, data=body.updated_data
    )
    result = await services.knowledge.edit_graph(tenant, edit)
    return {"status": "success", "message": "Relation updated successfully", "data": result}


@router.post("/graph/entity/create", summary="LightRAG Server: create an entity")
async def entity_create(
    body: EntityCreateRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(GraphEditKind.CREATE_ENTITY, entity=body.entity_name, data=body.entity_data)
    result = await services.knowledge.edit_graph(tenant, edit)
    return {
        "status": "success",
        "message": f"Entity '{body.entity_name}' created successfully",
        "data": result,
    }


@router.post("/graph/relation/create", summary="LightRAG Server: create a relation")
async def relation_create(
    body: RelationCreateRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(
        GraphEditKind.CREATE_RELATION,
        source=body.source_entity,
        target=body.target_entity,
        data=body.relation_data,
    )
    result = await services.knowledge.edit_graph(tenant, edit)
    return {
        "status": "success",
        "message": f"Relation created successfully between '{body.source_entity}' and '{body.target_entity}'",
        "data": result,
    }


@router.post("/graph/entities/merge", summary="LightRAG Server: merge entities into one")
async def entities_merge(
    body: EntityMergeRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(
        GraphEditKind.MERGE_ENTITIES,
        entity=body.entity_to_change_into,
        sources=tuple(body.entities_to_change),
    )
    result = await services.knowledge.edit_graph(tenant, edit)
    count, target = len(body.entities_to_change), body.entity_to_change_into
    return {
        "status": "success",
        "message": f"Successfully merged {count} entities into '{target}'",
        "data": result,
    }
