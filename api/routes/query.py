"""Query endpoints: one-shot answer and a streamed (NDJSON) answer, through LightRAG's aquery."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from lightrag import LightRAG, QueryParam

from api.deps import get_services, get_tenant
from api.errors import ApiError
from api.schemas import QueryRequest, QueryResponse
from src.rag.llm import llm_description
from src.wiring import Services

router = APIRouter(tags=["query"])
log = logging.getLogger(__name__)


def _param(body: QueryRequest, stream: bool) -> QueryParam:
    param = QueryParam(
        mode=body.mode, only_need_context=body.only_need_context, stream=stream, enable_rerank=False
    )
    if body.top_k is not None:
        param.top_k = body.top_k
    if body.chunk_top_k is not None:
        param.chunk_top_k = body.chunk_top_k
    if body.response_type:
        param.response_type = body.response_type
    return param


def _check_length(body: QueryRequest, services: Services) -> None:
    if len(body.query) > services.settings.max_query_chars:
        raise ApiError(422, "query_too_long", f"query exceeds {services.settings.max_query_chars} characters")


async def _run_query(rag: LightRAG, body: QueryRequest, stream: bool) -> str | AsyncIterator[str]:
    try:
        return await rag.aquery(body.query, param=_param(body, stream))
    except Exception as exc:  # provider failures surface as a gateway error, not a 500
        log.warning("query failed: %s", exc)
        raise ApiError(
            502, "query_failed", f"the query could not be answered: {type(exc).__name__}: {exc}"
        ) from exc


@router.post("/query", response_model=QueryResponse, summary="Ask the knowledge base")
async def query(
    body: QueryRequest, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> QueryResponse:
    _check_length(body, services)
    async with services.engines.use(tenant) as engine:
        answer = await _run_query(engine.rag, body, stream=False)
        if not isinstance(answer, str):  # some bindings stream even when not asked to
            answer = "".join([part async for part in answer])
    return QueryResponse(
        response=answer or "",
        mode=body.mode,
        only_need_context=body.only_need_context,
        llm=llm_description(services.settings),
    )


@router.post(
    "/query/stream",
    summary='Ask the knowledge base, streamed as NDJSON lines {"response": <text piece>}',
    response_class=StreamingResponse,
)
async def query_stream(
    body: QueryRequest, tenant: str = Depends(get_tenant), services: Services = Depends(get_services)
) -> StreamingResponse:
    _check_length(body, services)
    # The engine stays borrowed until the stream ends, so it cannot be evicted mid-answer.
    engine = await services.engines.acquire(tenant)
    try:
        answer = await _run_query(engine.rag, body, stream=True)
    except BaseException:
        services.engines.release(engine)
        raise

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for line in _ndjson(answer):
                yield line
        finally:
            services.engines.release(engine)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _ndjson(answer: str | AsyncIterator[str]) -> AsyncIterator[bytes]:
    if isinstance(answer, str):
        yield (json.dumps({"response": answer}) + "\n").encode()
        return
    try:
        async for piece in answer:
            if piece:
                yield (json.dumps({"response": piece}) + "\n").encode()
    except Exception as exc:  # the status line is gone already: report in-band
        log.warning("streamed query failed: %s", exc)
        yield (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode()
