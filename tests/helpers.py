"""The one set of test helpers: settings, documents, environment scrubbing, service launch, waits.

Nothing heavy is imported at module level: the unit layer imports this module too, and must not pay
for the app or LightRAG (`main` and `src.wiring` are imported inside `start_service`).

Wait helpers take a deadline whose default (`WAIT_SECONDS`) is below every file's pytest-timeout,
so a stuck test fails with its own message (and the last state seen) instead of a bare timeout; they
also stop at once on a terminal state the caller did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # pragma: no cover - typing only
    from src.core.config import Settings
    from src.wiring import Services

FINAL = frozenset({"completed", "failed", "cancelled"})
#: Default deadline of every wait helper; files' pytest-timeouts are all above it (120 s minimum).
WAIT_SECONDS = 90.0


# --- environment -----------------------------------------------------------------------------------

#: Variables that steer the service; a developer's shell must not leak them into a test.
SERVICE_ENV_PREFIXES = ("REDIS_", "LLM_", "EMBEDDING_", "RAGSVC_")


def service_variable_names() -> set[str]:
    """Every environment variable the service's Settings reads (its field names, upper-cased, and
    LightRAG Server's names it also reads, e.g. MAX_ASYNC)."""
    from src.core.config import Settings, variable_names

    return {name for field in Settings.model_fields for name in variable_names(field)}


def scrubbed_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that configures the service, plus ``extra`` (for subprocesses)."""
    names = service_variable_names()
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(SERVICE_ENV_PREFIXES)}
    env.update(extra)
    return env


# --- settings ---------------------------------------------------------------------------------------


def embedding_provider_for_tests() -> str:
    """The embedding provider of the tests that do not name one (see :func:`make_settings`)."""
    return os.environ.get("TEST_EMBEDDING_PROVIDER", "hash")


def make_settings(tmp_path: Path, redis_url: str | None, **overrides: Any) -> Settings:
    """Settings of one test: own data dir and workspace, offline LLM, fast heartbeat and sweep.

    Embeddings: feature hashing (``hash``) unless a test asks for a model: the tests find documents
    by their marker words, which hashing matches exactly, and a model's vectors cost most of an
    in-process test's CPU. ``TEST_EMBEDDING_PROVIDER=onnx`` (or ``e5``) runs them on real vectors."""
    from src.core.config import Settings

    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        workspace=f"ws{uuid.uuid4().hex[:10]}",
        llm_provider="offline",
        embedding_provider=embedding_provider_for_tests(),
        max_concurrent_tasks=4,
        heartbeat_seconds=1.0,
        lease_seconds=15.0,
        sweep_seconds=1.0,
        ttl_completed_seconds=3600,
        ttl_failed_seconds=7200,
        ttl_cancelled_seconds=1800,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def llm_settings(tmp_path: Path, redis_url: str | None, mock: Any, **overrides: Any) -> Settings:
    """Settings that send every LLM call to the mock OpenAI-compatible server ``mock``."""
    values: dict[str, Any] = dict(
        llm_provider="openai",
        llm_base_url=mock.base_url,
        llm_api_key="test-key",
        llm_model="mock-model",
        retry_base_seconds=0.1,
        retry_max_seconds=0.5,
    )
    values.update(overrides)
    return make_settings(tmp_path, redis_url, **values)


# --- documents --------------------------------------------------------------------------------------


