"""Completion callbacks: when a task that carries a `callback_url` ends, POST a signed JSON event.

Payload: {"event": "task.completed" | "task.failed" | "task.cancelled", "task": <GET /task view>}.
Signed by the Standard Webhooks spec (https://www.standardwebhooks.com), so receivers verify with
an off-the-shelf library (`standardwebhooks.Webhook(secret).verify(body, headers)`):
`webhook-id` (`<task_id>.<status>`, the same on every retry, for de-duplication),
`webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`). `X-Ragsvc-Event` names the event for routing.

Delivery goes only to public addresses (`src/core/netguard.py`; WEBHOOK_ALLOWED_HOSTS exempts
named hosts or networks), pinned to the checked address, and never follows redirects. It is
retried with exponential backoff and jitter (tenacity) on connection errors, timeouts and non-2xx
answers; every attempt is recorded on the task (`webhook.attempts`) with a status code or a generic
error — never the low-level reason, which would turn callbacks into a port scanner.

A receiver is a stranger: each attempt has one overall deadline (WEBHOOK_TIMEOUT_SECONDS, from
resolving the host to the status line, so a receiver trickling a byte at a time cannot hold it
open), and at most WEBHOOK_MAX_RESPONSE_BYTES of its answer are read (only the status matters; a
receiver that never stops sending costs that many bytes, not the service's memory).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import tenacity
from standardwebhooks import Webhook

from src.core.netguard import AllowList, BlockedDestination, resolve_destination
from src.tasks.models import TaskRecord
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """WEBHOOK_SECRET, or a random `whsec_…` secret kept in DATA_DIR/webhook_secret for the operator."""
    if configured:
        return configured
    path = data_dir / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def receiver_secret(secret: str) -> str:
    """The secret in the form Standard Webhooks libraries take (`whsec_<base64 key>`).

    A `whsec_…` secret is used as is; any other string (e.g. a pre-existing hex secret) is taken
    as the raw key bytes, so secrets set before the switch keep working.
    """
    if secret.startswith("whsec_"):
        return secret
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    signed = Webhook(receiver_secret(secret)).sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signed}


class _Undelivered(Exception):
    pass


class WebhookNotifier:
    def __init__(
        self,
        store: TaskStore,
        secret: str,
        view: Callable[[TaskRecord], dict[str, Any]],
        *,
        attempts: int = 5,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        max_response_bytes: int = 64 * 1024,
        allowed_hosts: str | None = None,
    ):
        self.store = store
        self.secret = secret
        self.view = view
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.allow = AllowList.parse(allowed_hosts)
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        # trust_env=False: a proxy from the environment would bypass the address pinning.
        self.client = httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False, trust_env=False)
        self._pending: set[asyncio.Task] = set()

    def notify(self, task_id: str) -> None:
        """Deliver in the background; never delays the caller."""
        job = asyncio.create_task(self._deliver(task_id), name=f"webhook-{task_id}")
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def close(self, grace_seconds: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=grace_seconds)
        for job in self._pending:
            job.cancel()
        await self.client.aclose()

    async def _deliver(self, task_id: str) -> None:
        record = await self.store.get(task_id)
        if record is None or not record.callback_url or not record.status.is_final:
            return
        body = json.dumps({"event": f"task.{record.status.value}", "task": self.view(record)}).encode()
        attempts: list[dict[str, Any]] = []
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.backoff_seconds, max=60),
            retry=tenacity.retry_if_exception_type((_Undelivered, httpx.HTTPError, TimeoutError)),
            reraise=True,
        )
        delivered = False
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post_once(record, body, attempts)
            delivered = True
        except BlockedDestination:
            pass  # recorded on the attempt; retrying cannot make an internal address public
        except (_Undelivered, httpx.HTTPError, TimeoutError):
            pass
        await self.store.record_webhook(
            task_id, {"url": record.callback_url, "delivered": delivered, "attempts": attempts}
        )
        log.log(
            logging.INFO if delivered else logging.WARNING,
            "webhook for task %s %s after %d attempt(s)",
            task_id,
            "delivered" if delivered else "NOT delivered",
            len(attempts),
        )

    async def _post_once(self, record: TaskRecord, body: bytes, attempts: list[dict[str, Any]]) -> None:
        entry: dict[str, Any] = {"at": time.time()}
        attempts.append(entry)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._exchange(record, body, entry)
        except TimeoutError:
            if "status_code" not in entry:  # past the status line, only the unread rest was cut off
                entry["error"] = "timed out"
                raise
        status = entry["status_code"]
        if not 200 <= status < 300:
            raise _Undelivered(f"receiver answered {status}")

    async def _exchange(self, record: TaskRecord, body: bytes, entry: dict[str, Any]) -> None:
        """One POST; records the receiver's status, then reads at most `max_response_bytes` of its body."""
        try:
            destination = await resolve_destination(record.callback_url, self.allow)
        except BlockedDestination:
            entry["error"] = "destination not allowed"
            raise
        event_id = f"{record.task_id}.{record.status.value}"
        headers = {
            "content-type": "application/json",
            "host": destination.host_header,
            "x-ragsvc-event": f"task.{record.status.value}",
            **signature_headers(self.secret, event_id, int(time.time()), body),
        }
        request = self.client.build_request(
            "POST",
            destination.url,
            content=body,
            headers=headers,
            extensions={"sni_hostname": destination.sni_hostname},
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            entry["error"] = "connection failed"
            raise
        entry["status_code"] = response.status_code
        try:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= self.max_response_bytes:
                    break  # closing an unread body drops the connection instead of reading on
        except httpx.HTTPError:
            pass  # the status is what counts; a broken body after it changes nothing
        finally:
            await response.aclose()
