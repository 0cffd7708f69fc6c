"""The client's sans-I/O core (src/client/core.py, sse.py, operations.py): requests built, answers
decoded and the wait-for-a-task steps decided without any socket, clock or sleep.

The wait machine is driven by `drive` below with scripted replies and a fake clock, so every
branch (resume with Last-Event-ID, fall back to polling, back off, time out) is checked exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from src.client.core import (
    Call,
    RagApiError,
    RagConnectionError,
    RagTimeoutError,
    Settings,
    decode_error,
    decode_health,
    decode_json,
    ndjson_piece,
)
from src.client.operations import Operations
from src.client.sse import POLL_MAX_SECONDS, Do, Run, SseParser, Step, wait_steps

pytestmark = pytest.mark.unit


# --- decoding ------------------------------------------------------------------------------------------


def test_error_bodies_become_typed_errors() -> None:
    """Catches losing the service's stable ``code`` or crashing on a proxy's HTML page."""
    error = decode_error(409, b'{"detail": "already indexed", "code": "doc_exists", "doc_id": "d"}')
    assert (error.status_code, error.code, error.detail) == (409, "doc_exists", "already indexed")
    assert error.body["doc_id"] == "d"
    validation = decode_error(422, b'{"detail": [{"loc": ["query"]}], "code": "validation_error"}')
    assert validation.code == "validation_error" and json.loads(validation.detail) == [{"loc": ["query"]}]
    proxy = decode_error(502, b"<html>Bad gateway</html>", "Bad Gateway")
    assert (proxy.code, proxy.detail, proxy.body) == ("http_502", "<html>Bad gateway</html>", None)
    assert decode_error(504, b"", "Gateway Timeout").detail == "Gateway Timeout"
    with pytest.raises(RagApiError) as raised:
        decode_json(404, b'{"detail": "task x not found", "code": "task_not_found"}')
    assert raised.value.code == "task_not_found"
    assert decode_json(202, b'{"task_id": "t"}') == {"task_id": "t"}


def test_a_degraded_health_report_is_returned_not_raised() -> None:
    """Catches `health()` raising on 503 (the CLI must show the report and exit 1)."""
    assert decode_health(503, b'{"status": "degraded", "redis": {"ok": false}}')["status"] == "degraded"
    with pytest.raises(RagApiError):
        decode_health(503, b'{"detail": "redis down", "code": "redis_unavailable"}')


def test_ndjson_pieces_and_in_band_errors() -> None:
    """Catches swallowing an error the server could only report inside a started stream."""
    assert ndjson_piece('{"response": "Hello"}') == "Hello"
    assert ndjson_piece("   ") is None and ndjson_piece('{"response": ""}') is None
    with pytest.raises(RagApiError) as raised:
        ndjson_piece('{"error": "RuntimeError: provider down"}')
    assert (raised.value.status_code, raised.value.code) == (502, "stream_error")


def test_sse_parser_follows_the_whatwg_rules_that_matter() -> None:
    """Catches multi-line data being cut, comments counted as events, or a NUL id accepted."""
    parser = SseParser()
    lines = [": keep-alive", "", "retry: 1500", "id: 7", "event: task", 'data: {"a":', "data: 1}", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.event, e.data, e.id) for e in events] == [("task", '{"a":\n1}', "7")]
    assert parser.retry_ms == 1500
    assert parser.feed("id: bad\0id") is None and parser.last_event_id == "7"
    assert parser.feed("data:x") is None and parser.feed("").event == "message"


# --- building requests ---------------------------------------------------------------------------------


class Recorder(Operations[Call, Call]):
    """Operations whose shell just returns the Call it was handed."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings.resolve("http://svc/", settings.get("api_key"), settings.get("admin_token"))

    def _call(self, call: Call) -> Call:
        return call

    def _pieces(self, call: Call) -> Call:
        return call


def test_upload_and_text_carry_priority_callback_and_idempotency_key(tmp_path) -> None:
    """Catches an option being dropped on its way to the request (query param, body or header)."""
    ops = Recorder()
    path = tmp_path / "r.md"
    path.write_text("# R")
    call = ops.upload(path, doc_id="r-1", priority=9, callback_url="https://h/x", idempotency_key="k1")
    call.close()
    assert (call.method, call.path) == ("POST", "/insert")
    assert call.params == {"doc_id": "r-1", "priority": 9, "callback_url": "https://h/x"}
    assert call.headers == {"Idempotency-Key": "k1"} and call.files["file"][0] == "r.md"
    assert call.handle is not None and call.handle.closed  # the shell's close() releases the file

    bare = ops.upload(b"x", filename="a.txt")
    assert bare.params == {} and bare.headers == {} and bare.files == {"file": ("a.txt", b"x")}

    text = ops.insert_text("hello", "n-1", filename="n.txt", priority=0, idempotency_key="k2")
    assert text.json == {"text": "hello", "doc_id": "n-1", "filename": "n.txt", "priority": 0}
    assert text.headers == {"Idempotency-Key": "k2"}


