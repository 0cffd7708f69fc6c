"""FastAPI dependencies as Annotated aliases (the FastAPI full-stack template's style).

Every scoped route depends on `TenantDep`: it authenticates the API key (Bearer or X-API-Key),
maps it to a tenant, and applies the tenant's request rate limit. Keys are never logged.
`OwnedTaskDep` resolves the `{task_id}` path parameter to a task of the caller's tenant.
Only the event streams (`StreamTenantDep`, `OwnedStreamTaskDep`) also accept `?access_token=`:
a browser's EventSource cannot send headers. Everywhere else a key in the URL is ignored, since
URLs end up in access logs, proxies and browser history.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from api.body_limits import before_body, remembered
from api.errors import ApiError
from src.core.defaults import DEFAULT_TENANT, MAX_PRIORITY, MIN_PRIORITY
from src.core.logs import current_tenant
from src.ingestion.batches import BatchService
from src.ingestion.knowledge import KnowledgeService
from src.ingestion.submission import SubmissionService
from src.ingestion.tasks import TaskService
from src.tasks.fanout import TaskEventHub
from src.tasks.models import TaskRecord
from src.wiring import Services


async def get_services(request: Request) -> Services:
    # async: a plain def dependency would run in the thread pool on every request (hot path).
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_key(request: Request, *, allow_query: bool) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    key = request.headers.get("x-api-key")
    if not key and allow_query:
        key = request.query_params.get("access_token")
    return key or None


@before_body
async def get_tenant(request: Request, services: ServicesDep) -> str:
    return await remembered(request, "tenant", lambda: authenticate(request, services, allow_query=False))


@before_body
async def get_stream_tenant(request: Request, services: ServicesDep) -> str:
    """Like `get_tenant`, but also accepts ``?access_token=`` (EventSource cannot send headers)."""
    return await remembered(
        request, "stream-tenant", lambda: authenticate(request, services, allow_query=True)
    )


async def authenticate(request: Request, services: Services, *, allow_query: bool) -> str:
    """The caller's tenant from its API key (401 without a valid one when keys are required), its
    request counted against the tenant's rate limit (429)."""
    return await authenticate_key(services, _presented_key(request, allow_query=allow_query))


async def keys_required(services: Services) -> bool:
    """Whether a request must present a key (AUTH_MODE=required, or auto once a key exists)."""
    mode = services.settings.auth_mode
    return mode == "required" or (mode == "auto" and await services.tenants.any_keys())


async def authenticate_key(services: Services, key: str | None) -> str:
    """The tenant of ``key`` (401 when invalid, or missing while keys are required), rate limited."""
    if key:
        tenant = await services.tenants.resolve(key)
        if tenant is None:
            raise ApiError(
                401, "invalid_api_key", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
    elif await keys_required(services):
        raise ApiError(
            401,
            "missing_api_key",
            "an API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    else:
        tenant = DEFAULT_TENANT
    return await admit_tenant(services, tenant)


async def admit_tenant(services: Services, tenant: str) -> str:
    """An authenticated tenant's request: named in every log line, counted by its rate limit."""
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
StreamTenantDep = Annotated[str, Depends(get_stream_tenant)]


async def get_submission(services: ServicesDep) -> SubmissionService:
    # async for the same reason as get_services: a plain def would cost a thread-pool hop per request.
    return services.submission


async def get_tasks(services: ServicesDep) -> TaskService:
    return services.tasks


async def get_knowledge(services: ServicesDep) -> KnowledgeService:
    return services.knowledge


async def get_batches(services: ServicesDep) -> BatchService:
    return services.batches


async def get_events(services: ServicesDep) -> TaskEventHub:
    return services.events


SubmissionDep = Annotated[SubmissionService, Depends(get_submission)]
TasksDep = Annotated[TaskService, Depends(get_tasks)]
KnowledgeDep = Annotated[KnowledgeService, Depends(get_knowledge)]
BatchesDep = Annotated[BatchService, Depends(get_batches)]
EventsDep = Annotated[TaskEventHub, Depends(get_events)]


async def get_owned_task(task_id: str, tenant: TenantDep, tasks: TasksDep) -> TaskRecord:
    """The task if it exists *and belongs to the caller*; otherwise the same 404 (no existence leak)."""
    return await tasks.task(tenant, task_id)


OwnedTaskDep = Annotated[TaskRecord, Depends(get_owned_task)]


async def get_owned_stream_task(task_id: str, tenant: StreamTenantDep, tasks: TasksDep) -> TaskRecord:
    """`get_owned_task` for the event stream route (query-string key allowed)."""
    return await tasks.task(tenant, task_id)


OwnedStreamTaskDep = Annotated[TaskRecord, Depends(get_owned_stream_task)]


#: Options every task-creating route takes as query parameters (uploads, batches, query tasks).
CallbackUrlQuery = Annotated[
    str | None, Query(description="POST a signed JSON event here when the task ends")
]
PriorityQuery = Annotated[
    int,
    Query(
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description=f"{MIN_PRIORITY} (bulk) .. {MAX_PRIORITY} (interactive); higher runs first",
    ),
]
