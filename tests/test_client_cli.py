"""The Python clients (src/client/sync.py, aio.py over the sans-I/O core) and the `ragsvc` CLI.

- AsyncRagClient against the app served in-process (ASGI transport, real Redis);
- the SSE side of `wait_for` against scripted transports (drops, resume, no events endpoint).
RagClient and the CLI against the real service under uvicorn are in tests/test_client_cli_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from src.client import AsyncRagClient, RagApiError, RagClient, RagConnectionError, RagTimeoutError
from src.tenancy.tenants import TenantQuota
from tests.helpers import free_port, make_settings, start_service, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parent.parent


# --- async client against the ASGI app --------------------------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Pass requests to the ASGI app and remember (method, path) of each."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[AsyncRagClient, RecordingTransport, Any]]:
    """The app in-process with a real tenant and API key: the client authenticates like any caller."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", **overrides)
    async with start_service(settings) as svc:
        tenants = svc.services.tenants
        await tenants.create_tenant("client-tests", TenantQuota())
        _, api_key = await tenants.create_key("client-tests", "pytest")
        transport = RecordingTransport(httpx.ASGITransport(app=svc.app))
        async with AsyncRagClient("http://svc", api_key=api_key, transport=transport) as client:
            yield client, transport, svc.services


@pytest.fixture
async def rag(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[AsyncRagClient, RecordingTransport]]:
    async with served(tmp_path, redis_url) as (client, transport, _):
        yield client, transport


async def test_async_upload_bytes_wait_for_follows_the_event_stream(rag) -> None:
    client, transport = rag
    accepted = await client.upload(story("glaciers", "Quillfarrow").encode(), filename="notes.txt")
    assert accepted["status"] == "pending" and accepted["filename"] == "notes.txt"
    task_id = accepted["task_id"]

    updates: list[dict] = []
    final = await client.wait_for(task_id, timeout=120, on_update=updates.append)
    assert final["status"] == "completed", final
    assert final["result"]["chunks_count"] >= 1
    assert updates and updates[-1] == final
    assert len({(u["status"], u["stage"], u["progress"], u["updated_at"]) for u in updates}) == len(updates)
    # The server's SSE stream carried every update; no polling was needed.
    assert transport.seen.count(("GET", f"/task/{task_id}/events")) == 1
    assert transport.seen.count(("GET", f"/task/{task_id}")) == 0

    context = await client.query("Quillfarrow", mode="naive", only_need_context=True)
    assert "Quillfarrow" in context["response"]
    pieces = [p async for p in client.query_stream("Quillfarrow", mode="naive", only_need_context=True)]
    assert pieces and "Quillfarrow" in "".join(pieces)

    listing = await client.tasks(status="completed")
    assert [t["task_id"] for t in listing["tasks"]] == [task_id]
    assert (await client.stats())["counts"]["completed"] == 1
    assert (await client.health())["status"] == "ok"

    with pytest.raises(RagApiError) as finished:
        await client.cancel(task_id)
    assert finished.value.status_code == 409 and finished.value.code == "task_finished"


