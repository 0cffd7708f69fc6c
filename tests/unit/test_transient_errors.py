"""Which failures of an attempt are retried (transient) and which end the task at once."""

from __future__ import annotations

import sqlite3

import pytest

from src.rag.errors import IndexFailed, is_transient
from src.rag.parsing.content import DocumentParseError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize("message", ["disk I/O error", "database is locked", "database or disk is full"])
def test_a_failed_flush_of_the_embedded_store_is_retried(message: str) -> None:
    """Catches a task failed for good because the SQLite store's commit hit a full or failing disk
    (no transient marker matches "disk I/O error"): the document is fine, a later attempt may pass."""
    assert is_transient(sqlite3.OperationalError(message))


def test_the_documents_own_faults_and_programming_errors_are_not_retried() -> None:
    """Catches a retry of what can never succeed (wasted attempts and LLM calls)."""
    assert not is_transient(DocumentParseError("not a PDF"))
    assert not is_transient(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_transient(ValueError("bad input"))
    assert is_transient(IndexFailed("provider down", transient=True))
    assert is_transient(RuntimeError("RateLimitError: 429 Too Many Requests"))
