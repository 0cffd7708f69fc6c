"""FastAPI dependencies as Annotated aliases (the FastAPI full-stack template's style).

Every scoped route depends on `TenantDep`: it authenticates the API key (Bearer or X-API-Key),
maps it to a tenant, and applies the tenant's request rate limit. Keys are never logged.
`OwnedTaskDep` resolves the `{task_id}` path parameter to a task of the caller's tenant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.errors import ApiError
from src.core.logs import current_tenant
from src.ingestion.service import IngestionService
from src.tasks.models import TaskRecord
from src.tenancy.tenants import DEFAULT_TENANT
from src.wiring import Services


async def get_services(request: Request) -> Services:
    # async: a plain def dependency would run in the thread pool on every request (hot path).
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    # EventSource (browsers) cannot send headers, so event streams also accept ?access_token=.
    return request.headers.get("x-api-key") or request.query_params.get("access_token") or None


async def get_tenant(request: Request, services: ServicesDep) -> str:
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


TenantDep = Annotated[str, Depends(get_tenant)]


async def get_ingestion(services: ServicesDep) -> IngestionService:
    # async for the same reason as get_services: a plain def would cost a thread-pool hop per request.
    return services.ingestion


IngestionDep = Annotated[IngestionService, Depends(get_ingestion)]


async def get_owned_task(task_id: str, tenant: TenantDep, ingestion: IngestionDep) -> TaskRecord:
    """The task if it exists *and belongs to the caller*; otherwise the same 404 (no existence leak)."""
    return await ingestion.task(tenant, task_id)


OwnedTaskDep = Annotated[TaskRecord, Depends(get_owned_task)]
