"""Ingestion endpoints: accept a document, persist a task, answer 202 before any indexing work."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import aiofiles
import aiofiles.os
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from lightrag.base import DocStatus

from api.deps import get_services, get_tenant
from api.errors import ApiError
from api.schemas import DOC_ID_PATTERN, TaskAccepted, TextInsert
from src.ingestion.uploads import receive_upload, remove_file, sanitize_filename
from src.tasks.models import Stage, TaskKind, TaskRecord, TaskStatus
from src.tasks.store import TaskStore
from src.wiring import Services

router = APIRouter(tags=["ingest"])
_DOC_ID = re.compile(DOC_ID_PATTERN)

UPLOAD_DOC = """Stream one document (multipart field `file`) to disk and queue it for indexing.

Answers **202** with `task_id` and `status_url` as soon as the file is stored and the task is
persisted. 413 when the file exceeds the size limit (enforced while streaming), 400 for an
empty file or malformed multipart body, 415 for an unsupported type or content that does
not match its extension, 409 when the document id is already indexed or being indexed.
"""


def _too_busy(code: str, message: str) -> ApiError:
    return ApiError(429, code, message, headers={"Retry-After": "30"})


async def _refuse_when_full(services: Services, tenant: str) -> None:
    """Backpressure before reading any bytes: a full queue answers 429 instead of growing.

    The store's create script checks the same bounds atomically; this early check only spares
    the client the upload of a body that would be refused."""
    limit = services.settings.max_pending_tasks
    if limit and await services.store.pending_count() >= limit:
        raise _too_busy("queue_full", f"{limit} tasks are already waiting; retry later")
    tenant_limit = (await services.tenants.quota(tenant)).max_pending or services.settings.tenant_max_pending
    if tenant_limit and await services.store.pending_count(tenant) >= tenant_limit:
        raise _too_busy(
            "tenant_queue_full", f"this tenant already has {tenant_limit} tasks waiting; retry later"
        )


def _check_callback_url(url: str | None) -> None:
    if url is None:
        return
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or len(url) > 2048:
        raise ApiError(
            422, "invalid_callback_url", "callback_url must be an absolute http(s) URL (max 2048 chars)"
        )


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not (1 <= len(key) <= 200 and key.isprintable()):
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1-200 printable characters")


async def _existing_answer(services: Services, request: Request, tenant: str, task_id: str) -> JSONResponse:
    """Point the client at the task that already covers its request (duplicate content or retry)."""
    record = await services.store.get(task_id)
    if record is None or record.tenant != tenant:
        raise ApiError(409, "doc_in_progress", "the document is already being indexed", task_id=task_id)
    status_url = str(request.url_for("get_task", task_id=task_id).path)
    body = TaskAccepted(
        message="An identical request is already known; no new task was created",
        task_id=record.task_id,
        doc_id=record.doc_id,
        filename=record.filename,
        file_size=record.file_size,
        status=record.status.value,
        status_url=status_url,
        duplicate=True,
    )
    code = 200 if record.status == TaskStatus.COMPLETED else 202
    return JSONResponse(body.model_dump(), status_code=code, headers={"Location": status_url})


async def _persist_and_accept(
    services: Services,
    request: Request,
    *,
    tenant: str,
    priority: int,
    task_id: str,
    doc_id: str,
    filename: str,
    stored: Path,
    size: int,
    sha256: str,
    kind: TaskKind,
    idempotency_key: str | None,
    callback_url: str | None,
) -> JSONResponse:
    """Write the task record (the durable promise), then answer 202; undo the file on any failure."""
    now = time.time()
    record = TaskRecord(
        task_id=task_id,
        tenant=tenant,
        priority=priority,
        kind=kind,
        doc_id=doc_id,
        filename=filename,
        file_size=size,
        content_sha256=sha256,
        stored_name=stored.name,
        callback_url=callback_url,
        stage=Stage.SAVED,
        created_at=now,
        updated_at=now,
    )
    try:
        outcome = await services.store.create(record, idempotency_key=idempotency_key)
        if outcome.kind in ("duplicate", "idempotent"):
            services.metrics.uploads.labels("duplicate").inc()
            await remove_file(stored)
            return await _existing_answer(services, request, tenant, outcome.task_id)
        if outcome.kind == "conflict":
            raise ApiError(
                409,
                "doc_in_progress",
                f"document {doc_id} is being indexed from different content by task {outcome.task_id}",
                task_id=outcome.task_id,
            )
        if outcome.kind == "tenant-busy":
            raise _too_busy("tenant_queue_full", "this tenant has too many tasks waiting; retry later")
        if outcome.kind == "busy":
            raise _too_busy("queue_full", "too many tasks are waiting; retry later")
        if not outcome.created:
            raise ApiError(409, "task_exists", f"task {task_id} already exists")
    except BaseException:
        await remove_file(stored)
        raise
    services.runner.notify()
    services.metrics.uploads.labels("accepted").inc()
    services.metrics.upload_bytes.inc(size)
    status_url = str(request.url_for("get_task", task_id=task_id).path)
    body = TaskAccepted(
        message="File uploaded successfully, processing started",
        task_id=task_id,
        doc_id=doc_id,
        filename=filename,
        file_size=size,
        status_url=status_url,
    )
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})


async def _refuse_indexed_doc(services: Services, tenant: str, doc_id: str, sha256: str) -> None:
    """An explicit doc id LightRAG already holds is not re-indexed from other content (409).

    The same content is fine: the store answers with the existing task, or a new task finds the
    document PROCESSED and completes without indexing anything again.
    """
    async with services.engines.use(tenant) as engine:
        record = await engine.rag.doc_status.get_by_id(doc_id)
    if not record or record.get("status") != DocStatus.PROCESSED:
        return
    holder = await services.store.doc_holder(tenant, doc_id)
    if holder is not None and holder.content_sha256 == sha256:
        return
    raise ApiError(
        409,
        "doc_exists",
        f"document {doc_id} is already in the knowledge base; DELETE /documents/{doc_id} first to replace it",
        doc_id=doc_id,
    )


def _check_doc_id(doc_id: str | None) -> None:
    if doc_id is not None and not _DOC_ID.match(doc_id):
        raise ApiError(
            422, "invalid_doc_id", "doc_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )


@router.post(
    "/insert",
    status_code=202,
    response_model=TaskAccepted,
    summary="Upload a document (202 pattern)",
    description=UPLOAD_DOC,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def insert_document(
    request: Request,
    doc_id: str | None = Query(default=None, description="stable id; default: derived from the content hash"),
    callback_url: str | None = Query(
        default=None, description="POST a signed JSON event here when the task ends"
    ),
    priority: int = Query(
        default=5, ge=0, le=9, description="0 (bulk) .. 9 (interactive); higher runs first"
    ),
    idempotency_key: str | None = Header(
        default=None, description="retries with the same key return the same task"
    ),
    tenant: str = Depends(get_tenant),
    services: Services = Depends(get_services),
) -> JSONResponse:
    _check_doc_id(doc_id)
    _check_callback_url(callback_url)
    _check_idempotency_key(idempotency_key)
    await _refuse_when_full(services, tenant)
    task_id = TaskStore.new_task_id()
    saved = await receive_upload(
        dict(request.headers),
        request.stream(),
        services.settings.uploads_dir,
        task_id,
        max_bytes=services.settings.max_upload_bytes,
        extra_fields=("doc_id", "callback_url"),
    )
    try:
        doc_id = doc_id or saved.form_fields.get("doc_id")
        callback_url = callback_url or saved.form_fields.get("callback_url")
        _check_doc_id(doc_id)
        _check_callback_url(callback_url)
        if doc_id:
            await _refuse_indexed_doc(services, tenant, doc_id, saved.sha256)
    except BaseException:
        await remove_file(saved.path)
        raise
    return await _persist_and_accept(
        services,
        request,
        tenant=tenant,
        priority=priority,
        task_id=task_id,
        doc_id=doc_id or f"doc-{saved.sha256[:32]}",
        filename=saved.original_name,
        stored=saved.path,
        size=saved.size,
        sha256=saved.sha256,
        kind=TaskKind.FILE,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )


router.add_api_route(
    "/documents",
    insert_document,
    methods=["POST"],
    status_code=202,
    response_model=TaskAccepted,
    summary="Upload a document (alias of POST /insert)",
    description=UPLOAD_DOC,
    openapi_extra=router.routes[-1].openapi_extra,
)


@router.post(
    "/insert/text", status_code=202, response_model=TaskAccepted, summary="Queue raw text for indexing"
)
async def insert_text(
    body: TextInsert,
    request: Request,
    idempotency_key: str | None = Header(
        default=None, description="retries with the same key return the same task"
    ),
    tenant: str = Depends(get_tenant),
    services: Services = Depends(get_services),
) -> JSONResponse:
    if not body.text.strip():
        raise ApiError(400, "empty_text", "text is empty")
    if len(body.text) > services.settings.max_text_chars:
        raise ApiError(413, "too_large", f"text exceeds {services.settings.max_text_chars} characters")
    data = body.text.encode("utf-8")
    sha256 = hashlib.sha256(data).hexdigest()
    _check_idempotency_key(idempotency_key)
    _check_callback_url(body.callback_url)
    await _refuse_when_full(services, tenant)
    doc_id = body.doc_id or f"doc-{sha256[:32]}"
    if body.doc_id:
        await _refuse_indexed_doc(services, tenant, doc_id, sha256)
    task_id = TaskStore.new_task_id()
    stored = services.settings.uploads_dir / f"{task_id}.txt"
    async with aiofiles.open(stored, "wb") as fh:
        await fh.write(data)
    return await _persist_and_accept(
        services,
        request,
        tenant=tenant,
        priority=body.priority,
        task_id=task_id,
        doc_id=doc_id,
        filename=sanitize_filename(body.filename) if body.filename else f"{doc_id}.txt",
        stored=stored,
        size=len(data),
        sha256=sha256,
        kind=TaskKind.TEXT,
        idempotency_key=idempotency_key,
        callback_url=body.callback_url,
    )
