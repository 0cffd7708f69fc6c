"""Embedding micro-batching: concurrent embedding requests share one provider call.

LightRAG embeds entities and relations one text per call while it merges a document (a dozen
calls for a one-chunk document). ``EmbeddingBatcher`` holds the first request of a batch for
``EMBEDDING_BATCH_WAIT_MS`` so that requests arriving meanwhile join it, then sends one call of
up to ``EMBEDDING_BATCH_SIZE`` texts (through the embedding scheduler, at the highest priority of
its callers) and hands every caller its own rows. It wraps the provider function of any
``EmbeddingFunc`` (OpenAI-compatible, ONNX, hash) alike. Requests with different keyword
arguments (e.g. the asymmetric ``context="query"`` / ``"document"``) are never mixed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from src.core.metrics import PROVIDER_BATCHED_REQUESTS, PROVIDER_CALLS, PROVIDER_TEXTS
from src.rag.usage import UsageMeter, current_meter, metering

from .lightrag_compat import LIMITER_KWARGS
from .scheduler import CallContext, CallScheduler, call_context, current_call_context

EmbedFn = Callable[..., Awaitable[np.ndarray]]


class _Segment:
    __slots__ = ("texts", "future", "ctx", "meter")

    def __init__(self, texts: list[str], future: asyncio.Future[np.ndarray], ctx: CallContext) -> None:
        #: The usage meter of the caller's work: a shared batch's tokens are split among its callers.
        self.meter = current_meter()
        self.texts = texts
        self.future = future
        self.ctx = ctx


class _Pending:
    __slots__ = ("kwargs", "segments", "count", "chars", "timer")

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.segments: list[_Segment] = []
        self.count = 0
        self.chars = 0
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None


def _kwargs_key(kwargs: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


class EmbeddingBatcher:
    """Callable ``(texts, **kwargs) -> ndarray`` that coalesces concurrent calls of ``func``.

    An error of a batch call reaches every caller of that batch. A caller cancelled while its texts
    wait is dropped from the batch (also after the batch was formed, until the scheduler admits it);
    a batch all of whose callers were cancelled leaves the scheduler's queue at once, so a cancelled
    document's hundreds of batches do not hold the provider for the documents after it.
    """

    def __init__(
        self,
        func: EmbedFn,
        *,
        max_batch: int = 32,
        wait_ms: float = 20.0,
        scheduler: CallScheduler | None = None,
        provider: str = "embedding",
        max_chars: int | None = None,
        bulk_scheduler: CallScheduler | None = None,
    ) -> None:
        self.func = func
        self.max_batch = max(1, int(max_batch))
        #: Characters per provider call (a text longer than that goes alone), for a provider whose
        #: call time grows with its input and that runs one call at a time (e5 in this process):
        #: a call of 32 chunks held it for half a minute, and every other document waited behind it.
        self.max_chars = max(1, int(max_chars)) if max_chars else None
        self.wait = max(0.0, float(wait_ms)) / 1000.0
        self.scheduler = scheduler
        #: Set for a provider with a background lane (e5): bulk work (``CallContext.bulk``) is
        #: batched apart and admitted here, so it never holds a slot the other callers wait for.
        self.bulk_scheduler = bulk_scheduler
        self.provider = provider
        self._pending: dict[tuple[tuple[str, str], ...], _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests received, provider calls made and texts sent (also in the prometheus counters).
        self.requests = 0
        self.calls = 0
        self.texts = 0

    async def __call__(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        for name in LIMITER_KWARGS:
            kwargs.pop(name, None)
        texts = list(texts)
        self.requests += 1
        PROVIDER_BATCHED_REQUESTS.inc()
        if not texts:
            return await self.func(texts, **kwargs)
        loop = asyncio.get_running_loop()
        ctx = current_call_context()
        segments = []
        for piece in self._pieces(texts):
            segment = _Segment(piece, loop.create_future(), ctx)
            self._add(segment, kwargs)
            segments.append(segment)
        results = await asyncio.gather(*(s.future for s in segments), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0] if len(results) == 1 else np.concatenate(results, axis=0)

    def _pieces(self, texts: list[str]) -> list[list[str]]:
        """The caller's texts in runs of at most ``max_batch`` texts (and ``max_chars``)."""
        if self.max_chars is None:
            return [texts[i : i + self.max_batch] for i in range(0, len(texts), self.max_batch)]
        pieces: list[list[str]] = []
        current: list[str] = []
        chars = 0
        for text in texts:
            n = len(text)
            if current and (len(current) >= self.max_batch or chars + n > self.max_chars):
                pieces.append(current)
                current, chars = [], 0
            current.append(text)
            chars += n
        pieces.append(current)
        return pieces

    def _full(self, count: int, chars: int) -> bool:
        return count >= self.max_batch or (self.max_chars is not None and chars >= self.max_chars)

    def _add(self, segment: _Segment, kwargs: dict[str, Any]) -> None:
        key = _kwargs_key(kwargs)
        if self.bulk_scheduler is not None and segment.ctx.bulk:
            key = (*key, ("", "bulk"))  # never in one call with the others' texts
        pending = self._pending.get(key)
        chars = sum(len(t) for t in segment.texts)
        if pending is not None and (
            pending.count + len(segment.texts) > self.max_batch
            or (self.max_chars is not None and pending.chars + chars > self.max_chars)
        ):
            self._flush(key)
            pending = None
        if pending is None:
            pending = self._pending[key] = _Pending(dict(kwargs))
        pending.segments.append(segment)
        pending.count += len(segment.texts)
        pending.chars += chars
        if self._full(pending.count, pending.chars):
            self._flush(key)
        elif pending.timer is None:
            loop = asyncio.get_running_loop()
            # wait 0: still let callers of the same loop iteration join (asyncio.gather of many).
            if self.wait:
                pending.timer = loop.call_later(self.wait, self._flush, key)
            else:
                pending.timer = loop.call_soon(self._flush, key)

    def _flush(self, key: tuple[tuple[str, str], ...]) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        live = [s for s in pending.segments if not s.future.done()]
        if not live:
            return
        task = asyncio.get_running_loop().create_task(self._send(live, pending.kwargs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def abandoned(_: asyncio.Future[np.ndarray]) -> None:
            # Every caller of the batch gave up (a cancelled document): leave the scheduler's queue,
            # or stop waiting for a call in flight. Its segments' futures are set only by the task.
            if not task.done() and all(s.future.done() for s in live):
                task.cancel()

        for segment in live:
            segment.future.add_done_callback(abandoned)

    async def _send(self, segments: list[_Segment], kwargs: dict[str, Any]) -> None:
        texts = [t for s in segments for t in s.texts]
        # The batch runs at the most urgent of its callers' ranks, for that caller's tenant.
        lead = max(segments, key=lambda s: s.ctx.rank)
        bulk = self.bulk_scheduler is not None and lead.ctx.bulk  # a bulk batch holds only bulk work

        async def call_live() -> np.ndarray:
            # Admitted at last: embed only the texts of callers still waiting.
            nonlocal segments, texts
            segments = [s for s in segments if not s.future.done()]
            texts = [t for s in segments for t in s.texts]
            return await self._call(texts, kwargs) if texts else np.empty((0, 0))

        try:
            with (
                call_context(
                    priority=lead.ctx.priority,
                    tenant=lead.ctx.tenant,
                    merging=lead.ctx.merging,
                    flow=lead.ctx.flow,
                    bulk=bulk,
                ),
                metering() as spent,
            ):
                scheduler = self.bulk_scheduler if bulk else self.scheduler
                if scheduler is not None:
                    result = await scheduler.run(call_live)
                else:
                    result = await call_live()
            _share_usage(spent, segments)
            if not texts:
                return
            rows = np.asarray(result)
            if rows.ndim != 2 or rows.shape[0] != len(texts):
                raise ValueError(
                    f"embedding provider returned {rows.shape} for a batch of {len(texts)} texts"
                )
        except asyncio.CancelledError:
            for s in segments:
                if not s.future.done():
                    s.future.cancel()
            raise
        except Exception as exc:
            for s in segments:
                if not s.future.done():
                    s.future.set_exception(exc)
            return
        offset = 0
        for s in segments:
            if not s.future.done():
                s.future.set_result(rows[offset : offset + len(s.texts)])
            offset += len(s.texts)

    async def _call(self, texts: list[str], kwargs: dict[str, Any]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        PROVIDER_CALLS.labels(self.provider).inc()
        PROVIDER_TEXTS.labels(self.provider).inc(len(texts))
        return await self.func(texts, **kwargs)

    async def aclose(self) -> None:
        """Send what is pending and wait for batches in flight (call before the loop closes)."""
        for key in list(self._pending):
            self._flush(key)
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingBatcher:
        return self  # LightRAG's asdict() deep-copies the embedding function: share the batcher


def _share_usage(spent: UsageMeter, segments: list[_Segment]) -> None:
    """The embedding tokens of one batch, split among its callers' meters by their share of its
    characters (the remainder to the last, so the shares add up to what the provider reported)."""
    if not spent.embedding_tokens and not spent.embedding_calls:
        return
    chars: dict[int, int] = {}
    meters: dict[int, UsageMeter] = {}
    for s in segments:
        if s.meter is not None:
            meters[id(s.meter)] = s.meter
            chars[id(s.meter)] = chars.get(id(s.meter), 0) + sum(len(t) for t in s.texts)
    total = sum(len(t) for s in segments for t in s.texts) or 1
    every_caller_metered = all(s.meter is not None for s in segments)
    given = 0
    owners = list(meters)
    for i, key in enumerate(owners):
        if every_caller_metered and i == len(owners) - 1:
            share = spent.embedding_tokens - given
        else:
            share = spent.embedding_tokens * chars[key] // total
        given += share
        meters[key].embedding_tokens += share
        meters[key].embedding_calls += spent.embedding_calls
