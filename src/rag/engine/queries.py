"""Asking one LightRAG instance a question: `QuerySpec` -> `QueryParam` -> `aquery_llm` /
`aquery_data`, and LightRAG's result shapes back into our types (text, a stream of text pieces,
references, retrieved rows)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lightrag import LightRAG, QueryParam

from src.rag.engine.versions import query_view
from src.rag.errors import ProviderError
from src.rag.knowledge import QueryResult, QuerySpec, Reference, RetrievedData

log = logging.getLogger(__name__)

#: LightRAG's answer when retrieval found nothing and no answer was generated.
NO_CONTEXT = "No relevant context found for the query."


def rerank_by_default(rag: LightRAG) -> bool:
    """Rerank when the client does not say: only with a reranker configured (and RERANK_BY_DEFAULT)."""
    func = rag.rerank_model_func
    return func is not None and bool(getattr(func, "by_default", True))


def query_param(spec: QuerySpec, *, stream: bool, rerank_default: bool) -> QueryParam:
    """LightRAG's `QueryParam` for ``spec``; unset options keep LightRAG's defaults."""
    param = QueryParam(
        mode=spec.mode.value,
        only_need_context=spec.only_need_context,
        only_need_prompt=spec.only_need_prompt,
        stream=stream,
        enable_rerank=rerank_default if spec.enable_rerank is None else spec.enable_rerank,
        include_references=spec.include_references,
        hl_keywords=list(spec.hl_keywords),
        ll_keywords=list(spec.ll_keywords),
        conversation_history=[{"role": m.role, "content": m.content} for m in spec.conversation_history],
        user_prompt=spec.user_prompt or None,
    )
    for name in ("top_k", "chunk_top_k", "max_entity_tokens", "max_relation_tokens", "max_total_tokens"):
        value = getattr(spec, name)
        if value is not None:
            setattr(param, name, value)
    if spec.response_type:
        param.response_type = spec.response_type
    return param


@dataclass
class Asked:
    """LightRAG's answer to one question: the text (or its stream) and the references."""

    content: str | AsyncIterator[str]
    references: tuple[Reference, ...]


async def ask(rag: LightRAG, spec: QuerySpec, stream: bool) -> Asked:
    param = query_param(spec, stream=stream, rerank_default=rerank_by_default(rag))
    try:
        with query_view():
            result = await rag.aquery_llm(spec.text, param=param)
    except Exception as exc:  # provider failures are the provider's, not a bug of ours
        raise provider_error(exc) from exc
    llm = result.get("llm_response") or {}
    references = references_of(result.get("data") or {}, spec) if spec.include_references else ()
    if llm.get("is_streaming"):
        return Asked(llm.get("response_iterator") or "", references)
    if llm.get("content") is None and result.get("status") == "failure":
        # LightRAG catches the provider's exception and reports it only as this message ("Query
        # failed: Error code: 503 ..."); raising it keeps its text, which says whether a retry may
        # help. ("No results" is a failure too, but with a content: the fail response.)
        log.warning("query failed: %s", result.get("message"))
        raise ProviderError(f"the query could not be answered: {result.get('message') or 'unknown error'}")
    return Asked(llm.get("content") or "", references)


def references_of(data: dict[str, Any], spec: QuerySpec) -> tuple[Reference, ...]:
    """LightRAG's reference list (and, when asked for, each reference's chunks, in order)."""
    contents: dict[str, list[str]] = {}
    if spec.include_chunk_content:
        for chunk in data.get("chunks") or []:
            ref_id, text = str(chunk.get("reference_id") or ""), chunk.get("content")
            if ref_id and text:
                contents.setdefault(ref_id, []).append(str(text))
    references = []
    for ref in data.get("references") or []:
        ref_id = str(ref.get("reference_id", ""))
        content = tuple(contents.get(ref_id, ())) if spec.include_chunk_content else None
        references.append(Reference(ref_id, str(ref.get("file_path", "")), content))
    return tuple(references)


async def whole(rag: LightRAG, spec: QuerySpec) -> QueryResult:
    """The whole answer as one string (some bindings stream even when not asked to)."""
    asked = await ask(rag, spec, stream=False)
    if isinstance(asked.content, str):
        return QueryResult(asked.content, asked.references)
    try:
        text = "".join([part async for part in asked.content])
    except Exception as exc:
        raise provider_error(exc) from exc
    return QueryResult(text, asked.references)


async def retrieve(rag: LightRAG, spec: QuerySpec) -> RetrievedData:
    """LightRAG's structured retrieval (`aquery_data`): no answer is generated."""
    param = query_param(spec, stream=False, rerank_default=rerank_by_default(rag))
    try:
        with query_view():
            result = await rag.aquery_data(spec.text, param=param)
    except Exception as exc:
        raise provider_error(exc) from exc
    result = result if isinstance(result, dict) else {}
    data = result.get("data") or {}
    return RetrievedData(
        status=str(result.get("status") or "failure"),
        message=str(result.get("message") or ""),
        entities=list(data.get("entities") or []),
        relationships=list(data.get("relationships") or []),
        chunks=list(data.get("chunks") or []),
        references=list(data.get("references") or []),
        metadata=dict(result.get("metadata") or {}),
    )


def provider_error(exc: Exception) -> ProviderError:
    log.warning("query failed: %s", exc)
    return ProviderError(f"the query could not be answered: {type(exc).__name__}: {exc}")
