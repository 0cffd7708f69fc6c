"""Knowledge-base documents: look one up, delete one (the use-cases live in IngestionService)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import IngestionDep, TenantDep
from api.schemas import DocumentDeleted

router = APIRouter(tags=["documents"])


@router.get("/documents/{doc_id}", summary="LightRAG's status record of one document")
async def get_document(doc_id: str, tenant: TenantDep, ingestion: IngestionDep) -> dict[str, Any]:
    return await ingestion.document(tenant, doc_id)


@router.delete(
    "/documents/{doc_id}", response_model=DocumentDeleted, summary="Remove a document and its data"
)
async def delete_document(doc_id: str, tenant: TenantDep, ingestion: IngestionDep) -> DocumentDeleted:
    """Stops any LLM work still running for the document, then deletes it and everything derived
    from it. 409 while a task is indexing it (cancel that task instead)."""
    removed = await ingestion.delete_document(tenant, doc_id)
    return DocumentDeleted(doc_id=removed.doc_id, status=removed.status, message=removed.message)
