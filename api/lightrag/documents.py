"""LightRAG Server's document routes (``/documents/...``) over our tasks and knowledge bases.

An upload or a text is one of our tasks: its ``track_id`` is the task id; several texts in one
request (and a directory scan) are one batch, whose id is the ``track_id``. A document queued but
not yet started has no knowledge-base record yet: `track_status` shows it from its task (pending,
or failed with the task's error).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.body_limits import BoundedJsonRoute
from api.deps import ServicesDep
from api.lightrag.auth import CompatTenantDep
from api.lightrag.mount import PREFIX
from src.core.errors import DomainError
from src.ingestion.errors import BatchNotFound, TaskNotFound
from src.ingestion.submission import Accepted, SubmitOptions
from src.rag.knowledge import (
    DocumentOrder,
    DocumentRecord,
    DocumentStatus,
    GraphEdit,
    GraphEditKind,
    SortField,
)
from src.tasks.models import TaskKind, TaskRecord, TaskStatus

router = APIRouter(prefix=f"{PREFIX}/documents", tags=["lightrag: documents"], route_class=BoundedJsonRoute)

#: Documents one request may name (delete) or carry (texts).
MAX_IDS = 100
#: Documents of one status `GET /documents` lists (LightRAG Server lists them all).
MAX_PER_STATUS = 1000


# ---------------------------------------------------------------------------------------- shapes
class InsertTextRequest(BaseModel):
    text: str = Field(min_length=1)
    file_source: str | None = Field(default=None, max_length=255)


class InsertTextsRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=MAX_IDS)
    file_sources: list[str] | None = Field(default=None, max_length=MAX_IDS)


class DeleteDocRequest(BaseModel):
    doc_ids: list[str] = Field(min_length=1, max_length=MAX_IDS)
    delete_file: bool = False
    delete_llm_cache: bool = False


class DeleteEntityRequest(BaseModel):
    entity_name: str = Field(min_length=1, max_length=500)


class DeleteRelationRequest(BaseModel):
    source_entity: str = Field(min_length=1, max_length=500)
    target_entity: str = Field(min_length=1, max_length=500)


class DocumentsRequest(BaseModel):
    status_filter: DocumentStatus | None = None
    page: int = Field(default=1, ge=1, le=1_000_000)
    page_size: int = Field(default=50, ge=10, le=200)
    sort_field: Literal["created_at", "updated_at", "id", "file_path"] = "updated_at"
    sort_direction: Literal["asc", "desc"] = "desc"


def doc_status(record: DocumentRecord, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """LightRAG Server's `DocStatusResponse`."""
    return {
        "id": record.doc_id,
        "content_summary": record.content_summary or "",
        "content_length": record.content_length or 0,
        "status": record.status.value,
        "created_at": record.created_at or "",
        "updated_at": record.updated_at or "",
        "track_id": record.track_id,
        "chunks_count": record.chunks_count,
        "error_msg": record.error_msg,
        "metadata": metadata or {},
        "file_path": record.file_path or "",
    }


def _inserted(accepted: Accepted, what: str) -> dict[str, Any]:
    record = accepted.record
    if accepted.duplicate:
        return {
            "status": "duplicated",
            "message": f"{what} is already known as document {record.doc_id} (task {record.task_id})",
            "track_id": record.task_id,
        }
    return {
        "status": "success",
        "message": f"{what} accepted as task {record.task_id}; processing continues in the background",
        "track_id": record.task_id,
    }


