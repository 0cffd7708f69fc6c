"""Ingestion endpoints: accept a document, persist a task, answer 202 before any indexing work."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import aiofiles
import aiofiles.os
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from lightrag.base import DocStatus

from api.deps import get_services
from api.errors import ApiError
from api.schemas import DOC_ID_PATTERN, TaskAccepted, TextInsert
from src.service import Services
from src.tasks.models import Stage, TaskKind, TaskRecord
from src.tasks.store import TaskStore
from src.uploads import receive_upload, sanitize_filename

router = APIRouter(tags=["ingest"])
_DOC_ID = re.compile(DOC_ID_PATTERN)

UPLOAD_DOC = """Stream one document (multipart field `file`) to disk and queue it for indexing.

Answers **202** with `task_id` and `status_url` as soon as the file is stored and the task is
persisted. 413 when the file exceeds the size limit (enforced while streaming), 400 for an
empty file or malformed multipart body, 415 for an unsupported type or content that does
not match its extension, 409 when the document id is already indexed or being indexed.
"""


async def _ensure_doc_id_free(services: Services, doc_id: str) -> None:
    live = await services.store.live_task_for_doc(doc_id)
    if live:
        raise ApiError(409, "doc_in_progress", f"document {doc_id} is already being indexed", task_id=live)
    record = await services.rag.doc_status.get_by_id(doc_id)
    if record and record.get("status") == DocStatus.PROCESSED:
        raise ApiError(
            409,
            "doc_exists",
            f"document {doc_id} is already in the knowledge base; "
            f"DELETE /documents/{doc_id} first to replace it",
            doc_id=doc_id,
        )


async def _persist_and_accept(
    services: Services,
    request: Request,
    *,
    task_id: str,
    doc_id: str,
    filename: str,
    stored: Path,
    size: int,
    sha256: str,
    kind: TaskKind,
) -> JSONResponse:
    """Write the task record (the durable promise), then answer 202; undo the file on any failure."""
    now = time.time()
    record = TaskRecord(
        task_id=task_id,
        kind=kind,
        doc_id=doc_id,
        filename=filename,
        file_size=size,
        content_sha256=sha256,
        stored_name=stored.name,
        stage=Stage.SAVED,
        created_at=now,
        updated_at=now,
    )
    try:
        await _ensure_doc_id_free(services, doc_id)
        outcome = await services.store.create(record)
        if not outcome.created:
            raise ApiError(
                409, "doc_in_progress", f"document {doc_id} is already being indexed", task_id=outcome.task_id
            )
    except BaseException:
        await aiofiles.os.remove(stored)
        raise
    services.runner.notify()
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
    services: Services = Depends(get_services),
) -> JSONResponse:
    _check_doc_id(doc_id)
    if doc_id:
        await _ensure_doc_id_free(services, doc_id)
    task_id = TaskStore.new_task_id()
    saved = await receive_upload(
        dict(request.headers),
        request.stream(),
        services.settings.uploads_dir,
        task_id,
        max_bytes=services.settings.max_upload_bytes,
        extra_fields=("doc_id",),
    )
    form_doc_id = saved.form_fields.get("doc_id")
    if not doc_id and form_doc_id:
        try:
            _check_doc_id(form_doc_id)
        except ApiError:
            await aiofiles.os.remove(saved.path)
            raise
        doc_id = form_doc_id
    return await _persist_and_accept(
        services,
        request,
        task_id=task_id,
        doc_id=doc_id or f"doc-{saved.sha256[:32]}",
        filename=saved.original_name,
        stored=saved.path,
        size=saved.size,
        sha256=saved.sha256,
        kind=TaskKind.FILE,
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
    body: TextInsert, request: Request, services: Services = Depends(get_services)
) -> JSONResponse:
    if not body.text.strip():
        raise ApiError(400, "empty_text", "text is empty")
    if len(body.text) > services.settings.max_text_chars:
        raise ApiError(413, "too_large", f"text exceeds {services.settings.max_text_chars} characters")
    data = body.text.encode("utf-8")
    sha256 = hashlib.sha256(data).hexdigest()
    doc_id = body.doc_id or f"doc-{sha256[:32]}"
    await _ensure_doc_id_free(services, doc_id)
    task_id = TaskStore.new_task_id()
    stored = services.settings.uploads_dir / f"{task_id}.txt"
    async with aiofiles.open(stored, "wb") as fh:
        await fh.write(data)
    return await _persist_and_accept(
        services,
        request,
        task_id=task_id,
        doc_id=doc_id,
        filename=sanitize_filename(body.filename) if body.filename else f"{doc_id}.txt",
        stored=stored,
        size=len(data),
        sha256=sha256,
        kind=TaskKind.TEXT,
    )