def make_pdf(paragraphs: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(2)
    return bytes(pdf.output())


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def story(topic: str, marker: str, sentences: int = 12) -> str:
    """A few KB of plain English about ``topic`` mentioning the unique word ``marker``."""
    base = [
        f"The {marker} project was founded in Lisbon by Maria Costa and Daniel Weber.",
        f"Researchers at the Northwind Institute studied {topic} for the {marker} project.",
        f"In 2021 the {marker} team published a report on {topic} and renewable storage.",
        f"Daniel Weber said that {topic} could change how Portugal manages its power grid.",
        f"The {marker} laboratory in Porto tests {topic} prototypes every spring.",
        f"Maria Costa leads the {marker} collaboration with the University of Coimbra.",
    ]
    text = []
    for i in range(sentences):
        text.append(base[i % len(base)] + f" Observation {i} concerned {topic} efficiency.")
    return " ".join(text)


def upload_files(directory: Path) -> list[Path]:
    """What an uploads directory holds, without its `.instances` directory (the instances' locks)."""
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


# --- the service in-process -------------------------------------------------------------------------


@dataclass
class Service:
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    prefix: str
    app: Any = None  # the FastAPI app, for a test that needs its own transport


@contextlib.asynccontextmanager
async def start_service(settings: Settings, prefix: str | None = None) -> AsyncIterator[Service]:
    """The ASGI app with its lifespan (runner, sweeper, Redis) and an httpx client bound to it.

    Two services given the same ``prefix`` share their tasks like two instances on one Redis."""
    from main import create_app

    prefix = prefix or f"test:{uuid.uuid4().hex[:8]}:"
    app = create_app(settings, redis_prefix=prefix)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", timeout=60) as client:
            yield Service(client, app.state.services, settings, prefix, app)


@dataclass
class SocketService:
    url: str
    services: Services
    settings: Settings
    prefix: str


@contextlib.asynccontextmanager
async def start_socket_service(settings: Settings, prefix: str | None = None) -> AsyncIterator[SocketService]:
    """The app under uvicorn on a loopback port, in this event loop: for streams read as they arrive
    (httpx's ASGI transport buffers a response until it ends)."""
    import uvicorn

    from main import create_app

    prefix = prefix or f"test:{uuid.uuid4().hex[:8]}:"
    app = create_app(settings, redis_prefix=prefix)
    sock = socket.create_server(("127.0.0.1", 0))  # bound here: no free-port race
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(
            lambda: asyncio.sleep(0, result=server.started or serving.done()), message="uvicorn start"
        )
        if serving.done():
            serving.result()  # raises why it could not start
        yield SocketService(f"http://127.0.0.1:{port}", app.state.services, settings, prefix)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=60)
        sock.close()


async def read_events_until(
    client: httpx.AsyncClient,
    path: str,
    done: Callable[[list[dict]], bool],
    *,
    timeout: float = WAIT_SECONDS,
    headers: dict[str, str] | None = None,
    on_open: Callable[[list[dict]], Awaitable[None]] | None = None,
) -> list[dict]:
    """Read an SSE stream (``event: task`` events, parsed) until ``done(events)`` holds or the stream
    ends; fail after ``timeout`` with what arrived. ``on_open`` runs once, after the first event."""
    events: list[dict] = []
    opened = False
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", path, headers=headers or {}) as response:
                assert response.status_code == 200, await response.aread()
                block: list[str] = []
                async for line in response.aiter_lines():
                    if line:
                        block.append(line)
                        continue
                    event = parse_sse_block(block)
                    block = []
                    if event is None:
                        continue
                    events.append(event)
                    if on_open is not None and not opened:
                        opened = True
                        await on_open(events)
                    if done(events):
                        return events
    except TimeoutError:
        raise AssertionError(f"{path}: condition not met within {timeout}s; events: {events}") from None
    raise AssertionError(f"{path}: the stream ended before the condition was met; events: {events}")


def parse_sse_block(lines: list[str]) -> dict | None:
    """One SSE block -> {"id", "task"} for `event: task`, else None (comments, retry, pings)."""
    import json

    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key] = value.lstrip(" ")
    if fields.get("event") != "task":
        return None
    return {"id": fields["id"], "task": json.loads(fields["data"])}


#: The admin token tests pass as ``admin_token`` (make_settings(..., admin_token=ADMIN_TOKEN)).
ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def make_tenant(svc: Service, name: str, **quota: Any) -> dict[str, str]:
    """Create a tenant and one API key through the admin API; returns that key's auth header."""
    created = await svc.client.post("/admin/tenants", json={"name": name, **quota}, headers=ADMIN)
    assert created.status_code == 201, created.text
    key = await svc.client.post(f"/admin/tenants/{name}/keys", json={"label": "test"}, headers=ADMIN)
    assert key.status_code == 201, key.text
    return {"Authorization": f"Bearer {key.json()['api_key']}"}


