"""Record factory shared by the unit tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Coroutine
from typing import Any

from src.tasks.models import TaskKind, TaskRecord


def record(
    task_id: str | None = None,
    *,
    tenant: str = "default",
    doc_id: str | None = None,
    sha: str = "sha",
    priority: int = 5,
    created_at: float | None = None,
) -> TaskRecord:
    now = time.time() if created_at is None else created_at
    task_id = task_id or uuid.uuid4().hex
    return TaskRecord(
        task_id=task_id,
        tenant=tenant,
        priority=priority,
        doc_id=doc_id or f"doc-{task_id}",
        filename=f"{task_id}.txt",
        content_sha256=sha,
        created_at=now,
        updated_at=now,
    )


def query_record(
    task_id: str | None = None, *, tenant: str = "default", priority: int = 5, text: str = "what?"
) -> TaskRecord:
    """A query task (the query lane): no doc id, its spec in ``query``."""
    now = time.time()
    return TaskRecord(
        task_id=task_id or uuid.uuid4().hex,
        tenant=tenant,
        priority=priority,
        kind=TaskKind.QUERY,
        query={"text": text, "mode": "naive"},
        created_at=now,
        updated_at=now,
    )


async def swallowing_a_cancel(entered: asyncio.Event, until: Awaitable[Any]) -> None:
    """Set ``entered``, then await ``until`` and swallow a cancel that lands meanwhile: what a
    library call that catches the cancel to clean up may do (the background-loop stop tests)."""
    entered.set()
    try:
        await until
    except asyncio.CancelledError:
        pass


async def assert_stops_within(stop: Coroutine[Any, Any, Any], loop: asyncio.Task | None, what: str) -> None:
    """Fail unless ``stop`` (a service part's stop/close) returns within 5 s. Then ``loop``, the
    background task it stops, is cancelled again: one that swallowed its cancel (the bug these
    tests catch) must not outlive the test."""
    stopping = asyncio.create_task(stop)
    done, _ = await asyncio.wait({stopping}, timeout=5)
    try:
        assert stopping in done, f"{what} still waiting after 5 s"
        assert loop is None or loop.done(), f"{what} returned with its loop still running"
    finally:
        if loop is not None and not loop.done():
            loop.cancel()
            await asyncio.wait({loop}, timeout=5)
        stopping.cancel()
