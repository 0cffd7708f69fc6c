"""The domain-error table of api/errors.py: every domain error has an HTTP answer, and the answers
keep the public JSON shape, codes and Retry-After. A bare FastAPI app, no Redis or LightRAG."""

from __future__ import annotations

import inspect

import httpx
import pytest
from fastapi import FastAPI

from api.errors import DOMAIN_ERRORS, http_error_for, install_error_handlers
from src.core.errors import DomainError
from src.ingestion import errors as domain
from src.rag import errors as kb

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

#: Every domain error of the service layer and of the knowledge-base room (not their bases).
DOMAIN_CLASSES = [
    cls
    for module in (domain, kb)
    for _, cls in inspect.getmembers(module, inspect.isclass)
    if issubclass(cls, DomainError) and cls not in (DomainError, domain.IngestionError, kb.KnowledgeBaseError)
]


def test_both_rooms_errors_are_listed() -> None:
    assert domain.TaskNotFound in DOMAIN_CLASSES and kb.ProviderError in DOMAIN_CLASSES


#: The only 5xx a domain error may answer with: a provider or peer failed (502, 504), the service
#: cannot serve this here and now (503), the disk is full (507). Everything else is the client's to fix.
SERVER_SIDE = {502, 503, 504, 507}


@pytest.mark.parametrize("cls", DOMAIN_CLASSES, ids=lambda c: c.__name__)
async def test_every_domain_error_has_an_http_answer(cls: type[DomainError]) -> None:
    """Catches a new domain error that falls through to the 500 fallback or borrows its parent's
    code (clients could not tell the two apart), a client error answered as a server one, and a
    "try again later" answer (429, 507) without Retry-After: rendered by the app's real handlers."""
    assert cls in DOMAIN_ERRORS, f"{cls.__name__} has no entry of its own in api/errors.py"
    answer = http_error_for(cls("x"))
    assert answer is DOMAIN_ERRORS[cls]
    assert 400 <= answer.status < 500 or answer.status in SERVER_SIDE, answer
    response = await call(cls("what went wrong", task_id="t-9"))
    assert response.status_code == answer.status
    assert response.json() == {"detail": "what went wrong", "code": answer.code, "task_id": "t-9"}
    retry_after = response.headers.get("retry-after")
    assert retry_after == (None if answer.retry_after is None else str(answer.retry_after))
    if answer.status in (429, 507):
        assert retry_after is not None and int(retry_after) > 0, answer
    assert (response.headers.get("connection") == "close") == answer.close


def test_codes_are_unique_per_class() -> None:
    """Catches two errors answering with the same code, which clients could not tell apart."""
    codes = [answer.code for answer in DOMAIN_ERRORS.values()]
    assert len(codes) == len(set(codes))


async def call(exc: Exception) -> httpx.Response:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/boom")


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (domain.QueueFull("full"), 429, "queue_full", "30"),
        (domain.TenantQueueFull("full"), 429, "tenant_queue_full", "30"),
        (domain.TooLarge("big"), 413, "too_large", None),
        (domain.ContentMismatch("renamed"), 415, "content_mismatch", None),
        (domain.NotMultipart("form"), 400, "not_multipart", None),
        (domain.DeleteFailed("busy"), 502, "delete_failed", None),
        (kb.WorkspaceOwnedElsewhere("owned"), 503, "workspace_owned_elsewhere", "5"),
        (kb.NotInThisRole("api"), 503, "not_in_this_role", None),
    ],
)
async def test_domain_errors_answer_with_status_code_and_retry_after(exc, status, code, retry_after) -> None:
    """Catches a wrong status/code in the table, or a lost Retry-After on the 429s."""
    response = await call(exc)
    assert response.status_code == status
    assert response.json() == {"detail": exc.message, "code": code}
    assert response.headers.get("retry-after") == retry_after


async def test_context_is_part_of_the_body() -> None:
    """Catches the ids a client needs (the task holding a document, a task's status) being dropped."""
    conflict = await call(domain.DocConflict("held", task_id="t-1"))
    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "held", "code": "doc_in_progress", "task_id": "t-1"}
    finished = await call(domain.NotCancellable("done", status="completed"))
    assert finished.json() == {"detail": "done", "code": "task_finished", "status": "completed"}


async def test_an_unmapped_domain_error_is_a_generic_500() -> None:
    """The fallback stays safe (no message leak) should the table ever miss a class."""

    class Unmapped(domain.IngestionError):
        pass

    response = await call(Unmapped("secret detail"))
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error" and "secret" not in response.text
