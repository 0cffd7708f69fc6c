"""The one owner of LightRAG's document pipeline in this process.

LightRAG runs one pipeline per workspace, and only pipeline-wide cancellation exists. If task
coroutines drove the pipeline themselves (`ainsert`), cancelling one task could kill the run
that is indexing other tasks' documents, and deleting a document is refused while any run is
busy. So tasks only *enqueue* their document here; one driver loop runs the pipeline, and
between runs (when LightRAG allows it) performs queued deletions: purges of cancelled or
failed documents and `DELETE /documents` requests.

To stop the LLM work of one document promptly without touching the others, every LLM call
passes through `DocumentGuard`: while a document is blocked, extraction calls whose input
text comes from it fail at once, so LightRAG marks just that document FAILED and moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from lightrag import LightRAG
from lightrag.base import DeletionResult
from lightrag.kg.shared_storage import get_namespace_data

log = logging.getLogger(__name__)

_INPUT_TEXT = re.compile(r"<Input Text>\s*```\s*(.{1,200})", re.DOTALL)


class DocumentBlockedError(RuntimeError):
    """Raised inside LightRAG's LLM call for a document whose task was cancelled or abandoned."""


class DocumentGuard:
    """Knows which documents must not get more LLM work, and wraps the LLM function to enforce it."""

    def __init__(self) -> None:
        self._blocked: dict[str, str] = {}  # doc_id -> full text

    def block(self, doc_id: str, text: str) -> None:
        self._blocked[doc_id] = text

    def unblock(self, doc_id: str) -> None:
        self._blocked.pop(doc_id, None)

    def blocked_owner(self, prompt_text: str) -> str | None:
        if not self._blocked:
            return None
        match = _INPUT_TEXT.search(prompt_text)
        if not match:
            return None
        head = match.group(1).strip()[:120]
        if len(head) < 20:
            return None
        for doc_id, text in self._blocked.items():
            if head in text:
                return doc_id
        return None

    def wrap(self, llm_func: Callable[..., Any]) -> Callable[..., Any]:
        guard = self

        async def guarded_llm(prompt: str, *args: Any, **kwargs: Any) -> Any:
            if guard._blocked:
                history = kwargs.get("history_messages") or []
                seen = prompt + "".join(str(m.get("content", "")) for m in history if isinstance(m, dict))
                owner = guard.blocked_owner(seen)
                if owner:
                    raise DocumentBlockedError(f"document {owner} was cancelled; its LLM work is stopped")
            return await llm_func(prompt, *args, **kwargs)

        return guarded_llm


class PipelineCoordinator:
    """Runs LightRAG's pipeline when documents are enqueued; deletes documents between runs."""

    def __init__(
        self, rag: LightRAG, guard: DocumentGuard, busy_poll_seconds: float = 0.2, batch_window: float = 0.05
    ):
        self.rag = rag
        #: After a wake-up, wait this long for more documents, so that tasks admitted together
        #: share one LightRAG pass instead of the later ones waiting for the earlier pass to end.
        self.batch_window = batch_window
        self.guard = guard
        self.busy_poll_seconds = busy_poll_seconds
        self._wake = asyncio.Event()
        self._deletions: dict[str, asyncio.Future[DeletionResult]] = {}
        self._driver: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._driver = asyncio.create_task(self._drive(), name="lightrag-pipeline-driver")
        self._wake.set()  # documents left PENDING/PROCESSING by a previous run are resumed

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._driver:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._driver, timeout=10)
        for future in self._deletions.values():
            if not future.done():
                future.cancel()

    async def enqueue(self, text: str, doc_id: str, file_path: str, track_id: str) -> None:
        await self.rag.apipeline_enqueue_documents(
            text, ids=[doc_id], file_paths=[file_path], track_id=track_id
        )
        self._wake.set()

    def kick(self) -> None:
        self._wake.set()

    async def delete(self, doc_id: str) -> DeletionResult:
        """Delete a document and everything derived from it, as soon as no pipeline run is busy."""
        future = self._deletions.get(doc_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._deletions[doc_id] = future
        self._wake.set()
        return await asyncio.shield(future)

    async def pipeline_status(self) -> dict[str, Any]:
        return await get_namespace_data("pipeline_status", workspace=self.rag.workspace)

    async def pipeline_busy(self) -> bool:
        return bool((await self.pipeline_status()).get("busy"))

    async def _drive(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            await asyncio.sleep(self.batch_window)
            self._wake.clear()
            try:
                await self._run_deletions()
                await self.rag.apipeline_process_enqueue_documents()
                await self._run_deletions()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("LightRAG pipeline run failed; will retry on the next wake-up")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _run_deletions(self) -> None:
        while self._deletions and not self._stopping:
            doc_id, future = next(iter(self._deletions.items()))
            if future.done():
                self._deletions.pop(doc_id, None)
                continue
            result = await self.rag.adelete_by_doc_id(doc_id)
            if result.status == "not_allowed":
                # Another caller (RAG-Anything's own insert) is running the pipeline: wait for it.
                await asyncio.sleep(self.busy_poll_seconds)
                continue
            self._deletions.pop(doc_id, None)
            if not future.done():
                future.set_result(result)
