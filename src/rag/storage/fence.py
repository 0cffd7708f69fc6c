"""Write fence for shared storages: refuse writes into a workspace this instance does not own.

With several instances on shared storages, only a workspace's owner may write into it
(src/ingestion/ownership.py). An owner that was stalled (SIGSTOP, frozen VM) may resume in the
middle of an entity merge, after another instance took the workspace over. Its ingestion LLM calls
are fenced already; this fence also stops its graph writes (the merge's upserts and deletions),
which need no LLM call. Storages we own call `check_write(workspace)` before each write,
`fence_llm` wraps a workspace's LLM function, and LightRAG's PostgreSQL storages check the
workspace the current task writes into (`writing_into`) before each database operation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

_fences: list[Callable[[str], bool]] = []


class OwnershipLost(asyncio.CancelledError):
    """Raised on a write (or an ingestion LLM call) into a workspace this instance no longer owns.

    A CancelledError on purpose: LightRAG catches `Exception` around a document and then records it
    FAILED - a write into a workspace that another instance may own by now. A cancellation unwinds
    the pipeline run without any more writes."""


def register_write_fence(owns_workspace: Callable[[str], bool]) -> Callable[[], None]:
    """Install a fence (this instance may write into the workspaces it returns True for); returns
    the function that removes it."""
    _fences.append(owns_workspace)

    def remove() -> None:
        if owns_workspace in _fences:
            _fences.remove(owns_workspace)

    return remove


def check_write(workspace: str) -> None:
    """Raise OwnershipLost unless no fence is installed or one of them allows ``workspace``, and
    (for the task writing into ``workspace``) unless its own guard still holds (`writing_into`)."""
    if _fences and not any(fence(workspace) for fence in _fences):
        raise OwnershipLost(f"this instance does not own workspace {workspace!r}; write refused")
    guard = _write_guard.get()
    if guard is not None and _writing_into.get() == workspace and not guard():
        raise OwnershipLost(f"this task's lock session on workspace {workspace!r} is gone; write refused")


#: Set while this task extracts a document ahead of its workspace's owner (src/ingestion/prefetch.py):
#: its extraction calls only fill the shared LLM cache, so they are allowed without ownership.
_extracting_ahead: ContextVar[bool] = ContextVar("ragsvc_extracting_ahead", default=False)


@contextlib.contextmanager
def extracting_ahead() -> Iterator[None]:
    token = _extracting_ahead.set(True)
    try:
        yield
    finally:
        _extracting_ahead.reset(token)


def fence_llm(llm: Callable[..., Any], owns: Callable[[], bool]) -> Callable[..., Any]:
    """Wrap an LLM function so that ingestion calls (extraction, gleaning, description summaries)
    of a workspace no longer owned fail at once; queries (keywords, answers) are never fenced, nor
    are the extraction calls of a document extracted ahead of its owner (`extracting_ahead`). A task
    that writes under a guard of its own (`writing_into`: a document indexed by a guest, or by the
    owner) is allowed exactly while that guard holds."""
    from src.rag.prompts import classify_prompt

    async def fenced(prompt: str, *args: Any, **kwargs: Any) -> Any:
        guard = _write_guard.get()
        if not (guard() if guard is not None else owns()):
            kind = classify_prompt(
                prompt, kwargs.get("system_prompt") or "", bool(kwargs.get("keyword_extraction"))
            )
            if kind in ("extract", "glean", "summary") and not (
                kind != "summary" and _extracting_ahead.get()
            ):
                raise OwnershipLost("this instance no longer owns the workspace; ingestion stopped")
        return await llm(prompt, *args, **kwargs)

    return fenced


#: The workspace the current task writes into (set while a document of it is indexed or purged):
#: LightRAG's own PostgreSQL storages are fenced through it (`lightrag_compat.fence_postgres`).
_writing_into: ContextVar[str | None] = ContextVar("ragsvc_writing_into", default=None)
#: What this task's writes need besides the workspace-wide fence: the lock session it started under
#: is still alive (a session that ended and was replaced by a new one does not count), and the
#: workspace is still ours or still being indexed here as a guest (src/ingestion/ownership.py).
_write_guard: ContextVar[Callable[[], bool] | None] = ContextVar("ragsvc_write_guard", default=None)
#: Set while this task indexes (or cleans up) a document of a workspace another instance owns.
_guest: ContextVar[bool] = ContextVar("ragsvc_guest", default=False)


@contextlib.contextmanager
def writing_into(workspace: str, guard: Callable[[], bool] | None = None) -> Iterator[None]:
    """Mark this task (and the tasks it starts) as writing into ``workspace``, while ``guard()``
    holds (checked before each write and each ingestion LLM call)."""
    token = _writing_into.set(workspace)
    guard_token = _write_guard.set(guard)
    try:
        yield
    finally:
        _write_guard.reset(guard_token)
        _writing_into.reset(token)


@contextlib.contextmanager
def as_guest() -> Iterator[None]:
    """This task works on a document of a workspace another instance owns (it was claimed as a
    guest: src/tasks/runner.py); the knowledge base lets it write under a guest's guard."""
    token = _guest.set(True)
    try:
        yield
    finally:
        _guest.reset(token)


def is_guest() -> bool:
    return _guest.get()


def check_current_write() -> None:
    """Raise OwnershipLost when this task writes into a workspace this instance no longer owns.

    Called before each database operation LightRAG's PostgreSQL storages run (also each retry):
    an owner that resumes from a stall past its lock sends nothing more into the workspace, even
    the LLM-cache, chunk, vector and doc-status upserts that need no LLM call or graph write."""
    workspace = _writing_into.get()
    if workspace is not None:
        check_write(workspace)  # the task's own guard too
