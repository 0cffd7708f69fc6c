"""FastAPI dependencies: the long-lived services, and the caller's tenant.

Every scoped route depends on `get_tenant`: it authenticates the API key (Bearer or X-API-Key),
maps it to a tenant, and applies the tenant's request rate limit. Keys are never logged.
"""

from __future__ import annotations

from fastapi import Depends, Request

from api.errors import ApiError
from src.core.logs import current_tenant
from src.tasks.models import TaskRecord
from src.tenancy.tenants import DEFAULT_TENANT
from src.wiring import Services


async def get_services(request: Request) -> Services:
    # async: a plain def dependency would run in the thread pool on every request (hot path).
    return request.app.state.services


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    # EventSource (browsers) cannot send headers, so event streams also accept ?access_token=.
    return request.headers.get("x-api-key") or request.query_params.get("access_token") or None


async def get_tenant(request: Request, services: Services = Depends(get_services)) -> str:
    key = _presented_key(request)
    mode = services.settings.auth_mode
    if key:
        tenant = await services.tenants.resolve(key)
        if tenant is None:
            raise ApiError(
                401, "invalid_api_key", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
    elif mode == "required" or (mode == "auto" and await services.tenants.any_keys()):
        raise ApiError(
            401,
            "missing_api_key",
            "an API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    else:
        tenant = DEFAULT_TENANT
    current_tenant.set(tenant)  # every log line of this request names its tenant
    retry_after = await services.limiter.hit(tenant)
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            "request rate limit of this tenant reached; retry later",
            headers={"Retry-After": str(int(retry_after + 0.999))},
        )
    return tenant


def not_found(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"task {task_id} not found (unknown, or expired after its TTL)")


async def get_owned_task(services: Services, tenant: str, task_id: str) -> TaskRecord:
    """The task if it exists *and belongs to the caller*; otherwise the same 404 (no existence leak)."""
    record = await services.store.get(task_id) if len(task_id) <= 64 else None
    if record is None or record.tenant != tenant:
        raise not_found(task_id)
    return record