def test_misspelt_options_and_missing_names_are_refused_before_sending() -> None:
    """Catches a typo (``prority=9``) being silently dropped instead of failing like a signature."""
    ops = Recorder()
    with pytest.raises(TypeError, match="prority"):
        ops.upload(b"x", filename="a.txt", prority=9)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="topk"):
        ops.query("q", topk=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="filename is required"):
        ops.upload(b"no name")


def test_query_defaults_and_options() -> None:
    """Catches unset options being sent as nulls the server would reject, or streaming drifting."""
    ops = Recorder()
    assert ops.query("q").json == {"query": "q", "mode": "hybrid", "only_need_context": False}
    call = ops.query(
        "q", mode="mix", only_need_context=True, top_k=5, chunk_top_k=7, response_type="Bullet Points"
    )
    assert call.json == {
        "query": "q",
        "mode": "mix",
        "only_need_context": True,
        "top_k": 5,
        "chunk_top_k": 7,
        "response_type": "Bullet Points",
    }
    stream = ops.query_stream("q", mode="naive")
    assert (stream.path, stream.json["mode"], stream.headers["Accept"]) == ("/query/stream", "naive", "*/*")


def test_query_async_posts_the_query_body_with_priority_and_callback_as_parameters() -> None:
    """Catches query_async sending priority/callback in the body (the server reads the query string),
    sending nulls for unset ones, or accepting a misspelt option."""
    ops = Recorder()
    call = ops.query_async("q", priority=8, callback_url="https://hooks.example/q", mode="naive")
    assert (call.method, call.path) == ("POST", "/query/async")
    assert call.params == {"priority": 8, "callback_url": "https://hooks.example/q"}
    assert call.json == {"query": "q", "mode": "naive", "only_need_context": False}
    assert ops.query_async("q").params is None
    with pytest.raises(TypeError, match="query_async"):
        ops.query_async("q", topk=3)  # type: ignore[call-arg]


def test_ids_are_escaped_into_one_path_segment() -> None:
    """Catches an id such as ``../admin/keys`` reaching another endpoint."""
    ops = Recorder()
    assert ops.task("a/../b?c").path == "/task/a%2F..%2Fb%3Fc"
    assert ops.delete_document("doc 1").path == "/documents/doc%201"
    assert (ops.cancel("t1").method, ops.cancel("t1").path) == ("DELETE", "/task/t1")
    assert ops.tasks(status="failed", limit=5).params == {"limit": 5, "offset": 0, "status": "failed"}


def test_admin_calls_use_the_admin_token_not_the_api_key(monkeypatch) -> None:
    """Catches admin calls going out with the tenant key (401) or with no token at all."""
    monkeypatch.delenv("RAGSVC_ADMIN_TOKEN", raising=False)
    ops = Recorder(api_key="tenant-key", admin_token="root")
    assert ops.settings.headers()["Authorization"] == "Bearer tenant-key"
    created = ops.create_tenant("acme", max_running=2)
    assert created.headers == {"Authorization": "Bearer root"} and created.path == "/admin/tenants"
    quotas = {"max_running": 2, "max_pending": None, "requests_per_minute": None}
    assert created.json == {"name": "acme", **quotas}
    assert ops.create_key("acme", "ci").json == {"label": "ci"}
    assert ops.revoke_key("k1").path == "/admin/keys/k1"
    with pytest.raises(ValueError, match="admin token"):
        Recorder(api_key="tenant-key").list_tenants()


def test_settings_come_from_arguments_then_the_environment(monkeypatch) -> None:
    """Catches $RAGSVC_* being ignored, or overriding an explicit (even empty) argument."""
    monkeypatch.setenv("RAGSVC_URL", "http://env:1/")
    monkeypatch.setenv("RAGSVC_API_KEY", "env-key")
    monkeypatch.setenv("RAGSVC_ADMIN_TOKEN", "env-admin")
    env = Settings.resolve(None, None, None)
    assert (env.base_url, env.api_key, env.admin_token) == ("http://env:1", "env-key", "env-admin")
    explicit = Settings.resolve("http://arg", "", None)
    assert (explicit.base_url, explicit.api_key) == ("http://arg", None)
    assert "Authorization" not in explicit.headers()


# --- waiting: the step machine driven by scripted replies ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def view(status: str, progress: float = 0.0) -> dict:
    return {"task_id": "t1", "status": status, "stage": "s", "progress": progress, "updated_at": progress}


def sse_lines(*views: dict, first_id: int = 1) -> list[str]:
    lines = []
    for offset, item in enumerate(views):
        lines += [f"id: {first_id + offset}", "event: task", f"data: {json.dumps(item)}", ""]
    return lines


class Script:
    """Plays the shell: answers each step from scripted streams and polls; records what it did."""

    def __init__(self, clock: Clock, streams: list[Any], polls: list[Any] | None = None) -> None:
        self.clock = clock
        self.streams = list(streams)  # per Listen: list of lines (then an optional error), or an error
        self.polls = list(polls or [])
        self.done: list[tuple[str, Any]] = []

    def perform(self, step: Step) -> Any:
        if step.do is Do.SLEEP:
            self.done.append(("sleep", round(step.arg, 4)))
            self.clock.now += step.arg
            return None
        if step.do is Do.NOTIFY:
            self.done.append(("notify", step.arg["status"]))
            return None
        if step.do is Do.FETCH:
            self.done.append(("fetch", step.arg.path))
            reply = self.polls.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        if step.do is Do.LISTEN:
            self.done.append(("listen", step.arg.headers.get("Last-Event-ID")))
            return iter(self.streams.pop(0))
        line = next(step.arg, None)  # READ_LINE
        if isinstance(line, Exception):
            raise line
        return line


