"""LightRAG Server's `/health`: the shape its WebUI reads (status, configuration, pipeline_busy)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.body_limits import BoundedJsonRoute
from api.deps import ServicesDep, keys_required
from api.lightrag.auth import CompatTenantDep, versions
from api.lightrag.mount import PREFIX
from src.rag.llm import llm_description
from src.rag.rerank import rerank_description

router = APIRouter(prefix=PREFIX, tags=["lightrag: health"], route_class=BoundedJsonRoute)


@router.get("/health", summary="LightRAG Server: status and configuration (no secrets, no paths)")
async def health(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    settings = services.settings
    busy = await services.store.pending_count(tenant) + await services.store.running_count(tenant) > 0
    return {
        "status": "healthy",
        "webui_available": True,
        "working_directory": services.knowledge_bases.workspace_for(tenant),
        "input_directory": "INPUT_DIR" if settings.input_dir else "",
        "configuration": {
            "llm_binding": settings.resolved_llm_provider,
            "llm_model": llm_description(settings),
            "embedding_binding": settings.resolved_embedding_provider,
            "embedding_model": settings.embedding_model,
            "workspace": services.knowledge_bases.workspace_for(tenant),
            "max_graph_nodes": 1000,
            "enable_rerank": settings.rerank_binding != "null",
            "rerank_binding": settings.rerank_binding,
            "rerank_model": rerank_description(settings),
            "summary_language": settings.summary_language,
            "max_async": settings.llm_max_async,
            "enable_llm_cache": True,
            "enable_llm_cache_for_extract": True,
        },
        "auth_mode": "enabled" if await keys_required(services) else "disabled",
        "pipeline_busy": busy,
        **versions(),
    }
