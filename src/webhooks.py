"""Completion callbacks: when a task that carries a `callback_url` ends, POST a signed JSON event.

Payload: {"event": "task.completed" | "task.failed" | "task.cancelled", "task": <GET /task view>}.
Headers: `X-Ragsvc-Timestamp: <unix seconds>` and
`X-Ragsvc-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>" with WEBHOOK_SECRET>`,
so a receiver can verify origin and reject replays. Delivery is retried with exponential backoff
and jitter (tenacity) on connection errors and non-2xx answers; every attempt is recorded on
the task (`webhook.attempts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import tenacity

from src.tasks.models import TaskRecord
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """WEBHOOK_SECRET, or a random secret kept in DATA_DIR/webhook_secret for the operator to share."""
    if configured:
        return configured
    path = data_dir / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_hex(32)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_seconds: float = 300) -> bool:
    """What a receiver does (also used by the tests): constant-time compare, bounded clock skew."""
    if abs(time.time() - float(timestamp)) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


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
    ):
        self.store = store
        self.secret = secret
        self.view = view
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.client = httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)
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
            retry=tenacity.retry_if_exception_type((_Undelivered, httpx.HTTPError)),
            reraise=True,
        )
        delivered = False
        with contextlib.suppress(_Undelivered, httpx.HTTPError):
            async for attempt in retrying:
                with attempt:
                    await self._post_once(record, body, attempts)
            delivered = True
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
        timestamp = f"{time.time():.0f}"
        headers = {
            "content-type": "application/json",
            "x-ragsvc-timestamp": timestamp,
            "x-ragsvc-signature": sign(self.secret, timestamp, body),
            "x-ragsvc-event": f"task.{record.status.value}",
        }
        entry: dict[str, Any] = {"at": time.time()}
        attempts.append(entry)
        try:
            response = await self.client.post(record.callback_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            raise
        entry["status_code"] = response.status_code
        if not 200 <= response.status_code < 300:
            raise _Undelivered(f"receiver answered {response.status_code}")
