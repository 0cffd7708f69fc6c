"""Liveness/readiness and queue statistics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep, TenantDep
from api.schemas import QueueStats
from src.rag.embedding import embedding_description
from src.rag.llm import llm_description

router = APIRouter(tags=["health"])


@router.get("/health", summary="Redis, storage and model bindings")
async def health(services: ServicesDep) -> JSONResponse:
    settings = services.settings
    try:
        redis = {"ok": True, "latency_ms": round(await services.store.ping(), 3)}
    except Exception as exc:
        redis = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    embedded = services.redis.embedded
    redis["embedded"] = embedded.describe() if embedded is not None else False
    writable = await services.ingestion.files.writable()
    storage = {"ok": writable, "loaded_tenants": services.engines.loaded()}
    healthy = redis["ok"] and writable
    body = {
        "status": "ok" if healthy else "degraded",
        "instance_id": services.instance_id,
        "redis": redis,
        "storage": storage,
        "llm": llm_description(settings),
        "embedding": embedding_description(settings),
        "tasks": {"running_here": services.runner.running_count, "capacity": services.runner.capacity},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    m = services.metrics
    for tenant in await services.store.tenants_seen():
        for status, count in (await services.store.counts(tenant)).items():
            m.tasks.labels(tenant, status).set(count)
    m.queue_depth.set(await services.store.pending_count())
    m.running.set(services.runner.running_count)
    m.capacity.set(services.runner.capacity)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/queue/stats", response_model=QueueStats, summary="Task counts per status and capacity")
async def queue_stats(
    tenant: TenantDep, services: ServicesDep
) -> QueueStats:
    """The caller's tasks per status, waiting and running; this instance's slots."""
    return QueueStats(
        tenant=tenant,
        counts=await services.store.counts(tenant),
        pending=await services.store.pending_count(tenant),
        running=await services.store.running_count(tenant),
        running_here=services.runner.running_count,
        capacity=services.runner.capacity,
        instance_id=services.instance_id,
    )
