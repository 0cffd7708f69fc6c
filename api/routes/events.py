"""Server-Sent Events: push a task's status/stage/progress changes as they happen.

Streams are fed by the process's one `TaskEventHub` (src/tasks/fanout.py): an idle stream costs
no Redis reads, whatever the number of connections. Served by sse-starlette (keep-alive pings,
disconnect detection, send timeout). The format is the one the dashboard and the client read:
``event: task`` / ``data: <task view>`` / ``id: <updated_at>``, and ``event: gone`` when a watched
task's record expired. A client that reconnects with ``Last-Event-ID`` gets only what changed
after that event. Query-string keys (``?access_token=``) are accepted here only (EventSource
cannot send headers). Each tenant may hold SSE_MAX_STREAMS_PER_TENANT streams per process (429).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import OwnedStreamTaskDep, ServicesDep, StreamTenantDep
from api.errors import ApiError
from api.views import task_view
from src.tasks.fanout import GONE, RESYNC, Subscription, TaskEventHub, TooManyStreams
from src.tasks.models import TaskRecord

router = APIRouter(tags=["tasks"])
RETRY_MS = 2000
#: A client whose socket does not take an event within this time is disconnected.
SEND_TIMEOUT_SECONDS = 30.0
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _subscribe(hub: TaskEventHub, tenant: str, task_id: str | None = None) -> Subscription:
    try:
        return hub.subscribe(tenant, task_id)
    except TooManyStreams:
        raise ApiError(
            429,
            "too_many_streams",
            f"this tenant already has {hub.max_per_tenant} open event streams here; close one first",
            headers={"Retry-After": "5"},
        ) from None


def _event(**fields: object) -> ServerSentEvent:
    # "\n" line ends (sse-starlette's default is "\r\n"): the format clients already parse.
    return ServerSentEvent(**fields, sep="\n")  # type: ignore[arg-type]


def _since(last_event_id: str | None) -> float:
    try:
        return float(last_event_id) if last_event_id else -1.0
    except ValueError:
        return -1.0


def _task_event(record: TaskRecord) -> ServerSentEvent:
    data = json.dumps(task_view(record).model_dump())
    return _event(data=data, event="task", id=f"{record.updated_at:.6f}")


def _response(stream: AsyncIterator[ServerSentEvent], ping: float) -> EventSourceResponse:
    return EventSourceResponse(
        stream, headers=_HEADERS, ping=ping, sep="\n", send_timeout=SEND_TIMEOUT_SECONDS
    )


@router.get(
    "/task/{task_id}/events",
    summary="Stream a task's changes as Server-Sent Events (event: task, data: the task view)",
    response_class=EventSourceResponse,
)
async def task_events(
    task_id: str,
    owned: OwnedStreamTaskDep,
    services: ServicesDep,
    last_event_id: str | None = Header(default=None),
) -> EventSourceResponse:
    """The task's current state (unless unchanged since ``Last-Event-ID``), then each change; the
    stream ends after a final status."""
    sub = _subscribe(services.events, owned.tenant, task_id)
    last_seen = _since(last_event_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        nonlocal last_seen
        try:
            yield _event(retry=RETRY_MS)
            # Read again now that we are subscribed: a change between the route's read and the
            # subscription would otherwise be missed.
            record: TaskRecord | None = await services.store.get(task_id)
            while True:
                if record is None:
                    yield _event(data=json.dumps({"detail": "task expired"}), event="gone")
                    return
                if record.updated_at > last_seen:
                    last_seen = record.updated_at
                    yield _task_event(record)
                if record.status.is_final:
                    return
                item = await sub.next()
                if item is None:  # dropped (too slow) or shutting down
                    return
                if item is GONE:
                    record = None
                elif item is RESYNC:
                    record = await services.store.get(task_id)
                else:
                    record = item
        finally:
            sub.close()

    return _response(stream(), services.settings.sse_ping_seconds)


@router.get(
    "/events",
    summary="Stream changes of the tenant's tasks as Server-Sent Events (event: task, data: the task view)",
    response_class=EventSourceResponse,
)
async def all_task_events(
    tenant: StreamTenantDep,
    services: ServicesDep,
    limit: int = Query(default=100, ge=1, le=500),
    last_event_id: str | None = Header(default=None),
) -> EventSourceResponse:
    """First the current state of the ``limit`` most recent tasks of the caller's tenant, then every
    change of any of its tasks; for dashboards. With ``Last-Event-ID`` only changes after that
    event are sent."""
    sub = _subscribe(services.events, tenant)
    since = _since(last_event_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        seen: dict[str, float] = {}

        def fresh(record: TaskRecord) -> bool:
            if max(since, seen.get(record.task_id, -1.0)) >= record.updated_at:
                return False
            seen[record.task_id] = record.updated_at
            return True

        async def snapshot() -> list[TaskRecord]:
            _, records = await services.store.list(tenant=tenant, status=None, offset=0, limit=limit)
            return [r for r in reversed(records) if fresh(r)]

        try:
            yield _event(retry=RETRY_MS)
            for record in await snapshot():
                yield _task_event(record)
            async for item in sub:
                if item is RESYNC:
                    for record in await snapshot():
                        yield _task_event(record)
                elif isinstance(item, TaskRecord) and fresh(item):
                    yield _task_event(item)
        finally:
            sub.close()

    return _response(stream(), services.settings.sse_ping_seconds)
