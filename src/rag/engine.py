"""Assemble a ready-to-use LightRAG instance from the service settings."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightrag import LightRAG

from .embedding import build_embedding_func
from .llm import build_llm_func
from .storage.embedded import embedded_storage_kwargs
from .tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

#: Cosine threshold for the lexical hash embedding, whose scores run far lower than MiniLM's.
HASH_COSINE_THRESHOLD = 0.05


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, default)
    return default if value is None else value


def lightrag_kwargs(settings: Any) -> dict[str, Any]:
    """Tuning arguments passed to ``LightRAG(...)`` (exposed for tests and diagnostics).

    LightRAG kills an LLM call after ``2 * default_llm_timeout`` (+15 s for the health check,
    lightrag/utils.py priority_limit_async_func_call); our client already bounds each attempt
    by ``llm_timeout_seconds`` and retries, so the outer bound must cover all attempts.
    """
    timeout = float(_setting(settings, "llm_timeout_seconds", 120.0))
    attempts = max(1, int(_setting(settings, "llm_max_retries", 3)))
    outer_timeout = int(math.ceil(timeout * attempts / 2)) + 30
    # Half of the admitted tasks are indexed in parallel; the other half are already enqueued in
    # the same LightRAG pass, so no pass boundary leaves the LLM idle (see docs/benchmarks.md).
    max_parallel = getattr(settings, "max_parallel_insert", None) or max(
        1, int(_setting(settings, "max_concurrent_tasks", 2)) // 2
    )
    kwargs: dict[str, Any] = {
        "llm_model_name": _setting(settings, "llm_model", "gpt-4o-mini"),
        "llm_model_max_async": int(_setting(settings, "llm_max_async", 4)),
        "default_llm_timeout": outer_timeout,
        "default_embedding_timeout": outer_timeout,
        "embedding_batch_num": int(_setting(settings, "embedding_batch_size", 32)),
        "embedding_func_max_async": int(_setting(settings, "embedding_max_async", 4)),
        "chunk_token_size": int(_setting(settings, "chunk_token_size", 1200)),
        "chunk_overlap_token_size": int(_setting(settings, "chunk_overlap_token_size", 100)),
        "entity_extract_max_gleaning": int(_setting(settings, "entity_extract_max_gleaning", 1)),
        "max_parallel_insert": int(max_parallel),
        "enable_llm_cache": True,
        "enable_llm_cache_for_entity_extract": True,
    }
    kwargs.update(embedded_storage_kwargs(settings))  # SQLite storages unless LIGHTRAG_*_STORAGE override
    if getattr(settings, "resolved_embedding_provider", None) == "hash":
        kwargs["cosine_better_than_threshold"] = HASH_COSINE_THRESHOLD
    return kwargs


async def build_lightrag(
    settings: Any,
    workspace: str | None = None,
    llm_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> LightRAG:
    """Create, initialise and return a LightRAG instance; never touches the network.

    The tokenizer is the offline tiktoken o200k_base (LightRAG's default would download it in
    the constructor); slow synchronous steps (tokenizer load, constructor, JSON storage loads)
    run in worker threads so the event loop keeps serving. Call ``await rag.finalize_storages()``
    when done. Every instance must get its own workspace: instances with the same workspace
    share LightRAG's process-global pipeline status and doc-status namespace.
    """
    data_dir = Path(settings.data_dir)
    working_dir = Path(settings.rag_dir)
    workspace = workspace or _setting(settings, "workspace", "default")

    tokenizer = await asyncio.to_thread(build_tokenizer, data_dir / "tiktoken")
    embedding_func = build_embedding_func(settings)
    llm_func = build_llm_func(settings)
    if llm_wrapper is not None:  # e.g. the document guard that stops LLM work of cancelled tasks
        llm_func = llm_wrapper(llm_func)

    def construct() -> LightRAG:
        working_dir.mkdir(parents=True, exist_ok=True)
        return LightRAG(
            working_dir=str(working_dir),
            workspace=workspace,
            tokenizer=tokenizer,
            embedding_func=embedding_func,
            llm_model_func=llm_func,
            **lightrag_kwargs(settings),
        )

    rag = await asyncio.to_thread(construct)
    # initialize_storages() also initialises this workspace's pipeline status in 1.4.16
    # (lightrag.py initialize_storages); calling it again is a no-op kept for older releases.
    await rag.initialize_storages()
    from lightrag.kg.shared_storage import initialize_pipeline_status

    await initialize_pipeline_status(workspace=workspace)
    logger.info("LightRAG ready: working_dir=%s workspace=%s", working_dir, workspace)
    return rag
