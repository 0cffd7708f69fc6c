"""Query endpoints: one-shot answer, a streamed (NDJSON) answer, and a query run as a task
(202 + task id; the use-cases live in KnowledgeService and SubmissionService; this module only shapes
the HTTP answers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import CallbackUrlQuery, KnowledgeDep, PriorityQuery, ServicesDep, SubmissionDep, TenantDep
from api.schemas import QueryRequest, QueryResponse, QueryTaskAccepted
from src.core.defaults import DEFAULT_PRIORITY
from src.ingestion.submission import SubmitOptions
from src.rag.errors import ProviderError
from src.rag.knowledge import QuerySpec
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
    body: QueryRequest, tenant: TenantDep, knowledge: KnowledgeDep, services: ServicesDep
) -> QueryResponse:
    answer = await knowledge.query(tenant, _spec(body), body.attached_images())
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
async def query_stream(body: QueryRequest, tenant: TenantDep, knowledge: KnowledgeDep) -> StreamingResponse:
    pieces = await knowledge.query_stream(tenant, _spec(body), body.attached_images())

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for piece in pieces:
                yield (json.dumps({"response": piece}) + "\n").encode()
        except ProviderError as exc:  # the status line is gone already: report in-band
            yield (json.dumps({"error": exc.message}) + "\n").encode()
        finally:
            await pieces.aclose()  # gives the tenant's engine back even if the client went away

    return StreamingResponse(lines(), media_type="application/x-ndjson")


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
