"""IngestionService: every use-case of the service, each in one place.

Submitting a document (file or text), cancelling a task whatever its state, deleting a
document, looking one up and querying the knowledge base. Methods return domain results and
raise `src.ingestion.errors` exceptions; the HTTP layer only parses requests and maps results
and errors to responses.

What happens on cancel: a *pending* task becomes `cancelled` at once here, and the handler's
end-of-task side effects run (its upload is removed) before the webhook is sent. A *running*
task becomes `cancelling`; the runner that holds it stops its job, which purges its partial
data through `IngestHandler.purge` (the same path `delete_document` uses) and records
`cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightrag.base import DocStatus

from src.core.config import Settings
from src.core.metrics import Metrics
from src.ingestion.errors import (
    DeleteFailed,
    DocConflict,
    DocDeleting,
    DocExists,
    DocumentNotFound,
    EmptyText,
    IdempotencyKeyReused,
    InvalidCallbackUrl,
    InvalidDocId,
    InvalidIdempotencyKey,
    NotCancellable,
    NotInThisRole,
    ProviderError,
    QueryQueueFull,
    QueryTimeout,
    QueryTooLong,
    QueueFull,
    TaskExists,
    TaskNotFound,
    TenantQueryQueueFull,
    TenantQueueFull,
    TooLarge,
)
from src.ingestion.files import UploadFiles
from src.ingestion.handler import IngestHandler
from src.ingestion.uploads import Pace, SavedUpload, receive_upload, sanitize_filename
from src.rag.doc_listing import DocumentPage, list_documents, page_of_records
from src.rag.engine import queries
from src.rag.engine.queries import QuerySpec
from src.rag.engine.tenant_engines import TenantEngine, TenantEngines
from src.rag.storage.durable import read_doc_status, read_doc_statuses
from src.tasks.models import CreateOutcome, Stage, TaskKind, TaskRecord, TaskStatus
from src.tasks.runner import TaskRunner
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)

#: A client-chosen document id. Always checked with `check_doc_id` (``fullmatch``): with ``match``
#: and a ``$`` anchor, "nl\n" passed (``$`` matches before a final newline) and reached LightRAG.
DOC_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_DOC_ID = re.compile(DOC_ID_PATTERN)
_DOC_ID_RULE = "doc_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
#: LightRAG doc-status fields a document lookup shows.
_DOC_FIELDS = (
    "status",
    "chunks_count",
    "content_length",
    "file_path",
    "created_at",
    "updated_at",
    "error_msg",
)


@dataclass(frozen=True)
class SubmitOptions:
    """What a client may say about a new task besides its content."""

    doc_id: str | None = None
    callback_url: str | None = None
    priority: int = 5
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The task that covers a submission: a new one, or (``duplicate``) the one already known."""

    record: TaskRecord
    duplicate: bool = False


@dataclass(frozen=True)
class Cancellation:
    task_id: str
    #: CANCELLED (it never ran; done) or CANCELLING (running; its runner stops and cleans it up).
    status: TaskStatus


@dataclass(frozen=True)
class DocumentRemoved:
    doc_id: str
    status: str
    message: str


