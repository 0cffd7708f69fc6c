"""Completion callbacks: signed, retried with backoff, attempts recorded on the task."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from src.webhooks import sign, verify
from tests.conftest import make_settings, start_service, upload, wait_for_task
from tests.docs_factory import make_pdf, story

pytestmark = pytest.mark.timeout(120)
SECRET = "test-webhook-secret"


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
    settings = make_settings(tmp_path, redis_url, webhook_secret=SECRET, webhook_backoff_seconds=0.01)
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
    assert verify(SECRET, headers["x-ragsvc-timestamp"], final["body"], headers["x-ragsvc-signature"])
    assert not verify(
        "other-secret", headers["x-ragsvc-timestamp"], final["body"], headers["x-ragsvc-signature"]
    )
    assert not verify(
        SECRET, headers["x-ragsvc-timestamp"], final["body"] + b" ", headers["x-ragsvc-signature"]
    )
    event = json.loads(final["body"])
    assert event["event"] == "task.completed" and event["task"]["task_id"] == task_id
    assert event["task"]["status"] == "completed" and event["task"]["result"]["chunks_count"] >= 1


async def test_failed_and_cancelled_tasks_are_reported_too(tmp_path, redis_url, receiver) -> None:
    hook = receiver()
    settings = make_settings(tmp_path, redis_url, webhook_secret=SECRET, max_concurrent_tasks=1)
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
        tmp_path, redis_url, webhook_secret=SECRET, webhook_attempts=3, webhook_backoff_seconds=0.01
    )
    async with start_service(settings) as svc:
        response = await upload(svc.client, "a.txt", b"short text about Hookless rivers")
        # No callback: nothing is sent.
        await wait_for_task(svc.client, response.json()["task_id"])
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
    assert list(service.settings.uploads_dir.iterdir()) == []


def test_signature_is_hmac_of_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"event": "task.completed"}'
    expected = "sha256=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == expected
    assert not verify(SECRET, "1700000000", body, expected)  # far outside the replay window
