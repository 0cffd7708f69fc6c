"""Tasks as the client sees them: look one up, list them, cancel one, wait for one to end.

What happens on cancel: a *pending* task becomes `cancelled` at once here, and the handler's
end-of-task side effects run (its upload is removed) before the webhook is sent. A *running*
task becomes `cancelling`; the runner that holds it stops its job, which purges its partial data
through the knowledge base's `purge` (the path `DELETE /documents/{id}` takes) and records
`cancelled`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from src.core.defaults import DEFAULT_TENANT
from src.ingestion.errors import NotCancellable, TaskNotFound
from src.tasks.fanout import TaskEventHub
from src.tasks.models import CancelOutcome, TaskRecord, TaskStatus
from src.tasks.runner import TaskRunner
from src.tasks.store import TaskStore

#: End-of-task side effects of a task that reached a final status (`IngestHandler.after_final`).
AfterFinal = Callable[[TaskRecord, TaskStatus], Awaitable[None]]


@dataclass(frozen=True)
class Cancellation:
    task_id: str
    #: CANCELLED (it never ran; done) or CANCELLING (running; its runner stops and cleans it up).
    status: TaskStatus


class TaskService:
    def __init__(self, store: TaskStore, runner: TaskRunner, events: TaskEventHub, after_final: AfterFinal):
        self.store = store
        self.runner = runner
        self.events = events
        self.after_final = after_final

    async def task(self, tenant: str, task_id: str) -> TaskRecord:
        """The task if it exists *and belongs to the caller*; otherwise the same error (no leak)."""
        record = await self.store.get(task_id) if len(task_id) <= 64 else None
        if record is None or record.tenant != tenant:
            raise TaskNotFound(f"task {task_id} not found (unknown, or expired after its TTL)")
        return record

    async def stored_fields(self, tenant: str, task_id: str) -> dict[str, str]:
        """`task`, as the stored hash's strings (the poll route writes its view from them)."""
        fields = await self.store.fields(task_id) if len(task_id) <= 64 else {}
        if not fields or (fields.get("tenant") or DEFAULT_TENANT) != tenant:
            raise TaskNotFound(f"task {task_id} not found (unknown, or expired after its TTL)")
        return fields

    async def tasks(
        self, tenant: str, *, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[TaskRecord]]:
        return await self.store.list(tenant=tenant, status=status, offset=offset, limit=limit)

    async def stored_page(
        self, tenant: str, *, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, str]]]:
        """`tasks`, as the stored hashes' strings (the list route writes its views from them)."""
        return await self.store.list_fields(tenant=tenant, status=status, offset=offset, limit=limit)

    async def wait_final(self, task_id: str, seconds: float) -> TaskRecord | None:
        """The task's record if it ends within ``seconds`` (None otherwise, or when too many requests
        of this process wait already); waiting never changes the task."""
        return await self.events.wait_final(task_id, seconds)

    async def cancel(self, tenant: str, task_id: str) -> Cancellation:
        """Cancel a task whatever its state (see the module docstring); a finished one is refused."""
        record = await self.task(tenant, task_id)
        result = await self.store.request_cancel(task_id)
        if result.outcome == CancelOutcome.MISSING:
            raise TaskNotFound(f"task {task_id} not found (unknown, or expired after its TTL)")
        if result.outcome == CancelOutcome.CANCELLED:
            # It never ran, so no runner will: the end-of-task side effects happen here.
            await self.after_final(record, TaskStatus.CANCELLED)  # incl. the webhook
            return Cancellation(task_id, TaskStatus.CANCELLED)
        if result.outcome in (CancelOutcome.CANCELLING, CancelOutcome.ALREADY_CANCELLING):
            self.runner.cancel_local(task_id)  # other instances notice at their next heartbeat
            return Cancellation(task_id, TaskStatus.CANCELLING)
        raise NotCancellable(f"task already {result.status}; nothing to cancel", status=str(result.status))
