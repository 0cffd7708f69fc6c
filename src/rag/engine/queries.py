"""Asking one LightRAG instance a question: `QuerySpec` -> `QueryParam` -> `aquery_llm`, and
LightRAG's result shape back to text (or a stream of text pieces)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from lightrag import LightRAG, QueryParam

from src.rag.errors import ProviderError
from src.rag.knowledge import QuerySpec

log = logging.getLogger(__name__)


async def ask(rag: LightRAG, spec: QuerySpec, stream: bool) -> str | AsyncIterator[str]:
    param = QueryParam(
        mode=spec.mode.value, only_need_context=spec.only_need_context, stream=stream, enable_rerank=False
    )
    if spec.top_k is not None:
        param.top_k = spec.top_k
    if spec.chunk_top_k is not None:
        param.chunk_top_k = spec.chunk_top_k
    if spec.response_type:
        param.response_type = spec.response_type
    try:
        result = await rag.aquery_llm(spec.text, param=param)
    except Exception as exc:  # provider failures are the provider's, not a bug of ours
        raise provider_error(exc) from exc
    llm = result.get("llm_response") or {}
    if llm.get("is_streaming"):
        return llm.get("response_iterator") or ""
    if llm.get("content") is None and result.get("status") == "failure":
        # LightRAG catches the provider's exception and reports it only as this message ("Query
        # failed: Error code: 503 ..."); raising it keeps its text, which says whether a retry may
        # help. ("No results" is a failure too, but with a content: the fail response.)
        log.warning("query failed: %s", result.get("message"))
        raise ProviderError(f"the query could not be answered: {result.get('message') or 'unknown error'}")
    return llm.get("content") or ""


async def whole(rag: LightRAG, spec: QuerySpec) -> str:
    """The whole answer as one string (some bindings stream even when not asked to)."""
    response = await ask(rag, spec, stream=False)
    if isinstance(response, str):
        return response
    try:
        return "".join([part async for part in response])
    except Exception as exc:
        raise provider_error(exc) from exc


def provider_error(exc: Exception) -> ProviderError:
    log.warning("query failed: %s", exc)
    return ProviderError(f"the query could not be answered: {type(exc).__name__}: {exc}")
