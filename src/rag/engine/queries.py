"""Answering a query from a tenant's knowledge base: the one copy of the logic that the direct
routes (`IngestionService.query`, `query_stream`) and query tasks (`IngestHandler`, POST
/query/async and the queries an api-role instance delegates to the workers) share."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from lightrag import LightRAG, QueryParam

from src.ingestion.errors import ProviderError
from src.rag.engine.tenant_engines import TenantEngines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuerySpec:
    text: str
    mode: str = "hybrid"
    only_need_context: bool = False
    top_k: int | None = None
    chunk_top_k: int | None = None
    response_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """What a query task stores in its record (bounded: the API validates every field)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuerySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


async def answer(engines: TenantEngines, tenant: str, spec: QuerySpec) -> str:
    """The whole answer (or, with ``only_need_context``, the retrieved context) as one string."""
    async with engines.use(tenant) as engine:
        response = await ask(engine.rag, spec, stream=False)
        if not isinstance(response, str):  # some bindings stream even when not asked to
            try:
                response = "".join([part async for part in response])
            except Exception as exc:
                raise provider_error(exc) from exc
    return response or ""


def task_result(spec: QuerySpec, response: str, llm: str) -> dict[str, Any]:
    """A completed query task's ``result``: the /query body, plus ``context`` when only the
    context was asked for."""
    result: dict[str, Any] = {
        "response": response,
        "mode": spec.mode,
        "only_need_context": spec.only_need_context,
        "llm": llm,
    }
    if spec.only_need_context:
        result["context"] = response
    return result


async def ask(rag: LightRAG, spec: QuerySpec, stream: bool) -> str | AsyncIterator[str]:
    param = QueryParam(
        mode=spec.mode, only_need_context=spec.only_need_context, stream=stream, enable_rerank=False
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
        # LightRAG (1.4.16) catches the provider's exception and reports it only as this message
        # ("Query failed: Error code: 503 ..."); raising it keeps its text, which says whether a
        # retry may help. ("No results" is a failure too, but with a content: the fail response.)
        log.warning("query failed: %s", result.get("message"))
        raise ProviderError(f"the query could not be answered: {result.get('message') or 'unknown error'}")
    return llm.get("content") or ""


def provider_error(exc: Exception) -> ProviderError:
    log.warning("query failed: %s", exc)
    return ProviderError(f"the query could not be answered: {type(exc).__name__}: {exc}")
