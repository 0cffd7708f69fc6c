"""`KnowledgeBases` on the LightRAG instances of this process (`TenantEngines`).

Every role that runs tasks uses this, and so does an api-role instance whose storages are shared
(PostgreSQL): the knowledge base it loads sees what the workers write.

Writes (`index`, `purge`) need the tenant's workspace (`TenantEngines.use_for_ingestion`); reads
and answers only borrow an engine. Each write runs in a task of its own, started without
LightRAG's lock state (`lightrag_compat.in_own_task`), so a cancel that strands a lock marker
cannot break the purge that follows it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from src.core.defaults import DEFAULT_PRIORITY
from src.rag.doc_listing import list_documents
from src.rag.engine import graph_ops, image_questions, queries
from src.rag.engine.tenant_engines import TenantEngine, TenantEngines
from src.rag.engine.versions import is_version
from src.rag.errors import ProviderError
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
)
from src.rag.lightrag_compat import in_own_task
from src.rag.parsers import parse_limits
from src.rag.scheduler import call_context
from src.rag.storage.fence import OwnershipLost

log = logging.getLogger(__name__)


class LocalKnowledgeBases:
    def __init__(self, engines: TenantEngines) -> None:
        self.engines = engines

    def workspace_for(self, tenant: str) -> str:
        return self.engines.workspace_for(tenant)

    def loaded(self) -> list[str]:
        return self.engines.loaded()

    # ------------------------------------------------------------------ writes
    def check_writable(self) -> None:
        """Every instance with its own engines may write (ownership is checked per workspace)."""

    async def index(self, tenant: str, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """Every LLM and embedding call the document causes (also in the tasks the indexer spawns,
        which copy this context) is admitted at the request's priority, fairly among tenants and,
        within the tenant, among documents."""
        return await in_own_task(self._index(tenant, request, on_progress))

    async def _index(self, tenant: str, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        async with self.engines.use_for_ingestion(tenant) as engine:
            try:
                with call_context(priority=request.priority, tenant=tenant, flow=request.doc_id):
                    return await engine.ingestor.ingest(request, on_progress)
            except Exception as exc:
                if not self.engines.may_write(tenant):
                    # The workspace moved to another instance mid-way (this one was stalled): that is
                    # no failure of the document, and purging it now would delete the new owner's work.
                    raise OwnershipLost(f"lost the workspace of tenant {tenant} while indexing") from exc
                raise

    async def purge(self, tenant: str, doc_id: str, *, delete_llm_cache: bool = False) -> PurgeResult:
        return await in_own_task(self._purge(tenant, doc_id, delete_llm_cache))

    async def _purge(self, tenant: str, doc_id: str, delete_llm_cache: bool) -> PurgeResult:
        async with self.engines.use_for_ingestion(tenant) as engine:
            return await engine.ingestor.purge(doc_id, delete_llm_cache=delete_llm_cache)

    async def pre_extract(self, tenant: str, request: IndexRequest) -> int:
        return await in_own_task(self._pre_extract(tenant, request))

    async def _pre_extract(self, tenant: str, request: IndexRequest) -> int:
        async with self.engines.use(tenant) as engine:  # read borrow: nothing but the cache is written
            with call_context(priority=request.priority, tenant=tenant, flow=request.doc_id):
                return await engine.ingestor.pre_extract(request)

    async def abandon_replacement(self, tenant: str, doc_id: str, track_id: str) -> None:
        await in_own_task(self._abandon_replacement(tenant, doc_id, track_id))

    async def _abandon_replacement(self, tenant: str, doc_id: str, track_id: str) -> None:
        async with self.engines.use_for_ingestion(tenant) as engine:
            await engine.ingestor.abandon_replacement(doc_id, track_id)

    async def clear_cache(self, tenant: str) -> None:
        async with self.engines.use_for_ingestion(tenant) as engine:
            await engine.rag.aclear_cache()
            await engine.indexer.flush()

    # ------------------------------------------------------------------ the knowledge graph
    async def graph_labels(self, tenant: str, limit: int) -> list[str]:
        async with self.engines.use(tenant) as engine:
            return await graph_ops.labels(engine, limit)

    async def popular_labels(self, tenant: str, limit: int) -> list[str]:
        async with self.engines.use(tenant) as engine:
            return await graph_ops.popular(engine, limit)

    async def search_labels(self, tenant: str, query: str, limit: int) -> list[str]:
        async with self.engines.use(tenant) as engine:
            return await graph_ops.search(engine, query, limit)

    async def subgraph(self, tenant: str, label: str, max_depth: int, max_nodes: int) -> Subgraph:
        async with self.engines.use(tenant) as engine:
            return await graph_ops.subgraph(engine, label, max_depth, max_nodes)

    async def entity_exists(self, tenant: str, name: str) -> bool:
        async with self.engines.use(tenant) as engine:
            return await graph_ops.exists(engine, name)

    async def edit_graph(self, tenant: str, edit: GraphEdit) -> dict[str, Any]:
        return await in_own_task(self._edit_graph(tenant, edit))

    async def _edit_graph(self, tenant: str, edit: GraphEdit) -> dict[str, Any]:
        async with self.engines.use_for_ingestion(tenant) as engine:
            with call_context(tenant=tenant):
                return await graph_ops.edit(engine, edit)

    # ------------------------------------------------------------------ reads
    async def document(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        if is_version(doc_id):
            return None  # a re-index's internal record, not a document
        async with self.engines.use(tenant) as engine:
            stored = await engine.rag.doc_status.get_by_id(doc_id)
        return DocumentRecord.from_stored(doc_id, stored) if stored else None

    async def documents(
        self,
        tenant: str,
        status: DocumentStatus | None,
        limit: int,
        offset: int,
        order: DocumentOrder = NEWEST_FIRST,
    ) -> DocumentPage:
        async with self.engines.use(tenant) as engine:
            return await list_documents(engine.rag.doc_status, status, limit, offset, order)

    # ------------------------------------------------------------------ answers
    async def answer(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> QueryResult:
        return await in_own_task(self._answer(tenant, spec, priority))

    async def _answer(self, tenant: str, spec: QuerySpec, priority: int) -> QueryResult:
        async with self.engines.use(tenant) as engine:
            with call_context(priority=priority, tenant=tenant):
                if spec.images:
                    return await self._answer_with_images(engine, spec)
                return await queries.whole(engine.rag, spec)

    async def _answer_with_images(self, engine: TenantEngine, spec: QuerySpec) -> QueryResult:
        directory = self.engines.settings.query_images_dir
        paths = [directory / Path(name).name for name in spec.images]
        vision = self.engines.vision()
        return await image_questions.answer(engine.rag, spec, paths, vision=vision, limits=parse_limits())

    async def context(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> str:
        result = await self.answer(tenant, replace(spec, only_need_context=True), priority=priority)
        return result.response

    async def retrieve(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> RetrievedData:
        return await in_own_task(self._retrieve(tenant, spec, priority))

    async def _retrieve(self, tenant: str, spec: QuerySpec, priority: int) -> RetrievedData:
        async with self.engines.use(tenant) as engine:
            with call_context(priority=priority, tenant=tenant):
                return await queries.retrieve(engine.rag, spec)

    async def stream(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> StreamedAnswer:
        """The first piece is awaited here, before the caller commits to a 200 status line: LightRAG
        returns a lazy iterator, so a provider that refuses the request fails on the first read.
        The engine stays borrowed until the stream is closed, so it cannot be evicted mid-answer."""
        if spec.images:  # answered whole (pictures are described first), then sent as one piece
            whole = await self.answer(tenant, spec, priority=priority)
            return StreamedAnswer(whole.references, _prepend(whole.response, _no_pieces()))
        engine = await self.engines.acquire(tenant)
        try:
            with call_context(priority=priority, tenant=tenant):
                asked = await queries.ask(engine.rag, spec, stream=True)
        except BaseException:
            self.engines.release(engine)
            raise
        pieces = self._pieces(engine, asked.content, priority, tenant)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            return StreamedAnswer(asked.references, _no_pieces())
        except BaseException:
            await pieces.aclose()
            raise
        return StreamedAnswer(asked.references, _prepend(first, pieces))

    async def _pieces(
        self, engine: TenantEngine, answer: str | AsyncIterator[str], priority: int, tenant: str
    ) -> AnswerStream:
        try:
            if isinstance(answer, str):
                yield answer
                return
            while True:
                # Set and reset within one step: a generator must not leave a context var set
                # across a yield (its caller's context would change under it).
                with call_context(priority=priority, tenant=tenant):
                    try:
                        piece = await anext(answer)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        log.warning("streamed query failed: %s", exc)
                        raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
                if piece:
                    yield piece
        finally:
            self.engines.release(engine)


async def _no_pieces() -> AnswerStream:
    return
    yield  # an async generator that yields nothing


async def _prepend(first: str, rest: AnswerStream) -> AnswerStream:
    """``first`` then the rest of ``rest``; closing this closes ``rest`` (it holds the engine)."""
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()
