"""Submitting work: a document (an upload or raw text) becomes a task, and so does a query.

Everything that can be refused before the task exists is refused here, before or while the body
is read: bad options, a full queue, a doc id the knowledge base already holds from other content.
The task record is the durable promise (`TaskStore.create`, one Lua script that also
de-duplicates and applies the limits); a stored file is removed again on any failure before it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from src.core.body_pace import Pace
from src.core.config import Settings
from src.core.defaults import DEFAULT_PRIORITY
from src.core.metrics import Metrics
from src.ingestion.errors import (
    DocConflict,
    DocDeleting,
    EmptyText,
    IdempotencyKeyReused,
    InvalidCallbackUrl,
    InvalidDocId,
    InvalidIdempotencyKey,
    QueryTooLong,
    QueueFull,
    TaskExists,
    TenantQueueFull,
    TooLarge,
)
from src.ingestion.files import UploadFiles
from src.ingestion.query_images import remove_query_images, store_query_images
from src.ingestion.query_lane import QueryLane
from src.ingestion.uploads import SavedUpload, receive_upload, sanitize_filename
from src.rag.knowledge import KnowledgeBases, QuerySpec
from src.tasks.models import CreateOutcome, Stage, TaskKind, TaskRecord
from src.tasks.runner import TaskRunner
from src.tasks.store import TaskStore
from src.tenancy.usage import UsageLedger

#: A client-chosen document id. Always checked with `check_doc_id` (``fullmatch``): with ``match``
#: and a ``$`` anchor, "nl\n" would pass (``$`` matches before a final newline).
DOC_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_DOC_ID = re.compile(DOC_ID_PATTERN)
_DOC_ID_RULE = "doc_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"


def check_doc_id(doc_id: str) -> None:
    """The one doc-id validator of every route (query, form field, JSON body, path parameter)."""
    if not _DOC_ID.fullmatch(doc_id):
        raise InvalidDocId(_DOC_ID_RULE)


def check_query(settings: Settings, spec: QuerySpec) -> None:
    if len(spec.text) > settings.max_query_chars:
        raise QueryTooLong(f"query exceeds {settings.max_query_chars} characters")
    if spec.characters() > settings.max_query_input_chars:
        raise QueryTooLong(
            f"the query, user prompt, conversation history and keywords exceed "
            f"{settings.max_query_input_chars} characters together"
        )


@dataclass(frozen=True)
class SubmitOptions:
    """What a client may say about a new task besides its content."""

    doc_id: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The task that covers a submission: a new one, or (``duplicate``) the one already known."""

    record: TaskRecord
    duplicate: bool = False


class SubmissionService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        runner: TaskRunner,
        files: UploadFiles,
        knowledge_bases: KnowledgeBases,
        queries: QueryLane,
        metrics: Metrics,
    ):
        self.settings = settings
        self.store = store
        self.runner = runner
        #: The tenants' token budgets: a spent one refuses new work (set by the wiring).
        self.usage: UsageLedger | None = None
        self.files = files
        self.knowledge_bases = knowledge_bases
        self.queries = queries
        self.metrics = metrics

    # ------------------------------------------------------------------ documents
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
            replaces = bool(options.doc_id) and await self._replaces(tenant, options.doc_id, saved.sha256)
            stored = await self.files.promote(saved.path, saved.task_id, saved.extension)
        except BaseException:
            await self.files.remove(saved.path.name)
            raise
        return await self._persist(
            tenant,
            options,
            task_id=saved.task_id,
            doc_id=options.doc_id or f"doc-{saved.sha256[:32]}",
            filename=saved.original_name,
            stored=stored,
            size=saved.size,
            sha256=saved.sha256,
            kind=TaskKind.FILE,
            fingerprint=_fingerprint(TaskKind.FILE, saved.sha256, saved.original_name, options),
            replaces=replaces,
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
        replaces = bool(options.doc_id) and await self._replaces(tenant, doc_id, sha256)
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
            replaces=replaces,
        )

    # ------------------------------------------------------------------ queries
    async def submit_query(
        self, tenant: str, spec: QuerySpec, options: SubmitOptions, images: list[str] | None = None
    ) -> TaskRecord:
        """Queue a query task (POST /query/async) in the query lane: it never waits behind documents.
        Its pictures are kept until the task ends (`IngestHandler.after_final` removes them)."""
        check_query(self.settings, spec)
        self._check_options(options)
        if self.usage is not None:
            await self.usage.check(tenant)
        names = await store_query_images(self.settings, images or [])
        try:
            record = await self.queries.submit(
                tenant,
                replace(spec, images=names),
                priority=options.priority,
                callback_url=options.callback_url,
            )
        except BaseException:
            await remove_query_images(self.settings, names)
            raise
        self.runner.notify()
        return record

    # ------------------------------------------------------------------ checks
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
        if self.usage is not None:
            await self.usage.check(tenant)
        refusal = await self.store.check_room(tenant)
        if refusal == CreateOutcome.BUSY:
            raise QueueFull(f"{self.settings.max_pending_tasks} tasks are already waiting; retry later")
        if refusal == CreateOutcome.TENANT_BUSY:
            raise TenantQueueFull("this tenant has reached its limit of waiting tasks; retry later")

    async def _replaces(self, tenant: str, doc_id: str, sha256: str) -> bool:
        """Whether new content for an explicit doc id replaces a document the knowledge base holds:
        then the task re-indexes it (the old version stays visible until the new one is complete).

        The same content replaces nothing: the store answers with the existing task, or a new task
        finds the document PROCESSED and completes without indexing anything again. A task still
        running for the id is the store's 409 (`DocConflict`), a delete in progress `DocDeleting`.
        """
        record = await self.knowledge_bases.document(tenant, doc_id)
        if record is None:
            return False
        holder = await self.store.doc_holder(tenant, doc_id)
        if holder is not None and holder.content_sha256 == sha256:
            return False
        if holder is None and await self.store.doc_being_deleted(tenant, doc_id):
            raise DocDeleting(
                f"document {doc_id} is being deleted; retry once the deletion has finished", doc_id=doc_id
            )
        return True

    # ------------------------------------------------------------------ the record
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
        replaces: bool = False,
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
            replaces=replaces,
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
            if outcome.kind in (CreateOutcome.DUPLICATE, CreateOutcome.IDEMPOTENT):
                self.metrics.uploads.labels("duplicate").inc()
                await self.files.remove(stored.name)
                return await self._existing(tenant, outcome.task_id)
            if outcome.kind == CreateOutcome.CONFLICT:
                raise DocConflict(
                    f"document {doc_id} is being indexed from different content by task {outcome.task_id}",
                    task_id=outcome.task_id,
                )
            if outcome.kind == CreateOutcome.TENANT_BUSY:
                raise TenantQueueFull("this tenant has too many tasks waiting; retry later")
            if outcome.kind == CreateOutcome.BUSY:
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


def _fingerprint(kind: TaskKind, sha256: str, filename: str | None, options: SubmitOptions) -> str:
    """What makes two requests "the same" for an Idempotency-Key: route (kind), content, the name
    given to it and every option the client chose (an unset doc id differs from an explicit one)."""
    request = [kind.value, sha256, filename, options.doc_id, options.priority, options.callback_url]
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:32]
