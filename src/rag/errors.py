"""What can go wrong when the service asks a knowledge base something, in domain words.

The HTTP layer maps each class to a status and a stable code in its one table (`api/errors.py`),
like the service layer's errors (`src/ingestion/errors.py`); both derive from
`src.core.errors.DomainError`. `IndexFailed` is different: it ends a *task*, not a request, so the
task runner classifies it (`is_transient`) instead of the HTTP layer.
"""

from __future__ import annotations

import sqlite3

from src.core.errors import DomainError
from src.rag.parsing.content import DocumentParseError


class KnowledgeBaseError(DomainError):
    """Base of the knowledge base's expected failures."""


class ProviderError(KnowledgeBaseError):
    """The LLM/embedding provider (or LightRAG around it) failed to answer a query."""


class QueryTimeout(KnowledgeBaseError):
    """A query delegated to the workers (ROLE=api) found no answer within QUERY_TIMEOUT_SECONDS."""


class NotInThisRole(KnowledgeBaseError):
    """This instance's role cannot do it (ROLE=api with process-local knowledge bases cannot write
    into them); context: role."""


class KnowledgeBaseUnavailable(KnowledgeBaseError):
    """The tenant's knowledge base cannot be opened as configured (e.g. it was indexed with another
    embedding model); an operator must fix the configuration."""


class WorkspaceOwnedElsewhere(KnowledgeBaseUnavailable):
    """Several instances share the knowledge bases and another one owns this tenant's workspace:
    only that one may write into it (a retry may land on it or find it free)."""


class GraphEditRefused(KnowledgeBaseError):
    """A knowledge-graph edit that cannot be made as asked (unknown entity, name taken, ...)."""


class GraphItemNotFound(KnowledgeBaseError):
    """The entity or relation named does not exist in the knowledge graph."""


class IndexFailed(Exception):
    """The document could not be indexed; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


#: Substrings of a failure message that mean the provider, not the document, failed.
_TRANSIENT_MARKERS = (
    "ratelimit",
    "rate limit",
    "429",
    "timeout",
    "timed out",
    "connection",
    "apiconnectionerror",
    "internalservererror",
    "serviceunavailable",
    "service unavailable",
    "502",
    "503",
    "504",
    "overloaded",
    "temporarily",
)


def is_transient_message(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _TRANSIENT_MARKERS)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed indexing or query attempt may succeed when retried: a document that cannot
    be parsed never will; a provider that timed out or refused for load may."""
    if isinstance(exc, IndexFailed):
        return exc.transient
    if isinstance(exc, DocumentParseError):
        return False
    if isinstance(exc, sqlite3.OperationalError):
        # The embedded store's flush failed ("disk I/O error", "database is locked", "database or
        # disk is full"): the machine, not the document; retried with backoff up to MAX_ATTEMPTS.
        return True
    return is_transient_message(f"{type(exc).__name__}: {exc}")
