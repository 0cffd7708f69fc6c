"""Server-Sent Events: push a task's status/stage/progress changes as they happen.

The stream reads the task record from Redis (so it works whichever instance runs the task) and
emits an event whenever the record changes. Each event's id is the record's `updated_at`, so a
client that reconnects with `Last-Event-ID` gets the current state only if it changed since.
The stream ends after a final status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import OwnedTaskDep, ServicesDep, TenantDep
from api.views import task_view
from src.tasks.models import TaskRecord

router = APIRouter(tags=["tasks"])
POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0


@router.get(
    "/task/{task_id}/events",
    summary="Stream a task's changes as Server-Sent Events (event: task, data: the task view)",
    response_class=StreamingResponse,
)
async def task_events(
    task_id: str,
    request: Request,
    owned: OwnedTaskDep,
    services: ServicesDep,
    last_event_id: str | None = Header(default=None),
) -> StreamingResponse:
    record: TaskRecord | None = owned
    try:
        last_seen = float(last_event_id) if last_event_id else -1.0
    except ValueError:
        last_seen = -1.0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal record, last_seen
        idle = 0.0
        yield b"retry: 2000\n\n"
        while True:
            if record is None:
                yield b'event: gone\ndata: {"detail": "task expired"}\n\n'
                return
            if record.updated_at > last_seen:
                last_seen = record.updated_at
                idle = 0.0
                data = json.dumps(task_view(record).model_dump())
                yield f"id: {record.updated_at:.6f}\nevent: task\ndata: {data}\n\n".encode()
            if record.status.is_final or await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield b": keep-alive\n\n"
            record = await services.store.get(task_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/events",
    summary="Stream changes of recent tasks as Server-Sent Events (event: task, data: the task view)",
    response_class=StreamingResponse,
)
async def all_task_events(
    request: Request,
    tenant: TenantDep,
    services: ServicesDep,
    limit: int = Query(default=100, ge=1, le=500),
    last_event_id: str | None = Header(default=None),
) -> StreamingResponse:
    """Every change of the ``limit`` most recent tasks of the caller's tenant (first the current state
    of each); for dashboards. With ``Last-Event-ID`` only changes after that event are sent."""
    try:
        since = float(last_event_id) if last_event_id else -1.0
    except ValueError:
        since = -1.0

    async def stream() -> AsyncIterator[bytes]:
        seen: dict[str, float] = {}
        idle = 0.0
        yield b"retry: 2000\n\n"
        while not await request.is_disconnected():
            _, records = await services.store.list(tenant=tenant, status=None, offset=0, limit=limit)
            changed = [r for r in reversed(records) if max(since, seen.get(r.task_id, -1.0)) < r.updated_at]
            for record in changed:
                seen[record.task_id] = record.updated_at
                data = json.dumps(task_view(record).model_dump())
                yield f"id: {record.updated_at:.6f}\nevent: task\ndata: {data}\n\n".encode()
            idle = 0.0 if changed else idle + POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
