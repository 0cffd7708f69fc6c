"""The runner's view of ingestion (`src.tasks.runner.TaskHandler`).

The generic task runner knows nothing of files or LightRAG: it asks this handler to run a
task in its tenant's knowledge base, to undo a task's effects, to classify an error, and to
do the end-of-task side effects. `purge` is the one way a document leaves a knowledge base:
a cancel, a failed attempt and `DELETE /documents/{id}` all go through it, so each of them
stops the document's in-flight LLM work the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from src.ingestion.files import UploadFiles
from src.ingestion.ingestor import IngestError, is_transient_message
from src.ingestion.knowledge_bases import TenantEngines
from src.rag.parsers import DocumentParseError
from src.tasks.models import TaskRecord, TaskStatus

log = logging.getLogger(__name__)

#: Final statuses after which the stored upload is no longer needed. A permanently failed task
#: keeps its error in the record but not its file: nothing retries it, and kept files fill the disk.
_DROP_UPLOAD_AFTER = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED})


class IngestHandler:
    def __init__(
        self, engines: TenantEngines, files: UploadFiles, on_final: Callable[[str], None] | None = None
    ):
        self.engines = engines
        self.files = files
        #: Told the id of every task that reached a final state (the completion webhook).
        self.on_final = on_final or (lambda task_id: None)

    async def run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict:
        async with self.engines.use(task.tenant) as engine:
            return (await engine.ingestor.ingest(task, report)).as_dict()

    async def discard(self, task: TaskRecord) -> None:
        await self.purge(task.tenant, task.doc_id)

    async def purge(self, tenant: str, doc_id: str) -> str:
        """Stop the document's LLM work and delete all it left in the tenant's knowledge base.

        Returns LightRAG's deletion status ('success', 'not_found', ...)."""
        async with self.engines.use(tenant) as engine:
            return await engine.ingestor.purge(doc_id)

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, IngestError):
            return exc.transient
        if isinstance(exc, DocumentParseError):
            return False
        return is_transient_message(f"{type(exc).__name__}: {exc}")

    async def after_final(self, task: TaskRecord, status: TaskStatus) -> None:
        """End-of-task side effects, once the final status is recorded: drop the stored upload,
        then send the completion webhook.

        Never raises: the task's outcome is already durable, and a file that could not be removed
        now is removed by `forget` when the record expires."""
        if status in _DROP_UPLOAD_AFTER and task.stored_name:
            try:
                await self.files.remove(task.stored_name)
            except Exception:
                log.exception("task %s: could not remove its upload %s", task.task_id, task.stored_name)
        if status.is_final:
            try:
                self.on_final(task.task_id)
            except Exception:
                log.exception("task %s: completion notification failed", task.task_id)

    async def forget(self, task_id: str) -> None:
        """The task's record expired: remove whatever file of it is still on disk. Never raises."""
        try:
            removed = await self.files.remove_leftovers(task_id)
        except Exception:
            log.exception("task %s: could not remove its leftover uploads", task_id)
            return
        if removed:
            log.info("task %s expired; removed %d leftover upload file(s)", task_id, removed)
