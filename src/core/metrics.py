"""Prometheus metrics of one service instance (own registry, so tests can build many apps).

Counters and histograms are updated where things happen (runner, uploads, LLM wrapper);
gauges that describe shared state (tasks per status, queue depth) are read from Redis at
scrape time, so every instance reports the same truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from src.core.waiting import raise_if_cancel_swallowed

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TASK_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


#: Provider traffic is process-wide (the LLM and embedding schedulers and batchers are shared by
#: every knowledge base and outlive any one app), so it lives in its own registry that every
#: ``Metrics.render`` appends; benchmarks read calls and texts per document from it.
PROVIDER_REGISTRY = CollectorRegistry()
PROVIDER_CALLS = Counter(
    "ragsvc_provider_calls", "Calls sent to a model provider", ["provider"], registry=PROVIDER_REGISTRY
)
PROVIDER_TEXTS = Counter(
    "ragsvc_provider_texts", "Texts sent to an embedding provider", ["provider"], registry=PROVIDER_REGISTRY
)
PROVIDER_BATCHED_REQUESTS = Counter(
    "ragsvc_embedding_requests",
    "Embedding requests made by LightRAG before micro-batching",
    registry=PROVIDER_REGISTRY,
)
PROVIDER_QUEUED = Gauge(
    "ragsvc_provider_queued",
    "Provider calls waiting for a slot (provider=merge: documents waiting to merge, in a group next)",
    ["provider"],
    registry=PROVIDER_REGISTRY,
)
PROVIDER_RUNNING = Gauge(
    "ragsvc_provider_running",
    "Provider calls holding a slot (provider=merge: documents merging)",
    ["provider"],
    registry=PROVIDER_REGISTRY,
)

MERGE_PRESUMMARIES = Counter(
    "ragsvc_merge_presummaries",
    "Description summaries made before a merge, outside LightRAG's keyed locks, by whether the "
    "merge then found them in the LLM cache (outcome=used) or not (outcome=wasted)",
    ["outcome"],
    registry=PROVIDER_REGISTRY,
)
MERGE_LOCKED_SUMMARIES = Counter(
    "ragsvc_merge_locked_summaries",
    "Summary LLM calls a merge made itself, under LightRAG's keyed locks (not made ahead)",
    registry=PROVIDER_REGISTRY,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.tasks = Gauge(
            "ragsvc_tasks", "Tasks known to the store, by tenant and status", ["tenant", "status"], registry=r
        )
        self.queue_depth = Gauge(
            "ragsvc_queue_depth", "Tasks waiting to run (incl. retry backoff)", registry=r
        )
        self.running = Gauge("ragsvc_running_tasks", "Tasks running in this instance", registry=r)
        self.capacity = Gauge("ragsvc_task_slots", "Concurrent task slots of this instance", registry=r)
        self.spare_lent = Counter(
            "ragsvc_spare_task_slots_lent",
            "Documents started in a spare task slot: every slot was taken and the LLM would otherwise "
            "have gone idle (src/tasks/admission.py)",
            registry=r,
        )
        self.finished = Counter(
            "ragsvc_tasks_finished", "Attempts ended, by outcome", ["outcome"], registry=r
        )
        self.retries = Counter("ragsvc_task_retries", "Transient failures requeued with backoff", registry=r)
        self.admission_wait = Histogram(
            "ragsvc_admission_wait_seconds",
            "Time from upload to first start",
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.task_duration = Histogram(
            "ragsvc_task_duration_seconds",
            "Attempt duration by outcome",
            ["outcome"],
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "ragsvc_stage_duration_seconds",
            "Time spent per stage",
            ["stage"],
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.llm_latency = Histogram(
            "ragsvc_llm_call_seconds", "LLM call latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.llm_errors = Counter("ragsvc_llm_errors", "LLM calls that raised", ["error"], registry=r)
        self.redis_latency = Histogram(
            "ragsvc_redis_ping_seconds", "Redis round trip (sampled)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.loop_lag = Histogram(
            "ragsvc_event_loop_lag_seconds",
            "Event-loop lag sampled every 100 ms",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.upload_bytes = Counter("ragsvc_upload_bytes", "Bytes of accepted uploads", registry=r)
        self.uploads = Counter("ragsvc_uploads", "Upload requests by outcome", ["outcome"], registry=r)
        self.tokens = Counter(
            "ragsvc_tokens", "Provider tokens spent by this process's work", ["tenant", "kind"], registry=r
        )
        self._sampler: asyncio.Task | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(PROVIDER_REGISTRY)

    def wrap_llm(self, llm_func: Callable[..., Any]) -> Callable[..., Any]:
        """Time every LLM call and count its errors by exception type."""
        metrics = self

        async def timed_llm(prompt: str, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await llm_func(prompt, *args, **kwargs)
            except Exception as exc:
                metrics.llm_errors.labels(type(exc).__name__).inc()
                raise
            finally:
                metrics.llm_latency.observe(time.perf_counter() - start)

        return timed_llm

    def start_sampling(self, ping: Callable[[], Any], interval: float = 0.1, redis_every: int = 50) -> None:
        """Sample event-loop lag (sleep overshoot) and, every few seconds, Redis latency."""

        async def sample() -> None:
            n = 0
            while True:
                start = time.perf_counter()
                await asyncio.sleep(interval)
                self.loop_lag.observe(max(0.0, time.perf_counter() - start - interval))
                n += 1
                if n % redis_every == 0:
                    with contextlib.suppress(Exception):
                        self.redis_latency.observe(await ping() / 1000)
                    # A cancel landing in the Redis client can be swallowed there: stop_sampling()
                    # (at shutdown) then waited for this loop forever.
                    raise_if_cancel_swallowed()

        self._sampler = asyncio.create_task(sample(), name="metrics-sampler")

    async def stop_sampling(self) -> None:
        if self._sampler:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
