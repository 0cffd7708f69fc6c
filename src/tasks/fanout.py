"""One task-change fan-out per process for the event streams (SSE).

Why: a stream that polls Redis costs connections x time, so a few hundred open dashboards would
keep a server busy doing nothing. Instead the task store publishes a small notice (the task id) on a Redis
pub/sub channel after every task write (`TaskStore.events_channel`), from whichever instance made
it. Each process runs one subscriber here: per notice it reads the task record once and pushes it
to the local streams of that tenant (and of that task). Cost grows with events, not connections.

Each stream has a bounded queue: a client that falls `queue_size` changes behind is dropped (its
stream ends; EventSource reconnects with Last-Event-ID and gets the current state) instead of
being buffered forever. When the subscription to Redis breaks (Redis restarted), streams are told
to resynchronise (`RESYNC`) because notices may have been missed meanwhile.

The same notices wake requests that wait for a task to end (`wait_final`, behind ``POST
/insert?wait=`` and the queries an api-role instance delegates to the workers): a waiter costs one
record read per change of *its* task, plus a bounded fallback re-read every `recheck_seconds` in
case a notice was lost. At most `max_waiters` wait per process; beyond that `wait_final` returns
at once (the caller answers 202 as without a wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from src.core.waiting import raise_if_cancel_swallowed, wait_event
from src.tasks.models import TaskRecord
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Notices may have been missed: re-read the state. GONE: the watched task's record is gone.
#: CLOSED: the stream must end (client too slow, or the service is stopping).
RESYNC: Final = _Signal("RESYNC")
GONE: Final = _Signal("GONE")
CLOSED: Final = _Signal("CLOSED")

Item = TaskRecord | _Signal


class TooManyStreams(Exception):
    """The tenant already has the maximum number of open streams in this process."""


class Subscription:
    """One stream's view of the fan-out: iterate to get changed records and signals."""

    def __init__(self, hub: TaskEventHub, tenant: str, task_id: str | None, size: int) -> None:
        self.hub = hub
        self.tenant = tenant
        self.task_id = task_id
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=size)
        self.dropped = False

    def offer(self, item: Item) -> None:
        """Non-blocking: a full queue drops the subscriber (never blocks the fan-out)."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(CLOSED)
            log.info("event stream of tenant %s dropped: client too slow", self.tenant)

    async def next(self) -> Item | None:
        """The next change or signal; None once the stream must end."""
        item = await self.queue.get()
        if item is CLOSED:
            self.queue.put_nowait(CLOSED)  # stays closed
            return None
        return item

    async def __aiter__(self) -> AsyncIterator[Item]:
        while (item := await self.next()) is not None:
            yield item

    def close(self) -> None:
        self.hub._remove(self)


class TaskEventHub:
    """Subscribes once to the store's change channel and feeds every local stream."""

    def __init__(
        self,
        store: TaskStore,
        *,
        max_per_tenant: int,
        queue_size: int,
        reconnect_seconds: float = 0.5,
        max_waiters: int = 256,
        recheck_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.redis: aioredis.Redis = store.redis
        self.max_per_tenant = max_per_tenant
        self.queue_size = queue_size
        self.reconnect_seconds = reconnect_seconds
        self._by_tenant: dict[str, set[Subscription]] = defaultdict(set)
        self._by_task: dict[str, set[Subscription]] = defaultdict(set)
        self._tenant_wide = 0  # open streams of every task of a tenant (GET /events)
        self._listener: asyncio.Task | None = None
        #: Set once the first subscription to Redis is active (tests and start-up wait for it).
        self.ready = asyncio.Event()
        self.notices = 0  # notices received (for tests and logs)
        self.max_waiters = max_waiters
        self.recheck_seconds = recheck_seconds
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.waiting = 0  # requests waiting in `wait_final` now
        self.waits_refused = 0  # waits answered at once because `max_waiters` were waiting
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="task-event-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), 5.0)  # Redis down: streams resync later

    async def stop(self) -> None:
        self._stopping = True
        self._wake_all()
        for subs in list(self._by_tenant.values()):
            for sub in list(subs):
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(CLOSED)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._listener, 5.0)

    # ----------------------------------------------------------------- subscribers
    def subscribe(self, tenant: str, task_id: str | None = None) -> Subscription:
        subs = self._by_tenant[tenant]
        if len(subs) >= self.max_per_tenant:
            raise TooManyStreams(tenant)
        sub = Subscription(self, tenant, task_id, self.queue_size)
        subs.add(sub)
        if task_id is not None:
            self._by_task[task_id].add(sub)
        else:
            self._tenant_wide += 1
        return sub

    def open_streams(self, tenant: str) -> int:
        return len(self._by_tenant.get(tenant, ()))

    def _remove(self, sub: Subscription) -> None:
        if sub.task_id is None and sub in self._by_tenant.get(sub.tenant, ()):
            self._tenant_wide -= 1
        for index, key in ((self._by_tenant, sub.tenant), (self._by_task, sub.task_id)):
            if key is None:
                continue
            subs = index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[key]

    # ----------------------------------------------------------------- waiters
    async def wait_final(self, task_id: str, seconds: float, *, bounded: bool = True) -> TaskRecord | None:
        """The task's record once it is final, if that happens within ``seconds``; else
        None (also at once when the service stops, or when `max_waiters` already wait here and
        ``bounded``: a waiter whose task is bounded elsewhere, e.g. by the query lane's own limits,
        passes False).

        Waiting never changes the task: a caller that gives up (timeout, client gone, cancelled)
        leaves it running."""
        if (bounded and self.waiting >= self.max_waiters) or self._stopping:
            self.waits_refused += 1
            return None
        wake = asyncio.Event()
        self._waiters[task_id].add(wake)
        self.waiting += 1
        try:
            async with asyncio.timeout(seconds):
                while not self._stopping:
                    # Cleared *before* the read: a notice arriving after the read sets it again, so
                    # no change between the read and the wait is lost.
                    wake.clear()
                    record = await self.store.get(task_id)
                    raise_if_cancel_swallowed()
                    if record is None or record.status.is_final:
                        return record
                    await wait_event(wake, self.recheck_seconds)  # then re-read: a lost notice
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1
            wakes = self._waiters.get(task_id)
            if wakes is not None:
                wakes.discard(wake)
                if not wakes:
                    del self._waiters[task_id]
        return None

    def _wake(self, task_id: str) -> None:
        for wake in self._waiters.get(task_id, ()):
            wake.set()

    def _wake_all(self) -> None:
        for wakes in self._waiters.values():
            for wake in wakes:
                wake.set()

    # ----------------------------------------------------------------- the one reader
    async def _listen(self) -> None:
        first = True
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.events_channel)
                # redis-py reconnects and resubscribes a pub/sub connection by itself: notices sent
                # while it was away are lost, so every reconnection is a RESYNC too.
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._on_reconnect)
                self.ready.set()
                if not first:
                    self._broadcast(RESYNC)  # notices sent while we were away are lost
                first = False
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self.notices += 1
                        await self._dispatch(_text(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("task event subscription lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(self.reconnect_seconds)
            finally:
                # Bounded: after redis-py re-established the connection by itself, aclose() can
                # wait forever on the lock of the cancelled read.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 2.0)

    def _on_reconnect(self, connection: object) -> None:
        if self._stopping:
            return  # redis-py reconnects a pub/sub whose read was cancelled: not news at shutdown
        log.info("task event subscription re-established; streams resynchronise")
        self._broadcast(RESYNC)

    async def _dispatch(self, task_id: str) -> None:
        self._wake(task_id)  # a waiter reads the record itself (only its own task's changes)
        if not self._tenant_wide and task_id not in self._by_task:
            return  # nobody here listens to this task: no read at all
        record = await self.store.get(task_id)
        if record is None:
            for sub in list(self._by_task.get(task_id, ())):
                sub.offer(GONE)
            return
        for sub in list(self._by_tenant.get(record.tenant, ())):
            if sub.task_id is None or sub.task_id == task_id:
                sub.offer(record)

    def _broadcast(self, item: Item) -> None:
        self._wake_all()  # notices may have been missed: waiters re-read too
        for subs in list(self._by_tenant.values()):
            for sub in list(subs):
                sub.offer(item)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
