"""DELETE /batch/{id} against the real task store: a running task gives its slot up as soon as it
is cancelled, so the batch's waiting tasks must be cancelled before its running ones, or the freed
slot starts one of them (it would then be 'cancelling', run, and purge, instead of never running)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from src.ingestion.batches import BatchService
from src.ingestion.tasks import Cancellation, TaskService
from src.tasks.batches import BatchRecord
from src.tasks.models import TaskRecord, TaskStatus
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class _Runner:
    def cancel_local(self, task_id: str) -> None:
        pass


class _SlotReusingTasks(TaskService):
    """A runner that reuses a slot the moment its task is cancelled: the next waiting task starts."""

    async def cancel(self, tenant: str, task_id: str) -> Cancellation:
        cancellation = await super().cancel(tenant, task_id)
        if cancellation.status == TaskStatus.CANCELLING:
            await self.store.claim("worker-1", 30)
        return cancellation


class _Batches:
    def __init__(self, batch: BatchRecord) -> None:
        self.batch = batch

    async def get(self, batch_id: str) -> BatchRecord | None:
        return self.batch if batch_id == self.batch.batch_id else None


async def _no_side_effects(record: TaskRecord, status: TaskStatus) -> None:
    pass


async def test_waiting_tasks_are_cancelled_before_a_freed_slot_can_start_them(
    make_store: Callable[..., TaskStore],
) -> None:
    store = make_store()
    tasks = [record(f"task-{n}", created_at=1000.0 + n) for n in range(4)]
    for task in tasks:
        await store.create(task)
    for _ in range(2):  # two slots: the first two run, the last two wait
        assert await store.claim("worker-1", 30) is not None
    batch = BatchRecord(
        batch_id="batch-1",
        tenant="default",
        created_at=1000.0,
        tasks=[{"filename": t.filename, "task_id": t.task_id, "doc_id": t.doc_id} for t in tasks],
    )
    service = BatchService(
        None,  # type: ignore[arg-type]  # cancel never submits
        _SlotReusingTasks(store, _Runner(), None, _no_side_effects),  # type: ignore[arg-type]
        _Batches(batch),  # type: ignore[arg-type]
    )

    cancelled = await service.cancel("default", "batch-1")

    outcomes = [t["outcome"] for t in cancelled.tasks]
    assert outcomes == ["cancelling", "cancelling", "cancelled", "cancelled"]
    for task in tasks[2:]:
        stored = await store.get(task.task_id)
        assert stored is not None and stored.status == TaskStatus.CANCELLED and stored.attempt == 0
