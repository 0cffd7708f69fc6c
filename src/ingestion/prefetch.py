"""Extraction ahead of the owner: an instance with idle task slots runs the entity-extraction calls
of documents waiting in a workspace another instance owns, so one knowledge base gets the LLM
capacity of every instance.

Why this shape: merges into one graph must be serialised (LightRAG's keyed locks are per process),
so one instance owns a workspace's indexing (src/ingestion/ownership.py). But extraction — most of
a document's LLM calls — depends only on its text. A helper leases a waiting plain-text task
(`TaskStore.lease_prefetch`: from the end of the queue, never the owner's next one), chunks the text
as the owner will and sends the extraction prompts; LightRAG keeps each answer in the LLM cache,
which is shared (PostgreSQL). When the owner indexes the document it finds every answer there: it
only merges. The owner's claim passes over a leased task, so no chunk is extracted twice (except
calls in flight when a helper dies: its lease then expires and the owner extracts what is left).

Rich formats (PDF, Office, pictures) are left to the owner: their parse and picture descriptions
could differ between instances, and then so would the prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from src.core.waiting import raise_if_cancel_swallowed, wait_event
from src.ingestion.files import UploadFiles
from src.ingestion.handler import index_request
from src.ingestion.ownership import Ownership
from src.rag.knowledge import KnowledgeBases
from src.tasks.models import TaskRecord, TaskStatus
from src.tasks.runner import TaskRunner
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)


class ExtractionAhead:
    """Leases waiting documents of workspaces owned elsewhere and extracts them into the cache."""

    def __init__(
        self,
        store: TaskStore,
        knowledge_bases: KnowledgeBases,
        files: UploadFiles,
        ownership: Ownership,
        runner: TaskRunner,
        instance_id: str,
        *,
        max_documents: int,
        lease_seconds: float = 15.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.knowledge_bases = knowledge_bases
        self.files = files
        self.ownership = ownership
        self.runner = runner
        self.instance_id = instance_id
        self.max_documents = max(1, max_documents)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._jobs: dict[str, asyncio.Task] = {}
        self._loop: asyncio.Task | None = None
        #: Set when a document is done: look for the next one at once, not at the next poll.
        self._wake = asyncio.Event()
        #: Documents extracted here so far (and their chunks): for logs, metrics and tests.
        self.extracted = 0
        self.chunks = 0

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="extraction-ahead")

    async def stop(self) -> None:
        """Stop leasing; documents being extracted are given back (their leases ended)."""
        tasks = [t for t in (self._loop, *self._jobs.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def _run(self) -> None:
        while True:
            try:
                await self.fill()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down, ...: try again at the next poll
                log.warning("extraction ahead: could not look for work: %s", exc)
            raise_if_cancel_swallowed()  # by the Redis client: stop() would wait for good
            self._wake.clear()
            await wait_event(self._wake, self.poll_seconds)

    async def fill(self) -> int:
        """Lease what this instance has room for; returns how many documents it started."""
        room = min(self.max_documents - len(self._jobs), self.runner.capacity - self.runner.running_count)
        started = 0
        if room <= 0:
            return 0
        for tenant in await self.store.tenants_with_pending():
            if self.ownership.owns(tenant):
                continue  # our own workspace: the runner indexes its documents whole
            while started < room:
                task = await self.store.lease_prefetch(tenant, self.instance_id, self.lease_seconds)
                if task is None:
                    break
                self._jobs[task.task_id] = asyncio.create_task(
                    self._extract(task), name=f"extract-ahead-{task.task_id}"
                )
                started += 1
        return started

    async def _extract(self, task: TaskRecord) -> None:
        outcome = ""
        job = asyncio.current_task()
        keeper = asyncio.create_task(self._keep_lease(task.task_id, job))
        try:
            chunks = await self.knowledge_bases.pre_extract(task.tenant, index_request(task, self.files))
            outcome = "done"
            self.extracted += 1
            self.chunks += chunks
            log.info(
                "extracted document %s ahead of its owner (%d chunks)",
                task.doc_id,
                chunks,
                extra={"task_id": task.task_id, "tenant": task.tenant},
            )
        except ValueError as exc:  # not plain text, or not readable as text: the owner does it all
            outcome = "unsuitable"
            log.info("document %s left to its owner: %s", task.doc_id, exc, extra={"task_id": task.task_id})
        except asyncio.CancelledError:
            pass  # lease lost or stopping: given back untouched
        except Exception as exc:  # a provider failure: the owner extracts it (and retries if need be)
            log.warning(
                "extracting document %s ahead failed: %s", task.doc_id, exc, extra={"task_id": task.task_id}
            )
        finally:
            keeper.cancel()
            self._jobs.pop(task.task_id, None)
            self._wake.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.end_prefetch(task.task_id, self.instance_id, outcome))

    async def _keep_lease(self, task_id: str, job: asyncio.Task | None) -> None:
        """Renew the lease; stop the extraction if the lease is lost (expired while this instance
        was stalled: the owner may claim the task now) or the task is no longer waiting (cancelled
        by its client): its calls would be wasted."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                kept = await self.store.renew_prefetch(task_id, self.instance_id, self.lease_seconds)
                task = await self.store.get(task_id) if kept else None
            except Exception:  # Redis unreachable: the lease may run out; decided at the next renewal
                continue
            if task is None or task.status != TaskStatus.PENDING:
                why = "lost its lease" if not kept else f"is {task.status if task else 'gone'}"
                log.info("task %s %s; its extraction ahead stops", task_id, why)
                if job is not None:
                    job.cancel()
                return
