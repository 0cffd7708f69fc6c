"""The task-change fan-out (src/tasks/fanout.py) reads a changed task's record only when a stream
of this process can want it: a stream of that task, or a tenant-wide stream (GET /events)."""

from __future__ import annotations

import time

import pytest

from src.tasks.fanout import GONE, TaskEventHub
from src.tasks.models import TaskRecord

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class _Store:
    """Just what the hub reads: `get`, counted."""

    redis = None

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.records = {
            t: TaskRecord(task_id=t, tenant="acme", created_at=time.time(), updated_at=time.time())
            for t in ("t-1", "t-2")
        }

    async def get(self, task_id: str) -> TaskRecord | None:
        self.reads.append(task_id)
        return self.records.get(task_id)


async def test_a_change_nobody_here_follows_is_not_read() -> None:
    """Catches the hub reading every changed task as soon as any stream is open: with hundreds of
    tasks in flight and a few followed over SSE, each process read them all at every change."""
    store = _Store()
    hub = TaskEventHub(store, max_per_tenant=10, queue_size=8)  # type: ignore[arg-type]
    follower = hub.subscribe("acme", "t-1")
    await hub._dispatch("t-2")
    assert store.reads == []
    await hub._dispatch("t-1")
    assert store.reads == ["t-1"]
    assert (await follower.next()).task_id == "t-1"
    await hub._dispatch("gone")  # a followed task whose record expired
    gone = hub.subscribe("acme", "gone")
    await hub._dispatch("gone")
    assert await gone.next() is GONE


async def test_a_tenant_wide_stream_still_gets_every_change() -> None:
    store = _Store()
    hub = TaskEventHub(store, max_per_tenant=10, queue_size=8)  # type: ignore[arg-type]
    follower = hub.subscribe("acme", "t-1")
    dashboard = hub.subscribe("acme")
    await hub._dispatch("t-2")
    assert (await dashboard.next()).task_id == "t-2"
    assert follower.queue.empty()
    dashboard.close()
    dashboard.close()  # closing twice changes nothing
    await hub._dispatch("t-2")
    assert store.reads == ["t-2"]
    follower.close()
    assert (hub._tenant_wide, dict(hub._by_tenant), dict(hub._by_task)) == (0, {}, {})
