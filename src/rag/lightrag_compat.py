"""Every LightRAG internal this service relies on, named once, each with why we need it.

Supported release: see `SUPPORTED_LIGHTRAG`. tests/test_lightrag_contract.py checks each reach-in
here against the installed LightRAG (name, signature, behaviour), so an upgrade that changes one
fails there, by name, instead of somewhere in the service.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

# ----------------------------------------------------------------------------- lock state
#: The name LightRAG gives the ContextVar in which a `NamespaceLock` (e.g. a JSON storage's
#: `_storage_lock`) marks itself held. Why we care: LightRAG clears it only after its release, which
#: awaits a shield; a cancel landing there (a user's cancel of a running task) leaves the var set in
#: the cancelled task's context, and the next use of the same lock in that context raises
#: `RuntimeError('NamespaceLock already acquired in current coroutine context')`: the purge after a
#: cancel crashed and the task stayed `cancelling` until its lease expired twice.
LOCK_CONTEXT_VAR = "lock_ctx"


def _context_without_lock_state() -> contextvars.Context:
    """A copy of the current context (log fields and all) minus LightRAG's lock-held markers."""
    clean = contextvars.Context()
    for var, value in contextvars.copy_context().items():
        if var.name != LOCK_CONTEXT_VAR:
            clean.run(var.set, value)
    return clean


async def in_own_task(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` in a child task started without LightRAG's lock state: lock state a cancel
    strands there dies with it. Cancelling the caller cancels the child (an awaited task is
    cancelled with its awaiter)."""
    return await asyncio.create_task(work, context=_context_without_lock_state())
