"""LightRAG Server's query routes: `/query`, `/query/stream`, `/query/data`, with its request body
(`QueryRequest`: nullable options, mode `mix` and references included by default) and its answers
(`{response, references}`; NDJSON with the references first)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.body_limits import BoundedJsonRoute
from api.deps import ServicesDep
from api.lightrag.auth import CompatTenantDep
from api.lightrag.mount import PREFIX
from api.routes.query import ndjson_lines, query_spec, references_out
from api.schemas import (
    MAX_CONTEXT_TOKENS,
    MAX_HISTORY_MESSAGES,
    MAX_KEYWORDS,
    MAX_USER_PROMPT_CHARS,
    ChatMessage,
    Keyword,
    QueryDataOut,
    QueryOptions,
)
from src.rag.knowledge import QuerySpec

router = APIRouter(prefix=PREFIX, tags=["lightrag: query"], route_class=BoundedJsonRoute)

#: LightRAG Server's answer when nothing was found and nothing generated.
NO_CONTEXT = "No relevant context found for the query."


class LightRagQueryRequest(BaseModel):
    """LightRAG Server 1.4.16's `QueryRequest` (same names, defaults and nullability), bounded."""

    query: str = Field(min_length=3, max_length=8000)
    mode: Literal["local", "global", "hybrid", "naive", "mix", "bypass"] = "mix"
    only_need_context: bool | None = None
    only_need_prompt: bool | None = None
    response_type: str | None = Field(default=None, min_length=1, max_length=100)
    top_k: int | None = Field(default=None, ge=1, le=200)
    chunk_top_k: int | None = Field(default=None, ge=1, le=200)
    max_entity_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    max_relation_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    max_total_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    hl_keywords: list[Keyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    ll_keywords: list[Keyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    conversation_history: list[ChatMessage] | None = Field(default=None, max_length=MAX_HISTORY_MESSAGES)
    user_prompt: str | None = Field(default=None, max_length=MAX_USER_PROMPT_CHARS)
    enable_rerank: bool | None = None
    include_references: bool | None = True
    include_chunk_content: bool | None = False
    stream: bool | None = True

    def spec(self) -> QuerySpec:
        options = QueryOptions(
            only_need_context=bool(self.only_need_context),
            only_need_prompt=bool(self.only_need_prompt),
            top_k=self.top_k,
            chunk_top_k=self.chunk_top_k,
            response_type=self.response_type,
            max_entity_tokens=self.max_entity_tokens,
            max_relation_tokens=self.max_relation_tokens,
            max_total_tokens=self.max_total_tokens,
            hl_keywords=self.hl_keywords,
            ll_keywords=self.ll_keywords,
            conversation_history=self.conversation_history or [],
            user_prompt=self.user_prompt,
            enable_rerank=self.enable_rerank,
            include_references=bool(self.include_references),
            include_chunk_content=bool(self.include_chunk_content),
        )
        return query_spec(self.query.strip(), self.mode, options)


@router.post("/query", summary="LightRAG Server: answer a question ({response, references})")
async def query(body: LightRagQueryRequest, tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    result = await services.knowledge.query(tenant, body.spec())
    references = references_out(result.references) if body.include_references else None
    return {"response": result.response or NO_CONTEXT, "references": references}


@router.post(
    "/query/stream",
    summary="LightRAG Server: answer as NDJSON ({references} first, then {response} pieces)",
    response_class=StreamingResponse,
)
async def query_stream(
    body: LightRagQueryRequest, tenant: CompatTenantDep, services: ServicesDep
) -> StreamingResponse:
    spec = body.spec()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if body.stream is False:
        result = await services.knowledge.query(tenant, spec)
        line: dict[str, Any] = {"response": result.response or NO_CONTEXT}
        if body.include_references:
            line["references"] = references_out(result.references)

        async def one() -> AsyncIterator[bytes]:
            yield (json.dumps(line) + "\n").encode()

        return StreamingResponse(one(), media_type="application/x-ndjson", headers=headers)
    answer = await services.knowledge.query_stream(tenant, spec)
    lines = ndjson_lines(answer, bool(body.include_references))
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


@router.post(
    "/query/data", response_model=QueryDataOut, summary="LightRAG Server: the retrieval behind an answer"
)
async def query_data(
    body: LightRagQueryRequest, tenant: CompatTenantDep, services: ServicesDep
) -> QueryDataOut:
    data = await services.knowledge.query_data(tenant, body.spec())
    return QueryDataOut(**data.as_dict())
