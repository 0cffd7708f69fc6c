"""The knowledge base as the client sees it: list its documents, look one up, delete one, query it.

Everything goes through `KnowledgeBases` (src/rag/knowledge.py), whichever implementation this
instance's role was given: the use cases here do not know whether the answer comes from a LightRAG
instance in this process or from a worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from src.core.config import Settings
from src.core.defaults import MAX_PRIORITY
from src.ingestion.errors import (
    DeleteFailed,
    DeleteTimedOut,
    DocConflict,
    DocDeleting,
    DocumentNotFound,
    QueueFull,
)
from src.ingestion.query_images import remove_query_images, store_query_images
from src.ingestion.submission import check_doc_id, check_query
from src.rag.errors import WorkspaceOwnedElsewhere
from src.rag.knowledge import (
    NEWEST_FIRST,
    AnswerStream,
    DocumentOrder,
    DocumentPage,
    DocumentRecord,
    DocumentStatus,
    GraphEdit,
    KnowledgeBases,
    PurgeOutcome,
    PurgeResult,
    QueryResult,
    QuerySpec,
    RetrievedData,
    StreamedAnswer,
    Subgraph,
)
from src.rag.usage import UsageMeter, metering
from src.tasks.fanout import TaskEventHub
from src.tasks.models import DeleteMark, Stage, TaskKind, TaskRecord, TaskStatus
from src.tasks.store import TaskStore
from src.tenancy.usage import UsageLedger, record_usage


@dataclass(frozen=True)
class DocumentRemoved:
    doc_id: str
    outcome: PurgeOutcome
    message: str


class KnowledgeService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        knowledge_bases: KnowledgeBases,
        events: TaskEventHub | None = None,
    ):
        self.settings = settings
        #: Waits for a deletion forwarded to the workspace's owner (None: nothing is forwarded).
        self.events = events
        self.store = store
        self.knowledge_bases = knowledge_bases
        #: The tenants' token ledger and budgets (set by the wiring).
        self.usage: UsageLedger | None = None

    # ------------------------------------------------------------------ documents
    async def documents(
        self,
        tenant: str,
        status: DocumentStatus | None,
        limit: int,
        offset: int,
        order: DocumentOrder = NEWEST_FIRST,
    ) -> DocumentPage:
        """One page of the tenant's knowledge-base documents (newest first unless ``order`` says
        otherwise), with counts per status."""
        return await self.knowledge_bases.documents(tenant, status, limit, offset, order)

    async def document(self, tenant: str, doc_id: str) -> DocumentRecord:
        check_doc_id(doc_id)
        record = await self.knowledge_bases.document(tenant, doc_id)
        if record is None:
            raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
        return record

    async def delete_document(
        self, tenant: str, doc_id: str, *, delete_llm_cache: bool = False
    ) -> DocumentRemoved:
        """Remove a document and all data derived from it, through the purge a cancel uses (which
        first stops any LLM work still running for it, e.g. a document resumed after a restart)."""
        check_doc_id(doc_id)
        self.knowledge_bases.check_writable()
        # From here until the purge ends, the doc id is marked "being deleted": an upload of the same
        # content is refused (409 doc_deleting) instead of being answered with the completed task
        # whose document is about to disappear.
        mark, marker, previous = await self.store.mark_deleting(tenant, doc_id)
        if mark == DeleteMark.LIVE:
            raise DocConflict(f"document {doc_id} is being indexed by task {previous}", task_id=previous)
        if mark == DeleteMark.DELETING:
            raise DocDeleting(f"document {doc_id} is already being deleted", doc_id=doc_id)
        restore = previous  # nothing deleted: the previous holder answers duplicates again
        try:
            if await self.knowledge_bases.document(tenant, doc_id) is None:
                raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
            # Stops the document if it is being indexed here, then waits only for merges in flight,
            # never for other documents to finish.
            try:
                result = await self.knowledge_bases.purge(tenant, doc_id, delete_llm_cache=delete_llm_cache)
            except WorkspaceOwnedElsewhere:
                if self.events is None:
                    raise
                result = await self._purge_at_owner(tenant, doc_id, delete_llm_cache)
            if result.outcome == PurgeOutcome.NOT_FOUND:
                raise DocumentNotFound(f"document {doc_id} is not in the knowledge base")
            if result.outcome != PurgeOutcome.DELETED:
                raise DeleteFailed(
                    f"the knowledge base could not delete document {doc_id} ({result.message})"
                )
            restore = ""  # deleted: the doc id is free, a re-upload indexes it again
        finally:
            await self.store.unmark_deleting(tenant, doc_id, marker, restore=restore)
        return DocumentRemoved(
            doc_id, result.outcome, f"document {doc_id} and all data derived from it were deleted"
        )

    async def _purge_at_owner(self, tenant: str, doc_id: str, delete_llm_cache: bool) -> PurgeResult:
        """Another instance owns the workspace (shared storages): hand it the deletion as a task of
        the highest priority and wait for its outcome. The doc id stays marked "being deleted" here
        meanwhile; the owner's purge stops the document first if it is being indexed."""
        now = time.time()
        record = TaskRecord(
            task_id=TaskStore.new_task_id(),
            tenant=tenant,
            priority=MAX_PRIORITY,
            kind=TaskKind.PURGE,
            purge_doc_id=doc_id,
            purge_llm_cache=delete_llm_cache,
            stage=Stage.QUEUED,
            created_at=now,
            updated_at=now,
        )
        created = await self.store.create(record)
        if not created.created:
            raise QueueFull(f"the deletion of {doc_id} could not be queued for its owner; retry later")
        assert self.events is not None
        limit = self.settings.query_timeout_seconds
        final = await self.events.wait_final(record.task_id, limit, bounded=False)
        if final is None:
            await self.store.request_cancel(record.task_id)
            raise DeleteTimedOut(
                f"the instance that owns this knowledge base did not delete document {doc_id} within "
                f"{limit:g} s; the deletion was cancelled, retry later"
            )
        if final.status != TaskStatus.COMPLETED or not final.result:
            raise DeleteFailed(f"the knowledge base could not delete document {doc_id} ({final.error})")
        outcome = PurgeOutcome(final.result["outcome"])
        return PurgeResult(doc_id, outcome, str(final.result.get("message", "")))

    async def clear_cache(self, tenant: str) -> None:
        """Forget every LLM answer cached for the tenant: the next indexing or query asks again."""
        self.knowledge_bases.check_writable()
        await self.knowledge_bases.clear_cache(tenant)

    # ------------------------------------------------------------------ the knowledge graph
    async def graph_labels(self, tenant: str, limit: int) -> list[str]:
        return await self.knowledge_bases.graph_labels(tenant, limit)

    async def popular_labels(self, tenant: str, limit: int) -> list[str]:
        return await self.knowledge_bases.popular_labels(tenant, limit)

    async def search_labels(self, tenant: str, query: str, limit: int) -> list[str]:
        return await self.knowledge_bases.search_labels(tenant, query, limit)

    async def subgraph(self, tenant: str, label: str, max_depth: int, max_nodes: int) -> Subgraph:
        return await self.knowledge_bases.subgraph(tenant, label, max_depth, max_nodes)

    async def entity_exists(self, tenant: str, name: str) -> bool:
        return await self.knowledge_bases.entity_exists(tenant, name)

    async def edit_graph(self, tenant: str, edit: GraphEdit) -> dict[str, Any]:
        self.knowledge_bases.check_writable()
        return await self.knowledge_bases.edit_graph(tenant, edit)

    # ------------------------------------------------------------------ queries
    async def query(self, tenant: str, spec: QuerySpec, images: list[str] | None = None) -> QueryResult:
        """The answer; ``images`` are pictures attached to the question (base64 / data URLs), kept
        only while it is answered. Its tokens go to the tenant's ledger (a spent budget: 402)."""
        check_query(self.settings, spec)
        await self._check_budget(tenant)
        names = await store_query_images(self.settings, images or [])
        with metering() as meter:
            try:
                return await self.knowledge_bases.answer(tenant, replace(spec, images=names))
            finally:
                await record_usage(self.usage, tenant, meter)
                await remove_query_images(self.settings, names)

    async def query_stream(
        self, tenant: str, spec: QuerySpec, images: list[str] | None = None
    ) -> StreamedAnswer:
        """Start answering; errors before the first piece raise here, later ones from the stream
        (as ProviderError). Close the stream (``pieces.aclose()``) when done: it holds the tenant's
        knowledge base (and the question's pictures); its tokens are counted once it is closed."""
        check_query(self.settings, spec)
        await self._check_budget(tenant)
        names = await store_query_images(self.settings, images or [])
        with metering() as meter:
            try:
                answer = await self.knowledge_bases.stream(tenant, replace(spec, images=names))
            except BaseException:
                await record_usage(self.usage, tenant, meter)
                await remove_query_images(self.settings, names)
                raise
        return StreamedAnswer(answer.references, self._closing(tenant, answer.pieces, names, meter))

    async def _closing(
        self, tenant: str, pieces: AnswerStream, names: tuple[str, ...], meter: UsageMeter
    ) -> AnswerStream:
        try:
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()
            await record_usage(self.usage, tenant, meter)
            if names:
                await remove_query_images(self.settings, names)

    async def _check_budget(self, tenant: str) -> None:
        if self.usage is not None:
            await self.usage.check(tenant)

    async def query_data(self, tenant: str, spec: QuerySpec) -> RetrievedData:
        """What retrieval finds for the question (entities, relationships, chunks), no answer."""
        check_query(self.settings, spec)
        await self._check_budget(tenant)
        with metering() as meter:
            try:
                return await self.knowledge_bases.retrieve(tenant, spec)
            finally:
                await record_usage(self.usage, tenant, meter)
