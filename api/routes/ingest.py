"""Ingestion endpoints: accept a document, persist a task, answer 202 before any indexing work.

HTTP only: the use-cases are `SubmissionService.receive_upload/submit_file/submit_text`; their
domain errors become HTTP answers through the table in `api/errors.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from api.body_limits import BoundedJsonRoute
from api.deps import CallbackUrlQuery, PriorityQuery, SubmissionDep, TasksDep, TenantDep
from api.schemas import TaskAccepted, TaskView, TextInsert
from api.views import task_view
from src.core.defaults import DEFAULT_PRIORITY
from src.ingestion.submission import Accepted, SubmitOptions
from src.ingestion.tasks import TaskService
from src.tasks.models import TaskStatus

router = APIRouter(tags=["ingest"], route_class=BoundedJsonRoute)

UPLOAD_DOC = """Stream one document (multipart field `file`) to disk and queue it for indexing.

Answers **202** with `task_id` and `status_url` as soon as the file is stored and the task is
persisted. 413 when the file exceeds the size limit (enforced while streaming), 400 for an
empty file or malformed multipart body, 415 for an unsupported type or content that does
not match its extension, 409 when the document id is already indexed or being indexed.

With `?wait=<seconds>` (0-60) a new task is waited for: **200** with its final view (the body of
`GET /task/{id}`) when it ends within that time, else **202** as without a wait. The task is the
same either way; a client that disconnects while waiting does not cancel it.
"""

_IDEMPOTENCY_DOC = "retries with the same key return the same task"
#: Longest `?wait=` a request may ask for (seconds).
MAX_WAIT_SECONDS = 60.0
_WAIT_DOC = (
    "seconds (max 60) to wait for the new task to end: 200 with its final view if it does, else 202; "
    "0 = answer at once"
)
_WAIT_RESPONSES: dict[int | str, dict] = {
    200: {
        "model": TaskView | TaskAccepted,
        "description": "with `wait`: the task ended within the wait (its final view, as GET /task/{id}); "
        "without: a duplicate of a completed task (the acceptance body, `duplicate: true`)",
    }
}


def _wait_query() -> float:
    return Query(default=0.0, ge=0.0, le=MAX_WAIT_SECONDS, description=_WAIT_DOC)


async def _answer_or_wait(request: Request, tasks: TaskService, accepted: Accepted, wait: float) -> Response:
    """Without a wait (or for a duplicate, which keeps today's codes) the 202/200 acceptance;
    else the final view if the task ends within ``wait`` seconds, else the same 202.

    The task is persisted before the wait starts: if the client goes away (or this request is
    cancelled) only the waiting stops."""
    if wait > 0 and not accepted.duplicate:
        final = await tasks.wait_final(accepted.record.task_id, wait)
        if final is not None:
            return Response(task_view(final).model_dump_json(), media_type="application/json")
    return _answer(request, accepted)


def _answer(request: Request, accepted: Accepted) -> JSONResponse:
    """202 for a new task; for a known one, 200 when it already completed, else 202."""
    record = accepted.record
    status_url = str(request.url_for("get_task", task_id=record.task_id).path)
    body = TaskAccepted(
        message=(
            "An identical request is already known; no new task was created"
            if accepted.duplicate
            else "File uploaded successfully, processing started"
        ),
        task_id=record.task_id,
        doc_id=record.doc_id,
        filename=record.filename,
        file_size=record.file_size,
        status=record.status.value,
        status_url=status_url,
        duplicate=accepted.duplicate,
    )
    code = 200 if accepted.duplicate and record.status == TaskStatus.COMPLETED else 202
    return JSONResponse(body.model_dump(), status_code=code, headers={"Location": status_url})


@router.post(
    "/insert",
    status_code=202,
    response_model=TaskAccepted,
    summary="Upload a document (202 pattern)",
    description=UPLOAD_DOC,
    responses=_WAIT_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def insert_document(
    request: Request,
    tenant: TenantDep,
    submission: SubmissionDep,
    tasks: TasksDep,
    doc_id: str | None = Query(default=None, description="stable id; default: derived from the content hash"),
    callback_url: CallbackUrlQuery = None,
    priority: PriorityQuery = DEFAULT_PRIORITY,
    wait: float = _wait_query(),
    idempotency_key: str | None = Header(default=None, description=_IDEMPOTENCY_DOC),
) -> Response:
    options = SubmitOptions(doc_id, callback_url, priority, idempotency_key)
    saved = await submission.receive_upload(tenant, request.headers, request.stream(), options)
    return await _answer_or_wait(request, tasks, await submission.submit_file(tenant, saved, options), wait)


router.add_api_route(
    "/documents",
    insert_document,
    methods=["POST"],
    status_code=202,
    response_model=TaskAccepted,
    summary="Upload a document (alias of POST /insert)",
    description=UPLOAD_DOC,
    responses=_WAIT_RESPONSES,
    openapi_extra=router.routes[-1].openapi_extra,
)


@router.post(
    "/insert/text",
    status_code=202,
    response_model=TaskAccepted,
    summary="Queue raw text for indexing",
    description="The rules of `POST /insert` (202; `?wait=<seconds>` → 200 with the final view when "
    "the task ends within that time), for a JSON body carrying the text.",
    responses=_WAIT_RESPONSES,
)
async def insert_text(
    body: TextInsert,
    request: Request,
    tenant: TenantDep,
    submission: SubmissionDep,
    tasks: TasksDep,
    wait: float = _wait_query(),
    idempotency_key: str | None = Header(default=None, description=_IDEMPOTENCY_DOC),
) -> Response:
    options = SubmitOptions(body.doc_id, body.callback_url, body.priority, idempotency_key)
    accepted = await submission.submit_text(tenant, body.text, options, body.filename)
    return await _answer_or_wait(request, tasks, accepted, wait)
