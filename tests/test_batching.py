"""EmbeddingBatcher and the provider functions the builder installs into LightRAG.

The batcher tests use a recording provider (hash embeddings, so rows are checkable); the last
tests build a real LightRAG with the builder (offline LLM, hash embeddings, tmp dir) and check its
LLM and embedding calls really go through our schedulers and batcher, in the caller's context.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from src.core.metrics import PROVIDER_REGISTRY
from src.rag.batching import EmbeddingBatcher
from src.rag.embedding import hash_embed_sync
from src.rag.scheduler import CallScheduler, call_context, current_call_context

pytestmark = pytest.mark.unit

DIM = 16


class Provider:
    """Records each batch it receives (texts, kwargs, call context); optionally fails or blocks."""

    def __init__(self, fail: BaseException | None = None, wrong_rows: bool = False) -> None:
        self.batches: list[tuple[list[str], dict[str, Any], Any]] = []
        self.fail = fail
        self.wrong_rows = wrong_rows
        self.gate: asyncio.Event | None = None

    async def __call__(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.batches.append((list(texts), dict(kwargs), current_call_context()))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        rows = hash_embed_sync(texts, DIM)
        return rows[:-1] if self.wrong_rows else rows


async def test_concurrent_requests_share_one_provider_call() -> None:
    """Catches one provider call per request (LightRAG's one-text-per-call pattern unbatched)."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=32, wait_ms=5, provider="t-coalesce")
    texts = [f"entity number {i}" for i in range(10)]
    results = await asyncio.gather(*(batcher([t]) for t in texts))
    assert len(provider.batches) == 1
    labels = {"provider": "t-coalesce"}  # what benchmarks read from /metrics
    assert PROVIDER_REGISTRY.get_sample_value("ragsvc_provider_calls_total", labels) == 1
    assert PROVIDER_REGISTRY.get_sample_value("ragsvc_provider_texts_total", labels) == 10
    assert provider.batches[0][0] == texts
    for text, rows in zip(texts, results, strict=True):  # every caller gets its own row
        assert rows.shape == (1, DIM)
        np.testing.assert_allclose(rows[0], hash_embed_sync([text], DIM)[0])
    assert batcher.calls == 1 and batcher.texts == 10


async def test_batches_are_capped_at_max_batch() -> None:
    """Catches a batch that grows past EMBEDDING_BATCH_SIZE, incl. one large request split up."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=4, wait_ms=5)
    small = [batcher([f"s{i}"]) for i in range(6)]
    big = batcher([f"b{i}" for i in range(9)])
    results = await asyncio.gather(*small, big)
    assert all(len(texts) <= 4 for texts, _, _ in provider.batches)
    assert sum(len(texts) for texts, _, _ in provider.batches) == 15
    assert results[-1].shape == (9, DIM)
    np.testing.assert_allclose(results[-1], hash_embed_sync([f"b{i}" for i in range(9)], DIM))


async def test_batches_are_capped_at_max_chars() -> None:
    """Catches a call of many long texts to a provider that runs one call at a time (e5): a big
    document's 32 chunks in one call held it for half a minute. Short texts still share a call;
    a text over the cap goes alone; every caller gets its own rows in order."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=32, wait_ms=5, max_chars=100)
    chunks = [f"{i:02d}" + "c" * 58 for i in range(5)]  # 60 characters each
    short = [f"e{i}" for i in range(10)]
    huge = "h" * 250
    results = await asyncio.gather(batcher(chunks), *(batcher([t]) for t in short), batcher([huge]))
    sizes = [sum(len(t) for t in texts) for texts, _, _ in provider.batches]
    assert all(size <= 100 for size in sizes if size != 250), sizes
    assert [texts for texts, _, _ in provider.batches if huge in texts] == [[huge]]
    assert max(len(texts) for texts, _, _ in provider.batches) >= 5  # short texts still batch
    assert sorted(t for texts, _, _ in provider.batches for t in texts) == sorted([*chunks, *short, huge])
    np.testing.assert_allclose(results[0], hash_embed_sync(chunks, DIM))
    np.testing.assert_allclose(results[-1], hash_embed_sync([huge], DIM))


async def test_wait_zero_still_coalesces_one_loop_iteration() -> None:
    """Catches EMBEDDING_BATCH_WAIT_MS=0 degenerating to one call per request."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=0)
    await asyncio.gather(*(batcher([f"t{i}"]) for i in range(5)))
    assert len(provider.batches) == 1


async def test_error_reaches_every_caller_of_the_batch() -> None:
    """Catches an error delivered to one caller while the others hang or get garbage."""
    provider = Provider(fail=RuntimeError("provider down"))
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=5)
    results = await asyncio.gather(*(batcher([f"t{i}"]) for i in range(4)), return_exceptions=True)
    assert len(provider.batches) == 1
    assert all(isinstance(r, RuntimeError) and "provider down" in str(r) for r in results)


async def test_row_count_mismatch_is_an_error_for_every_caller() -> None:
    """Catches rows handed out misaligned when the provider returns too few vectors."""
    batcher = EmbeddingBatcher(Provider(wrong_rows=True), max_batch=8, wait_ms=5)
    results = await asyncio.gather(*(batcher([f"t{i}"]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_different_contexts_are_never_mixed() -> None:
    """Catches query and document texts sent in one asymmetric call (wrong e5 prefixes)."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=5)
    await asyncio.gather(
        batcher(["d1"], context="document"),
        batcher(["q1"], context="query"),
        batcher(["d2"], context="document"),
        batcher(["q2"], context="query"),
        batcher(["plain"]),
    )
    by_kwargs = {tuple(sorted(kw.items())): texts for texts, kw, _ in provider.batches}
    assert by_kwargs == {
        (("context", "document"),): ["d1", "d2"],
        (("context", "query"),): ["q1", "q2"],
        (): ["plain"],
    }


async def test_limiter_kwargs_are_dropped_and_batch_runs_at_top_priority() -> None:
    """Catches LightRAG's _priority reaching the provider, and a batch admitted at a low priority."""
    provider = Provider()
    scheduler = CallScheduler(2, "t-batch")
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=5, scheduler=scheduler)

    async def at(priority: int, text: str, merging: bool = False) -> np.ndarray:
        with call_context(priority=priority, tenant=f"tenant{priority}", merging=merging):
            return await batcher([text], _priority=5)

    await asyncio.gather(at(1, "a"), at(8, "b"), at(3, "c"))
    (texts, kwargs, ctx) = provider.batches[0]
    assert kwargs == {}
    assert ctx.priority == 8 and ctx.tenant == "tenant8" and not ctx.merging
    # A merge's request (under LightRAG's keyed locks) lifts the batch it joins to a merge call.
    await asyncio.gather(at(4, "d"), at(4, "e", merging=True))
    assert provider.batches[-1][2].merging and provider.batches[-1][2].priority == 4
    assert scheduler.active == 0