def drive(steps: Any, perform: Callable[[Step], Any]) -> Any:
    run = Run(steps)
    while not run.done:
        run.settle(perform)
    return run.result


def test_wait_follows_events_and_resumes_a_dropped_stream_with_last_event_id() -> None:
    """Catches a dropped stream ending the wait, or a resume without Last-Event-ID (events replayed)."""
    clock = Clock()
    dropped = RagConnectionError("reset", refused=False)
    script = Script(
        clock,
        [
            [": keep-alive", "", "retry: 500", *sse_lines(view("pending"), view("processing", 40)), dropped],
            [*sse_lines(view("processing", 40), view("completed", 100), first_id=2)],
        ],
    )
    final = drive(wait_steps("t1", timeout=30, clock=clock), script.perform)
    assert final["status"] == "completed"
    assert script.done == [
        ("listen", None),
        ("notify", "pending"),
        ("notify", "processing"),
        ("sleep", 0.5),  # the server's retry: hint
        ("listen", "2"),
        ("notify", "completed"),  # the repeated "processing" view is not notified twice
    ]


@pytest.mark.parametrize(
    "failure",
    [RagApiError(405, "http_405", "Method Not Allowed"), RagConnectionError("refused", refused=True)],
    ids=["no-events-endpoint", "refused"],
)
def test_wait_polls_with_backoff_when_events_are_unavailable(failure: Exception) -> None:
    """Catches a missing/refused event stream failing the wait instead of falling back to polling,
    and a backoff that does not grow to its cap."""
    clock = Clock()
    polls: list[Any] = [view("pending")] * 8 + [view("completed", 100)]
    script = Script(clock, [[failure]], polls)
    final = drive(wait_steps("t1", timeout=None, clock=clock), script.perform)
    assert final["status"] == "completed"
    sleeps = [arg for kind, arg in script.done if kind == "sleep"]
    assert sleeps[:4] == [0.2, 0.3, 0.45, 0.675] and sleeps[-1] == POLL_MAX_SECONDS
    assert [arg for kind, arg in script.done if kind == "notify"] == ["pending", "completed"]
    assert script.done[:2] == [("listen", None), ("fetch", "/task/t1")]


def test_streams_that_keep_delivering_nothing_switch_to_polling() -> None:
    """Catches an endless reconnect loop against a proxy that closes every stream at once."""
    clock = Clock()
    script = Script(clock, [[], [": ping", ""]], [view("completed", 100)])
    assert drive(wait_steps("t1", timeout=60, clock=clock), script.perform)["status"] == "completed"
    assert [kind for kind, _ in script.done] == ["listen", "sleep", "listen", "fetch", "notify"]


def test_wait_times_out_with_the_last_view_and_never_sleeps_past_the_deadline() -> None:
    """Catches a wait that overruns its timeout or reports no last state."""
    clock = Clock()
    script = Script(clock, [], [view("processing", 10)] * 50)
    with pytest.raises(RagTimeoutError) as timed_out:
        drive(wait_steps("t1", timeout=1.0, use_sse=False, clock=clock), script.perform)
    assert timed_out.value.task["status"] == "processing" and "after 1s" in str(timed_out.value)
    assert clock.now == pytest.approx(1.0)
    assert [arg for kind, arg in script.done if kind == "sleep"] == [0.2, 0.3, 0.45, 0.05]


def test_a_poll_error_ends_the_wait_with_that_error() -> None:
    """Catches a 404 (task expired) while polling being retried forever instead of raised."""
    clock = Clock()
    gone = RagApiError(404, "task_not_found", "task t1 not found")
    script = Script(clock, [], [view("pending"), gone])
    with pytest.raises(RagApiError) as raised:
        drive(wait_steps("t1", timeout=10, use_sse=False, clock=clock), script.perform)
    assert raised.value is gone


@pytest.mark.parametrize("shell", ["sync", "aio"])
def test_idle_connections_are_dropped_before_the_servers_keep_alive_closes_them(shell: str) -> None:
    """Catches the client reusing a pooled connection for as long as uvicorn keeps it (5 s each by
    default): a request sent just as the server closed it failed with ReadError."""
    import uvicorn

    from src.client.aio import AsyncRagClient
    from src.client.sync import RagClient

    client = RagClient("http://127.0.0.1:1") if shell == "sync" else AsyncRagClient("http://127.0.0.1:1")
    pool = client._http._transport._pool  # httpx keeps the expiry on its connection pool
    server_keep_alive = uvicorn.Config(app=None).timeout_keep_alive
    assert pool._keepalive_expiry is not None and pool._keepalive_expiry <= server_keep_alive / 2
