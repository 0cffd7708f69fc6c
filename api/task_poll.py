"""GET /task/{id}, the most polled route, at the cost of its one Redis round trip.

Clients poll a task in a loop, many at once (the seeds ask for 1,000 requests/s of mixed traffic with
flat latency). Served the ordinary FastAPI way, most of a poll's time went to the framework's layers
(routing through every included router, dependency resolution, its middlewares) and to turning the
stored hash into a TaskRecord, then a TaskView, each validated, then serialised.
`TaskPollMiddleware` answers ``GET /task/{id}`` before all that: the API key checked as on every
route (`authenticate`, whose answers are cached), one HGETALL, the ownership check, and
`task_view_json`, which writes the TaskView document straight from the stored strings
(tests/unit/test_task_poll.py holds it equal to `task_view` for every kind of record). Errors go
through the app's own handlers (the one error table). The FastAPI route in api/routes/tasks.py
documents the endpoint (OpenAPI) and is the reference the middleware's answer is tested against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import Request, Response
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import authenticate
from api.views import iso
from src.core.defaults import DEFAULT_PRIORITY
from src.tasks.models import Stage, TaskKind, TaskStatus

_PREFIX = "/task/"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class TaskPollMiddleware:
    """Answers ``GET /task/{task_id}`` itself; everything else goes on to ``app``. ``handlers`` are
    the app's exception handlers (``app.exception_handlers``)."""

    def __init__(self, app: ASGIApp, handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self.poll = ExceptionMiddleware(_poll, handlers=dict(handlers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX) :] and len(path) > len(_PREFIX):
                await self.poll(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _poll(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response = await poll_task(request, scope["path"][len(_PREFIX) :])
    await response(scope, receive, send)


async def poll_task(request: Request, task_id: str) -> Response:
    services = request.app.state.services
    tenant = await authenticate(request, services, allow_query=False)
    fields = await services.tasks.stored_fields(tenant, task_id)
    return Response(task_view_json(fields), media_type="application/json")


def _text(fields: Mapping[str, str], name: str, default: str = "") -> str:
    return fields.get(name) or default


def _optional(fields: Mapping[str, str], name: str) -> str | None:
    return fields.get(name) or None


def _time(fields: Mapping[str, str], name: str) -> str | None:
    value = fields.get(name)
    return iso(float(value)) if value else None


def _json(fields: Mapping[str, str], name: str) -> Any:
    value = fields.get(name)
    return json.loads(value) if value else None


def _history(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    entries = _json(fields, "history")
    if not isinstance(entries, list):  # Lua's cjson writes an empty list as {}
        return []
    return [
        {**h, "started_at": iso(h.get("started_at")), "ended_at": iso(h.get("ended_at"))} for h in entries
    ]


def task_view_json(fields: Mapping[str, str]) -> str:
    """The TaskView document (api/schemas.py) of a task's stored hash: what
    ``task_view(TaskRecord.from_redis(fields)).model_dump_json()`` gives, without the two models."""
    return _encode(
        {
            "task_id": fields["task_id"],
            "priority": int(fields.get("priority") or DEFAULT_PRIORITY),
            "doc_id": _text(fields, "doc_id"),
            "filename": _text(fields, "filename"),
            "file_size": int(fields.get("file_size") or 0),
            "kind": _text(fields, "kind", TaskKind.FILE.value),
            "status": _text(fields, "status", TaskStatus.PENDING.value),
            "stage": _text(fields, "stage", Stage.SAVED.value),
            "progress": float(fields.get("progress") or 0.0),
            "created_at": _time(fields, "created_at") or "",
            "updated_at": _time(fields, "updated_at") or "",
            "started_at": _time(fields, "started_at"),
            "finished_at": _time(fields, "finished_at"),
            "expires_at": _time(fields, "expires_at"),
            "attempt": int(fields.get("attempt") or 0),
            "failures": int(fields.get("failures") or 0),
            "cancel_requested": fields.get("cancel_requested") == "1",
            "not_before": _time(fields, "not_before"),
            "history": _history(fields),
            "result": _json(fields, "result"),
            "error": _optional(fields, "error"),
            "callback_url": _optional(fields, "callback_url"),
            "webhook": _json(fields, "webhook"),
            "query": _json(fields, "query"),
        }
    )
