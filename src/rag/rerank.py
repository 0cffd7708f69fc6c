"""The optional reranker of retrieved chunks, configured by LightRAG Server's variables.

``RERANK_BINDING`` (cohere, jina, aliyun) picks one of LightRAG's own rerank clients
(`lightrag.rerank`), which speak those providers' HTTP APIs; ``RERANK_MODEL``,
``RERANK_BINDING_HOST`` and ``RERANK_BINDING_API_KEY`` fill in the model, endpoint and key (each
client's default when unset), as LightRAG Server does. Offline there is none: no reranker with
its weights inside a PyPI package exists (FlashRank, the small one, downloads its model at run
time), so queries then keep LightRAG's vector order.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from src.core.config import Settings

RerankFunc = Callable[..., Awaitable[list[dict[str, Any]]]]


def build_rerank_func(settings: Settings) -> RerankFunc | None:
    """LightRAG's ``rerank_model_func`` for the configured binding, or None (RERANK_BINDING=null)."""
    if settings.rerank_binding == "null":
        return None
    from lightrag.rerank import ali_rerank, cohere_rerank, jina_rerank

    client = {"cohere": cohere_rerank, "jina": jina_rerank, "aliyun": ali_rerank}[settings.rerank_binding]
    defaults = inspect.signature(client).parameters
    model = settings.rerank_model or defaults["model"].default
    base_url = settings.rerank_binding_host or defaults["base_url"].default

    async def rerank(
        query: str, documents: list[str], top_n: int | None = None, extra_body: dict | None = None
    ) -> list[dict[str, Any]]:
        return await client(
            query=query,
            documents=documents,
            top_n=top_n,
            api_key=settings.rerank_binding_api_key,
            model=model,
            base_url=base_url,
            extra_body=extra_body,
        )

    rerank.by_default = settings.rerank_by_default  # type: ignore[attr-defined]
    rerank.description = f"{settings.rerank_binding} model={model}"  # type: ignore[attr-defined]
    return rerank


def rerank_description(settings: Settings) -> str:
    """One line for /health: which reranker serves, without secrets."""
    if settings.rerank_binding == "null":
        return "none (RERANK_BINDING=null)"
    return f"{settings.rerank_binding} model={settings.rerank_model or 'default'}"
