"""Knowledge-base documents: look one up, delete one."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import get_services, get_tenant
from api.errors import ApiError
from api.schemas import DocumentDeleted
from src.wiring import Services

router = APIRouter(tags=["documents"])


@router.get("/documents/{doc_id}", summary="LightRAG's status record of one document")
async def get_document(
    doc_id: str, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> dict:
    async with services.engines.use(tenant) as engine:
        record = await engine.rag.doc_status.get_by_id(doc_id)
    if not record:
        raise ApiError(404, "doc_not_found", f"document {doc_id} is not in the knowledge base")
    keep = ("status", "chunks_count", "content_length", "file_path", "created_at", "updated_at", "error_msg")
    return {"doc_id": doc_id, **{k: record.get(k) for k in keep}}


@router.delete(
    "/documents/{doc_id}", response_model=DocumentDeleted, summary="Remove a document and its data"
)
async def delete_document(
    doc_id: str, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> DocumentDeleted:
    live = await services.store.live_task_for_doc(tenant, doc_id)
    if live:
        raise ApiError(
            409, "doc_in_progress", f"document {doc_id} is being indexed by task {live}", task_id=live
        )
    async with services.engines.use(tenant) as engine:
        if not await engine.rag.doc_status.get_by_id(doc_id):
            raise ApiError(404, "doc_not_found", f"document {doc_id} is not in the knowledge base")
        # Deletion waits for the current pipeline batch to end (LightRAG refuses it while busy).
        result = await engine.coordinator.delete(doc_id)
    if result.status == "not_found":
        raise ApiError(404, "doc_not_found", result.message)
    if result.status != "success":
        raise ApiError(502, "delete_failed", result.message)
    await services.store.release_doc(tenant, doc_id)
    return DocumentDeleted(doc_id=doc_id, status=result.status, message=result.message)
