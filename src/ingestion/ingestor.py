"""Drive one document into the knowledge base and report where it is.

Text files are read here (off the loop); PDF and DOCX go through RAG-Anything's parser
framework (`RAGAnything.parse_document`, which runs our registered offline parser in a
thread and caches the result). The text is then enqueued with the `PipelineCoordinator`,
which owns LightRAG's pipeline. The ingestor then watches the document's own doc-status
record until it says PROCESSED or FAILED: LightRAG processes documents in batches, so being
enqueued proves nothing. Stage and progress come from the same record and from the
pipeline's messages naming this document's chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from lightrag.base import DocStatus
from raganything.utils import separate_content_with_page_map

from src.ingestion.pipeline import DocumentGuard, PipelineCoordinator
from src.rag.parsers import RAGANYTHING_EXTENSIONS, DocumentParseError, read_text_document
from src.rag.storage.embedded import commit_for
from src.tasks.models import Stage, TaskRecord

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], Awaitable[None]]

#: How far each stage takes the progress bar (extraction interpolates between its bounds).
STAGE_PROGRESS = {
    Stage.PARSING: 10.0,
    Stage.QUEUED: 15.0,
    Stage.CHUNKING: 20.0,
    Stage.EXTRACTING: 25.0,
    Stage.MERGING: 85.0,
    Stage.DONE: 100.0,
}
_EXTRACTING_SPAN = STAGE_PROGRESS[Stage.MERGING] - STAGE_PROGRESS[Stage.EXTRACTING] - 5.0


class IngestError(Exception):
    """LightRAG could not index the document; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


#: Substrings of LightRAG's error_msg that mean the provider, not the document, failed.
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


@dataclass
class IngestResult:
    doc_id: str
    chunks_count: int
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunks_count": self.chunks_count, "resumed": self.resumed}


class DocumentIngestor:
    """Knows how to index one task's stored upload, and how to take a document back out."""

    def __init__(
        self,
        rag: LightRAG,
        rag_anything: Any,
        coordinator: PipelineCoordinator,
        guard: DocumentGuard,
        uploads_dir: Path,
        poll_seconds: float = 0.25,
    ):
        self.rag = rag
        self.rag_anything = rag_anything
        self.coordinator = coordinator
        self.guard = guard
        self.uploads_dir = uploads_dir
        self.poll_seconds = poll_seconds

    async def ingest(self, task: TaskRecord, report: ProgressCallback) -> IngestResult:
        path = self.uploads_dir / task.stored_name
        started = time.time()
        existing = await self.rag.doc_status.get_by_id(task.doc_id)
        if existing and existing.get("status") == DocStatus.PROCESSED:
            # An earlier attempt finished indexing before the process died: nothing to redo.
            await commit_for(self.rag)()  # (a no-op unless it finished in this process)
            return IngestResult(task.doc_id, int(existing.get("chunks_count") or 0), resumed=True)
        if existing is None:
            if not await asyncio.to_thread(path.exists):
                raise IngestError(f"upload file for task {task.task_id} is missing")
            await report(Stage.PARSING, STAGE_PROGRESS[Stage.PARSING])
            text = await self._extract_text(path)
            await report(Stage.QUEUED, STAGE_PROGRESS[Stage.QUEUED])
            await self.coordinator.enqueue(text, task.doc_id, task.filename, track_id=task.task_id)
        else:
            # Left PENDING/PROCESSING/FAILED by an attempt that died: LightRAG's next run resumes it.
            self.coordinator.kick()
        record = await self._wait_until_processed(task.doc_id, started, report)
        await commit_for(self.rag)()  # durable before the task can be reported completed
        await report(Stage.DONE, STAGE_PROGRESS[Stage.DONE])
        return IngestResult(task.doc_id, int(record.get("chunks_count") or 0), resumed=existing is not None)

    async def purge(self, doc_id: str) -> str:
        """Stop any LLM work on ``doc_id`` and delete everything it left in the knowledge base."""
        if await self.rag.doc_status.get_by_id(doc_id) is None:
            return "not_found"  # never reached LightRAG (e.g. a parse error): nothing to wait for
        stored = await self.rag.full_docs.get_by_id(doc_id)
        if stored and stored.get("content"):
            self.guard.block(doc_id, stored["content"])
        try:
            result = await self.coordinator.delete(doc_id)
        finally:
            self.guard.unblock(doc_id)
        log.info("purged document %s: %s", doc_id, result.status)
        return result.status

    async def _extract_text(self, path: Path) -> str:
        if path.suffix.lower() not in RAGANYTHING_EXTENSIONS:
            return await read_text_document(path)
        try:
            content_list, _ = await self.rag_anything.parse_document(str(path), display_stats=False)
        except DocumentParseError:
            raise
        except Exception as exc:  # RAG-Anything wraps parser failures
            raise DocumentParseError(f"could not parse {path.suffix} file: {exc}") from exc
        text, _, _ = separate_content_with_page_map(content_list)
        if not text.strip():
            raise DocumentParseError("the document has no extractable text (scanned or empty?)")
        return text

    async def _wait_until_processed(self, doc_id: str, started: float, report: ProgressCallback) -> dict:
        while True:
            record = await self.rag.doc_status.get_by_id(doc_id)
            if record is None:
                raise IngestError(f"LightRAG has no record of document {doc_id}")
            status = record.get("status")
            if status == DocStatus.PROCESSED:
                return record
            if status == DocStatus.FAILED and _updated_after(record, started):
                message = record.get("error_msg") or "LightRAG marked the document FAILED"
                raise IngestError(message, transient=is_transient_message(message))
            if not await self.coordinator.pipeline_busy():
                self.coordinator.kick()
            await report(*await self._observe(doc_id, record))
            await asyncio.sleep(self.poll_seconds)

    async def _observe(self, doc_id: str, record: dict[str, Any]) -> tuple[str, float]:
        status = record.get("status")
        if status in (DocStatus.PENDING, DocStatus.FAILED):
            return Stage.QUEUED, STAGE_PROGRESS[Stage.QUEUED]
        chunks = set(record.get("chunks_list") or [])
        if not chunks:
            return Stage.CHUNKING, STAGE_PROGRESS[Stage.CHUNKING]
        pipeline = await self.coordinator.pipeline_status()
        messages = list(pipeline.get("history_messages") or [])[-4000:]
        extracted = 0
        for message in messages:
            if message.startswith("Phase") and f"from {doc_id}" in message:
                return Stage.MERGING, STAGE_PROGRESS[Stage.MERGING]
            if message.startswith("Chunk ") and message.rsplit(" ", 1)[-1] in chunks:
                extracted += 1
        fraction = min(1.0, extracted / len(chunks))
        return Stage.EXTRACTING, STAGE_PROGRESS[Stage.EXTRACTING] + _EXTRACTING_SPAN * fraction


def _updated_after(record: dict[str, Any], started: float) -> bool:
    stamp = record.get("updated_at")
    if not stamp:
        return True
    try:
        return datetime.fromisoformat(str(stamp)).timestamp() >= started - 1.0
    except ValueError:
        return True
