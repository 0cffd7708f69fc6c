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
from src.ingestion.knowledge_bases import TenantEngines

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
        return await rag.aquery(spec.text, param=param)
    except Exception as exc:  # provider failures are the provider's, not a bug of ours
        raise provider_error(exc) from exc


def provider_error(exc: Exception) -> ProviderError:
    log.warning("query failed: %s", exc)
    return ProviderError(f"the query could not be answered: {type(exc).__name__}: {exc}")