class IngestionService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        engines: TenantEngines,
        runner: TaskRunner,
        handler: IngestHandler,
        files: UploadFiles,
        metrics: Metrics,
        *,
        local_knowledge_bases: bool = True,
    ):
        self.settings = settings
        #: False on an api-role instance whose knowledge bases are process-local to the workers
        #: (embedded SQLite or JSON files): it never loads one; queries are delegated to the workers
        #: through the query lane, document lookups read the durable rows, deletions are refused.
        self.local_knowledge_bases = local_knowledge_bases
        self.store = store
        self.engines = engines
        self.runner = runner
        self.handler = handler
        self.files = files
        self.metrics = metrics

    # ------------------------------------------------------------------ submit
    async def receive_upload(
        self, tenant: str, headers: Mapping[str, str], body: AsyncIterator[bytes], options: SubmitOptions
    ) -> SavedUpload:
        """Check what can be checked before the body is read, then stream it to disk."""
        await self.admit(tenant, options)
        return await receive_upload(
            dict(headers),
            body,
            self.files,
            TaskStore.new_task_id(),
            max_bytes=self.settings.max_upload_bytes,
            extra_fields=("doc_id", "callback_url"),
            pace=Pace.of(self.settings),
        )

    async def admit(self, tenant: str, options: SubmitOptions) -> None:
        """What is refused before any byte of a body is read: bad options, a full queue."""
        self._check_options(options)
        await self._refuse_when_full(tenant)

    async def submit_file(self, tenant: str, saved: SavedUpload, options: SubmitOptions) -> Accepted:
        """Queue a streamed upload; form fields fill in options the query string left out."""
        try:
            options = replace(
                options,
                doc_id=options.doc_id or saved.form_fields.get("doc_id"),
                callback_url=options.callback_url or saved.form_fields.get("callback_url"),
            )
            self._check_options(options)
            if options.doc_id:
                await self._refuse_indexed_doc(tenant, options.doc_id, saved.sha256)
        except BaseException:
            await self.files.remove(saved.path.name)
            raise
        return await self._persist(
            tenant,
            options,
            task_id=saved.task_id,
            doc_id=options.doc_id or f"doc-{saved.sha256[:32]}",
            filename=saved.original_name,
            stored=saved.path,
            size=saved.size,
            sha256=saved.sha256,
            kind=TaskKind.FILE,
            fingerprint=_fingerprint(TaskKind.FILE, saved.sha256, saved.original_name, options),
        )

    async def submit_text(
        self, tenant: str, text: str, options: SubmitOptions, filename: str | None = None
    ) -> Accepted:
        if not text.strip():
            raise EmptyText("text is empty")
        if len(text) > self.settings.max_text_chars:
            raise TooLarge(f"text exceeds {self.settings.max_text_chars} characters")
        data = text.encode("utf-8")
        sha256 = hashlib.sha256(data).hexdigest()
        self._check_options(options)
        await self._refuse_when_full(tenant)
        doc_id = options.doc_id or f"doc-{sha256[:32]}"
        if options.doc_id:
            await self._refuse_indexed_doc(tenant, doc_id, sha256)
        task_id = TaskStore.new_task_id()
        stored = await self.files.write(task_id, ".txt", data)
        return await self._persist(
            tenant,
            options,
            task_id=task_id,
            doc_id=doc_id,
            filename=sanitize_filename(filename) if filename else f"{doc_id}.txt",
            stored=stored,
            size=len(data),
            sha256=sha256,
            kind=TaskKind.TEXT,
            fingerprint=_fingerprint(TaskKind.TEXT, sha256, filename, options),
        )

    def _check_options(self, options: SubmitOptions) -> None:
        if options.doc_id is not None:
            check_doc_id(options.doc_id)
        url = options.callback_url
        if url is not None:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or len(url) > 2048:
                raise InvalidCallbackUrl("callback_url must be an absolute http(s) URL (max 2048 chars)")
        key = options.idempotency_key
        if key is not None and not (1 <= len(key) <= 200 and key.isprintable()):
            raise InvalidIdempotencyKey("Idempotency-Key must be 1-200 printable characters")

    async def _refuse_when_full(self, tenant: str) -> None:
        """Backpressure before reading any bytes: a full queue refuses instead of growing.

        The store's create script applies the same rule (one Lua function) atomically; asking
        first only spares the client the upload of a body that would be refused."""
        refusal = await self.store.check_room(tenant)
        if refusal == CreateOutcome.BUSY:
            raise QueueFull(f"{self.settings.max_pending_tasks} tasks are already waiting; retry later")
        if refusal == CreateOutcome.TENANT_BUSY:
            raise TenantQueueFull("this tenant has reached its limit of waiting tasks; retry later")

    async def _refuse_indexed_doc(self, tenant: str, doc_id: str, sha256: str) -> None:
        """An explicit doc id LightRAG already holds is not re-indexed from other content.

        The same content is fine: the store answers with the existing task, or a new task finds the
        document PROCESSED and completes without indexing anything again.
        """
        record = await self._doc_status(tenant, doc_id)
        if not record or record.get("status") != DocStatus.PROCESSED:
            return
        holder = await self.store.doc_holder(tenant, doc_id)
        if holder is not None and holder.content_sha256 == sha256:
            return
        if holder is None and await self.store.doc_being_deleted(tenant, doc_id):
            raise DocDeleting(
                f"document {doc_id} is being deleted; retry once the deletion has finished", doc_id=doc_id
            )
        raise DocExists(
            f"document {doc_id} is already in the knowledge base; "
            f"DELETE /documents/{doc_id} first to replace it",
            doc_id=doc_id,
        )

    async def _persist(
        self,
        tenant: str,
        options: SubmitOptions,
        *,
        task_id: str,
        doc_id: str,
        filename: str,
        stored: Path,
        size: int,
        sha256: str,
        kind: TaskKind,
        fingerprint: str,
    ) -> Accepted:
        """Write the task record (the durable promise); undo the stored file on any failure."""
        now = time.time()
        record = TaskRecord(
            task_id=task_id,
            tenant=tenant,
            priority=options.priority,
            kind=kind,
            doc_id=doc_id,
            filename=filename,
            file_size=size,
            content_sha256=sha256,
            stored_name=stored.name,
            callback_url=options.callback_url,
            stage=Stage.SAVED,
            created_at=now,
            updated_at=now,
        )
        try:
            outcome = await self.store.create(
                record, idempotency_key=options.idempotency_key, fingerprint=fingerprint
            )
            if outcome.kind == CreateOutcome.IDEMPOTENCY_MISMATCH:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was already used for a different request "
                    "(other content, doc_id, route, priority or callback_url); use a new key",
                    task_id=outcome.task_id,
                )
            if outcome.kind == CreateOutcome.DELETING:
                raise DocDeleting(
                    f"document {doc_id} is being deleted; retry once the deletion has finished",
                    doc_id=doc_id,
                )
            if outcome.kind in ("duplicate", "idempotent"):
                self.metrics.uploads.labels("duplicate").inc()
                await self.files.remove(stored.name)
                return await self._existing(tenant, outcome.task_id)
            if outcome.kind == "conflict":
                raise DocConflict(
                    f"document {doc_id} is being indexed from different content by task {outcome.task_id}",
                    task_id=outcome.task_id,
                )
            if outcome.kind == "tenant-busy":
                raise TenantQueueFull("this tenant has too many tasks waiting; retry later")
            if outcome.kind == "busy":
                raise QueueFull("too many tasks are waiting; retry later")
            if not outcome.created:
                raise TaskExists(f"task {task_id} already exists")
        except BaseException:
            await self.files.remove(stored.name)
            raise
        self.runner.notify()
        self.metrics.uploads.labels("accepted").inc()
        self.metrics.upload_bytes.inc(size)
        return Accepted(record)

    async def _existing(self, tenant: str, task_id: str) -> Accepted:
        """The task that already covers the request (duplicate content or a retried key)."""
        record = await self.store.get(task_id)
        if record is None or record.tenant != tenant:
            raise DocConflict("the document is already being indexed", task_id=task_id)
        return Accepted(record, duplicate=True)

    # ------------------------------------------------------------------ tasks
    async def task(self, tenant: str, task_id: str) -> TaskRecord:
        """The task if it exists *and belongs to the caller*; otherwise the same error (no leak)."""
        record = await self.store.get(task_id) if len(task_id) <= 64 else None
        if record is None or record.tenant != tenant:
            raise TaskNotFound(f"task {task_id} not found (unknown, or expired after its TTL)")
        return record

    async def tasks(
        self, tenant: str, *, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[TaskRecord]]:
        return await self.store.list(tenant=tenant, status=status, offset=offset, limit=limit)

    async def cancel(self, tenant: str, task_id: str) -> Cancellation:
        """Cancel a task whatever its state (see the module docstring); a finished one is refused."""
        record = await self.task(tenant, task_id)
        outcome = await self.store.request_cancel(task_id)
        if outcome.status == "missing":
            raise TaskNotFound(f"task {task_id} not found (unknown, or expired after its TTL)")
        if outcome.accepted and outcome.status == TaskStatus.CANCELLED:
            # It never ran, so no runner will: the end-of-task side effects happen here.
            await self.handler.after_final(record, TaskStatus.CANCELLED)  # incl. the webhook
            return Cancellation(task_id, TaskStatus.CANCELLED)
        if outcome.status == TaskStatus.CANCELLING:  # also a repeated cancel while it is being cancelled
            self.runner.cancel_local(task_id)  # other instances notice at their next heartbeat
            return Cancellation(task_id, TaskStatus.CANCELLING)
        raise NotCancellable(f"task already {outcome.status}; nothing to cancel", status=str(outcome.status))

    # ------------------------------------------------------------------ documents
    async def documents(self, tenant: str, status: DocStatus | None, limit: int, offset: int) -> DocumentPage:
        """One page of the tenant's knowledge-base documents, newest first, with counts per status."""
        if not self.local_knowledge_bases:  # the workers' durable rows, read and paged off the loop
            workspace_dir = self.settings.rag_dir / self.engines.workspace_for(tenant)
            records = await asyncio.to_thread(read_doc_statuses, workspace_dir)
            return await asyncio.to_thread(page_of_records, records, status, limit, offset)
        async with self.engines.use(tenant) as engine:
            return await list_documents(engine.rag.doc_status, status, limit, offset)

    async def document(self, tenant: str, doc_id: str) -> dict[str, Any]:
        """LightRAG's status record of one document."""
        check_doc_id(doc_id)
        record = await self._doc_status(tenant, doc_id)
        if not record:
            raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
        return {"doc_id": doc_id, **{k: record.get(k) for k in _DOC_FIELDS}}

    async def delete_document(self, tenant: str, doc_id: str) -> DocumentRemoved:
        """Remove a document and all data derived from it, through the purge a cancel uses (which
        first stops any LLM work still running for it, e.g. a document LightRAG resumed)."""
        check_doc_id(doc_id)
        if not self.local_knowledge_bases:
            raise NotInThisRole(
                "this instance runs with ROLE=api and the knowledge bases live in the workers' "
                "processes (embedded storages): send DELETE /documents/{doc_id} to an instance with "
                "ROLE=all, or use shared storages (PostgreSQL)",
                role=self.settings.role,
            )
        # From here until the purge ends, the doc id is marked "being deleted": an upload of the same
        # content is refused (409 doc_deleting) instead of being answered with the completed task
        # whose document is about to disappear.
        outcome, marker, previous = await self.store.mark_deleting(tenant, doc_id)
        if outcome == "live":
            raise DocConflict(f"document {doc_id} is being indexed by task {previous}", task_id=previous)
        if outcome == "deleting":
            raise DocDeleting(f"document {doc_id} is already being deleted", doc_id=doc_id)
        restore = previous  # nothing deleted: the previous holder answers duplicates again
        try:
            if not await self._doc_status(tenant, doc_id):
                raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
            # Stops the document if it is being indexed here, then waits only for merges in flight
            # (the indexer's GraphGate), never for other documents to finish.
            status = str(await self.handler.purge(tenant, doc_id))
            if status == "not_found":
                raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
            if status != "success":
                raise DeleteFailed(f"LightRAG could not delete document {doc_id} (status {status})")
            restore = ""  # deleted: the doc id is free, a re-upload indexes it again
        finally:
            await self.store.unmark_deleting(tenant, doc_id, marker, restore=restore)
        return DocumentRemoved(doc_id, status, f"document {doc_id} and all data derived from it were deleted")

    async def _doc_status(self, tenant: str, doc_id: str) -> dict[str, Any] | None:
        if not self.local_knowledge_bases:  # the workers' durable rows, read off the loop
            workspace_dir = self.settings.rag_dir / self.engines.workspace_for(tenant)
            return await asyncio.to_thread(read_doc_status, workspace_dir, doc_id)
        async with self.engines.use(tenant) as engine:
            return await engine.rag.doc_status.get_by_id(doc_id)

    # ------------------------------------------------------------------ query
    async def query(self, tenant: str, spec: QuerySpec) -> str:
        self._check_query(spec)
        if not self.local_knowledge_bases:
            return await self._delegated(tenant, spec)
        return await queries.answer(self.engines, tenant, spec)

    async def query_stream(self, tenant: str, spec: QuerySpec) -> AsyncGenerator[str, None]:
        """Start answering; errors before the first piece raise here, later ones from the iterator
        (as ProviderError). Close the iterator when done: it holds the tenant's engine. A delegated
        query (ROLE=api) streams the whole answer as one piece.

        The first piece is awaited here, before the caller commits to a 200 status line: LightRAG
        returns a lazy iterator, so a provider that refuses the request fails on the first read."""
        self._check_query(spec)
        if not self.local_knowledge_bases:
            return _one_piece(await self._delegated(tenant, spec))
        # The engine stays borrowed until the stream ends, so it cannot be evicted mid-answer.
        engine = await self.engines.acquire(tenant)
        try:
            answer = await queries.ask(engine.rag, spec, stream=True)
        except BaseException:
            self.engines.release(engine)
            raise
        pieces = self._pieces(engine, answer)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            return _no_pieces()
        except BaseException:
            await pieces.aclose()
            raise
        return _prepend(first, pieces)

    async def submit_query(self, tenant: str, spec: QuerySpec, options: SubmitOptions) -> TaskRecord:
        """Queue a query task (POST /query/async) in the query lane: it never waits behind documents."""
        self._check_query(spec)
        self._check_options(options)
        now = time.time()
        record = TaskRecord(
            task_id=TaskStore.new_task_id(),
            tenant=tenant,
            priority=options.priority,
            kind=TaskKind.QUERY,
            query=spec.as_dict(),
            callback_url=options.callback_url,
            stage=Stage.QUEUED,
            created_at=now,
            updated_at=now,
        )
        outcome = await self.store.create(record)
        if outcome.kind == CreateOutcome.TENANT_BUSY:
            raise TenantQueryQueueFull("this tenant has reached its limit of waiting queries; retry later")
        if outcome.kind == CreateOutcome.BUSY:
            raise QueryQueueFull(
                f"{self.settings.max_pending_queries} queries are already waiting; retry later"
            )
        if not outcome.created:
            raise TaskExists(f"task {record.task_id} already exists")
        self.runner.notify()
        return record

    async def _delegated(self, tenant: str, spec: QuerySpec) -> str:
        """Answer through a query task run by a worker, waiting at most QUERY_TIMEOUT_SECONDS.
        Failures answer as on a direct query (502); a caller that goes away cancels the task."""
        record = await self.submit_query(tenant, spec, SubmitOptions())
        deadline = time.monotonic() + self.settings.query_timeout_seconds
        delay = 0.02
        try:
            while True:
                current = await self.store.get(record.task_id)
                if current is None:
                    raise ProviderError("the query task expired before it was answered")
                if current.status == TaskStatus.COMPLETED:
                    return str((current.result or {}).get("response", ""))
                if current.status.is_final:
                    raise ProviderError(current.error or f"the query task ended {current.status}")
                if time.monotonic() >= deadline:
                    raise QueryTimeout(
                        f"no worker answered within {self.settings.query_timeout_seconds:g} s",
                        task_id=record.task_id,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        except (QueryTimeout, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                await self.store.request_cancel(record.task_id)
            raise

    async def _pieces(
        self, engine: TenantEngine, answer: str | AsyncIterator[str]
    ) -> AsyncGenerator[str, None]:
        try:
            if isinstance(answer, str):
                yield answer
                return
            try:
                async for piece in answer:
                    if piece:
                        yield piece
            except Exception as exc:
                log.warning("streamed query failed: %s", exc)
                raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.engines.release(engine)

    def _check_query(self, spec: QuerySpec) -> None:
        if len(spec.text) > self.settings.max_query_chars:
            raise QueryTooLong(f"query exceeds {self.settings.max_query_chars} characters")


async def _no_pieces() -> AsyncGenerator[str, None]:
    return
    yield  # an async generator that yields nothing


async def _prepend(first: str, rest: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """``first`` then the rest of ``rest``; closing this closes ``rest`` (it holds the engine)."""
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()


def _fingerprint(kind: TaskKind, sha256: str, filename: str | None, options: SubmitOptions) -> str:
    """What makes two requests "the same" for an Idempotency-Key: route (kind), content, the name
    given to it and every option the client chose (an unset doc id differs from an explicit one)."""
    request = [kind.value, sha256, filename, options.doc_id, options.priority, options.callback_url]
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:32]


def check_doc_id(doc_id: str) -> None:
    """The one doc-id validator of every route (query, form field, JSON body, path parameter)."""
    if not _DOC_ID.fullmatch(doc_id):
        raise InvalidDocId(_DOC_ID_RULE)


async def _one_piece(answer: str) -> AsyncGenerator[str, None]:
    if answer:
        yield answer
