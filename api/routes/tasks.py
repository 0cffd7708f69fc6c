"""Task endpoints: poll one task, list tasks, cancel a task (pending or running)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from api.deps import OwnedTaskDep, TasksDep, TenantDep
from api.schemas import CancelResult, TaskList, TaskView
from api.task_poll import task_view_json
from api.views import task_view
from src.tasks.models import TaskStatus

router = APIRouter(tags=["tasks"])

_CANCEL_MESSAGES = {
    TaskStatus.CANCELLED: "Task cancelled",
    TaskStatus.CANCELLING: "Task is being cancelled: its work is stopped and its partial data removed",
}


# The most polled route. Its requests are answered by api/task_poll.py's middleware (the same
# document at the cost of one Redis round trip); this route documents the endpoint (OpenAPI) and is
# the reference answer the middleware's is tested against.
async def get_task(task: OwnedTaskDep) -> Response:
    return Response(task_view(task).model_dump_json(), media_type="application/json")


router.add_api_route(
    "/task/{task_id}",
    get_task,
    methods=["GET"],
    response_model=TaskView,
    name="get_task",
    summary="Status of one task",
    description="Status, stage, progress, attempts and result of one task of the caller's tenant; "
    "404 for an unknown id, an expired task or another tenant's task.",
)


@router.get("/tasks", response_model=TaskList, summary="Recent tasks, newest first")
async def list_tasks(
    tenant: TenantDep,
    tasks: TasksDep,
    status: TaskStatus | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> Response:
    """The dashboard's refresh: each view written straight from its stored hash, as the poll route
    writes it (api/task_poll.py), instead of validating each record into two models and the page
    into a third (a page of 50 cost 28% of the event loop in the mixed-load benchmark)."""
    total, rows = await tasks.stored_page(tenant, status=status, offset=offset, limit=limit)
    views = ",".join(task_view_json(fields) for fields in rows)
    body = f'{{"total":{total},"offset":{offset},"limit":{limit},"tasks":[{views}]}}'
    return Response(body, media_type="application/json")


@router.delete(
    "/task/{task_id}",
    response_model=CancelResult,
    summary="Cancel a task, pending or running",
    responses={202: {"model": CancelResult, "description": "running task: being stopped and cleaned up"}},
)
async def cancel_task(task_id: str, tenant: TenantDep, tasks: TasksDep) -> JSONResponse:
    """Pending → cancelled at once (200). Running → `cancelling` (202): its LLM work is stopped, its
    partial data removed from the knowledge base, then it becomes `cancelled`. Finished → 409."""
    cancellation = await tasks.cancel(tenant, task_id)
    body = CancelResult(
        message=_CANCEL_MESSAGES[cancellation.status], task_id=task_id, status=cancellation.status
    )
    code = 200 if cancellation.status == TaskStatus.CANCELLED else 202
    return JSONResponse(body.model_dump(), status_code=code)
