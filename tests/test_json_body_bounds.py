"""JSON request bodies through the ASGI app (issue 25 item 2), counting the bytes the app pulls from
the connection: authentication before any byte of the body, a byte limit declared and streamed
(413, the rest never read), the upload pace on JSON routes (408), and every JSON route of the app so
bounded. tests/test_json_bodies.py holds the same promises against real server processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from api.body_limits import BoundedJsonRoute, json_body_limit
from tests.helpers import ADMIN, ADMIN_TOKEN, make_settings, make_tenant, start_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
MB = 1024 * 1024
PIECE = b"[" + b"1," * (MB // 2 - 1) + b"1"  # 1 MiB of JSON-looking bytes


class CountingApp:
    """The app, counting the body bytes it has received (what the server would have read)."""

    def __init__(self, app) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope, receive, send) -> None:
        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


class Body:
    """A request body of ``total`` bytes sent 1 MiB at a time; counts what was pulled from it."""

    def __init__(self, total: int, *, stall_after: int | None = None) -> None:
        self.total = total
        self.stall_after = stall_after
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            if self.stall_after is not None and self.pulled >= self.stall_after:
                await asyncio.Event().wait()  # the client stops sending, never closes
            self.pulled += len(PIECE)
            yield PIECE


@pytest.fixture
async def svc(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN, upload_idle_timeout_seconds=0.5)
    async with start_service(settings) as service:
        yield service


@pytest.fixture
async def counted(svc):
    app = CountingApp(svc.app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        yield app, client


JSON = {"content-type": "application/json"}
BIG = 300 * MB


@pytest.mark.parametrize(
    "path",
    [
        "/query",
        "/query/async",
        "/query/stream",
        "/query/data",
        "/insert/text",
        "/lightrag/query",
        "/lightrag/documents/texts",
    ],
)
async def test_no_key_or_a_wrong_key_is_401_before_a_byte_of_the_body_is_read(svc, counted, path) -> None:
    """Catches authentication after the body (a 300 MB body without a key was read whole, +560 MB,
    before its 401): the app answers 401 having received nothing of the body."""
    await make_tenant(svc, "acme")  # once a key exists, a request without one is refused
    app, client = counted
    for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer nope"}, "invalid_api_key")):
        body = Body(BIG)
        resp = await client.post(path, content=body, headers={**JSON, **headers})
        assert resp.status_code == 401 and resp.json()["code"] == code, resp.text
        assert resp.headers["connection"] == "close"
        assert app.read == 0 and body.pulled == 0, (app.read, body.pulled)


async def test_admin_routes_check_the_admin_token_before_the_body(counted) -> None:
    app, client = counted
    body = Body(BIG)
    resp = await client.post("/admin/tenants", content=body, headers={**JSON, "Authorization": "Bearer x"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_admin_token", resp.text
    assert app.read == 0 and body.pulled == 0


async def test_a_declared_length_over_the_limit_is_413_before_a_byte_is_read(svc, counted) -> None:
    auth = await make_tenant(svc, "acme")
    app, client = counted
    for path in ("/query", "/insert/text", "/admin/tenants"):
        headers = {**JSON, **(ADMIN if path.startswith("/admin") else auth)}
        limit = json_body_limit(svc.settings, path)
        body = Body(BIG)
        resp = await client.post(path, content=body, headers={**headers, "content-length": str(limit + 1)})
        assert resp.status_code == 413 and resp.json()["code"] == "too_large", (path, resp.text)
        assert app.read == 0 and body.pulled == 0, (path, app.read)


async def test_a_streamed_body_is_cut_off_at_the_limit_and_the_rest_never_read(svc, counted) -> None:
    """Catches a JSON body read whole before any size check (4 x 500 MB to /query: +3.4 GB): a chunked
    300 MB body with a valid key is 413 once the limit is passed; the app reads at most one piece
    beyond it."""
    auth = await make_tenant(svc, "acme")
    app, client = counted
    for path in ("/insert/text", "/query", "/admin/tenants"):
        headers = {**JSON, **(ADMIN if path.startswith("/admin") else auth)}
        limit = json_body_limit(svc.settings, path)
        assert limit < BIG // 4
        app.read = 0
        body = Body(BIG)
        resp = await client.post(path, content=body, headers=headers)
        assert resp.status_code == 413 and resp.json()["code"] == "too_large", (path, resp.text)
        assert resp.headers["connection"] == "close"
        assert limit < app.read <= limit + len(PIECE), (path, limit, app.read)
        assert body.pulled <= limit + len(PIECE), (path, body.pulled)


async def test_a_json_body_that_stalls_is_408_after_the_upload_idle_timeout(svc, counted) -> None:
    """Catches JSON routes without the uploads' body timeouts (1,500 bodies stopped mid-way held their
    connections): a body that stops after 1 MiB is answered 408 body_timeout (UPLOAD_IDLE_TIMEOUT_SECONDS,
    0.5 s here) and the connection is closed."""
    auth = await make_tenant(svc, "acme")
    _, client = counted
    body = Body(4 * MB, stall_after=MB)
    resp = await asyncio.wait_for(client.post("/query", content=body, headers={**JSON, **auth}), 60)
    assert resp.status_code == 408 and resp.json()["code"] == "body_timeout", resp.text
    assert resp.headers["connection"] == "close"
    assert body.pulled == MB


async def test_a_request_is_counted_once_by_the_rate_limit(svc) -> None:
    """Authentication runs before the body and again when FastAPI resolves the route: the tenant's
    rate limit must count the request once (a double count would halve every tenant's limit)."""
    auth = await make_tenant(svc, "metered", requests_per_minute=4)
    codes = []
    for i in range(5):
        codes.append(
            (await svc.client.post("/insert/text", json={"text": f"line {i}"}, headers=auth)).status_code
        )
    assert codes == [202, 202, 202, 202, 429], codes


async def test_the_longest_allowed_question_fits_the_query_body_limit(tmp_path, redis_url) -> None:
    """Catches a body limit below what MAX_QUERY_INPUT_CHARS allows: 190,000 CJK characters of
    history, escaped by json.dumps (6 bytes each: 1.1 MB, over MAX_JSON_BODY_BYTES) are a query even
    when the query's pictures leave no room (one picture of 1 KiB)."""
    settings = make_settings(tmp_path, redis_url, query_max_images=1, query_max_image_bytes=1024)
    history = [{"role": "user", "content": "中" * 19_000} for _ in range(10)]
    body = json.dumps({"query": "q", "mode": "bypass", "conversation_history": history})
    assert len(body) > settings.max_json_body_bytes
    async with start_service(settings) as svc:
        resp = await svc.client.post("/query", content=body, headers=JSON)
    assert resp.status_code == 200, resp.text


def _json_routes(routes) -> list:
    """Every APIRoute with a body in the app, through included routers (FastAPI keeps the router)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found.extend(_json_routes(inner.routes))
        elif getattr(route, "body_field", None) is not None:
            found.append(route)
    return found


#: LightRAG Server's Ollama-compatible routes, also served at the root (api/lightrag/ollama.py).
OLLAMA_AT_ROOT = frozenset({"/api/generate", "/api/chat"})


def test_every_route_with_a_json_body_is_bounded_and_authenticates_first(tmp_path) -> None:
    """Catches a new JSON route on a plain APIRoute (FastAPI would read its whole body, of any size,
    before authenticating): every route whose OpenAPI operation takes a JSON body, in every router
    the app includes, is a BoundedJsonRoute whose authentication runs before the body."""
    from api.body_limits import _gates
    from main import create_app

    app = create_app(make_settings(tmp_path, None, admin_token=ADMIN_TOKEN))
    spec = app.openapi()
    declared = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    }
    routes = _json_routes(app.router.routes)
    found = {(m, r.path) for r in routes for m in r.methods}
    assert declared and declared <= found, declared - found
    assert {"/insert/text", "/query", "/query/async", "/query/stream", "/query/data", "/admin/tenants"} <= {
        p for _, p in found
    }
    for route in routes:
        assert isinstance(route, BoundedJsonRoute), route.path
        gates = [g.__name__ for g in _gates(route.dependant)]
        expected = (
            ["require_admin"]
            if route.path.startswith("/admin")
            else []  # the WebUI's login form is where a key is presented (bounded, no key needed)
            if route.path == "/lightrag/login"
            else ["get_compat_tenant"]  # LightRAG Server's routes: its keys or a WebUI session
            if route.path.startswith("/lightrag") or route.path in OLLAMA_AT_ROOT
            else ["get_tenant"]
        )
        assert gates == expected, (route.path, gates)
