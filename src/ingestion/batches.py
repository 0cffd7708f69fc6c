"""Batches: many files in one request (seed 003), each an ordinary task; the batch only groups them.

`submit` streams every file part with the checks of ``/insert`` (src/ingestion/uploads.py), queues
the good files through `SubmissionService.submit_file` and keeps each refusal with the answer
``/insert`` would have given. `status` reads the state of the batch from its tasks' records (counts,
progress, done). `cancel` cancels every task the batch created that is still pending or running,
through `TaskService.cancel` (the use-case of ``DELETE /task/{id}``).

Duplicates: a file whose content is already a task (earlier in the same batch, or before it) is
answered like ``/insert`` answers it: the existing task, ``duplicate: true``. Such an entry counts in
the batch's status and `cancel` cancels its task too, so a batch sent again after a lost answer
(all duplicates) can still be cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from src.core.body_pace import Pace
from src.core.errors import DomainError
from src.ingestion.errors import BatchNotFound, NotCancellable, TaskNotFound
from src.ingestion.submission import Accepted, SubmissionService, SubmitOptions
from src.ingestion.tasks import TaskService
from src.ingestion.uploads import receive_batch
from src.tasks.batches import BatchRecord, BatchStore
from src.tasks.models import TaskRecord, TaskStatus
from src.tasks.store import TaskStore

#: How a refused file is described to the client: {status_code, error, detail} (given by the HTTP
#: layer, which owns the status codes).
Describe = Callable[[DomainError], dict[str, Any]]

#: A task record that is gone: it finished and its TTL ended.
EXPIRED = "expired"
STATUSES = (*(s.value for s in TaskStatus), EXPIRED)


@dataclass(frozen=True)
class BatchSubmitted:
    """``record`` is None when no file was accepted (then nothing was kept)."""

    record: BatchRecord | None
    #: The accepted files: {filename, task_id, doc_id, status, duplicate}.
    tasks: list[dict[str, Any]]
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class BatchStatus:
    record: BatchRecord
    #: Per accepted file: its entry plus the task's status, stage, progress and error.
    tasks: list[dict[str, Any]]
    counts: dict[str, int]
    progress: float
    done: bool


@dataclass(frozen=True)
class BatchCancellation:
    record: BatchRecord
    #: Per accepted file: {filename, task_id, outcome, status}; outcome is cancelled, cancelling,
    #: finished (already final: status says how) or expired; a task named twice is cancelled once.
    tasks: list[dict[str, Any]]


class BatchService:
    def __init__(self, submission: SubmissionService, tasks: TaskService, store: BatchStore) -> None:
        self.submission = submission
        self.tasks = tasks
        self.store = store

    async def submit(
        self,
        tenant: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes],
        options: SubmitOptions,
        describe: Describe,
    ) -> BatchSubmitted:
        submission = self.submission
        settings = submission.settings
        await submission.admit(tenant, options)
        received = await receive_batch(
            dict(headers),
            body,
            submission.files,
            new_task_id=TaskStore.new_task_id,
            max_bytes=settings.max_upload_bytes,
            max_files=settings.max_batch_files,
            max_total_bytes=settings.max_batch_bytes,
            pace=Pace.of(settings),
        )
        errors = [{"filename": r.filename, **describe(r.error)} for r in received.rejected]
        tasks: list[dict[str, Any]] = []
        waiting = list(received.saved)
        try:
            while waiting:
                saved = waiting.pop(0)
                try:
                    accepted = await submission.submit_file(tenant, saved, options)
                except DomainError as exc:  # queue full, doc conflict...: this file only
                    errors.append({"filename": saved.original_name, **describe(exc)})
                    continue
                record = accepted.record
                tasks.append(
                    {
                        "filename": saved.original_name,
                        "task_id": record.task_id,
                        "doc_id": record.doc_id,
                        "status": record.status.value,
                        "duplicate": accepted.duplicate,
                    }
                )
        finally:
            for saved in waiting:  # an unexpected failure: files no task will ever own
                await submission.files.remove(saved.path.name)
        if not tasks:
            return BatchSubmitted(None, [], errors)
        stored = [{k: v for k, v in task.items() if k != "status"} for task in tasks]
        return BatchSubmitted(await self.store.create(tenant, stored, errors), tasks, errors)

    async def group(self, tenant: str, accepted: list[tuple[str, Accepted]]) -> BatchRecord:
        """One batch record over tasks submitted one by one (``(filename, accepted)`` pairs): several
        texts in one request, a directory scan."""
        entries = [
            {
                "filename": name,
                "task_id": a.record.task_id,
                "doc_id": a.record.doc_id,
                "duplicate": a.duplicate,
            }
            for name, a in accepted
        ]
        return await self.store.create(tenant, entries, [])

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord:
        """The batch if it exists *and belongs to the caller*; otherwise the same error (no leak)."""
        record = await self.store.get(batch_id) if len(batch_id) <= 64 else None
        if record is None or record.tenant != tenant:
            raise BatchNotFound(f"batch {batch_id} not found (unknown, or expired after its TTL)")
        return record

    async def status(self, tenant: str, batch_id: str) -> BatchStatus:
        record = await self.batch(tenant, batch_id)
        ids = list(dict.fromkeys(entry["task_id"] for entry in record.tasks))
        found = {task.task_id: task for task in await self.tasks.store.get_many(ids)}
        tasks = [{**entry, **_task_state(found.get(entry["task_id"]))} for entry in record.tasks]
        counts = dict.fromkeys(STATUSES, 0)
        for task in tasks:
            counts[task["status"]] += 1
        done = all(task["final"] for task in tasks)
        progress = sum(task["progress"] for task in tasks) / len(tasks) if tasks else 100.0
        if not done:
            await self.store.keep(batch_id)
        for task in tasks:
            del task["final"]
        return BatchStatus(record, tasks, counts, round(progress, 1), done)

    async def cancel(self, tenant: str, batch_id: str) -> BatchCancellation:
        record = await self.batch(tenant, batch_id)
        ids = list(dict.fromkeys(entry["task_id"] for entry in record.tasks))
        found = {task.task_id: task for task in await self.tasks.store.get_many(ids)}

        # Waiting tasks first: a running task gives its slot up as soon as it is cancelled, and a
        # waiting task of this batch must not be started in that slot before its own cancel.
        def running_or_gone(task_id: str) -> bool:
            task = found.get(task_id)
            return task is None or task.status != TaskStatus.PENDING

        outcomes: dict[str, tuple[str, str | None]] = {}
        for task_id in sorted(ids, key=running_or_gone):  # stable: batch order within each group
            outcomes[task_id] = await self._cancel_one(tenant, task_id)
        tasks = []
        for entry in record.tasks:
            task_id = entry["task_id"]
            outcome, status = outcomes[task_id]
            tasks.append(
                {"filename": entry["filename"], "task_id": task_id, "outcome": outcome, "status": status}
            )
        return BatchCancellation(record, tasks)

    async def _cancel_one(self, tenant: str, task_id: str) -> tuple[str, str | None]:
        try:
            cancellation = await self.tasks.cancel(tenant, task_id)
        except NotCancellable as exc:
            return "finished", str(exc.context.get("status"))
        except TaskNotFound:
            return EXPIRED, EXPIRED
        return cancellation.status.value, cancellation.status.value


def _task_state(task: TaskRecord | None) -> dict[str, Any]:
    """What a batch shows of one task; a final one counts as 100 % towards the batch's progress."""
    if task is None:
        return {
            "status": EXPIRED,
            "stage": None,
            "progress": 100.0,
            "error": None,
            "result": None,
            "final": True,
        }
    final = task.status.is_final
    return {
        "status": task.status.value,
        "stage": task.stage,
        "progress": 100.0 if final else float(task.progress),
        "error": task.error,
        "result": task.result,
        "final": final,
    }
