"""Knowledge-base documents: list them, look one up, delete one (use-cases in IngestionService)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from lightrag.base import DocStatus

from api.deps import IngestionDep, TenantDep
from api.schemas import DocumentDeleted, DocumentList, DocumentSummary

router = APIRouter(tags=["documents"])


@router.get("/documents", response_model=DocumentList, summary="The knowledge base's documents, newest first")
async def list_documents(
    tenant: TenantDep,
    ingestion: IngestionDep,
    status: DocStatus | None = Query(default=None, description="only documents with this LightRAG status"),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> DocumentList:
    """The caller's documents as LightRAG's doc-status storage records them (status, chunk count,
    file path, content summary and length, created/updated, error message), newest first;
    `total` matches the filter, `counts` gives the documents per status over the whole base."""
    page = await ingestion.documents(tenant, status, limit, offset)
    return DocumentList(
        total=page.total,
        limit=limit,
        offset=offset,
        counts=page.counts,
        documents=[DocumentSummary(**row) for row in page.documents],
    )


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
