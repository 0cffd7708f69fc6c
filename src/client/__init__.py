"""Python clients and the `ragsvc` CLI of the RAG ingestion service.

Self-contained (imports nothing else from this repository, only httpx; the CLI adds typer and rich),
so the folder can be vendored. Layout: core.py (errors, requests, decoding; no I/O), sse.py (event
stream parser and the wait-for-a-task steps; no I/O), operations.py (every API operation, written
once), transport.py + sync.py + aio.py (thin httpx shells), cli*.py (`ragsvc`).
"""

from .aio import AsyncRagClient
from .core import (
    DEFAULT_URL,
    FINAL_STATUSES,
    QUERY_MODES,
    BatchOptions,
    QueryOptions,
    RagApiError,
    RagConnectionError,
    RagError,
    RagTimeoutError,
    SubmitOptions,
    new_idempotency_key,
)
from .sync import RagClient

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "QUERY_MODES",
    "BatchOptions",
    "AsyncRagClient",
    "QueryOptions",
    "RagApiError",
    "RagClient",
    "RagConnectionError",
    "RagError",
    "RagTimeoutError",
    "SubmitOptions",
    "new_idempotency_key",
]
