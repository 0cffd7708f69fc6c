"""Batch endpoints: many files in one request, one task per accepted file, one status for them all.

HTTP only: the use-cases are `BatchService.submit/status/cancel` (src/ingestion/batches.py). A
refused file is described by the same status and code `POST /insert` would answer it with
(`api.errors.error_entry`).
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import BatchesDep, CallbackUrlQuery, PriorityQuery, TenantDep
from api.errors import error_entry, error_response
from api.schemas import BatchAccepted, BatchCancelResult, BatchFileError, BatchView
from api.views import iso
from src.core.defaults import DEFAULT_PRIORITY
from src.ingestion.submission import SubmitOptions
from src.tasks.models import TaskStatus

router = APIRouter(tags=["batches"])

BATCH_DOC = """Stream several documents (one multipart part named `files` per document) and queue
each for indexing; the document ids are derived from the content.

Each file gets the checks and limits of `POST /insert` (size limit enforced while streaming, type
and content sniffing, empty file, room on disk). A file that fails them is listed in `errors` with
the status and code `/insert` would have answered (413 `too_large`, 415 `unsupported_type`, 400
`empty_file`...), and the other files are accepted: **202** with `batch_id`, `status_url` and one
entry per accepted file in `tasks` (a file whose content is already a task points to that task,
`duplicate: true`).

The request as a whole is refused, and nothing of it is kept, for more than `MAX_BATCH_FILES` file
parts (413 `too_many_files`), a body over `MAX_BATCH_BYTES` (413), a malformed or truncated
multipart body (400), part headers and other fields over their bound (400
`part_headers_too_large`), no `files` part (400 `missing_file`), a full queue (429). When no file
at all is accepted the answer is `batch_rejected` with the `errors`, and the status the files'
errors share (e.g. 413 when every file was too large), else 400. Other form fields are ignored.
"""

_MULTIPART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        }
    },
}


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchAccepted,
    summary="Upload several documents at once (202 pattern)",
    description=BATCH_DOC,
    openapi_extra={"requestBody": _MULTIPART_BODY},
)
async def submit_batch(
    request: Request,
    tenant: TenantDep,
    batches: BatchesDep,
    callback_url: CallbackUrlQuery = None,
    priority: PriorityQuery = DEFAULT_PRIORITY,
) -> JSONResponse:
    options = SubmitOptions(callback_url=callback_url, priority=priority)
    submitted = await batches.submit(tenant, request.headers, request.stream(), options, error_entry)
    if submitted.record is None:
        shared = {error["status_code"] for error in submitted.errors}
        return error_response(
            shared.pop() if len(shared) == 1 else 400,
            "batch_rejected",
            "no file of the batch was accepted; see errors",
            errors=submitted.errors,
        )
    batch_id = submitted.record.batch_id
    status_url = str(request.url_for("get_batch", batch_id=batch_id).path)
    accepted = len(submitted.tasks)
    body = BatchAccepted(
        message=f"{accepted} file(s) accepted, {len(submitted.errors)} refused",
        batch_id=batch_id,
        status_url=status_url,
        tasks=submitted.tasks,
        errors=submitted.errors,
    )
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})


@router.get(
    "/batch/{batch_id}",
    response_model=BatchView,
    name="get_batch",
    summary="Status of a batch: counts per status, overall progress, each file",
)
async def get_batch(batch_id: str, tenant: TenantDep, batches: BatchesDep) -> BatchView:
    """Read from the batch's tasks: `counts` per status (a task whose record expired counts as
    `expired`), `progress` (the mean over the files, finished ones at 100), `done` once every task
    is final. 404 for an unknown, expired or another tenant's batch."""
    status = await batches.status(tenant, batch_id)
    return BatchView(
        batch_id=batch_id,
        created_at=iso(status.record.created_at) or "",
        total=len(status.tasks),
        counts=status.counts,
        progress=status.progress,
        done=status.done,
        tasks=status.tasks,
        errors=[BatchFileError(**error) for error in status.record.errors],
    )


@router.delete(
    "/batch/{batch_id}",
    response_model=BatchCancelResult,
    summary="Cancel every task of a batch still pending or running",
    responses={202: {"model": BatchCancelResult, "description": "some running tasks are being stopped"}},
)
async def cancel_batch(batch_id: str, tenant: TenantDep, batches: BatchesDep) -> JSONResponse:
    """Each task of the batch (a `duplicate` entry's task too) goes through the cancel of `DELETE
    /task/{id}`: pending → `cancelled`, running → `cancelling` (answer 202 then; 200 when nothing is
    still stopping); finished ones are left as they are (`finished`), expired ones reported
    `expired`."""
    cancellation = await batches.cancel(tenant, batch_id)
    counts = Counter(task["outcome"] for task in cancellation.tasks)
    body = BatchCancelResult(
        message=f"{counts['cancelled']} task(s) cancelled, {counts['cancelling']} being stopped",
        batch_id=batch_id,
        counts=dict(counts),
        tasks=cancellation.tasks,
    )
    code = 202 if counts[TaskStatus.CANCELLING.value] else 200
    return JSONResponse(body.model_dump(), status_code=code)