# ---------------------------------------------------------------------------------------- inserts
@router.post("/upload", summary="LightRAG Server: upload one file (a task; track_id = task id)")
async def upload(request: Request, tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    options = SubmitOptions()
    saved = await services.submission.receive_upload(tenant, request.headers, request.stream(), options)
    accepted = await services.submission.submit_file(tenant, saved, options)
    return _inserted(accepted, f"File '{saved.original_name}'")


@router.post("/text", summary="LightRAG Server: insert one text (a task; track_id = task id)")
async def insert_text(
    body: InsertTextRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    accepted = await services.submission.submit_text(
        tenant, body.text, SubmitOptions(), filename=body.file_source
    )
    return _inserted(accepted, "Text")


@router.post("/texts", summary="LightRAG Server: insert several texts (a batch; track_id = batch id)")
async def insert_texts(
    body: InsertTextsRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    sources = body.file_sources or []
    accepted: list[tuple[str, Accepted]] = []
    for i, text in enumerate(body.texts):
        name = sources[i] if i < len(sources) else None
        accepted.append(
            (
                name or f"text-{i + 1}",
                await services.submission.submit_text(tenant, text, SubmitOptions(), filename=name),
            )
        )
    batch = await services.batches.group(tenant, accepted)
    return {
        "status": "success",
        "message": f"{len(accepted)} text(s) accepted; processing continues in the background",
        "track_id": batch.batch_id,
    }


# ---------------------------------------------------------------------------------------- reads
@router.post("/paginated", summary="LightRAG Server: one page of documents, sorted, with counts")
async def paginated(body: DocumentsRequest, tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    order = DocumentOrder(SortField(body.sort_field), body.sort_direction == "desc")
    offset = (body.page - 1) * body.page_size
    page = await services.knowledge.documents(tenant, body.status_filter, body.page_size, offset, order)
    total_pages = (page.total + body.page_size - 1) // body.page_size
    return {
        "documents": [doc_status(r) for r in page.documents],
        "pagination": {
            "page": body.page,
            "page_size": body.page_size,
            "total_count": page.total,
            "total_pages": total_pages,
            "has_next": body.page < total_pages,
            "has_prev": body.page > 1,
        },
        "status_counts": _status_counts(page.counts),
    }


def _status_counts(counts: dict[str, int]) -> dict[str, int]:
    return {**counts, "all": sum(counts.values())}


@router.get("/status_counts", summary="LightRAG Server: documents per status")
async def status_counts(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    page = await services.knowledge.documents(tenant, None, 1, 0)
    return {"status_counts": _status_counts(page.counts)}


@router.get("", summary="LightRAG Server: documents grouped by status (at most 1000 per status)")
async def statuses(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for status in DocumentStatus:
        page = await services.knowledge.documents(tenant, status, MAX_PER_STATUS, 0)
        if page.documents:
            grouped[status.value] = [doc_status(r) for r in page.documents]
    return {"statuses": grouped}


async def _tracked_tasks(services, tenant: str, track_id: str) -> list[TaskRecord]:
    try:
        return [await services.tasks.task(tenant, track_id)]
    except TaskNotFound:
        pass
    try:
        batch = await services.batches.batch(tenant, track_id)
    except BatchNotFound:
        raise TaskNotFound(f"track_id {track_id} not found (unknown, or expired after its TTL)") from None
    ids = list(dict.fromkeys(entry["task_id"] for entry in batch.tasks))
    return [t for t in await services.store.get_many(ids) if t.tenant == tenant]


@router.get("/track_status/{track_id}", summary="LightRAG Server: the documents of a track id")
async def track_status(track_id: str, tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    documents = []
    for task in await _tracked_tasks(services, tenant, track_id):
        record = await services.knowledge_bases.document(tenant, task.doc_id)
        documents.append(doc_status(record, {"task_id": task.task_id}) if record else _from_task(task))
    summary: dict[str, int] = {}
    for doc in documents:
        summary[doc["status"]] = summary.get(doc["status"], 0) + 1
    return {
        "track_id": track_id,
        "documents": documents,
        "total_count": len(documents),
        "status_summary": summary,
    }


def _from_task(task: TaskRecord) -> dict[str, Any]:
    """A document that has no knowledge-base record (yet, or any more), as its task shows it."""
    status = {
        TaskStatus.FAILED: DocumentStatus.FAILED,
        TaskStatus.CANCELLED: DocumentStatus.FAILED,
        TaskStatus.PROCESSING: DocumentStatus.PROCESSING,
        TaskStatus.CANCELLING: DocumentStatus.PROCESSING,
    }.get(task.status, DocumentStatus.PENDING)
    record = DocumentRecord(
        doc_id=task.doc_id,
        status=status,
        file_path=task.filename,
        track_id=task.task_id,
        created_at=_iso(task.created_at),
        updated_at=_iso(task.updated_at),
        error_msg=task.error
        or (f"task {task.status.value}" if task.status == TaskStatus.CANCELLED else None),
    )
    return doc_status(record, {"task_id": task.task_id, "task_status": task.status.value})


def _iso(ts: float | None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else ""


@router.get("/pipeline_status", summary="LightRAG Server: whether documents are being processed")
async def pipeline_status(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    """Our engine has no pipeline pass: `busy` while any of the tenant's documents waits or runs,
    `docs` how many; `history_messages` are the latest document tasks' states."""
    pending = await services.store.pending_count(tenant)
    running = await services.store.running_count(tenant)
    _, recent = await services.tasks.tasks(tenant, status=None, offset=0, limit=20)
    history = [
        f"{t.filename or t.doc_id}: {t.status.value} ({t.stage}, {t.progress:.0f}%)"
        for t in reversed(recent)
        if t.kind != TaskKind.QUERY
    ]
    busy = pending + running > 0
    return {
        "autoscanned": False,
        "busy": busy,
        "job_name": "document tasks" if busy else "Default Job",
        "job_start": None,
        "docs": pending + running,
        "batchs": 0,
        "cur_batch": 0,
        "request_pending": False,
        "latest_message": history[-1] if history else "",
        "history_messages": history,
        "update_status": {"pending": pending, "running": running},
    }


# ---------------------------------------------------------------------------------------- removals
@router.delete(
    "/delete_document", summary="LightRAG Server: delete documents (optionally with their LLM cache)"
)
async def delete_document(
    body: DeleteDocRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    """Deleted one by one before answering; a document being indexed is left (409 on our own
    `DELETE /documents/{id}`), and the answer says which. `delete_file`: our uploads are removed
    when their task ends anyway."""
    deleted, refused = [], []
    for doc_id in dict.fromkeys(body.doc_ids):
        try:
            await services.knowledge.delete_document(tenant, doc_id, delete_llm_cache=body.delete_llm_cache)
            deleted.append(doc_id)
        except DomainError as exc:
            refused.append(f"{doc_id}: {exc.message}")
    if refused and not deleted:
        status = "busy" if any("indexed" in r or "being deleted" in r for r in refused) else "not_allowed"
    else:
        status = "deletion_started"
    message = f"deleted {len(deleted)} document(s)" + (
        f"; not deleted: {'; '.join(refused)}" if refused else ""
    )
    return {"status": status, "message": message, "doc_id": ", ".join(body.doc_ids)}


@router.delete("", summary="LightRAG Server: delete every document of the knowledge base")
async def clear_documents(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    """Refused ("busy") while any of the tenant's documents waits or runs."""
    if await services.store.pending_count(tenant) + await services.store.running_count(tenant):
        return {"status": "busy", "message": "documents are being processed; cancel them or retry later"}
    deleted = failed = 0
    while True:
        page = await services.knowledge.documents(tenant, None, 200, failed)
        if not page.documents:
            break
        for record in page.documents:
            try:
                await services.knowledge.delete_document(tenant, record.doc_id)
                deleted += 1
            except DomainError:
                failed += 1
    if failed:
        return {
            "status": "partial_success",
            "message": f"deleted {deleted} document(s), {failed} could not be",
        }
    return {
        "status": "success",
        "message": f"All documents cleared successfully. Deleted {deleted} document(s).",
    }


@router.post("/clear_cache", summary="LightRAG Server: drop the LLM response cache")
async def clear_cache(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    await services.knowledge.clear_cache(tenant)
    return {"status": "success", "message": "Successfully cleared the LLM response cache"}


@router.delete("/delete_entity", summary="LightRAG Server: delete an entity and its relations")
async def delete_entity(
    body: DeleteEntityRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    result = await services.knowledge.edit_graph(
        tenant, GraphEdit(GraphEditKind.DELETE_ENTITY, entity=body.entity_name)
    )
    return {
        "status": "success",
        "doc_id": body.entity_name,
        "message": result.get("message", ""),
        "status_code": 200,
    }


@router.delete("/delete_relation", summary="LightRAG Server: delete a relation")
async def delete_relation(
    body: DeleteRelationRequest, tenant: CompatTenantDep, services: ServicesDep
) -> dict[str, Any]:
    edit = GraphEdit(GraphEditKind.DELETE_RELATION, source=body.source_entity, target=body.target_entity)
    result = await services.knowledge.edit_graph(tenant, edit)
    return {
        "status": "success",
        "doc_id": f"{body.source_entity}-{body.target_entity}",
        "message": result.get("message", ""),
        "status_code": 200,
    }


# ---------------------------------------------------------------------------------------- the pipeline
@router.post("/cancel_pipeline", summary="LightRAG Server: cancel every waiting or running document")
async def cancel_pipeline(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    cancelled = 0
    for status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
        while True:
            total, tasks = await services.tasks.tasks(tenant, status=status, offset=0, limit=500)
            todo = [t for t in tasks if t.kind != TaskKind.QUERY]
            for task in todo:
                try:
                    await services.tasks.cancel(tenant, task.task_id)
                    cancelled += 1
                except DomainError:
                    pass
            if status == TaskStatus.PROCESSING or len(tasks) < 500:
                break
    if not cancelled:
        return {"status": "not_busy", "message": "no document is waiting or being processed"}
    return {"status": "cancellation_requested", "message": f"cancelling {cancelled} document task(s)"}


@router.post("/reprocess_failed", summary="LightRAG Server: reprocess failed documents")
async def reprocess_failed(tenant: CompatTenantDep) -> dict[str, Any]:
    """Our engine retries transient failures itself (MAX_ATTEMPTS, with backoff) and resumes
    interrupted documents at start-up; a document that failed for good is uploaded again."""
    return {
        "status": "reprocessing_started",
        "message": "failed documents are retried automatically by the task engine; upload a document "
        "again to retry it after a permanent failure",
        "track_id": "",
    }


@router.post("/scan", summary="LightRAG Server: index new files of the input directory (INPUT_DIR)")
async def scan(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    batch = await services.scanner.scan(tenant)
    if batch is None:
        return {"status": "scanning_started", "message": "no new file in the input directory", "track_id": ""}
    return {
        "status": "scanning_started",
        "message": f"{len(batch.tasks)} file(s) of the input directory queued as tasks",
        "track_id": batch.batch_id,
    }
