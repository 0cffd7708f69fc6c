"""Knowledge-base documents: list them, look one up, delete one (use-cases in KnowledgeService)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from api.deps import KnowledgeDep, TenantDep
from api.schemas import DocumentDeleted, DocumentList, DocumentSummary
from src.rag.knowledge import DocumentStatus

router = APIRouter(tags=["documents"])


@router.get("/documents", response_model=DocumentList, summary="The knowledge base's documents, newest first")
async def list_documents(
    tenant: TenantDep,
    knowledge: KnowledgeDep,
    status: DocumentStatus | None = Query(default=None, description="only documents with this status"),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> DocumentList:
    """The caller's documents as LightRAG's doc-status storage records them (status, chunk count,
    file path, content summary and length, created/updated, error message), newest first;
    `total` matches the filter, `counts` gives the documents per status over the whole base."""
    page = await knowledge.documents(tenant, status, limit, offset)
    return DocumentList(
        total=page.total,
        limit=limit,
        offset=offset,
        counts=page.counts,
        documents=[DocumentSummary(**record.as_dict()) for record in page.documents],
    )


@router.get("/documents/{doc_id}", summary="LightRAG's status record of one document")
async def get_document(doc_id: str, tenant: TenantDep, knowledge: KnowledgeDep) -> dict[str, Any]:
    return (await knowledge.document(tenant, doc_id)).as_dict()


@router.delete(
    "/documents/{doc_id}", response_model=DocumentDeleted, summary="Remove a document and its data"
)
async def delete_document(doc_id: str, tenant: TenantDep, knowledge: KnowledgeDep) -> DocumentDeleted:
    """Stops any LLM work still running for the document, then deletes it and everything derived
    from it. 409 while a task is indexing it (cancel that task instead)."""
    removed = await knowledge.delete_document(tenant, doc_id)
    return DocumentDeleted(doc_id=removed.doc_id, status=removed.outcome.value, message=removed.message)