async def test_async_errors_map_to_rag_api_error(rag, tmp_path: Path) -> None:
    client, _ = rag
    with pytest.raises(RagApiError) as unknown:
        await client.cancel("no-such-task")
    error = unknown.value
    assert error.status_code == 404 and error.code == "task_not_found"
    assert "no-such-task" in error.detail and error.body["code"] == "task_not_found"

    with pytest.raises(RagApiError) as empty:
        await client.upload(b"", filename="empty.txt")
    assert (empty.value.status_code, empty.value.code) == (400, "empty_file")

    with pytest.raises(RagApiError) as invalid:
        await client.query("x", mode="nonsense")
    assert invalid.value.status_code == 422 and invalid.value.code == "validation_error"

    with pytest.raises(ValueError):
        await client.upload(b"text without a name")

    # From a path (streamed from disk), with a doc id; the same id with other content is a 409,
    # the same content again is answered by the existing task.
    path = tmp_path / "paper.md"
    path.write_text(story("tides", "Zembratin"))
    accepted = await client.upload(path, doc_id="paper-1")
    assert accepted["doc_id"] == "paper-1" and accepted["filename"] == "paper.md"
    assert (await client.wait_for(accepted["task_id"], timeout=120))["status"] == "completed"
    again = await client.upload(path, doc_id="paper-1")
    assert again["duplicate"] is True and again["task_id"] == accepted["task_id"]
    other = tmp_path / "other.md"
    other.write_text(story("rivers", "Quorvanth"))
    with pytest.raises(RagApiError) as exists:
        await client.upload(other, doc_id="paper-1")
    assert (exists.value.status_code, exists.value.code) == (409, "doc_exists")
    assert (await client.document("paper-1"))["status"] == "processed"
    assert (await client.delete_document("paper-1"))["status"] == "success"
    with pytest.raises(RagApiError) as gone:
        await client.delete_document("paper-1")
    assert gone.value.code == "doc_not_found"

    text = await client.insert_text(story("wind", "Borrowdane"), doc_id="note-1")
    assert (await client.wait_for(text["task_id"], timeout=120))["status"] == "completed"


async def test_async_submission_options_reach_the_service(tmp_path: Path, redis_url: str) -> None:
    """Catches priority, callback_url or Idempotency-Key being dropped between client and service."""
    async with served(tmp_path, redis_url, webhook_attempts=1) as (client, _, _):
        hook = "http://127.0.0.1:9/hook"
        data = story("dunes", "Kestrivane").encode()
        first = await client.upload(data, "dunes.txt", priority=8, callback_url=hook, idempotency_key="up-1")
        # A retry with the same key (even with other bytes) is answered by the same task.
        retry = await client.upload(b"other bytes", "dunes.txt", idempotency_key="up-1")
        assert retry["duplicate"] is True and retry["task_id"] == first["task_id"]
        view = await client.task(first["task_id"])
        assert view["priority"] == 8 and view["callback_url"] == hook

        text = await client.insert_text(
            story("moss", "Ulvenbrae"), "moss-1", filename="moss.md", priority=1, idempotency_key="txt-1"
        )
        again = await client.insert_text("different text", "moss-2", idempotency_key="txt-1")
        assert again["duplicate"] is True and again["task_id"] == text["task_id"]
        assert text["filename"] == "moss.md" and (await client.task(text["task_id"]))["priority"] == 1

        assert (await client.wait_for(text["task_id"], timeout=120))["status"] == "completed"
        context = await client.query(
            "Ulvenbrae", mode="naive", only_need_context=True, chunk_top_k=3, response_type="Bullet Points"
        )
        assert "Ulvenbrae" in context["response"]
        with pytest.raises(RagApiError) as invalid:
            await client.query("Ulvenbrae", chunk_top_k=0)
        assert invalid.value.code == "validation_error"


def gate_runner(services: Any) -> asyncio.Event:
    """Hold every task at the start of its run until the gate opens."""
    gate = asyncio.Event()
    handler = services.runner.handler
    real = handler.run

    async def gated(task: Any, report: Any) -> Any:
        await gate.wait()
        return await real(task, report)

    handler.run = gated
    return gate


async def test_async_cancel_of_a_pending_and_of_a_running_task(tmp_path: Path, redis_url: str) -> None:
    """Catches the client treating 202 ``cancelling`` as an error, or wait_for missing ``cancelled``
    (the old client said running tasks could not be cancelled)."""
    async with served(tmp_path, redis_url, max_concurrent_tasks=1) as (client, _, services):
        gate = gate_runner(services)
        try:
            running = await client.upload(story("tides", "Axolind").encode(), "a.txt")
            pending = await client.upload(story("wind", "Borrowdane").encode(), "b.txt")
            while (await client.task(running["task_id"]))["status"] != "processing":
                await asyncio.sleep(0.05)  # bounded by the test timeout
            assert (await client.task(pending["task_id"]))["status"] == "pending"

            assert (await client.cancel(pending["task_id"]))["status"] == "cancelled"
            stopping = await client.cancel(running["task_id"])
            assert stopping["status"] == "cancelling"
            final = await client.wait_for(running["task_id"], timeout=60)
            assert final["status"] == "cancelled"
        finally:
            gate.set()
        with pytest.raises(RagApiError) as finished:
            await client.cancel(running["task_id"])
        assert finished.value.code == "task_finished"


