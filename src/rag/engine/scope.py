"""What the indexer owns while one document runs: its scope (private pipeline status, cancellable
LLM function), the graph wrapper that sees the merge's upserts, and the workspace's merge/delete gate.

Why a document's own pipeline status and LLM function: LightRAG checks ``cancellation_requested`` in
the status dict it is given at each chunk, entity and relation, and calls the LLM function of its
``global_config``; a private pair per document stops exactly that document, with no prompt matching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from src.rag.lightrag_compat import new_pipeline_status

log = logging.getLogger(__name__)

#: How long a cancelled document may take to unwind a stage before we stop waiting for it.
UNWIND_SECONDS = 60.0


class DocumentCancelledError(Exception):
    """Raised inside a cancelled document's LLM calls, so LightRAG unwinds its own stage tasks."""


class DocumentScope:
    """One document's private LightRAG pipeline status, lock and cancellable LLM function."""

    def __init__(self, doc_id: str, llm_func: Callable[..., Any]):
        self.doc_id = doc_id
        self.status: dict[str, Any] = new_pipeline_status()
        self.lock = asyncio.Lock()
        self.stopped = False
        #: Called by stop(): e.g. leave the merge queue.
        self.on_stop: list[Callable[[], None]] = []
        self._inflight: set[asyncio.Task] = set()
        self._aborted: set[asyncio.Task] = set()
        self._llm = llm_func

    async def llm(self, *args: Any, **kwargs: Any) -> Any:
        return await self.call(self._llm, *args, **kwargs)

    async def call(self, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``func`` as one of this document's calls: refused once stopped, aborted by `stop`."""
        if self.stopped:
            raise DocumentCancelledError(f"document {self.doc_id} was stopped")
        me = asyncio.current_task()
        if me is None:
            return await func(*args, **kwargs)
        self._inflight.add(me)
        try:
            return await func(*args, **kwargs)
        except asyncio.CancelledError:
            if me in self._aborted and me.uncancel() == 0:
                raise DocumentCancelledError(f"document {self.doc_id} was stopped") from None
            raise
        finally:
            self._inflight.discard(me)
            self._aborted.discard(me)

    def stop(self) -> None:
        """Ask LightRAG's stage code to stop: flag for new work, abort LLM calls in flight."""
        self.stopped = True
        self.status["cancellation_requested"] = True
        for task in list(self._inflight):
            if task not in self._aborted and not task.done():
                self._aborted.add(task)
                task.cancel()
        for callback in self.on_stop:
            callback()


class ScopedVectors:
    """A vector storage whose upserts are calls of a document's scope (embeddings, then the rows).

    Why: a merge embeds the entities and relations it writes, and LightRAG checks its cancellation
    flag only between them; a cancelled document whose merge waited for an embedding provider that
    is slow or hung did not unwind until the call returned (the indexer gave up after
    ``UNWIND_SECONDS``), and its purge and `cancelled` waited as long. Aborted, the upsert raises
    `DocumentCancelledError` (LightRAG retries it, is refused at once, and fails the merge)."""

    def __init__(self, storage: Any, scope: DocumentScope):
        self._storage = storage
        self._scope = scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        await self._scope.call(self._storage.upsert, data)


class ObservedGraph:
    """Passes everything to the graph storage; sees the upserts of the merge phase (progress, and
    a group's per-document bookkeeping: which nodes it found missing and then created)."""

    def __init__(self, graph: Any, on_node: Callable[[str], None], on_edge: Callable[[str, str], None]):
        self._storage = graph
        self._on_node = on_node
        self._on_edge = on_edge
        self.missing: set[str] = set()
        self.upserted_nodes: set[str] = set()
        self.upserted_edges: set[tuple[str, str]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get_node(self, node_id: str) -> Any:
        node = await self._storage.get_node(node_id)
        if node is None:
            self.missing.add(node_id)
        return node

    async def upsert_node(self, node_id: str, node_data: dict[str, Any]) -> None:
        await self._storage.upsert_node(node_id, node_data)
        self.upserted_nodes.add(node_id)
        self._on_node(node_id)

    async def upsert_edge(self, source: str, target: str, edge_data: dict[str, Any]) -> None:
        await self._storage.upsert_edge(source, target, edge_data)
        self.upserted_edges.add((source, target) if source <= target else (target, source))
        self._on_edge(source, target)


class GraphLocks(Protocol):
    """The same rules as `GraphGate` across instances (src/ingestion/graph_locks.py): merges of one
    entity one at a time, a deletion alone against every merge."""

    def merging(self, names: Iterable[str]) -> contextlib.AbstractAsyncContextManager[None]: ...

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class NoGraphLocks:
    """One instance per workspace (embedded storages): the process-local gate is all there is."""

    @contextlib.asynccontextmanager
    async def merging(self, names: Iterable[str]) -> AsyncIterator[None]:
        yield

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        yield


class GraphGate:
    """Shared for merges, exclusive for deletes (writer preference), per workspace; with
    ``remote`` locks an exclusive hold also excludes every other instance's merges (taken after the
    local hold, so this process's merges are out of the way first)."""

    def __init__(self, remote: GraphLocks | None = None) -> None:
        self.remote: GraphLocks = remote or NoGraphLocks()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._wait_until(lambda: not self._writer and not self._writers_waiting)
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._wake()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            await self._wait_until(lambda: not self._writer and self._readers == 0)
        finally:
            self._writers_waiting -= 1
        self._writer = True
        try:
            async with self.remote.exclusive():
                yield
        finally:
            self._writer = False
            self._wake()


async def wait_out(task: asyncio.Task, limit: float) -> None:
    """Wait for ``task`` to end even if we are cancelled meanwhile (bounded by ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not task.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.error("a stopped document stage did not unwind in %.0f s; cancelling it", limit)
            task.cancel()
            break
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=remaining)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the caller reports the cancellation, not this


_background: set[asyncio.Task] = set()


def fire(report: Callable[[], Awaitable[None]]) -> None:
    """Report from a synchronous hook without blocking LightRAG's merge task."""
    task = asyncio.ensure_future(report())
    _background.add(task)
    task.add_done_callback(_background.discard)


class CoalescedReport:
    """A synchronous hook that schedules ``report`` unless one is already scheduled.

    Why: LightRAG's merge calls the graph hooks once per merged entity and relation of each
    document (hundreds per document, thousands per merge group), all in one burst; a task per call
    was a burst of ready callbacks that held up the event loop (uploads, polls) for tens of
    milliseconds. The report reads the counts when it runs, so one pending report carries every
    change made before it starts; a change made while it runs schedules the next one."""

    def __init__(self, report: Callable[[], Awaitable[None]]) -> None:
        self._report = report
        self._scheduled = False

    def __call__(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            fire(self._run)

    async def _run(self) -> None:
        self._scheduled = False
        await self._report()
