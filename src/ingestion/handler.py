"""The runner's view of ingestion and query tasks (`src.tasks.runner.TaskHandler`).

The generic task runner knows nothing of files or LightRAG: it asks this handler to run a task in
its tenant's knowledge base (by kind: index a document, or answer a query), to undo a task's
effects, to classify an error, and to do the end-of-task side effects. A document leaves a
knowledge base one way, `KnowledgeBases.purge`: a cancel, a failed attempt and
`DELETE /documents/{id}` all stop the document's in-flight LLM work the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from src.core.config import Settings
from src.ingestion.files import UploadFiles
from src.ingestion.query_images import remove_query_images
from src.ingestion.query_lane import QUERY_DATA
from src.rag.errors import is_transient
from src.rag.knowledge import IndexProgress, IndexRequest, IndexStage, KnowledgeBases, QueryAnswer, QuerySpec
from src.rag.llm import llm_description
from src.rag.storage.fence import as_guest
from src.rag.usage import metering
from src.tasks.admission import yield_slot
from src.tasks.models import Stage, TaskKind, TaskRecord, TaskStatus
from src.tasks.runner import claimed_as_guest
from src.tenancy.usage import UsageLedger, record_usage

log = logging.getLogger(__name__)

Report = Callable[[str, float], Awaitable[None]]

#: Final statuses after which the stored upload is no longer needed. A permanently failed task
#: keeps its error in the record but not its file: nothing retries it, and kept files fill the disk.
_DROP_UPLOAD_AFTER = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED})

#: How far each stage takes the progress bar (extraction and merging interpolate between bounds).
STAGE_PROGRESS = {
    Stage.PARSING: 10.0,
    Stage.QUEUED: 15.0,
    Stage.CHUNKING: 20.0,
    Stage.EXTRACTING: 25.0,
    Stage.MERGING: 80.0,
    Stage.DONE: 100.0,
}


def progress_percent(progress: IndexProgress) -> tuple[Stage, float]:
    """Map the indexer's counts to (stage, percent): extraction fills 25-80, merging 80-99."""
    stage = Stage(progress.stage.value)
    if stage == Stage.EXTRACTING and progress.chunks_total:
        span = STAGE_PROGRESS[Stage.MERGING] - STAGE_PROGRESS[Stage.EXTRACTING]
        value = STAGE_PROGRESS[Stage.EXTRACTING] + span * progress.chunks_extracted / progress.chunks_total
    elif stage == Stage.PARSING and progress.items_total:
        span = STAGE_PROGRESS[Stage.QUEUED] - STAGE_PROGRESS[Stage.PARSING]
        value = STAGE_PROGRESS[Stage.PARSING] + span * progress.items_described / progress.items_total
    elif stage == Stage.MERGING and progress.merge_total:
        span = 99.0 - STAGE_PROGRESS[Stage.MERGING]
        value = STAGE_PROGRESS[Stage.MERGING] + span * min(1.0, progress.merged / progress.merge_total)
    else:
        value = STAGE_PROGRESS[stage]
    return stage, float(round(value))


def _guest_scope() -> contextlib.AbstractContextManager[None]:
    """A task the runner claimed as a guest writes into its workspace as one (fence.as_guest)."""
    return as_guest() if claimed_as_guest() else contextlib.nullcontext()


class IngestHandler:
    def __init__(
        self,
        settings: Settings,
        knowledge_bases: KnowledgeBases,
        files: UploadFiles,
        on_final: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.knowledge_bases = knowledge_bases
        self.files = files
        #: The tenants' token ledger (set by the wiring; None: tasks report usage, nobody sums it).
        self.usage: UsageLedger | None = None
        #: Told the id of every task that reached a final state (the completion webhook).
        self.on_final = on_final or (lambda task_id: None)

    async def run(self, task: TaskRecord, report: Report) -> dict:
        """The task's result, with the tokens its provider calls cost (``usage``), which are also
        added to the tenant's ledger, whether the attempt succeeds or not (they were spent)."""
        with metering() as meter, _guest_scope():
            try:
                if task.kind == TaskKind.QUERY:
                    result = await self._answer(task)
                elif task.kind == TaskKind.PURGE:
                    result = await self._purge(task)
                else:
                    result = await self._index(task, report)
            finally:
                await record_usage(self.usage, task.tenant, meter)
        return {**result, "usage": meter.as_dict()}

    async def _purge(self, task: TaskRecord) -> dict:
        """A deletion another instance received (it does not own the workspace; this one does)."""
        result = await self.knowledge_bases.purge(
            task.tenant, task.purge_doc_id, delete_llm_cache=task.purge_llm_cache
        )
        return {"doc_id": result.doc_id, "outcome": result.outcome.value, "message": result.message}

    async def _answer(self, task: TaskRecord) -> dict:
        """A query task: read-only (no workspace ownership needed), its provider calls admitted at
        the task's priority for its tenant."""
        stored = task.query or {}
        spec = QuerySpec.from_dict(stored)
        if stored.get("purpose") == QUERY_DATA:
            data = await self.knowledge_bases.retrieve(task.tenant, spec, priority=task.priority)
            return data.as_dict()
        result = await self.knowledge_bases.answer(task.tenant, spec, priority=task.priority)
        return QueryAnswer.of(spec, result, llm_description(self.settings)).as_dict()

    async def _index(self, task: TaskRecord, report: Report) -> dict:
        async def on_progress(progress: IndexProgress) -> None:
            if progress.stage == IndexStage.MERGING:
                # Extraction (most of the LLM work) is over; merging waits mostly on keyed locks and
                # on the group commit: that must not keep the next document from starting.
                yield_slot()
            await report(*progress_percent(progress))

        result = await self.knowledge_bases.index(task.tenant, index_request(task, self.files), on_progress)
        return result.as_dict()

    async def discard(self, task: TaskRecord) -> None:
        if task.kind in (TaskKind.QUERY, TaskKind.PURGE):
            return  # it indexed nothing: a cancelled or failed one leaves nothing to purge
        with _guest_scope():  # a guest's own document is purged by the guest (under the graph locks)
            if task.replaces:  # the version queries see stays; only the new one goes
                await self.knowledge_bases.abandon_replacement(task.tenant, task.doc_id, task.task_id)
                return
            await self.knowledge_bases.purge(task.tenant, task.doc_id)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

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
        if status.is_final and task.kind == TaskKind.QUERY and (task.query or {}).get("images"):
            try:
                await remove_query_images(self.settings, task.query["images"])
            except Exception:
                log.exception("task %s: could not remove its query images", task.task_id)
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


def index_request(task: TaskRecord, files: UploadFiles) -> IndexRequest:
    """What a document task asks of its knowledge base (also what is extracted ahead of it)."""
    return IndexRequest(
        doc_id=task.doc_id,
        name=task.filename,
        source=files.path(task.stored_name) if task.stored_name else None,
        track_id=task.task_id,
        priority=task.priority,
        replaces=task.replaces,
    )