# --- wait_for over Server-Sent Events (scripted server) ----------------------------------------------


def view(status: str, progress: float = 0.0, stage: str = "queued") -> dict:
    return {
        "task_id": "t1",
        "status": status,
        "stage": stage,
        "progress": progress,
        "updated_at": str(progress),
    }


def sse(event_id: int, body: dict, event: str = "task") -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(body)}\n\n".encode()


class DroppingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Send some bytes, then fail like a dropped connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection")


class ScriptedServer:
    """An events endpoint that drops the first stream after one event and honours Last-Event-ID."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer k"
        assert request.url.path == "/task/t1/events"
        headers = {"content-type": "text/event-stream"}
        last = request.headers.get("last-event-id")
        if last is None:
            first = (
                b": keep-alive\n\n" + sse(1, view("pending")) + sse(2, view("processing", 40, "extracting"))
            )
            return httpx.Response(200, headers=headers, stream=DroppingStream(first))
        assert last == "2"
        rest = sse(3, {"ignored": True}, event="ping") + sse(3, view("completed", 100, "done"))
        return httpx.Response(200, headers=headers, content=rest)


def test_sync_wait_for_follows_sse_and_resumes_with_last_event_id() -> None:
    server = ScriptedServer()
    updates: list[dict] = []
    with RagClient("http://x", api_key="k", transport=httpx.MockTransport(server)) as client:
        final = client.wait_for("t1", timeout=10, on_update=updates.append)
    assert final["status"] == "completed"
    assert [u["status"] for u in updates] == ["pending", "processing", "completed"]
    assert [r.headers.get("last-event-id") for r in server.requests] == [None, "2"]
    assert server.requests[0].headers["accept"] == "text/event-stream"


async def test_async_wait_for_follows_sse_and_resumes_with_last_event_id() -> None:
    server = ScriptedServer()
    updates: list[str] = []

    async def on_update(v: dict) -> None:  # coroutine callbacks are awaited
        updates.append(v["status"])

    async with AsyncRagClient("http://x", api_key="k", transport=httpx.MockTransport(server)) as client:
        final = await client.wait_for("t1", timeout=10, on_update=on_update)
    assert final["status"] == "completed" and updates == ["pending", "processing", "completed"]
    assert [r.headers.get("last-event-id") for r in server.requests] == [None, "2"]


def polling_server(views: list[dict], events_status: int = 405):
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            return httpx.Response(events_status, json={"detail": "Method Not Allowed", "code": "x"})
        return httpx.Response(200, json=views[min(len(calls) - 2, len(views) - 1)])

    return handler, calls


def test_wait_for_polls_when_events_are_not_offered_and_times_out() -> None:
    handler, calls = polling_server([view("pending"), view("processing", 50), view("completed", 100)])
    with RagClient("http://x", transport=httpx.MockTransport(handler)) as client:
        assert client.wait_for("t1", timeout=10)["status"] == "completed"
    assert calls == ["/task/t1/events", "/task/t1", "/task/t1", "/task/t1"]

    handler, _ = polling_server([view("pending")])
    with RagClient("http://x", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(RagTimeoutError) as timed_out:
            client.wait_for("t1", timeout=0.5)
    assert timed_out.value.task["status"] == "pending"


def test_connection_refused_is_a_rag_connection_error() -> None:
    with RagClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(RagConnectionError):
            client.health()
        with pytest.raises(RagConnectionError):
            client.wait_for("t1", timeout=5)
