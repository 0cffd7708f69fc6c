"""Assemble a ready-to-use LightRAG instance from the service settings."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from lightrag.utils import EmbeddingFunc

from src.core.config import Settings
from src.core.metrics import PROVIDER_CALLS

from .batching import EmbeddingBatcher
from .embedding import build_embedding_func, embedding_call_bounds
from .embedding_signature import ensure_embedding_signature, ensure_shared_embedding_signature
from .engine.versions import install_query_view
from .lightrag_compat import LIMITER_KWARGS, replace_provider_functions
from .llm import build_llm_func
from .rerank import build_rerank_func
from .scheduler import ProviderSchedulers, shared_schedulers
from .storage.selection import storage_kwargs_from_env
from .storage.sqlite_store import configure as configure_embedded_storages
from .tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

#: Cosine threshold for the lexical hash embedding, whose scores run far lower than MiniLM's.
HASH_COSINE_THRESHOLD = 0.05


def process_schedulers(settings: Settings) -> ProviderSchedulers:
    """The process-wide LLM and embedding schedulers of these settings (every knowledge base built
    with them, and the task runner's spare slots, use the same ones)."""
    return shared_schedulers(settings.llm_max_async, embedding_call_bounds(settings)[0])


def lightrag_kwargs(settings: Settings) -> dict[str, Any]:
    """Tuning arguments passed to ``LightRAG(...)`` (exposed for tests and diagnostics).

    A provider call is killed after ``2 * default_llm_timeout`` (LightRAG's own limiter did so,
    lightrag/utils.py priority_limit_async_func_call; our installed function keeps that bound); our
    client already bounds each attempt by ``llm_timeout_seconds`` and retries, so the outer bound
    must cover all attempts. ``llm_model_max_async`` still sets LightRAG's per-document extraction
    and merge concurrency; the process-wide bound on calls is our scheduler's.
    """
    outer_timeout = outer_timeout_seconds(settings)
    # Only LightRAG's own batch pipeline (ainsert) reads max_parallel_insert; the per-document
    # engine (src/rag/engine/indexer.py) never runs it, so this value changes nothing here.
    max_parallel = settings.max_parallel_insert or max(1, settings.max_concurrent_tasks // 2)
    kwargs: dict[str, Any] = {
        "llm_model_name": settings.llm_model,
        "llm_model_max_async": settings.llm_max_async,
        "default_llm_timeout": outer_timeout,
        "default_embedding_timeout": outer_timeout,
        "embedding_batch_num": settings.embedding_batch_size,
        "embedding_func_max_async": settings.embedding_max_async,
        "chunk_token_size": settings.chunk_token_size,
        "chunk_overlap_token_size": settings.chunk_overlap_token_size,
        "entity_extract_max_gleaning": settings.entity_extract_max_gleaning,
        "max_parallel_insert": int(max_parallel),
        "enable_llm_cache": True,
        "enable_llm_cache_for_entity_extract": True,
    }
    if settings.resolved_embedding_provider == "hash":
        kwargs["cosine_better_than_threshold"] = HASH_COSINE_THRESHOLD
    return kwargs


def outer_timeout_seconds(settings: Settings) -> int:
    """Seconds one provider call may take, all retry attempts included."""
    attempts = max(1, settings.llm_max_retries)
    return int(math.ceil(settings.llm_timeout_seconds * attempts / 2)) + 30


async def build_lightrag(
    settings: Settings,
    workspace: str | None = None,
    llm_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    schedulers: ProviderSchedulers | None = None,
) -> LightRAG:
    """Create, initialise and return a LightRAG instance; never touches the network.

    The tokenizer is the offline tiktoken o200k_base (LightRAG's default would download it in
    the constructor); slow synchronous steps (tokenizer load, constructor, JSON storage loads)
    run in worker threads so the event loop keeps serving. Call ``await rag.finalize_storages()``
    when done. Every instance must get its own workspace: instances with the same workspace
    share LightRAG's process-global pipeline status and doc-status namespace.

    LLM and embedding calls go through ``schedulers`` (default: the process-wide pair bounded by
    LLM_MAX_ASYNC / EMBEDDING_MAX_ASYNC, one e5 call at a time) and embeddings through a micro-batcher; see
    ``install_provider_functions`` for how they replace LightRAG's own limiter.
    """
    data_dir = Path(settings.data_dir)
    working_dir = Path(settings.rag_dir)
    workspace = workspace or settings.workspace
    embedding_max_chars = embedding_call_bounds(settings)[1]
    schedulers = schedulers or process_schedulers(settings)

    tokenizer = await asyncio.to_thread(build_tokenizer, data_dir / "tiktoken")
    provider_embedding = build_embedding_func(settings)
    # The embedded SQLite storages unless LIGHTRAG_*_STORAGE say otherwise.
    storages = storage_kwargs_from_env(settings.lightrag_env)
    # Vectors of two models must never mix in one knowledge base: refuse a switch loudly. The
    # record lives where the vectors live (PostgreSQL: checked once the pool is up, below).
    vectors_in_postgres = str(storages["vector_storage"]).startswith("PG")
    if not vectors_in_postgres:
        await asyncio.to_thread(
            ensure_embedding_signature,
            working_dir / workspace,
            provider_embedding.model_name,
            provider_embedding.embedding_dim,
        )
    configure_embedded_storages(
        flush_interval=settings.storage_flush_interval_seconds,
        commit_delay=settings.storage_commit_delay_seconds,
    )
    batcher = EmbeddingBatcher(
        provider_embedding.func,
        max_batch=settings.embedding_batch_size,
        wait_ms=settings.embedding_batch_wait_ms,
        scheduler=schedulers.embedding,
        max_chars=embedding_max_chars,
        bulk_scheduler=schedulers.embedding_bulk if hasattr(provider_embedding.func, "bulk_lane") else None,
    )
    embedding_func = replace(provider_embedding, func=batcher)
    llm_func = build_llm_func(settings)
    if llm_wrapper is not None:  # e.g. the document guard that stops LLM work of cancelled tasks
        llm_func = llm_wrapper(llm_func)

    rerank_func = build_rerank_func(settings)

    def construct() -> LightRAG:
        working_dir.mkdir(parents=True, exist_ok=True)
        rag = LightRAG(
            working_dir=str(working_dir),
            workspace=workspace,
            tokenizer=tokenizer,
            embedding_func=embedding_func,
            llm_model_func=llm_func,
            rerank_model_func=rerank_func,
            min_rerank_score=settings.min_rerank_score,
            **storages,
            **lightrag_kwargs(settings),
        )
        # SUMMARY_LANGUAGE from our settings (LightRAG would read the process environment).
        rag.addon_params["language"] = settings.summary_language
        return rag

    rag = await asyncio.to_thread(construct)
    install_provider_functions(rag, llm_func, embedding_func, schedulers, 2 * outer_timeout_seconds(settings))
    await rag.initialize_storages()  # also initialises this workspace's pipeline status
    install_query_view(rag)  # queries never see a re-indexed document's two versions mixed
    if vectors_in_postgres:
        try:
            await ensure_shared_embedding_signature(
                workspace,
                provider_embedding.model_name,
                provider_embedding.embedding_dim,
                storages["vector_storage"],
            )
        except BaseException:
            await rag.finalize_storages()
            raise
    logger.info("LightRAG ready: working_dir=%s workspace=%s", working_dir, workspace)
    return rag


def install_provider_functions(
    rag: LightRAG,
    llm_func: Callable[..., Any],
    embedding_func: EmbeddingFunc,
    schedulers: ProviderSchedulers,
    llm_timeout: float,
) -> None:
    """Replace LightRAG's limiter-wrapped LLM and embedding functions with our scheduled ones.

    ``LightRAG.__post_init__`` wraps ``llm_model_func`` (bound to ``hashing_kv`` and
    ``llm_model_kwargs`` with a partial) and ``embedding_func.func`` in its limiter, whose
    long-lived worker tasks run the calls: a ContextVar read there belongs to whichever task started
    the workers, not to the caller, so priorities could not reach the scheduler. Ours run in the
    caller's task, bounded by our schedulers (`lightrag_compat.replace_provider_functions` says where
    LightRAG reads them).
    """
    hashing_kv = rag.llm_response_cache
    bound = dict(rag.llm_model_kwargs)
    scheduler = schedulers.llm

    async def scheduled_llm(*args: Any, **kwargs: Any) -> Any:
        for name in LIMITER_KWARGS:
            kwargs.pop(name, None)
        call_kwargs = {"hashing_kv": hashing_kv, **bound, **kwargs}
        await scheduler.acquire()
        try:
            PROVIDER_CALLS.labels("llm").inc()
            async with asyncio.timeout(llm_timeout):  # LightRAG's worker enforced the same bound
                return await llm_func(*args, **call_kwargs)
        finally:
            scheduler.release()

    scheduled_llm.scheduler = scheduler  # type: ignore[attr-defined]
    scheduled_llm.provider_func = llm_func  # type: ignore[attr-defined]
    replace_provider_functions(rag, scheduled_llm, embedding_func)
