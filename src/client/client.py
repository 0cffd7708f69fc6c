"""Compatibility module: the clients used to live here. Import from `src.client` instead."""

from .aio import AsyncRagClient
from .core import DEFAULT_URL, FINAL_STATUSES, RagApiError, RagConnectionError, RagError, RagTimeoutError
from .sync import RagClient

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "AsyncRagClient",
    "RagApiError",
    "RagClient",
    "RagConnectionError",
    "RagError",
    "RagTimeoutError",
]
