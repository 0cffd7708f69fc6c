"""One JSON error shape for every failure: {"detail": <message>, "code": <stable code>, ...context}.

`DOMAIN_ERRORS` is the one table from a domain error (`src.ingestion.errors`, `src.rag.errors`) to
its HTTP status and stable code: "where is the 413?" is answered here. Clients get a 4xx for anything they can
fix, 503 + Retry-After when Redis is unreachable, and never a stack trace. `ApiError` remains
for the few errors that only exist in HTTP (authentication, rate limits, the admin API).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from src.core.errors import DomainError
from src.ingestion import errors as domain
from src.rag import errors as kb
from src.tenancy.usage import TokenBudgetExhausted

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by routes for an expected client-facing error."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: object,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    retry_after: int | None = None
    #: Close the connection after answering (the request body was not read to its end).
    close: bool = False


#: Domain error -> HTTP. A subclass without an entry answers like its nearest listed parent.
DOMAIN_ERRORS: dict[type[DomainError], HttpError] = {
    domain.InvalidRequest: HttpError(422, "invalid_request"),
    domain.InvalidDocId: HttpError(422, "invalid_doc_id"),
    domain.InvalidCallbackUrl: HttpError(422, "invalid_callback_url"),
    domain.InvalidIdempotencyKey: HttpError(422, "invalid_idempotency_key"),
    domain.IdempotencyKeyReused: HttpError(422, "idempotency_key_reused"),
    domain.QueryTooLong: HttpError(422, "query_too_long"),
    domain.InvalidImage: HttpError(400, "invalid_image"),
    domain.TooManyImages: HttpError(422, "too_many_images"),
    domain.ImageTooLarge: HttpError(413, "image_too_large"),
    domain.MalformedUpload: HttpError(400, "bad_multipart"),
    domain.NotMultipart: HttpError(400, "not_multipart"),
    domain.MissingFilePart: HttpError(400, "missing_file"),
    domain.TruncatedUpload: HttpError(400, "truncated"),
    domain.MultipleFileParts: HttpError(400, "multiple_files"),
    domain.PartHeadersTooLarge: HttpError(400, "part_headers_too_large"),
    domain.UndecodablePartHeader: HttpError(400, "part_header_not_utf8"),
    domain.UploadTimeout: HttpError(408, "upload_timeout", close=True),
    domain.EmptyUpload: HttpError(400, "empty_file"),
    domain.EmptyText: HttpError(400, "empty_text"),
    domain.TooLarge: HttpError(413, "too_large"),
    domain.TooManyFiles: HttpError(413, "too_many_files"),
    domain.UnsupportedType: HttpError(415, "unsupported_type"),
    domain.ContentMismatch: HttpError(415, "content_mismatch"),
    domain.QueueFull: HttpError(429, "queue_full", retry_after=30),
    domain.TenantQueueFull: HttpError(429, "tenant_queue_full", retry_after=30),
    domain.QueryQueueFull: HttpError(429, "query_queue_full", retry_after=5),
    domain.TenantQueryQueueFull: HttpError(429, "tenant_query_queue_full", retry_after=5),
    domain.DocConflict: HttpError(409, "doc_in_progress"),
    domain.DocExists: HttpError(409, "doc_exists"),
    domain.DocDeleting: HttpError(409, "doc_deleting", retry_after=5),
    domain.InsufficientStorage: HttpError(507, "insufficient_storage", retry_after=60),
    domain.TaskExists: HttpError(409, "task_exists"),
    domain.NotCancellable: HttpError(409, "task_finished"),
    domain.TaskNotFound: HttpError(404, "task_not_found"),
    domain.BatchNotFound: HttpError(404, "batch_not_found"),
    TokenBudgetExhausted: HttpError(402, "token_budget_exhausted"),
    domain.DocumentNotFound: HttpError(404, "doc_not_found"),
    kb.ProviderError: HttpError(502, "query_failed"),
    kb.GraphEditRefused: HttpError(400, "graph_edit_refused"),
    kb.GraphItemNotFound: HttpError(404, "graph_item_not_found"),
    domain.DeleteFailed: HttpError(502, "delete_failed"),
    domain.DeleteTimedOut: HttpError(504, "delete_timeout"),
    kb.QueryTimeout: HttpError(504, "query_timeout"),
    kb.NotInThisRole: HttpError(503, "not_in_this_role"),
    kb.KnowledgeBaseUnavailable: HttpError(503, "knowledge_base_unavailable"),
    kb.WorkspaceOwnedElsewhere: HttpError(503, "workspace_owned_elsewhere", retry_after=5),
}


def http_error_for(exc: DomainError) -> HttpError | None:
    """The answer for ``exc``: its class's entry, else its nearest listed parent's."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]  # type: ignore[index]
    return None


def error_entry(exc: DomainError) -> dict[str, object]:
    """One failed item of a request that carries several (a batch's file): the status and code it
    would have been answered with on its own, and the message."""
    http = http_error_for(exc) or HttpError(500, "internal_error")
    return {"status_code": http.status, "error": http.code, "detail": exc.message}


def error_response(
    status_code: int, code: str, message: str, headers: dict | None = None, **extra
) -> JSONResponse:
    return JSONResponse({"detail": message, "code": code, **extra}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers, **exc.extra)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        http = http_error_for(exc)
        if http is None:  # a test keeps this unreachable: every domain error is in the table
            log.error("domain error %s has no HTTP mapping: %s", type(exc).__name__, exc)
            return error_response(500, "internal_error", "internal server error")
        headers = {"Retry-After": str(http.retry_after)} if http.retry_after is not None else {}
        if http.close:
            headers["Connection"] = "close"
        return error_response(http.status, http.code, exc.message, headers=headers or None, **exc.context)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return error_response(422, "validation_error", summary or "invalid request", errors=errors)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # An everyday event (a closed laptop, a cancelled upload), not a fault of the service: what
        # the request had stored is already removed by the code that was reading its body.
        log.info(
            "client disconnected before its request body was complete: %s %s",
            request.method,
            request.url.path,
        )
        return error_response(
            400, "client_disconnected", "the client went away mid-request", headers={"Connection": "close"}
        )

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("redis unavailable: %s", exc)
        return error_response(
            503,
            "store_unavailable",
            "task store (Redis) is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal_error", "internal server error")
