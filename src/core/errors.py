"""The base of every expected failure of a use-case, in domain words (no HTTP status codes).

Both the service layer (`src/ingestion/errors.py`) and the knowledge-base room (`src/rag/errors.py`)
raise subclasses; the HTTP layer maps every class to a status and a stable code in one table
(`api/errors.py`). The base lives here, below both, so neither has to import the other.
"""

from __future__ import annotations


class DomainError(Exception):
    """An expected failure: a human message and, in ``context``, the ids a client needs to act on
    it (the task that holds a document, the status of a task that cannot be cancelled...)."""

    def __init__(self, message: str, **context: object):
        super().__init__(message)
        self.message = message
        self.context = context
