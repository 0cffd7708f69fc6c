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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from lightrag import LightRAG

from src.core.config import Settings
from src.core.metrics import Metrics
from src.ingestion.errors import KnowledgeBaseUnavailable
from src.ingestion.indexer import DocumentIndexer
from src.ingestion.ingestor import DocumentIngestor
from src.tenancy.tenants import DEFAULT_TENANT

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
    def __init__(self, settings: Settings, metrics: Metrics, *, max_cached: int, idle_seconds: float):
        self.settings = settings
        self.metrics = metrics
        self.max_cached = max_cached
        self.idle_seconds = idle_seconds
        self._engines: dict[str, TenantEngine] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None

    def workspace_for(self, tenant: str) -> str:
        if tenant == DEFAULT_TENANT:
            return self.settings.workspace
        return f"{self.settings.workspace}--{tenant}"

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

    async def _build(self, tenant: str) -> TenantEngine:
        from src.rag.builder import build_lightrag
        from src.rag.embedding_signature import EmbeddingMismatchError
        from src.rag.parsers import build_raganything
        from src.rag.storage.embedded import commit_for

        wrap: Callable[[Any], Any] = self.metrics.wrap_llm
        try:
            rag = await build_lightrag(self.settings, workspace=self.workspace_for(tenant), llm_wrapper=wrap)
        except EmbeddingMismatchError as exc:
            raise KnowledgeBaseUnavailable(str(exc)) from exc
        rag_anything = build_raganything(rag, self.settings)
        # A document counts as indexed once the group commit that includes it is on disk.
        indexer = DocumentIndexer(rag, flush=commit_for(rag))
        ingestor = DocumentIngestor(rag, rag_anything, indexer, self.settings.uploads_dir)
        log.info("knowledge base of tenant %s loaded (workspace %s)", tenant, rag.workspace)
        return TenantEngine(tenant, rag, rag_anything, indexer, ingestor)

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

        self._reaper = asyncio.create_task(reap(), name="tenant-engine-reaper")

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for engine in list(self._engines.values()):
            self._engines.pop(engine.tenant, None)
            await engine.close()

