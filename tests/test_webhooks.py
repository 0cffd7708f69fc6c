"""Completion callbacks: signed (Standard Webhooks), retried with backoff, attempts recorded on the
task, and never delivered to internal addresses unless the operator allows them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from src.webhooks import receiver_secret, signature_headers
from tests.helpers import make_pdf, make_settings, start_service, story, upload, upload_files, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
SECRET = "test-webhook-secret"
#: The receivers below listen on loopback, which callbacks may only reach when allowed.
LOOPBACK = {"webhook_allowed_hosts": "127.0.0.1"}


class Receiver:
    """A real HTTP server on loopback that records deliveries and fails the first ``fail_first``."""

    def __init__(self, fail_first: int = 0):
        self.deliveries: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append({"headers": dict(self.headers.items()), "body": body})
                failing = len(receiver.deliveries) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


async def wait_webhook(client, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = (await client.get(f"/task/{task_id}")).json()
        if view.get("webhook"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError("webhook delivery was not recorded")


async def test_completed_task_posts_a_signed_event_after_retries(tmp_path, redis_url, receiver) -> None:
    hook = receiver(fail_first=2)
    settings = make_settings(
        tmp_path, redis_url, webhook_secret=SECRET, webhook_backoff_seconds=0.01, **LOOPBACK
    )
    async with start_service(settings) as svc:
        response = await svc.client.post(
            "/insert",
            params={"callback_url": hook.url},
            files={"file": ("a.txt", story("kites", "Hookmark").encode())},
        )
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        assert (await wait_for_task(svc.client, task_id))["status"] == "completed"
        view = await wait_webhook(svc.client, task_id)

    assert view["webhook"]["delivered"] is True
    assert [a.get("status_code") for a in view["webhook"]["attempts"]] == [500, 500, 204]
    assert len(hook.deliveries) == 3
    final = hook.deliveries[-1]
    headers = {k.lower(): v for k, v in final["headers"].items()}
    # A receiver verifies with the off-the-shelf Standard Webhooks library.
    verifier = Webhook(receiver_secret(SECRET))
    assert verifier.verify(final["body"], headers)["task"]["task_id"] == task_id
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_secret("other-secret")).verify(final["body"], headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(final["body"] + b" ", headers)
    # Retries of one event keep one id, so receivers can de-duplicate.
    ids = {d["headers"].get("webhook-id") or d["headers"].get("Webhook-Id") for d in hook.deliveries}
    assert ids == {f"{task_id}.completed"}
    event = json.loads(final["body"])
    assert event["event"] == "task.completed" and event["task"]["task_id"] == task_id
    assert event["task"]["status"] == "completed" and event["task"]["result"]["chunks_count"] >= 1


async def test_failed_and_cancelled_tasks_are_reported_too(tmp_path, redis_url, receiver) -> None:
    hook = receiver()
    settings = make_settings(tmp_path, redis_url, webhook_secret=SECRET, max_concurrent_tasks=1, **LOOPBACK)
    async with start_service(settings) as svc:
        broken = await svc.client.post(
            "/insert", params={"callback_url": hook.url}, files={"file": ("x.pdf", make_pdf(["text"])[:200])}
        )
        failed = await wait_webhook(svc.client, broken.json()["task_id"])
        assert failed["status"] == "failed" and failed["webhook"]["delivered"]

        await svc.services.runner.stop(grace_seconds=0)
        text = await svc.client.post(
            "/insert/text", json={"text": "to be cancelled", "callback_url": hook.url}
        )
        assert (await svc.client.delete(f"/task/{text.json()['task_id']}")).status_code == 200
        cancelled = await wait_webhook(svc.client, text.json()["task_id"])
        assert cancelled["webhook"]["delivered"]
    events = [json.loads(d["body"])["event"] for d in hook.deliveries]
    assert events == ["task.failed", "task.cancelled"]


async def test_undeliverable_webhook_is_recorded_not_retried_forever(tmp_path, redis_url, receiver) -> None:
    hook = receiver(fail_first=100)
    settings = make_settings(
        tmp_path,
        redis_url,
        webhook_secret=SECRET,
        webhook_attempts=3,
        webhook_backoff_seconds=0.01,
        **LOOPBACK,
    )
    async with start_service(settings) as svc:
        with_hook = await svc.client.post(
            "/insert", params={"callback_url": hook.url}, files={"file": ("b.txt", b"Unreachable hook text")}
        )
        view = await wait_webhook(svc.client, with_hook.json()["task_id"])
    assert view["webhook"]["delivered"] is False and len(view["webhook"]["attempts"]) == 3
    assert len(hook.deliveries) == 3


@pytest.mark.parametrize(
    "bad", ["ftp://example.org/x", "not a url", "http:///nohost", "http://x/" + "a" * 3000]
)
async def test_invalid_callback_url_is_422(service, bad: str) -> None:
    response = await service.client.post(
        "/insert", params={"callback_url": bad}, files={"file": ("a.txt", b"hello there")}
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid_callback_url"
    text = await service.client.post("/insert/text", json={"text": "hello", "callback_url": bad})
    assert text.status_code == 422
    assert list(upload_files(service.settings.uploads_dir)) == []


def test_signature_follows_the_standard_webhooks_spec() -> None:
    """Catches a signature over the wrong message or key: the spec signs "<id>.<timestamp>.<body>"
    with the base64-decoded `whsec_` key, and receivers reject stale timestamps."""
    import base64
    import hashlib
    import hmac

    body = b'{"event": "task.completed"}'
    headers = signature_headers(SECRET, "t1.completed", 1700000000, body)
    digest = hmac.new(SECRET.encode(), b"t1.completed.1700000000." + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    assert headers["webhook-id"] == "t1.completed" and headers["webhook-timestamp"] == "1700000000"
    with pytest.raises(WebhookVerificationError):  # far outside the replay window
        Webhook(receiver_secret(SECRET)).verify(body, headers)
    fresh = signature_headers(SECRET, "t1.completed", int(time.time()), body)
    assert Webhook(receiver_secret(SECRET)).verify(body, fresh) == {"event": "task.completed"}
    assert receiver_secret("whsec_abc") == "whsec_abc"


async def test_no_callback_url_sends_nothing(tmp_path, redis_url, receiver) -> None:
    """Catches a notifier that posts for every final task: a task without callback_url must not
    reach a receiver, and its view carries no webhook record."""
    hook = receiver()
    settings = make_settings(tmp_path, redis_url, webhook_secret=SECRET, **LOOPBACK)
    async with start_service(settings) as svc:
        plain = await upload(svc.client, "a.txt", b"short text about Hookless rivers")
        assert (await wait_for_task(svc.client, plain.json()["task_id"]))["status"] == "completed"
        # A second task with a hook, finished after the first: once its delivery is recorded, any
        # delivery for the first task would have been made too.
        hooked = await svc.client.post(
            "/insert", params={"callback_url": hook.url}, files={"file": ("b.txt", b"Hooked text")}
        )
        await wait_webhook(svc.client, hooked.json()["task_id"])
        first = (await svc.client.get(f"/task/{plain.json()['task_id']}")).json()
    assert first.get("webhook") is None
    assert [json.loads(d["body"])["task"]["task_id"] for d in hook.deliveries] == [hooked.json()["task_id"]]


def _internal_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://localhost:{port}/hook",
        f"http://2130706433:{port}/hook",  # 127.0.0.1 written as one decimal number
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://0.0.0.0/hook",
    ]


async def test_callbacks_never_reach_internal_addresses(tmp_path, redis_url, receiver) -> None:
    """Catches SSRF (issue 12 item 7): loopback in every spelling, metadata and private ranges are
    refused after resolution, nothing reaches the receiver, and the record says only
    'destination not allowed' (no connection detail that would make a port scanner)."""
    hook = receiver()
    port = hook.server.server_address[1]
    settings = make_settings(
        tmp_path, redis_url, webhook_secret=SECRET, webhook_attempts=2, webhook_backoff_seconds=0.01
    )
    async with start_service(settings) as svc:
        task_ids = []
        for i, url in enumerate(_internal_urls(port)):
            response = await svc.client.post(
                "/insert/text", json={"text": f"internal probe number {i}", "callback_url": url}
            )
            assert response.status_code in (202, 422), response.text
            if response.status_code == 202:
                task_ids.append(response.json()["task_id"])
        assert task_ids, "every probe was refused at submission: the delivery-time guard went untested"
        for task_id in task_ids:
            view = await wait_webhook(svc.client, task_id)
            assert view["webhook"]["delivered"] is False
            assert {a.get("error") for a in view["webhook"]["attempts"]} == {"destination not allowed"}
            assert all("status_code" not in a for a in view["webhook"]["attempts"])
    assert hook.deliveries == []


async def test_destination_guard_resolves_and_pins() -> None:
    """Catches a guard that checks the URL text instead of the resolved address, or that lets the
    request resolve the name again (DNS rebinding)."""
    from src.core.netguard import AllowList, BlockedDestination, resolve_destination

    none = AllowList.parse("")
    for url in _internal_urls(8080) + ["ftp://example.org/x", "http:///nohost"]:
        with pytest.raises(BlockedDestination):
            await resolve_destination(url, none)
    public = await resolve_destination("https://93.184.216.34:8443/hook?x=1", none)
    assert public.url == "https://93.184.216.34:8443/hook?x=1" and public.sni_hostname == "93.184.216.34"
    allowed = await resolve_destination("http://localhost:9/hook", AllowList.parse("localhost"))
    assert allowed.url in ("http://127.0.0.1:9/hook", "http://[::1]:9/hook")
    assert allowed.host_header == "localhost:9"
    by_network = AllowList.parse("10.0.0.0/8, hooks.internal")
    assert (await resolve_destination("http://10.1.2.3/h", by_network)).url == "http://10.1.2.3/h"
    with pytest.raises(BlockedDestination):
        await resolve_destination("http://192.168.0.1/h", by_network)


async def test_query_task_posts_its_answer_to_the_callback(tmp_path, redis_url, receiver) -> None:
    """Catches a query task (POST /query/async) whose completion is not reported to its callback,
    or reported without the answer."""
    hook = receiver()
    settings = make_settings(tmp_path, redis_url, webhook_secret=SECRET, **LOOPBACK)
    async with start_service(settings) as svc:
        response = await svc.client.post(
            "/query/async", params={"callback_url": hook.url}, json={"query": "anything?", "mode": "naive"}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        assert (await wait_for_task(svc.client, task_id))["status"] == "completed"
        view = await wait_webhook(svc.client, task_id)
    assert view["webhook"]["delivered"] is True
    event = json.loads(hook.deliveries[-1]["body"])
    assert event["event"] == "task.completed" and event["task"]["kind"] == "query"
    assert "response" in event["task"]["result"]


class HostileReceiver:
    """A loopback receiver that answers in a way meant to hold the sender: ``firehose`` sends a 200
    and then up to ``limit`` bytes of body as fast as it is read; ``trickle`` sends a header line a
    byte at a time, forever. ``sent`` counts the bytes the sender accepted."""

    def __init__(self, mode: str, limit: int = 256 * 1024 * 1024):
        self.mode = mode
        self.limit = limit
        self.sent = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> HostileReceiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.mode == "firehose":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n")
                chunk = b"x" * (256 * 1024)
                while self.sent < self.limit:
                    writer.write(chunk)
                    await writer.drain()
                    self.sent += len(chunk)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
                while True:
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    writer.write(b"a")
                    self.sent += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_receiver_that_never_stops_sending_costs_a_bounded_read(tmp_path, redis_url) -> None:
    """Catches a delivery that reads the receiver's whole answer into memory (+3 GB in 13 s from a
    receiver streaming without end): at most WEBHOOK_MAX_RESPONSE_BYTES are read, the connection
    is dropped, and the 2xx status counts as delivered."""
    settings = make_settings(
        tmp_path, redis_url, webhook_secret=SECRET, webhook_max_response_bytes=64 * 1024, **LOOPBACK
    )
    async with HostileReceiver("firehose") as hook, start_service(settings) as svc:
        warm = await svc.client.post("/insert/text", json={"text": "warm up the models first"})
        await wait_for_task(svc.client, warm.json()["task_id"], expect="completed")
        before = _rss_mb()
        response = await svc.client.post(
            "/insert/text", json={"text": "firehose receiver", "callback_url": hook.url}
        )
        view = await wait_webhook(svc.client, response.json()["task_id"], timeout=60)
        growth = _rss_mb() - before
    assert view["webhook"]["delivered"] is True, view["webhook"]
    assert view["webhook"]["attempts"][0]["status_code"] == 200
    # What the sender accepted: the cap plus what the kernel's socket buffers hold, far below 256 MB.
    assert hook.sent < 32 * 1024 * 1024, f"the sender read {hook.sent} bytes of the answer"
    assert growth < 100, f"the service grew by {growth:.0f} MB while a receiver streamed at it"


async def test_a_receiver_trickling_bytes_cannot_hold_a_delivery_past_its_deadline(
    tmp_path, redis_url
) -> None:
    """Catches a delivery with only a per-read timeout: a receiver sending one byte of its headers
    every 0.2 s kept an attempt open forever (still open at 75 s). Each attempt now ends at
    WEBHOOK_TIMEOUT_SECONDS, is recorded as timed out, and the retries end too."""
    settings = make_settings(
        tmp_path,
        redis_url,
        webhook_secret=SECRET,
        webhook_timeout_seconds=1.0,
        webhook_attempts=2,
        webhook_backoff_seconds=0.01,
        **LOOPBACK,
    )
    async with HostileReceiver("trickle") as hook, start_service(settings) as svc:
        response = await svc.client.post(
            "/insert/text", json={"text": "trickling receiver", "callback_url": hook.url}
        )
        view = await wait_webhook(svc.client, response.json()["task_id"], timeout=60)
    assert view["webhook"]["delivered"] is False
    assert [a.get("error") for a in view["webhook"]["attempts"]] == ["timed out", "timed out"]
    assert hook.connections == 2 and hook.sent > 0
