"""The runner's view of ingestion and query tasks (`src.tasks.runner.TaskHandler`).

The generic task runner knows nothing of files or LightRAG: it asks this handler to run a
task in its tenant's knowledge base (by kind: index a document, or answer a query), to undo a
task's effects, to classify an error, and to do the end-of-task side effects. `purge` is the one
way a document leaves a knowledge base: a cancel, a failed attempt and `DELETE /documents/{id}`
all go through it, so each of them stops the document's in-flight LLM work the same way.

Every knowledge-base call (`run`, `purge`) runs in a task of its own, started from a context
without LightRAG's lock state. LightRAG's `NamespaceLock` (e.g. a JSON storage's
`_storage_lock`) records "held by this coroutine" in a ContextVar and clears it only after its
release, which awaits a shield: a cancel landing there (a user's cancel of a running task) leaves
the var set in the cancelled task's context, and the next use of the same lock in that context
raises `RuntimeError('NamespaceLock already acquired in current coroutine context')`. In the
runner's own task that was the purge after the cancel: the attempt crashed ("Task exception was
never retrieved") and the task stayed `cancelling` until its lease expired twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from src.ingestion.files import UploadFiles
from src.ingestion.ownership import OwnershipLost
from src.rag.engine import queries
from src.rag.engine.ingestor import IngestError, is_transient_message
from src.rag.engine.tenant_engines import TenantEngines
from src.rag.llm import llm_description
from src.rag.parsers import DocumentParseError
from src.rag.scheduler import call_context
from src.tasks.models import TaskKind, TaskRecord, TaskStatus

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The name LightRAG (1.4.16) gives the ContextVar in which a `NamespaceLock` marks itself held.
_LIGHTRAG_LOCK_VAR = "lock_ctx"

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
        if task.kind == TaskKind.QUERY:
            return await _in_own_task(self._answer(task))
        return await _in_own_task(self._run(task, report))

    async def _answer(self, task: TaskRecord) -> dict:
        """A query task: read-only, through the engine for reads (no workspace ownership needed),
        its provider calls admitted at the task's priority for its tenant."""
        spec = queries.QuerySpec.from_dict(task.query or {})
        with call_context(priority=task.priority, tenant=task.tenant):
            response = await queries.answer(self.engines, task.tenant, spec)
        return queries.task_result(spec, response, llm_description(self.engines.settings))

    async def _run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict:
        async with self.engines.use_for_ingestion(task.tenant) as engine:
            try:
                return (await engine.ingestor.ingest(task, report)).as_dict()
            except Exception as exc:
                if not self.engines.owns(task.tenant):
                    # The workspace moved to another instance mid-way (this one was stalled): that is
                    # no failure of the document, and purging it now would delete the new owner's work.
                    raise OwnershipLost(f"lost the workspace of tenant {task.tenant} while indexing") from exc
                raise

    async def discard(self, task: TaskRecord) -> None:
        if task.kind == TaskKind.QUERY:
            return  # a query wrote nothing: a cancelled or failed one leaves nothing to purge
        await self.purge(task.tenant, task.doc_id)

    async def purge(self, tenant: str, doc_id: str) -> str:
        """Stop the document's LLM work and delete all it left in the tenant's knowledge base.

        Returns LightRAG's deletion status ('success', 'not_found', ...)."""
        return await _in_own_task(self._purge(tenant, doc_id))

    async def _purge(self, tenant: str, doc_id: str) -> str:
        async with self.engines.use_for_ingestion(tenant) as engine:
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


def _context_without_lock_state() -> contextvars.Context:
    """A copy of the current context (log fields and all) minus LightRAG's lock-held markers."""
    clean = contextvars.Context()
    for var, value in contextvars.copy_context().items():
        if var.name != _LIGHTRAG_LOCK_VAR:
            clean.run(var.set, value)
    return clean


async def _in_own_task(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` in a child task: lock state a cancel strands there dies with it. Cancelling the
    caller cancels the child (an awaited task is cancelled with its awaiter)."""
    return await asyncio.create_task(work, context=_context_without_lock_state())
