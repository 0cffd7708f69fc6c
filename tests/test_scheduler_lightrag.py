"""A LightRAG built by src/rag/builder.py routes its LLM and embedding calls through our schedulers
and the embedding batcher (moved out of tests/test_batching.py: these boot LightRAG)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from src.core.config import Settings
from src.rag.batching import EmbeddingBatcher
from src.rag.scheduler import CallScheduler, ProviderSchedulers, call_context, current_call_context

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# --------------------------------------------------------------------------------------------
# a LightRAG built by the builder routes its calls through our schedulers
# --------------------------------------------------------------------------------------------


class Spy(CallScheduler):
    """A real CallScheduler that records the call context of every admission."""

    def __init__(self, limit: int, name: str) -> None:
        super().__init__(limit, name)
        self.seen: list[Any] = []

    async def acquire(self) -> None:
        self.seen.append(current_call_context())
        await super().acquire()


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        llm_provider="offline",
        embedding_provider="hash",
        entity_extract_max_gleaning=1,
        llm_max_async=3,
        embedding_max_async=2,
        # generous, so that coalescing does not depend on the speed of a busy machine
        embedding_batch_wait_ms=100,
    )


DOC = (
    "The Zorblax reactor was designed by Helena Marwick at the Northfield Energy Institute. "
    "Northfield Energy Institute partnered with Caldera Systems to build a pilot plant near Lake Varna. "
    "Helena Marwick said the Zorblax reactor powers buses in Varna Falls."
)


async def test_built_lightrag_routes_llm_and_embeddings_through_our_schedulers(tmp_path: Path) -> None:
    """Catches calls still going through LightRAG's worker-task limiter, where the task's
    priority/tenant ContextVar is lost (they would be admitted with the default context or bypass
    the scheduler altogether)."""
    from lightrag import QueryParam

    from src.rag.builder import build_lightrag

    schedulers = ProviderSchedulers(3, 2)
    schedulers.llm = Spy(3, "llm")
    schedulers.embedding = Spy(2, "embedding")
    rag = await build_lightrag(_settings(tmp_path), workspace="sched", schedulers=schedulers)
    try:
        batcher = rag.embedding_func.func
        assert isinstance(batcher, EmbeddingBatcher)
        for store in (rag.entities_vdb, rag.relationships_vdb, rag.chunks_vdb, rag.text_chunks):
            assert store.embedding_func.func is batcher
        with call_context(priority=7, tenant="acme"):
            await rag.ainsert(DOC, ids=["doc-1"])
            answer = await rag.aquery("Who designed the Zorblax reactor?", param=QueryParam(mode="hybrid"))
        assert answer
        llm_seen = schedulers.llm.seen
        emb_seen = schedulers.embedding.seen
        assert len(llm_seen) >= 3  # extraction, gleaning, keywords (+ answer)
        assert emb_seen  # chunk, entity, relation and query embeddings
        assert {(c.priority, c.tenant) for c in llm_seen + emb_seen} == {(7, "acme")}
        # micro-batching: LightRAG's concurrent one-text requests of the merge phase were coalesced
        assert batcher.calls == len(emb_seen) < batcher.requests
        assert schedulers.llm.active == 0 and schedulers.embedding.active == 0
        assert schedulers.llm.peak <= 3 and schedulers.embedding.peak <= 2
    finally:
        await rag.finalize_storages()


async def test_installed_llm_binds_lightrag_kwargs_and_bounds_a_hung_call(tmp_path: Path) -> None:
    """Catches the installed LLM function losing LightRAG's bound kwargs (hashing_kv), passing its
    limiter kwargs (_priority) to the provider, or a hung provider call keeping its slot forever."""
    from src.rag.builder import build_lightrag, install_provider_functions

    schedulers = ProviderSchedulers(1, 1)
    rag = await build_lightrag(_settings(tmp_path), workspace="sched_timeout", schedulers=schedulers)
    try:
        seen: list[dict[str, Any]] = []

        async def provider(prompt: str, **kwargs: Any) -> str:
            seen.append(kwargs)
            if prompt == "hang":
                await asyncio.Event().wait()
            return "ok"

        install_provider_functions(rag, provider, rag.embedding_func, schedulers, llm_timeout=0.05)
        assert await rag.llm_model_func("hi", system_prompt="s", _priority=8) == "ok"
        assert seen[0]["hashing_kv"] is rag.llm_response_cache
        assert seen[0]["system_prompt"] == "s" and "_priority" not in seen[0]
        with pytest.raises(TimeoutError):
            await rag.llm_model_func("hang")
        assert schedulers.llm.active == 0
        assert await rag.llm_model_func("again") == "ok"  # the one slot is free again
    finally:
        await rag.finalize_storages()
