"""Task endpoints: poll one task, list tasks, cancel a pending task."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from api.deps import get_owned_task, get_services, get_tenant
from api.errors import ApiError
from api.schemas import CancelResult, TaskList, TaskView
from api.views import task_view
from src.ingestion.uploads import remove_file
from src.tasks.models import TaskStatus
from src.wiring import Services

router = APIRouter(tags=["tasks"])


@router.get("/task/{task_id}", response_model=TaskView, name="get_task", summary="Status of one task")
async def get_task(
    task_id: str, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> TaskView:
    return task_view(await get_owned_task(services, tenant, task_id))


@router.get("/tasks", response_model=TaskList, summary="Recent tasks, newest first")
async def list_tasks(
    status: TaskStatus | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000),
    tenant: str = Depends(get_tenant),
    services: Services = Depends(get_services),
) -> TaskList:
    total, records = await services.store.list(tenant=tenant, status=status, offset=offset, limit=limit)
    return TaskList(total=total, offset=offset, limit=limit, tasks=[task_view(r) for r in records])


@router.delete(
    "/task/{task_id}",
    response_model=CancelResult,
    summary="Cancel a task",
    responses={202: {"model": CancelResult, "description": "running task: being stopped and cleaned up"}},
)
async def cancel_task(
    task_id: str, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> JSONResponse:
    """Pending → cancelled at once (200). Running → `cancelling` (202): its LLM work is stopped, its
    partial data removed from the knowledge base, then it becomes `cancelled`. Finished → 409."""
    await get_owned_task(services, tenant, task_id)
    outcome = await services.store.request_cancel(task_id)
    if outcome.status == "missing":
        raise ApiError(404, "task_not_found", f"task {task_id} not found (unknown, or expired after its TTL)")
    if outcome.accepted and outcome.status == TaskStatus.CANCELLED:
        record = await services.store.get(task_id)
        if record and record.stored_name:
            await remove_file(services.settings.uploads_dir / record.stored_name)
        services.webhooks.notify(task_id)
        body = CancelResult(message="Task cancelled", task_id=task_id, status=TaskStatus.CANCELLED)
        return JSONResponse(body.model_dump(), status_code=200)
    if outcome.status == TaskStatus.CANCELLING:  # also a repeated DELETE while it is being cancelled
        services.runner.cancel_local(task_id)  # other instances notice at their next heartbeat
        body = CancelResult(
            message="Task is being cancelled: its work is stopped and its partial data removed",
            task_id=task_id,
            status=TaskStatus.CANCELLING,
        )
        return JSONResponse(body.model_dump(), status_code=202)
    raise ApiError(
        409, "task_finished", f"task already {outcome.status}; nothing to cancel", status=outcome.status
    )