async def upload(
    client: httpx.AsyncClient,
    name: str,
    data: bytes,
    doc_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    params = {"doc_id": doc_id} if doc_id else None
    return await client.post("/insert", params=params, files={"file": (name, data)}, headers=headers)


# --- waits with deadlines ---------------------------------------------------------------------------


async def wait_until(
    probe: Callable[[], Awaitable[Any]],
    *,
    timeout: float = WAIT_SECONDS,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Await ``probe()`` until it returns a truthy value (returned); fail with the message after
    ``timeout`` seconds. Replaces fixed sleeps: it returns as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


async def wait_for_status(
    client: httpx.AsyncClient,
    task_id: str,
    wanted: str | Iterable[str],
    *,
    timeout: float = WAIT_SECONDS,
    interval: float = 0.05,
    stage: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """Poll ``GET /task/{id}`` until its status is one of ``wanted`` (and its stage is ``stage``
    when given). A terminal state that was not asked for fails at once, with the task's view."""
    wanted = {wanted} if isinstance(wanted, str) else set(wanted)
    deadline = time.monotonic() + timeout
    body: dict = {}
    while True:
        response = await client.get(f"/task/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted and (stage is None or body.get("stage") == stage):
            return body
        if body["status"] in FINAL and body["status"] not in wanted:
            raise AssertionError(
                f"task {task_id} ended {body['status']!r}, waited for {sorted(wanted)}: {body}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not {sorted(wanted)} (stage {stage}) in {timeout}s: {body}")
        await asyncio.sleep(interval)


async def wait_for_task(
    client: httpx.AsyncClient,
    task_id: str,
    timeout: float = WAIT_SECONDS,
    expect: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """Wait for a final state; with ``expect``, any other final state fails with the task's view."""
    final = await wait_for_status(client, task_id, FINAL, timeout=timeout, interval=0.1, headers=headers)
    if expect is not None:
        assert final["status"] == expect, f"task {task_id} ended {final['status']!r}, not {expect}: {final}"
    return final


def wait_sync(
    probe: Callable[[], Any],
    *,
    timeout: float = WAIT_SECONDS,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Blocking twin of `wait_until`, for process tests: ``probe()`` until truthy, else fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 60.0, proc: Any = None) -> None:
    """Block until ``url`` answers below 500; fail early when ``proc`` (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {timeout}s")


# --- the mock LLM -----------------------------------------------------------------------------------
#
# Hold the mock instead of waiting out a latency: ``hold_llm(mock, "extract")`` makes every extraction
# call wait (answering nothing) until ``release_llm(mock)``, so a task stays "processing" exactly as
# long as a test needs it to, and ``wait_held(mock)`` says when it got there (a call is waiting).
# ``mock`` is anything with a ``root_url``: the in-process MockServer (benchmarks/mock_llm) or a
# MockProcess (tests/procs.py). Kinds: extract, glean, summary, keywords, answer, embeddings.
# The async variants do not block the test's event loop (where an in-process service runs).
#
#     await hold(mock, "extract")
#     task = await upload(...)
#     await wait_held(mock)              # its first extraction call is waiting: the task is busy
#     ...                                # e.g. DELETE /documents/{id} -> 409
#     await release(mock)


def mock_stats(mock: Any) -> dict:
    return httpx.get(f"{mock.root_url}/_mock/stats", timeout=10).json()


def hold_llm(mock: Any, *kinds: str) -> None:
    response = httpx.post(f"{mock.root_url}/_mock/hold", json={"kinds": list(kinds)}, timeout=10)
    assert response.status_code == 200, response.text


def release_llm(mock: Any, *kinds: str) -> int:
    """Release every held call (and hold no more), or only those of ``kinds`` (the others stay
    held); returns how many were waiting."""
    body = {"json": {"kinds": list(kinds)}} if kinds else {}
    return httpx.post(f"{mock.root_url}/_mock/release", timeout=10, **body).json()["released"]


def wait_held_sync(mock: Any, count: int = 1, timeout: float = WAIT_SECONDS) -> dict:
    """Block until at least ``count`` calls are waiting at the mock's gate; returns its stats."""
    return wait_sync(
        lambda: (stats := mock_stats(mock))["held"] >= count and stats,
        timeout=timeout,
        interval=0.05,
        message=f"{count} held LLM call(s)",
    )


async def hold(mock: Any, *kinds: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{mock.root_url}/_mock/hold", json={"kinds": list(kinds)})
    assert response.status_code == 200, response.text


async def release(mock: Any) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.post(f"{mock.root_url}/_mock/release")).json()["released"]


async def wait_held(mock: Any, count: int = 1, timeout: float = WAIT_SECONDS) -> dict:
    """Wait until at least ``count`` calls are waiting at the mock's gate; returns its stats."""
    async with httpx.AsyncClient(timeout=10) as client:

        async def probe() -> dict | None:
            stats = (await client.get(f"{mock.root_url}/_mock/stats")).json()
            return stats if stats["held"] >= count else None

        return await wait_until(probe, timeout=timeout, message=f"{count} held LLM call(s)")


def extraction_calls(stats: dict) -> int:
    """Extraction + gleaning calls the mock LLM has answered (the calls a cancel must stop).

    Strict on purpose: a renamed stats key must fail here, not count as 0 (which would make every
    "few calls after the cancel" bound pass)."""
    kinds = stats["kinds"]
    return int(kinds["extract"]) + int(kinds["glean"])


async def context_for(svc: Service, query: str) -> str:
    response = await svc.client.post(
        "/query", json={"query": query, "mode": "naive", "only_need_context": True}
    )
    assert response.status_code == 200, response.text
    return response.json()["response"]