async def test_cancelled_caller_is_dropped_and_others_still_served() -> None:
    """Catches a cancelled caller's texts still sent, or its cancel breaking the batch for others."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=50)
    gone = asyncio.create_task(batcher(["gone"]))
    stay = asyncio.create_task(batcher(["stay"]))
    await asyncio.sleep(0)
    gone.cancel()
    rows = await stay
    assert rows.shape == (1, DIM)
    assert provider.batches[0][0] == ["stay"]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_cancelled_caller_while_batch_runs_does_not_break_it() -> None:
    """Catches InvalidStateError when a batch resolves a future whose caller was cancelled."""
    provider = Provider()
    provider.gate = asyncio.Event()
    batcher = EmbeddingBatcher(provider, max_batch=2, wait_ms=50)
    gone = asyncio.create_task(batcher(["gone"]))
    stay = asyncio.create_task(batcher(["stay"]))  # fills the batch: sent at once
    for _ in range(10_000):  # bounded: a batcher that never sends fails here, not by timeout
        if provider.batches:
            break
        await asyncio.sleep(0)
    assert provider.batches, "the full batch was never sent"
    gone.cancel()
    provider.gate.set()
    rows = await stay
    np.testing.assert_allclose(rows[0], hash_embed_sync(["stay"], DIM)[0])
    assert gone.cancelled()


async def test_bulk_work_is_batched_apart_and_admitted_by_its_own_scheduler() -> None:
    """Catches a big document's chunk embeddings sent in one call with other documents' texts, or
    holding the slot they wait for (e5: one call at a time; the bulk lane runs in a niced child)."""
    provider = Provider()
    scheduler, bulk_scheduler = CallScheduler(1, "t-regular"), CallScheduler(1, "t-bulk")
    batcher = EmbeddingBatcher(
        provider, max_batch=8, wait_ms=5, scheduler=scheduler, bulk_scheduler=bulk_scheduler
    )

    async def embed(text: str, bulk: bool) -> np.ndarray:
        with call_context(bulk=bulk):
            return await batcher([text], context="document")

    await asyncio.gather(embed("big-1", True), embed("small-1", False), embed("big-2", True))
    by_lane = {ctx.bulk: texts for texts, _, ctx in provider.batches}
    assert by_lane == {True: ["big-1", "big-2"], False: ["small-1"]}

    # The bulk lane's only slot taken: a regular call is still served at once.
    await bulk_scheduler.acquire()
    try:
        rows = await asyncio.wait_for(embed("small-2", False), 10)
        assert rows.shape == (1, DIM)
        waiting = asyncio.ensure_future(embed("big-3", True))
        await asyncio.sleep(0.05)
        assert not waiting.done() and bulk_scheduler.waiting == 1
    finally:
        bulk_scheduler.release()
    await asyncio.wait_for(waiting, 10)
    assert provider.batches[-1][2].bulk and scheduler.active == 0 == bulk_scheduler.active


async def test_bulk_flag_is_ignored_without_a_bulk_lane() -> None:
    """Catches bulk work split off (and its calls made smaller) for providers with no background lane."""
    provider = Provider()
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=5, scheduler=CallScheduler(2, "t-nolane"))

    async def embed(text: str, bulk: bool) -> np.ndarray:
        with call_context(bulk=bulk):
            return await batcher([text])

    await asyncio.gather(embed("a", True), embed("b", False))
    assert [texts for texts, _, _ in provider.batches] == [["a", "b"]]
