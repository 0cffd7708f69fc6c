"""JSON request bodies: read only after authentication, and bounded in bytes and time.

FastAPI reads a route's whole body before it resolves any dependency: a body of any size, sent
without an API key, would be held in memory before the 401, and one that stops half-way would hold
its connection forever. Routes with a JSON body use `BoundedJsonRoute`, whose handler, before
FastAPI reads a byte of the body:

1. refuses a declared ``Content-Length`` above the route's limit (413 `too_large`);
2. runs the route's authentication (the dependencies marked `@before_body`: the API key, the admin
   token) and any 401/429 it raises is the answer;
3. hands FastAPI a receive channel that stops at the limit (413, the rest unread) and holds each
   piece to the pace of uploads (UPLOAD_IDLE_TIMEOUT_SECONDS, UPLOAD_MIN_BYTES_PER_SECOND: 408
   `body_timeout`).

An answer given before the body was read to its end closes the connection (the server would
otherwise read the rest to find the next request). Limits (`json_body_limit`): MAX_JSON_BODY_BYTES,
raised for /insert/text to what MAX_TEXT_CHARS needs and for the query routes to what
MAX_QUERY_INPUT_CHARS and their pictures (QUERY_MAX_IMAGES x QUERY_MAX_IMAGE_BYTES, base64) need.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from api.errors import ApiError
from src.core.body_pace import BodyTimeout, Pace, PaceClock

if TYPE_CHECKING:  # pragma: no cover - typing only
    from src.core.config import Settings

#: Room for the JSON around a request's large field (its other fields, escapes of short strings).
_ENVELOPE = 64 * 1024
_CLOSE = {"Connection": "close"}


class BodyRefused(HTTPException):
    """A JSON body over its limit or too slow. An HTTPException, so that FastAPI's body reading lets
    it through (anything else raised there becomes a generic 400)."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(status_code, detail, headers=dict(_CLOSE))
        self.code = code


def json_body_limit(settings: Settings, path: str) -> int:
    """The most bytes a JSON body to ``path`` may have."""
    limit = settings.max_json_body_bytes
    path = path.removeprefix("/lightrag")  # LightRAG Server's routes: the same limits as ours
    if path in ("/insert/text", "/documents/text", "/documents/texts"):
        # Worst case: every character escaped as \uXXXX (6 bytes), e.g. CJK text from json.dumps.
        return max(limit, 6 * settings.max_text_chars + _ENVELOPE)
    if path.startswith("/query") or path in ("/api/chat", "/api/generate"):
        # The question, prompt, history and keywords (MAX_QUERY_INPUT_CHARS together, escaped as
        # above) plus the pictures a question may carry, base64-encoded in data URLs.
        text = max(limit, 6 * settings.max_query_input_chars + _ENVELOPE)
        pictures = settings.query_max_images * (4 * -(-settings.query_max_image_bytes // 3) + 64)
        return text + pictures
    return limit


def before_body(dependency: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Mark an authentication dependency taking ``(request, services)`` to run before the body is
    read on JSON routes. It must keep its result (or its refusal) for the dependency call FastAPI
    makes afterwards: see `remembered`."""
    dependency.__before_body__ = True  # type: ignore[attr-defined]
    return dependency


async def remembered(request: Request, key: str, compute: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``compute()`` once per request: the early call (before the body) and FastAPI's later call of the
    same dependency share one result, so a rate limit counts the request once."""
    memo = request.scope.setdefault("ragsvc.before_body", {})
    if key not in memo:
        memo[key] = await compute()
    return memo[key]


class BoundedJsonRoute(APIRoute):
    """An APIRoute whose JSON body is read after authentication and within its limits."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        gates = _gates(self.dependant)
        path = self.path

        async def bounded(request: Request) -> Response:
            services = request.app.state.services
            limit = json_body_limit(services.settings, path)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyRefused(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            unread = declared != "0" and (declared is not None or "transfer-encoding" in request.headers)
            for gate in gates:
                try:
                    await gate(request, services)
                except (HTTPException, ApiError) as exc:
                    if unread:  # the answer comes first: do not read the body to find the next request
                        exc.headers = {**(exc.headers or {}), **_CLOSE}
                    raise
            receive = _bounded_receive(request.receive, limit, Pace.of(services.settings))
            return await handler(Request(request.scope, receive))

        return bounded


def _gates(dependant: Dependant) -> list[Callable[..., Awaitable[Any]]]:
    """The `@before_body` dependencies of a route (its router's included), in resolution order."""
    found: list[Callable[..., Awaitable[Any]]] = []
    for sub in dependant.dependencies:
        found.extend(g for g in _gates(sub) if g not in found)
        call = sub.call
        if getattr(call, "__before_body__", False) and call not in found:
            assert call is not None and inspect.iscoroutinefunction(call)
            found.append(call)
    return found


def _bounded_receive(receive: Receive, limit: int, pace: Pace) -> Callable[[], Awaitable[Message]]:
    clock = PaceClock(pace)
    complete = False

    async def bounded() -> Message:
        nonlocal complete
        if complete:  # after the body, receive only waits for a disconnect: no pace applies
            return await receive()
        try:
            message = await clock.next(receive())
        except BodyTimeout as exc:
            raise BodyRefused(408, "body_timeout", f"{exc.message}; request aborted") from None
        if message["type"] == "http.request":
            clock.add(len(message.get("body", b"")))
            if clock.received > limit:
                raise BodyRefused(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            complete = not message.get("more_body", False)
        return message

    return bounded
