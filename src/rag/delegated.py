"""`KnowledgeBases` for an api-role instance whose knowledge bases live in the workers' processes.

With process-local storages (the embedded SQLite ones, or LightRAG's JSON files) an api process must
not answer from a LightRAG instance of its own: the workers' in-memory state moves on without it.
So here nothing is loaded:

- answers come from a worker, through the query lane (`QueryDelegate`, given by the service layer);
- document reads come from the rows the workers made durable (a document's task is reported
  completed only after the flush that wrote its doc-status row), read off the loop;
- writes (index, purge) are refused with `NotInThisRole`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, Protocol

from src.core.config import Settings
from src.core.defaults import DEFAULT_PRIORITY
from src.rag.doc_listing import page_of_records
from src.rag.engine.versions import is_version
from src.rag.errors import NotInThisRole
from src.rag.knowledge import (
    NEWEST_FIRST,
    AnswerStream,
    DocumentOrder,
    DocumentPage,
    DocumentRecord,
    DocumentStatus,
    GraphEdit,
    IndexRequest,
    IndexResult,
    ProgressSink,
    PurgeResult,
    QueryResult,
    QuerySpec,
    RetrievedData,
    StreamedAnswer,
    Subgraph,
    workspace_of,
)
from src.rag.storage.durable import read_doc_status, read_doc_statuses


class QueryDelegate(Protocol):
    """Who answers a query for this instance (a worker, through a query task)."""

    async def answer(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> QueryResult: ...

    async def retrieve(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> RetrievedData: ...


class DelegatedKnowledgeBases:
    def __init__(self, settings: Settings, delegate: QueryDelegate) -> None:
        self.settings = settings
        self.delegate = delegate

    def workspace_for(self, tenant: str) -> str:
        return workspace_of(self.settings.workspace, tenant)

    def loaded(self) -> list[str]:
        return []

    def _workspace_dir(self, tenant: str) -> Path:
        return self.settings.rag_dir / self.workspace_for(tenant)

    # ------------------------------------------------------------------ writes: not here
    def check_writable(self) -> None:
        self._refuse()

    def _refuse(self) -> NoReturn:
        raise NotInThisRole(
            "this instance runs with ROLE=api and the knowledge bases live in the workers' "
            "processes (embedded storages): send deletes and graph requests to an instance with "
            "ROLE=all, or use shared storages (PostgreSQL)",
            role=self.settings.role,
        )

    async def index(self, tenant: str, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        self._refuse()

    async def purge(self, tenant: str, doc_id: str, *, delete_llm_cache: bool = False) -> PurgeResult:
        self._refuse()

    async def abandon_replacement(self, tenant: str, doc_id: str, track_id: str) -> None:
        self._refuse()

    async def pre_extract(self, tenant: str, request: IndexRequest) -> int:
        self._refuse()

    async def clear_cache(self, tenant: str) -> None:
        self._refuse()

    # ------------------------------------------------------------------ the graph: in the workers
    async def graph_labels(self, tenant: str, limit: int) -> list[str]:
        self._refuse()

    async def popular_labels(self, tenant: str, limit: int) -> list[str]:
        self._refuse()

    async def search_labels(self, tenant: str, query: str, limit: int) -> list[str]:
        self._refuse()

    async def subgraph(self, tenant: str, label: str, max_depth: int, max_nodes: int) -> Subgraph:
        self._refuse()

    async def entity_exists(self, tenant: str, name: str) -> bool:
        self._refuse()

    async def edit_graph(self, tenant: str, edit: GraphEdit) -> dict[str, Any]:
        self._refuse()

    # ------------------------------------------------------------------ reads: the durable rows
    async def document(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        if is_version(doc_id):
            return None  # a re-index's internal record, not a document
        stored = await asyncio.to_thread(read_doc_status, self._workspace_dir(tenant), doc_id)
        return DocumentRecord.from_stored(doc_id, stored) if stored else None

    async def documents(
        self,
        tenant: str,
        status: DocumentStatus | None,
        limit: int,
        offset: int,
        order: DocumentOrder = NEWEST_FIRST,
    ) -> DocumentPage:
        records = await asyncio.to_thread(read_doc_statuses, self._workspace_dir(tenant))
        return await asyncio.to_thread(page_of_records, records, status, limit, offset, order)

    # ------------------------------------------------------------------ answers: a worker's
    async def answer(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> QueryResult:
        return await self.delegate.answer(tenant, spec, priority=priority)

    async def context(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> str:
        result = await self.answer(tenant, replace(spec, only_need_context=True), priority=priority)
        return result.response

    async def retrieve(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> RetrievedData:
        return await self.delegate.retrieve(tenant, spec, priority=priority)

    async def stream(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> StreamedAnswer:
        """The whole answer as one piece (a query task's result is not streamed)."""
        result = await self.answer(tenant, spec, priority=priority)
        return StreamedAnswer(result.references, _one_piece(result.response))


async def _one_piece(answer: str) -> AnswerStream:
    if answer:
        yield answer
