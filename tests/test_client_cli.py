"""The Python clients (src/client/sync.py, aio.py over the sans-I/O core) and the `ragsvc` CLI.

- AsyncRagClient against the app served in-process (ASGI transport, real Redis);
- the SSE side of `wait_for` against scripted transports (drops, resume, no events endpoint).
- RagClient and the CLI against the real service under uvicorn (module-scoped `live` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from src.client import AsyncRagClient, RagApiError, RagClient, RagConnectionError, RagTimeoutError
from src.client.cli import app as cli_app
from src.tenancy.tenants import TenantQuota
from tests.helpers import make_pdf, make_settings, start_service, story
from tests.procs import Listener, refused_url, service_env, spawn_service, wait_http

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

    # From a path (streamed from disk), with a doc id; the same content again is answered by the
    # existing task, other content under the id re-indexes the document.
    path = tmp_path / "paper.md"
    path.write_text(story("tides", "Zembratin"))
    accepted = await client.upload(path, doc_id="paper-1")
    assert accepted["doc_id"] == "paper-1" and accepted["filename"] == "paper.md"
    assert (await client.wait_for(accepted["task_id"], timeout=120))["status"] == "completed"
    again = await client.upload(path, doc_id="paper-1")
    assert again["duplicate"] is True and again["task_id"] == accepted["task_id"]
    other = tmp_path / "other.md"
    other.write_text(story("rivers", "Quorvanth"))
    replaced = await client.upload(other, doc_id="paper-1")
    assert replaced["doc_id"] == "paper-1" and replaced["task_id"] != accepted["task_id"]
    assert (await client.wait_for(replaced["task_id"], timeout=120))["status"] == "completed"
    document = await client.document("paper-1")
    assert document["status"] == "processed" and document["track_id"] == replaced["task_id"]
    assert (await client.delete_document("paper-1"))["status"] == "success"
    with pytest.raises(RagApiError) as gone:
        await client.delete_document("paper-1")
    assert gone.value.code == "doc_not_found"

    text = await client.insert_text(story("wind", "Borrowdane"), doc_id="note-1")
    assert (await client.wait_for(text["task_id"], timeout=120))["status"] == "completed"


async def test_async_wait_option_and_documents_listing(rag) -> None:
    """Catches the client not sending ``wait`` as a query parameter (text goes in a JSON body), not
    returning the final view of a 200, and `documents` not reaching GET /documents."""
    client, transport = rag
    final = await client.insert_text(story("estuaries", "Clientwait", 3), doc_id="cw-1", wait=60)
    assert final["status"] == "completed" and final["result"]["chunks_count"] >= 1, final
    assert "status_url" not in final  # the task view, not the acceptance
    uploaded = await client.upload(story("lochs", "Clientup", 3).encode(), filename="u.txt", wait=60)
    assert uploaded["status"] == "completed" and uploaded["filename"] == "u.txt", uploaded
    accepted = await client.insert_text(story("coves", "Clientnowait", 3), doc_id="cw-2")
    assert accepted["status"] == "pending" and accepted["status_url"], accepted
    await client.wait_for(accepted["task_id"], timeout=120)

    listing = await client.documents()
    assert listing["total"] == 3 and listing["counts"]["processed"] == 3
    assert listing["documents"][0]["doc_id"] == "cw-2"
    page = await client.documents(status="processed", limit=1, offset=1)
    assert [d["doc_id"] for d in page["documents"]] == [uploaded["doc_id"]] and page["limit"] == 1
    with pytest.raises(RagApiError) as bad:
        await client.documents(status="done")
    assert bad.value.status_code == 422 and bad.value.code == "validation_error"
    with pytest.raises(RagApiError) as too_long:
        await client.insert_text("x", wait=61)
    assert too_long.value.status_code == 422
    assert ("GET", "/documents") in transport.seen


async def test_async_submission_options_reach_the_service(tmp_path: Path, redis_url: str) -> None:
    """Catches priority, callback_url or Idempotency-Key being dropped between client and service."""
    async with served(tmp_path, redis_url, webhook_attempts=1) as (client, _, _):
        hook = "http://127.0.0.1:9/hook"
        data = story("dunes", "Kestrivane").encode()
        first = await client.upload(data, "dunes.txt", priority=8, callback_url=hook, idempotency_key="up-1")
        # A retry of the same request with the same key is answered by the same task...
        retry = await client.upload(data, "dunes.txt", priority=8, callback_url=hook, idempotency_key="up-1")
        assert retry["duplicate"] is True and retry["task_id"] == first["task_id"]
        # ...and the key reused for another request is refused (issue 12, item 3).
        with pytest.raises(RagApiError) as reused:
            await client.upload(b"other bytes", "dunes.txt", idempotency_key="up-1")
        assert reused.value.code == "idempotency_key_reused"
        view = await client.task(first["task_id"])
        assert view["priority"] == 8 and view["callback_url"] == hook

        text = await client.insert_text(
            story("moss", "Ulvenbrae"), "moss-1", filename="moss.md", priority=1, idempotency_key="txt-1"
        )
        again = await client.insert_text(
            story("moss", "Ulvenbrae"), "moss-1", filename="moss.md", priority=1, idempotency_key="txt-1"
        )
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
    with refused_url() as url, RagClient(url, timeout=5) as client:
        with pytest.raises(RagConnectionError):
            client.health()
        with pytest.raises(RagConnectionError):
            client.wait_for("t1", timeout=5)


# --- sync client and CLI against the real service (uvicorn subprocess) -------------------------------


class LiveService:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LiveService]:
    workdir = tmp_path_factory.mktemp("live")
    http = Listener()
    env = service_env(
        workdir / "data",
        http,
        REDIS_URL=redis_url,
        WORKSPACE=f"cli{uuid.uuid4().hex[:8]}",
        EMBEDDING_PROVIDER="hash",
        LOG_LEVEL="WARNING",
        REDIS_PREFIX=f"cli{uuid.uuid4().hex[:8]}:",
        ADMIN_TOKEN="cli-admin-token",
    )
    proc = spawn_service(env, workdir / "service.log")
    try:
        wait_http(f"{http.url}/health", timeout=120, proc=proc)
        yield LiveService(http.url, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        http.close()


def ragsvc(live: LiveService, *args: str):
    # Piped output is as wide as the CLI makes it unless $COLUMNS says otherwise, and pytest-xdist's
    # workers inherit a terminal's COLUMNS: without this, ids were folded under `-n`.
    result = CliRunner().invoke(cli_app, ["--url", live.url, *args], env={"COLUMNS": None})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_upload_wait_status_watch_query(live: LiveService) -> None:
    doc = live.workdir / "harbour.txt"
    doc.write_text(story("harbours", "Vextrolamy"))
    uploaded = ragsvc(live, "upload", str(doc), "--doc-id", "harbour", "--wait", "--wait-timeout", "120")
    assert uploaded.exit_code == 0, uploaded.output
    assert "completed" in uploaded.stdout and "harbour.txt" in uploaded.stdout

    listing = json.loads(ragsvc(live, "--json", "watch", "--once", "--status", "completed").stdout)
    task = next(t for t in listing["tasks"] if t["doc_id"] == "harbour")
    assert task["status"] == "completed"

    status = ragsvc(live, "status", task["task_id"])
    assert status.exit_code == 0 and "completed" in status.stdout and "harbour" in status.stdout
    assert json.loads(ragsvc(live, "--json", "status", task["task_id"]).stdout)["progress"] == 100

    watched = ragsvc(live, "watch", "--once")
    assert watched.exit_code == 0 and task["task_id"] in watched.stdout

    answer = ragsvc(live, "query", "Where is Vextrolamy?", "--mode", "naive", "--context-only")
    assert answer.exit_code == 0 and "Vextrolamy" in answer.stdout
    streamed = ragsvc(live, "query", "Vextrolamy", "--mode", "hybrid", "--stream")
    assert streamed.exit_code == 0 and "Vextrolamy" in streamed.stdout

    changed = doc.with_name("harbour-v2.txt")
    changed.write_text(doc.read_text() + " A later revision.")
    again = ragsvc(live, "upload", str(changed), "--doc-id", "harbour", "--wait")
    assert again.exit_code == 0, again.stderr
    assert json.loads(ragsvc(live, "--json", "document", "harbour").stdout)["status"] == "processed"

    assert ragsvc(live, "delete-doc", "harbour").exit_code == 0
    missing = ragsvc(live, "delete-doc", "harbour")
    assert missing.exit_code == 2 and "not in the knowledge base" in missing.stderr

    health = ragsvc(live, "health")
    assert health.exit_code == 0 and "ok" in health.stdout and "offline-extractive" not in health.stdout
    health = ragsvc(live, "health", "--admin-token", "cli-admin-token")
    assert health.exit_code == 0 and "offline-extractive" in health.stdout
    stats = json.loads(ragsvc(live, "--json", "stats").stdout)
    assert stats["counts"]["completed"] >= 1


def test_cli_query_async_submits_a_query_task_and_prints_its_answer(live: LiveService) -> None:
    """Catches `query --async` not going through a query task, not following it to its end, or
    accepting --priority without --async (silently ignored)."""
    doc = live.workdir / "lagoon.txt"
    doc.write_text(story("lagoons", "Quorvenatl"))
    assert ragsvc(live, "upload", str(doc), "--wait", "--wait-timeout", "120").exit_code == 0
    answer = ragsvc(
        live, "query", "Quorvenatl", "--mode", "naive", "--context-only", "--async", "--priority", "7"
    )
    assert answer.exit_code == 0, answer.output
    assert "Quorvenatl" in answer.stdout and "query task" in answer.stderr
    view = json.loads(ragsvc(live, "--json", "query", "Quorvenatl", "--mode", "naive", "--background").stdout)
    assert view["kind"] == "query" and view["status"] == "completed" and "response" in view["result"]
    with RagClient(live.url) as rag:
        accepted = rag.query_async("Quorvenatl", mode="naive", only_need_context=True, priority=9)
        final = rag.wait_for(accepted["task_id"], timeout=120)
    assert final["priority"] == 9 and "Quorvenatl" in final["result"]["context"]
    misuse = ragsvc(live, "query", "Quorvenatl", "--priority", "7")
    assert misuse.exit_code == 2 and "--async" in misuse.stderr


def test_cli_upload_wait_reports_failed_tasks_with_exit_1(live: LiveService) -> None:
    good = live.workdir / "good.md"
    good.write_text(story("forests", "Pellinquor"))
    broken = live.workdir / "broken.pdf"
    broken.write_bytes(make_pdf(["Some text"])[:200])  # header intact, body cut: the task fails
    result = ragsvc(live, "--json", "upload", str(good), str(broken), "--wait", "--wait-timeout", "120")
    assert result.exit_code == 1, result.output
    rows = {row["filename"]: row for row in json.loads(result.stdout)}
    assert rows["good.md"]["status"] == "completed"
    assert rows["broken.pdf"]["status"] == "failed" and rows["broken.pdf"]["error"]


def test_cli_cancel_unknown_task_exits_2_with_the_server_message(live: LiveService) -> None:
    result = ragsvc(live, "cancel", "no-such-task")
    assert result.exit_code == 2
    assert "task no-such-task not found" in result.stderr and "task_not_found" in result.stderr
    machine = ragsvc(live, "--json", "cancel", "no-such-task")
    assert machine.exit_code == 2
    assert json.loads(machine.stdout)["error"]["code"] == "task_not_found"


def test_sync_client_against_live_service(live: LiveService) -> None:
    doc = live.workdir / "orchard.txt"
    doc.write_text(story("orchards", "Trombelisk"))
    with RagClient(live.url, timeout=30) as client:
        accepted = client.upload(doc)
        seen: list[str] = []
        final = client.wait_for(accepted["task_id"], timeout=120, on_update=lambda v: seen.append(v["stage"]))
        assert final["status"] == "completed" and seen[-1] == "done"
        assert client.task(accepted["task_id"])["result"]["doc_id"] == accepted["doc_id"]
        text = "".join(client.query_stream("Trombelisk", mode="naive", only_need_context=True))
        assert "Trombelisk" in text
        with pytest.raises(RagApiError) as finished:
            client.cancel(accepted["task_id"])
        assert finished.value.code == "task_finished"


def test_python_m_cli_connection_refused_exits_3(tmp_path: Path) -> None:
    with refused_url() as url:
        env = {**os.environ, "RAGSVC_URL": url}
        result = subprocess.run(
            [sys.executable, "-m", "src.client.cli", "health"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result
    assert "cannot reach" in result.stderr and url in result.stderr


def test_cli_admin_manages_tenants_and_keys(live: LiveService) -> None:
    token = ["--admin-token", "cli-admin-token"]
    assert ragsvc(live, "admin", "tenants", "--admin-token", "wrong").exit_code == 2
    created = ragsvc(live, "admin", "create-tenant", "acme", "--max-running", "2", *token)
    assert created.exit_code == 0, created.output
    made = ragsvc(live, "--json", "admin", "create-key", "acme", "--label", "ci", *token)
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)["api_key"]
    try:
        refused = ragsvc(live, "stats")
        assert refused.exit_code == 2 and "missing_api_key" in refused.stderr
        scoped = ragsvc(live, "--api-key", key, "--json", "stats")
        assert scoped.exit_code == 0 and json.loads(scoped.stdout)["tenant"] == "acme"
        listed = ragsvc(live, "--json", "admin", "keys", "acme", *token)
        keys = json.loads(listed.stdout)["keys"]
        assert len(keys) == 1 and keys[0]["label"] == "ci" and key not in listed.stdout
        tenants = json.loads(ragsvc(live, "--json", "admin", "tenants", *token).stdout)["tenants"]
        assert {"tenant": "acme", "keys": 1, "max_running": 2} == {
            k: tenants[0][k] for k in ("tenant", "keys", "max_running")
        }
    finally:
        key_id = key.split("_")[1]
        assert ragsvc(live, "admin", "revoke-key", key_id, *token).exit_code == 0
    assert ragsvc(live, "--api-key", key, "stats").exit_code == 2  # revoked key is refused
    assert ragsvc(live, "stats").exit_code == 0  # no keys left: open mode again


def test_cli_text_submission_options_list_and_document(live: LiveService) -> None:
    """Catches the CLI dropping --priority / --idempotency-key / --text, or `list` and `document`
    not reaching their endpoints."""
    args = ["upload", "--text", "-", "--doc-id", "cli-note", "--filename", "note.md", "--priority", "7"]
    body = story("meadows", "Fennoraque")
    submitted = CliRunner().invoke(
        cli_app, ["--url", live.url, "--json", *args, "--idempotency-key", "cli-k", "--wait"], input=body
    )
    assert submitted.exit_code == 0, submitted.output
    row = json.loads(submitted.stdout)[0]
    assert row["status"] == "completed" and row["doc_id"] == "cli-note" and row["filename"] == "note.md"
    again = CliRunner().invoke(
        cli_app, ["--url", live.url, "--json", *args, "--idempotency-key", "cli-k"], input=body
    )
    assert again.exit_code == 0 and json.loads(again.stdout)[0]["task_id"] == row["task_id"]
    # The key reused for another request is refused (issue 12, item 3).
    reused = ragsvc(live, "--json", "upload", "--text", "another text", "--idempotency-key", "cli-k")
    assert reused.exit_code != 0 and "idempotency_key_reused" in reused.output, reused.output
    assert json.loads(ragsvc(live, "--json", "status", row["task_id"]).stdout)["priority"] == 7

    listed = json.loads(ragsvc(live, "--json", "list", "--status", "completed", "--limit", "500").stdout)
    assert row["task_id"] in [t["task_id"] for t in listed["tasks"]]
    shown = ragsvc(live, "list", "--limit", "5")
    assert shown.exit_code == 0 and "Recent tasks" in shown.stdout

    document = ragsvc(live, "document", "cli-note")
    assert document.exit_code == 0 and "processed" in document.stdout
    assert json.loads(ragsvc(live, "--json", "document", "cli-note").stdout)["status"] == "processed"
    assert ragsvc(live, "document", "no-such-doc").exit_code == 2

    answer = ragsvc(
        live,
        "query",
        "Fennoraque",
        "--mode",
        "naive",
        "--context-only",
        "--chunk-top-k",
        "2",
        "--response-type",
        "Bullet Points",
    )
    assert answer.exit_code == 0 and "Fennoraque" in answer.stdout
    assert ragsvc(live, "cancel", row["task_id"]).exit_code == 2  # finished: nothing to cancel


def test_cli_server_wait_and_documents(live: LiveService) -> None:
    """Catches --server-wait not reaching the service (the row must be final without --wait) and the
    `documents` command not listing, filtering or paging the knowledge base."""
    doc = live.workdir / "quick.md"
    doc.write_text("# Quick\n\n" + story("tarns", "Cliquickly", 3))
    quick = ragsvc(live, "--json", "upload", str(doc), "--doc-id", "cli-quick", "--server-wait", "60")
    assert quick.exit_code == 0, quick.output
    row = json.loads(quick.stdout)[0]
    assert row["status"] == "completed" and row["chunks"] >= 1, row
    assert ragsvc(live, "upload", str(doc), "--server-wait", "61").exit_code == 2

    listing = ragsvc(live, "--json", "documents", "--status", "processed", "--limit", "1000")
    listed = json.loads(listing.stdout)
    mine = next(d for d in listed["documents"] if d["doc_id"] == "cli-quick")
    assert mine["status"] == "processed" and mine["chunks_count"] >= 1
    assert listed["counts"]["processed"] == listed["total"] >= 1
    shown = ragsvc(live, "documents", "--limit", "1")
    assert shown.exit_code == 0 and "Documents: 1-1 of" in shown.stdout
    failed = ragsvc(live, "documents", "--status", "failed")
    assert failed.exit_code == 0 and "Documents failed: none of 0" in failed.stdout
    assert ragsvc(live, "documents", "--status", "done").exit_code == 2
    assert ragsvc(live, "documents", "--limit", "0").exit_code == 2


def test_cli_upload_usage_errors_exit_2(live: LiveService) -> None:
    """Catches a command that sends nothing (or one key for several documents) exiting 0."""
    assert ragsvc(live, "upload").exit_code == 2
    one, two = live.workdir / "one.txt", live.workdir / "two.txt"
    one.write_text("one")
    two.write_text("two")
    assert ragsvc(live, "upload", str(one), str(two), "--idempotency-key", "k").exit_code == 2
    assert ragsvc(live, "upload", str(one), "--priority", "12").exit_code == 2


# --- batches (POST /batch) -----------------------------------------------------------------------------


async def test_async_batch_upload_status_and_cancel(tmp_path: Path, redis_url: str) -> None:
    """Catches batch_upload dropping a file or an option, mis-sending (filename, bytes) items, or the
    batch calls not reaching their endpoints."""
    async with served(tmp_path, redis_url) as (client, transport, _):
        path = tmp_path / "from-disk.md"
        path.write_text(story("tides", "Diskmorrow"))
        accepted = await client.batch_upload(
            [path, ("inline.txt", story("wind", "Inlinewhirl").encode()), ("tool.exe", b"MZ")], priority=8
        )
        assert ("POST", "/batch") in transport.seen
        assert [t["filename"] for t in accepted["tasks"]] == ["from-disk.md", "inline.txt"]
        assert [(e["filename"], e["error"]) for e in accepted["errors"]] == [("tool.exe", "unsupported_type")]
        assert (await client.task(accepted["tasks"][0]["task_id"]))["priority"] == 8

        for task in accepted["tasks"]:
            assert (await client.wait_for(task["task_id"], timeout=120))["status"] == "completed"
        view = await client.batch_status(accepted["batch_id"])
        assert view["done"] and view["counts"]["completed"] == 2 and view["progress"] == 100
        assert view["tasks"][0]["result"]["chunks_count"] >= 1
        cancelled = await client.batch_cancel(accepted["batch_id"])
        assert [t["outcome"] for t in cancelled["tasks"]] == ["finished", "finished"]

        with pytest.raises(RagApiError) as rejected:
            await client.batch_upload([("a.exe", b"MZ"), ("b.exe", b"MZ")])
        assert (rejected.value.status_code, rejected.value.code) == (415, "batch_rejected")
        assert [e["filename"] for e in rejected.value.body["errors"]] == ["a.exe", "b.exe"]
        with pytest.raises(RagApiError) as unknown:
            await client.batch_status("no-such-batch")
        assert unknown.value.code == "batch_not_found"
        with pytest.raises(ValueError):
            await client.batch_upload([])
        with pytest.raises(TypeError):
            await client.batch_upload([path], doc_id="x")  # type: ignore[call-arg]


def test_cli_upload_of_several_files_is_one_batch_with_overall_progress(live: LiveService) -> None:
    """Catches the CLI sending several files one by one (or dropping a refused file from the
    report), and the batch commands not reaching their endpoints."""
    docs = []
    for name, marker in (("north.md", "Northquill"), ("south.txt", "Southmarrow")):
        doc = live.workdir / name
        doc.write_text(story("harbours", marker))
        docs.append(str(doc))
    bad = live.workdir / "tool.exe"
    bad.write_bytes(b"MZ binary")
    result = ragsvc(live, "--json", "upload", *docs, str(bad), "--wait", "--wait-timeout", "120")
    assert result.exit_code == 2, result.output  # a refused file is a client error
    rows = {row["filename"]: row for row in json.loads(result.stdout)}
    assert rows["north.md"]["status"] == rows["south.txt"]["status"] == "completed"
    assert rows["north.md"]["batch_id"] and rows["north.md"]["batch_id"] == rows["south.txt"]["batch_id"]
    assert rows["tool.exe"]["status"] == "rejected" and "unsupported_type" in rows["tool.exe"]["error"]
    assert "tool.exe" in result.stderr

    batch_id = rows["north.md"]["batch_id"]
    shown = ragsvc(live, "batch", batch_id)
    assert shown.exit_code == 0 and "100% done" in shown.stdout and "tool.exe" in shown.stdout
    assert json.loads(ragsvc(live, "--json", "batch", batch_id).stdout)["counts"]["completed"] == 2
    cancelled = ragsvc(live, "--json", "batch-cancel", batch_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert {t["outcome"] for t in json.loads(cancelled.stdout)["tasks"]} == {"finished"}
    assert ragsvc(live, "batch", "no-such-batch").exit_code == 2

    # Without --wait: one table of what was submitted; the sync client speaks the same calls.
    again = ragsvc(live, "upload", *docs)
    assert again.exit_code == 0 and "Submitted" in again.stdout and "north.md" in again.stdout
    with RagClient(live.url, timeout=30) as client:
        body = client.batch_upload([("east.txt", story("quays", "Eastwhorl").encode())])
        assert len(body["tasks"]) == 1 and client.batch_status(body["batch_id"])["total"] == 1
