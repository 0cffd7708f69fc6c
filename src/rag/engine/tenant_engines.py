"""One LightRAG knowledge base per tenant, created on first use, cached, evicted when idle.

Each tenant gets its own LightRAG workspace (graph, vectors, doc status under
DATA_DIR/rag/<workspace>) and its own document indexer. Instances are
expensive (storages in memory), so at most MAX_CACHED_TENANTS stay loaded; an engine is only
evicted when nothing uses it (no running task, no query in flight) and its storages are
finalized (flushed to disk) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lightrag import LightRAG

from src.core.config import Settings
from src.core.metrics import Metrics
from src.core.waiting import raise_if_cancel_swallowed
from src.rag.engine.indexer import DocumentIndexer
from src.rag.engine.ingestor import DocumentIngestor
from src.rag.engine.modal import ModalDescriber
from src.rag.engine.scope import GraphLocks
from src.rag.errors import KnowledgeBaseUnavailable, WorkspaceOwnedElsewhere
from src.rag.knowledge import workspace_of
from src.rag.storage.fence import fence_llm, is_guest, writing_into

log = logging.getLogger(__name__)


@dataclass
class TenantEngine:
    tenant: str
    rag: LightRAG
    rag_anything: Any
    indexer: DocumentIndexer
    ingestor: DocumentIngestor
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)

    async def close(self) -> None:
        await self.ingestor.close()  # in-flight documents stop here and resume on a later attempt
        # Closes RAG-Anything's parse cache and, with it, LightRAG's storages.
        await self.rag_anything.finalize_storages()


class TenantEngines:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        max_cached: int,
        idle_seconds: float,
        owns: Callable[[str], bool] = lambda tenant: True,
        acquire: Callable[[str], Awaitable[bool]] | None = None,
        graph_locks: Callable[[str], GraphLocks] | None = None,
        write_guard: Callable[[str, bool], Callable[[], bool] | None] | None = None,
        may_guest: Callable[[str], bool] | None = None,
    ):
        self.settings = settings
        #: Whether this instance owns a tenant's workspace (src/ingestion/ownership.py): only the
        #: owner indexes and deletes documents there when several instances share the storages.
        self.owns = owns
        self._acquire_owner = acquire
        #: A workspace's cross-instance merge/deletion locks (several instances index it), or None.
        self._graph_locks = graph_locks
        #: What a task writing into a workspace must keep holding (tenant, guest?) -> guard, or None.
        self._write_guard = write_guard
        #: Whether a guest task may write into a tenant's workspace now (its lock session is up).
        self._may_guest = may_guest
        self.metrics = metrics
        self.max_cached = max_cached
        self.idle_seconds = idle_seconds
        self._engines: dict[str, TenantEngine] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None

    def workspace_for(self, tenant: str) -> str:
        return workspace_of(self.settings.workspace, tenant)

    @contextlib.asynccontextmanager
    async def use(self, tenant: str) -> AsyncIterator[TenantEngine]:
        """Borrow a tenant's engine; it cannot be evicted while borrowed."""
        engine = await self.acquire(tenant)
        try:
            yield engine
        finally:
            self.release(engine)

    async def acquire(self, tenant: str) -> TenantEngine:
        """Like `use`, for borrows that outlive a block (a streamed answer); pair with `release`."""
        engine = await self._get(tenant)
        engine.users += 1
        return engine

    def release(self, engine: TenantEngine) -> None:
        engine.users -= 1
        engine.last_used = time.monotonic()

    def loaded(self) -> list[str]:
        return sorted(self._engines)

    async def _get(self, tenant: str) -> TenantEngine:
        engine = self._engines.get(tenant)
        if engine is not None:
            engine.last_used = time.monotonic()
            return engine
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            engine = self._engines.get(tenant)
            if engine is None:
                engine = await self._build(tenant)
                self._engines[tenant] = engine
                await self._evict_over_capacity()
            return engine

    def vision(self) -> Any:
        """The process's vision model (one client for every knowledge base), or None."""
        if not hasattr(self, "_vision_func"):
            from src.rag.llm.vision import build_vision_func

            self._vision_func = build_vision_func(self.settings)
        return self._vision_func

    async def _build(self, tenant: str) -> TenantEngine:
        from src.rag.builder import build_lightrag
        from src.rag.embedding_signature import EmbeddingMismatchError
        from src.rag.parsers import build_raganything
        from src.rag.storage.embedded import commit_for

        owns = self.owns

        def wrap(llm: Callable[..., Any]) -> Callable[..., Any]:
            # Outermost: an owner that was stalled and resumes makes no more ingestion LLM calls once
            # its ownership is in doubt, even before the loss is handled (queries are not fenced).
            return fence_llm(self.metrics.wrap_llm(llm), lambda: owns(tenant))

        try:
            rag = await build_lightrag(self.settings, workspace=self.workspace_for(tenant), llm_wrapper=wrap)
        except EmbeddingMismatchError as exc:
            raise KnowledgeBaseUnavailable(str(exc)) from exc
        vision = self.vision()
        fenced_vision = None if vision is None else fence_llm(vision, lambda: owns(tenant))
        rag_anything = build_raganything(rag, self.settings, fenced_vision)
        # A document counts as indexed once the group commit that includes it is on disk.
        indexer = DocumentIndexer(
            rag,
            flush=commit_for(rag),
            chunk_memory_bytes=self.settings.parse_memory_bytes,
            graph_locks=None if self._graph_locks is None else self._graph_locks(rag.workspace),
        )
        describer = ModalDescriber(
            rag,
            rag_anything,
            vision_func=fenced_vision,
            llm_is_model=self.settings.resolved_llm_provider != "offline",
        )
        ingestor = DocumentIngestor(rag, rag_anything, indexer, describer)
        log.info("knowledge base of tenant %s loaded (workspace %s)", tenant, rag.workspace)
        return TenantEngine(tenant, rag, rag_anything, indexer, ingestor)

    @contextlib.asynccontextmanager
    async def use_for_ingestion(self, tenant: str) -> AsyncIterator[TenantEngine]:
        """Borrow an engine to write into its workspace (index, purge): this instance must own the
        workspace, and takes it if nobody does; or the task is a guest's (`fence.as_guest`: a
        document claimed in a workspace another instance owns), whose lock session must be up."""
        guest = is_guest() and not self.owns(tenant)
        if guest:
            if self._may_guest is None or not self._may_guest(tenant):
                raise WorkspaceOwnedElsewhere(f"no lock session for guest work on tenant {tenant}")
        elif not self.owns(tenant):
            if self._acquire_owner is None or not await self._acquire_owner(tenant):
                raise WorkspaceOwnedElsewhere(
                    f"another instance is ingesting into the knowledge base of tenant {tenant}; retry later"
                )
        guard = None if self._write_guard is None else self._write_guard(tenant, guest)
        async with self.use(tenant) as engine:
            with writing_into(engine.rag.workspace, guard):
                yield engine

    def may_write(self, tenant: str) -> bool:
        """Is the current ingestion task still allowed to write (owner, or a guest whose session
        lives)? Used to tell a lost workspace from a failed document."""
        if is_guest():
            return self._may_guest is not None and self._may_guest(tenant)
        return self.owns(tenant)

    async def stop_ingestion(self, tenant: str) -> None:
        """This instance no longer owns the tenant's workspace: stop its documents' indexing now and
        unload the engine, so nothing of ours writes there again (queries load a fresh one)."""
        engine = self._engines.pop(tenant, None)
        if engine is None:
            return
        await engine.indexer.close()
        log.warning("stopped ingestion into the knowledge base of tenant %s (no longer its owner)", tenant)
        for _ in range(300):  # queries in flight may finish first (they only read)
            if engine.users <= 0:
                break
            await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):
            await engine.close()

    async def _evict_over_capacity(self) -> None:
        idle = sorted((e for e in self._engines.values() if e.users == 0), key=lambda e: e.last_used)
        while len(self._engines) > self.max_cached and idle:
            await self._evict(idle.pop(0))

    async def evict_idle(self) -> None:
        now = time.monotonic()
        for engine in list(self._engines.values()):
            if engine.users == 0 and now - engine.last_used > self.idle_seconds:
                await self._evict(engine)

    async def _evict(self, engine: TenantEngine) -> None:
        self._engines.pop(engine.tenant, None)
        await engine.close()
        log.info("knowledge base of tenant %s unloaded (idle)", engine.tenant)

    def start_reaper(self, interval: float = 30.0) -> None:
        async def reap() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.evict_idle()
                except Exception:
                    log.exception("evicting idle knowledge bases failed")
                raise_if_cancel_swallowed()  # by a storage's close: close() would wait for good

        self._reaper = asyncio.create_task(reap(), name="tenant-engine-reaper")

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for engine in list(self._engines.values()):
            self._engines.pop(engine.tenant, None)
            await engine.close()
