"""Query endpoints: one-shot answer and a streamed (NDJSON) answer (the use-cases live in
IngestionService; this module only shapes the HTTP answers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import IngestionDep, ServicesDep, TenantDep
from api.schemas import QueryRequest, QueryResponse
from src.ingestion.errors import ProviderError
from src.ingestion.service import QuerySpec
from src.rag.llm import llm_description

router = APIRouter(tags=["query"])


def _spec(body: QueryRequest) -> QuerySpec:
    return QuerySpec(
        text=body.query,
        mode=body.mode,
        only_need_context=body.only_need_context,
        top_k=body.top_k,
        chunk_top_k=body.chunk_top_k,
        response_type=body.response_type,
    )


@router.post("/query", response_model=QueryResponse, summary="Ask the knowledge base")
async def query(
    body: QueryRequest, tenant: TenantDep, ingestion: IngestionDep, services: ServicesDep
) -> QueryResponse:
    answer = await ingestion.query(tenant, _spec(body))
    return QueryResponse(
        response=answer,
        mode=body.mode,
        only_need_context=body.only_need_context,
        llm=llm_description(services.settings),
    )


@router.post(
    "/query/stream",
    summary='Ask the knowledge base, streamed as NDJSON lines {"response": <text piece>}',
    response_class=StreamingResponse,
)
async def query_stream(body: QueryRequest, tenant: TenantDep, ingestion: IngestionDep) -> StreamingResponse:
    pieces = await ingestion.query_stream(tenant, _spec(body))

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for piece in pieces:
                yield (json.dumps({"response": piece}) + "\n").encode()
        except ProviderError as exc:  # the status line is gone already: report in-band
            yield (json.dumps({"error": exc.message}) + "\n").encode()
        finally:
            await pieces.aclose()  # gives the tenant's engine back even if the client went away

    return StreamingResponse(lines(), media_type="application/x-ndjson")
