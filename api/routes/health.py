"""Liveness/readiness, metrics and queue statistics.

`/health` is public but says only ``{"status": "ok"|"degraded"}`` (503 + Retry-After when
degraded: Redis unreachable, the uploads directory not writable, or, on a ROLE=api instance, no
worker seen within 3 heartbeats): its details (Redis, storage and the loaded tenants' names, model
bindings, tasks) need `Authorization: Bearer $ADMIN_TOKEN`, unless HEALTH_DETAILS=public. `/metrics` (tenant
labels) needs the admin token too; METRICS_PORT serves it on a separate listener instead. Error
texts in the details never contain server paths (a Redis socket path, the data dir).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.schemas import QueueStats
from src.core.config import Settings
from src.core.scrub import scrub_paths
from src.rag.embedding import embedding_description
from src.rag.llm import llm_description
from src.rag.llm.vision import vision_description
from src.wiring import Services

router = APIRouter(tags=["health"])
RETRY_AFTER_SECONDS = 5


def is_admin(request: Request, settings: Settings) -> bool:
    """True when the request carries the admin token (compared in constant time)."""
    token = settings.admin_token
    header = request.headers.get("authorization", "")
    if not token or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


@router.get("/health", summary="ok/degraded; details (Redis, storage, models, tasks) for the admin")
async def health(request: Request, services: ServicesDep) -> JSONResponse:
    settings = services.settings
    try:
        redis = {"ok": True, "latency_ms": round(await services.store.ping(), 3)}
    except Exception as exc:
        redis = {"ok": False, "error": f"{type(exc).__name__}: {scrub_paths(str(exc))}"}
    writable = await services.files.writable()
    workers = await _workers_seen(services) if redis["ok"] else None
    healthy = redis["ok"] and writable and workers != 0
    status = 200 if healthy else 503
    headers = None if healthy else {"Retry-After": str(RETRY_AFTER_SECONDS)}
    summary = {"status": "ok" if healthy else "degraded"}
    if settings.health_details != "public" and not is_admin(request, settings):
        return JSONResponse(summary, status_code=status, headers=headers)
    embedded = services.redis.embedded
    redis["embedded"] = embedded.describe() if embedded is not None else False
    body = {
        **summary,
        "instance_id": services.instance_id,
        "redis": redis,
        "storage": {"ok": writable, "loaded_tenants": services.knowledge_bases.loaded()},
        "llm": llm_description(settings),
        "embedding": embedding_description(settings),
        "parser": settings.parser,
        "pictures": vision_description(settings),
        "tasks": {"running_here": services.runner.running_count, "capacity": services.runner.capacity},
    }
    if settings.role == "api":
        body["workers_seen"] = workers
    return JSONResponse(body, status_code=status, headers=headers)


async def _workers_seen(services: Services) -> int | None:
    """On a ROLE=api instance, the task runners seen lately (0: nothing would ever run what it
    accepts, so it is degraded); None elsewhere (the instance runs tasks itself)."""
    if services.settings.role != "api":
        return None
    within = max(15.0, 3 * services.settings.heartbeat_seconds)
    try:
        return await services.store.live_instances(within)
    except Exception:
        return 0


async def render_metrics(services: Services) -> bytes:
    """Refresh the task gauges from Redis and render the Prometheus text format."""
    m = services.metrics
    for tenant in await services.store.tenants_seen():
        for status, count in (await services.store.counts(tenant)).items():
            m.tasks.labels(tenant, status).set(count)
    m.queue_depth.set(await services.store.pending_count())
    m.running.set(services.runner.running_count)
    m.capacity.set(services.runner.capacity)
    return m.render()


@router.get("/metrics", summary="Prometheus metrics (admin token)", response_class=Response)
async def metrics(request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    if not settings.admin_token:
        raise ApiError(
            404, "not_found", "/metrics needs ADMIN_TOKEN (or METRICS_PORT for a separate listener)"
        )
    if not is_admin(request, settings):
        raise ApiError(
            401, "invalid_admin_token", "admin token missing or wrong", headers={"WWW-Authenticate": "Bearer"}
        )
    return Response(await render_metrics(services), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/queue/stats", response_model=QueueStats, summary="Task counts per status and capacity")
async def queue_stats(tenant: TenantDep, services: ServicesDep) -> QueueStats:
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
