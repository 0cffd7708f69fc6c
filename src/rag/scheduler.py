"""Admission of provider calls (LLM, embeddings) by task priority, tenant fairness and age.

One ``CallScheduler`` per provider bounds the calls in flight in this process (``LLM_MAX_ASYNC``,
``EMBEDDING_MAX_ASYNC``). When a slot frees, the waiting call admitted next is the one with the
highest task priority (0-9, higher first); among equal priorities the tenant served least
recently goes first (round robin), within a tenant the flow (the document) served least recently,
and within a flow the oldest call. So a priority-9 document's calls overtake queued priority-1
calls, one tenant's flood does not starve another, and one big document's thousands of calls
(a 99 MB text is ~25,000 chunks, each embedded and extracted) do not starve the small documents
of its tenant: they take turns call by call.
Within one priority, calls made while merging (``merging=True``) go first: LightRAG holds its
keyed lock on an entity across the merge's summary and embedding calls, so a merge call queued
behind other documents' extraction calls stalls every document that merges the same entity.

A call's priority, tenant and flow travel in a ContextVar that the task sets once
(``with call_context(priority=7, tenant="acme"): ...``); tasks spawned inside copy it. That is
why the scheduled function must run in the caller's context: LightRAG's own limiter
(``priority_limit_async_func_call``) runs calls in long-lived worker tasks, so the builder installs
our function in place of LightRAG's wrapped one (see src/rag/builder.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from src.core.defaults import DEFAULT_PRIORITY, DEFAULT_TENANT, MAX_PRIORITY, MIN_PRIORITY
from src.core.metrics import PROVIDER_QUEUED, PROVIDER_RUNNING

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallContext:
    priority: int = DEFAULT_PRIORITY
    tenant: str = DEFAULT_TENANT
    #: Made inside a document's merge (under LightRAG's keyed locks): first within its priority.
    merging: bool = False
    #: What takes turns within a tenant (the document being indexed); "" for anything else.
    flow: str = ""
    #: A big document's bulk work (its chunk embeddings): a provider on this machine's own CPU (e5)
    #: runs it in a background lane (src/rag/e5_bulk_lane.py) through a scheduler of its own.
    bulk: bool = False

    @property
    def rank(self) -> int:
        """Admission class: the priority first, then merge calls before the rest."""
        return self.priority * 2 + int(self.merging)


_DEFAULT_CONTEXT = CallContext()
_CALL_CONTEXT: ContextVar[CallContext] = ContextVar(  # noqa: B039 - frozen dataclass, immutable
    "ragsvc_call_context", default=_DEFAULT_CONTEXT
)


def current_call_context() -> CallContext:
    return _CALL_CONTEXT.get()


@contextlib.contextmanager
def call_context(
    priority: int | None = None,
    tenant: str | None = None,
    merging: bool | None = None,
    flow: str | None = None,
    bulk: bool | None = None,
) -> Iterator[CallContext]:
    """Set the priority / tenant / merge flag / flow / bulk flag of every provider call made
    inside (and in tasks spawned inside)."""
    outer = _CALL_CONTEXT.get()
    ctx = CallContext(
        priority=outer.priority if priority is None else min(MAX_PRIORITY, max(MIN_PRIORITY, int(priority))),
        tenant=outer.tenant if tenant is None else str(tenant),
        merging=outer.merging if merging is None else bool(merging),
        flow=outer.flow if flow is None else str(flow),
        bulk=outer.bulk if bulk is None else bool(bulk),
    )
    token = _CALL_CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CALL_CONTEXT.reset(token)


class _Waiter:
    __slots__ = ("future", "priority", "tenant", "flow", "seq")

    def __init__(self, future: asyncio.Future[None], priority: int, tenant: str, flow: str, seq: int) -> None:
        self.future = future
        #: The admission class (CallContext.rank), not the bare task priority.
        self.priority = priority
        self.tenant = tenant
        self.flow = flow
        self.seq = seq


#: Flows whose last admission is remembered (per scheduler); the longest-unserved are forgotten
#: first, and a forgotten flow counts as never served.
MAX_REMEMBERED_FLOWS = 4096


class CallScheduler:
    """A counting semaphore whose waiters are admitted by (priority, tenant round robin, age).

    Cancellation is safe at every point: a waiter cancelled before admission leaves the queue; one
    cancelled after it was granted a slot (but before it resumed) hands the slot on; a running
    call's slot is released in ``finally``.
    """

    def __init__(self, limit: int, name: str = "provider") -> None:
        if limit < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.limit = int(limit)
        self.name = name
        self.active = 0
        #: rank (priority, then merging) -> tenant -> flow -> FIFO of waiters (empty containers are
        #: removed).
        self._queues: dict[int, dict[str, dict[str, deque[_Waiter]]]] = {}
        #: tenant -> admission counter value when it was last served (round robin).
        self._served: dict[str, int] = {}
        #: (tenant, flow) -> the same, for the round robin of flows within a tenant; oldest first.
        self._flow_served: dict[tuple[str, str], int] = {}
        self._admissions = itertools.count(1)
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Highest number of calls ever in flight at once (for tests and diagnostics).
        self.peak = 0
        #: Called when a call takes the last free slot or ends and leaves a slot idle: the task
        #: runner then looks again whether to lend a spare task slot (src/tasks/admission.py).
        self._listeners: list[Callable[[], None]] = []
        #: When every slot was last taken (monotonic).
        self._last_full = float("-inf")

    @property
    def waiting(self) -> int:
        return sum(
            len(q) for tenants in self._queues.values() for flows in tenants.values() for q in flows.values()
        )

    def full_within(self, seconds: float) -> bool:
        """Was every slot taken at some moment of the last ``seconds``? (The LLM is then what the
        running work waits for, not parsing or embeddings.)"""
        return self.active >= self.limit or time.monotonic() - self._last_full <= seconds

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever a call takes the last free slot, or ends and leaves a slot
        idle; returns its remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Process-wide schedulers outlive an event loop in tests: start clean on a new loop.
            self._loop = loop
            self.active = 0
            self._queues.clear()

    async def acquire(self) -> None:
        self._bind_loop()
        ctx = _CALL_CONTEXT.get()
        if self.active < self.limit and not self._queues:
            self._take()
            return
        assert self._loop is not None
        waiter = _Waiter(self._loop.create_future(), ctx.rank, ctx.tenant, ctx.flow, next(self._seq))
        flows = self._queues.setdefault(waiter.priority, {}).setdefault(waiter.tenant, {})
        flows.setdefault(waiter.flow, deque()).append(waiter)
        PROVIDER_QUEUED.labels(self.name).inc()
        self._dispatch()  # a free slot behind stale (cancelled) entries must not strand this call
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # granted a slot just before the cancel: hand it on
            else:
                self._remove(waiter)
            raise
        finally:
            PROVIDER_QUEUED.labels(self.name).dec()

    def _take(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= self.limit:
            self._last_full = time.monotonic()
            self._notify()
        PROVIDER_RUNNING.labels(self.name).inc()

    def release(self) -> None:
        self.active -= 1
        PROVIDER_RUNNING.labels(self.name).dec()
        self._dispatch()
        if self.active < self.limit and not self._queues:
            self._notify()

    def _notify(self) -> None:
        """Call the listeners; one that raises is dropped (e.g. a task runner of an event loop that
        is closed): its error must not reach the call being admitted or released, whose slot
        accounting would then be lost."""
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a %s scheduler listener failed; it is removed", self.name)
                self._listeners.remove(listener)

    def _remove(self, waiter: _Waiter) -> None:
        tenants = self._queues.get(waiter.priority)
        flows = tenants.get(waiter.tenant) if tenants else None
        queue = flows.get(waiter.flow) if flows else None
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        self._prune(waiter.priority, waiter.tenant, waiter.flow)

    def _prune(self, priority: int, tenant: str, flow: str) -> None:
        tenants = self._queues[priority]
        flows = tenants[tenant]
        if not flows[flow]:
            del flows[flow]
        if not flows:
            del tenants[tenant]
        if not tenants:
            del self._queues[priority]

    def _next_waiter(self) -> _Waiter | None:
        while self._queues:
            priority = max(self._queues)
            tenants = self._queues[priority]
            # Round robin: the tenant served longest ago (never served = 0); ties by age. Then the
            # same among that tenant's flows.
            tenant = min(
                tenants, key=lambda t: (self._served.get(t, 0), min(q[0].seq for q in tenants[t].values()))
            )
            flows = tenants[tenant]
            flow = min(flows, key=lambda f: (self._flow_served.get((tenant, f), 0), flows[f][0].seq))
            waiter = flows[flow].popleft()
            self._prune(priority, tenant, flow)
            if waiter.future.done():  # cancelled while queued; its own handler is running
                continue
            served = next(self._admissions)
            self._served[tenant] = served
            self._flow_served.pop((tenant, flow), None)  # re-inserted last: the dict stays oldest first
            self._flow_served[(tenant, flow)] = served
            if len(self._flow_served) > MAX_REMEMBERED_FLOWS:
                del self._flow_served[next(iter(self._flow_served))]
            return waiter
        return None

    def _dispatch(self) -> None:
        while self.active < self.limit:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._take()
            waiter.future.set_result(None)

    async def run(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` once admitted; the slot is held until it returns."""
        await self.acquire()
        try:
            return await func(*args, **kwargs)
        finally:
            self.release()


class ProviderSchedulers:
    """The LLM and embedding schedulers of this process (all tenants' knowledge bases share them)."""

    def __init__(self, llm_max_async: int, embedding_max_async: int) -> None:
        self.llm = CallScheduler(llm_max_async, "llm")
        self.embedding = CallScheduler(embedding_max_async, "embedding")
        #: Bulk embeddings of a provider with a background lane (e5): one call at a time there,
        #: never holding a slot of ``embedding``.
        self.embedding_bulk = CallScheduler(1, "embedding-bulk")


_SHARED: dict[tuple[int, int], ProviderSchedulers] = {}


def shared_schedulers(llm_max_async: int, embedding_max_async: int) -> ProviderSchedulers:
    """Process-wide schedulers for these bounds, so every knowledge base counts against one limit."""
    key = (int(llm_max_async), int(embedding_max_async))
    schedulers = _SHARED.get(key)
    if schedulers is None:
        schedulers = _SHARED[key] = ProviderSchedulers(*key)
    return schedulers
