"""Query endpoints: one-shot answer, a streamed (NDJSON) answer, and a query run as a task
(202 + task id; the use-cases live in KnowledgeService and SubmissionService; this module only shapes
the HTTP answers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.body_limits import BoundedJsonRoute
from api.deps import CallbackUrlQuery, KnowledgeDep, PriorityQuery, ServicesDep, SubmissionDep, TenantDep
from api.schemas import QueryDataOut, QueryOptions, QueryRequest, QueryResponse, QueryTaskAccepted
from src.core.defaults import DEFAULT_PRIORITY
from src.ingestion.submission import SubmitOptions
from src.rag.errors import ProviderError
from src.rag.knowledge import ChatMessage, QuerySpec, Reference, StreamedAnswer
from src.rag.llm import llm_description

router = APIRouter(tags=["query"], route_class=BoundedJsonRoute)


def query_spec(text: str, mode: str, options: QueryOptions) -> QuerySpec:
    """The request's question and options in the knowledge base's own types."""
    return QuerySpec(
        text=text,
        mode=mode,
        only_need_context=options.only_need_context,
        top_k=options.top_k,
        chunk_top_k=options.chunk_top_k,
        response_type=options.response_type,
        only_need_prompt=options.only_need_prompt,
        user_prompt=options.user_prompt,
        conversation_history=tuple(ChatMessage(m.role, m.content) for m in options.conversation_history),
        hl_keywords=tuple(options.hl_keywords),
        ll_keywords=tuple(options.ll_keywords),
        max_entity_tokens=options.max_entity_tokens,
        max_relation_tokens=options.max_relation_tokens,
        max_total_tokens=options.max_total_tokens,
        enable_rerank=options.enable_rerank,
        include_references=options.include_references,
        include_chunk_content=options.include_chunk_content,
    )


def _spec(body: QueryRequest) -> QuerySpec:
    return query_spec(body.query, body.mode, body)


def references_out(references: tuple[Reference, ...]) -> list[dict]:
    return [r.as_dict() for r in references]


@router.post("/query", response_model=QueryResponse, summary="Ask the knowledge base")
async def query(
    body: QueryRequest, tenant: TenantDep, knowledge: KnowledgeDep, services: ServicesDep
) -> QueryResponse:
    """With `include_references`, `references` lists the sources behind the answer (LightRAG's
    numbered references to file paths; with `include_chunk_content`, each one's chunk texts)."""
    result = await knowledge.query(tenant, _spec(body), body.attached_images())
    return QueryResponse(
        response=result.response,
        mode=body.mode,
        only_need_context=body.only_need_context,
        llm=llm_description(services.settings),
        references=references_out(result.references) if body.include_references else None,
    )


@router.post(
    "/query/data",
    response_model=QueryDataOut,
    summary="What retrieval finds for a question: entities, relationships, chunks, references",
)
async def query_data(body: QueryRequest, tenant: TenantDep, knowledge: KnowledgeDep) -> QueryDataOut:
    """LightRAG Server's `/query/data`: the structured retrieval behind an answer, without
    generating one (no LLM call besides keyword extraction, which `hl_keywords`/`ll_keywords` skip)."""
    data = await knowledge.query_data(tenant, _spec(body))
    return QueryDataOut(**data.as_dict())


def ndjson_lines(answer: StreamedAnswer, include_references: bool) -> AsyncIterator[bytes]:
    """LightRAG Server's stream: `{"references": [...]}` first (when asked for), then one
    `{"response": piece}` line per piece; a failure after the status line as `{"error": ...}`."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            if include_references:
                yield (json.dumps({"references": references_out(answer.references)}) + "\n").encode()
            async for piece in answer.pieces:
                yield (json.dumps({"response": piece}) + "\n").encode()
        except ProviderError as exc:  # the status line is gone already: report in-band
            yield (json.dumps({"error": exc.message}) + "\n").encode()
        finally:
            await answer.pieces.aclose()  # gives the tenant's engine back even if the client went away

    return lines()


@router.post(
    "/query/stream",
    summary='Ask the knowledge base, streamed as NDJSON lines {"response": <text piece>}',
    response_class=StreamingResponse,
)
async def query_stream(body: QueryRequest, tenant: TenantDep, knowledge: KnowledgeDep) -> StreamingResponse:
    """With `include_references`, the first line is `{"references": [...]}`."""
    answer = await knowledge.query_stream(tenant, _spec(body), body.attached_images())
    return StreamingResponse(ndjson_lines(answer, body.include_references), media_type="application/x-ndjson")


ASYNC_DOC = """Run the query as a task: **202** with `task_id`, `status_url` (also in `Location`) at once.

`GET /task/{task_id}` shows `kind: "query"`; once completed, `result.response` holds the answer
(and `result.context` the retrieved context when `only_need_context`). Query tasks wait in a lane
of their own (MAX_CONCURRENT_QUERIES slots), never behind document ingestion; their provider calls
run at the task's `priority`. `DELETE /task/{task_id}` cancels one, waiting or running. 429 when
MAX_PENDING_QUERIES (or the tenant's TENANT_MAX_PENDING_QUERIES) queries already wait.
"""


@router.post(
    "/query/async",
    status_code=202,
    response_model=QueryTaskAccepted,
    summary="Ask the knowledge base in the background (202 + task id)",
    description=ASYNC_DOC,
)
async def query_async(
    body: QueryRequest,
    request: Request,
    tenant: TenantDep,
    submission: SubmissionDep,
    priority: PriorityQuery = DEFAULT_PRIORITY,
    callback_url: CallbackUrlQuery = None,
) -> JSONResponse:
    options = SubmitOptions(callback_url=callback_url, priority=priority)
    record = await submission.submit_query(tenant, _spec(body), options, body.attached_images())
    status_url = str(request.url_for("get_task", task_id=record.task_id).path)
    accepted = QueryTaskAccepted(
        message="Query accepted; poll status_url for the answer",
        task_id=record.task_id,
        status=record.status.value,
        priority=record.priority,
        status_url=status_url,
    )
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": status_url})
