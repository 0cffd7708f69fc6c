"""Drive one document through LightRAG (text) or RAG-Anything (pdf/docx) until it is really indexed.

LightRAG has one pipeline per workspace: when several `ainsert` calls overlap, the first caller
does all the work and the others return at once with their document still PENDING. So
returning from `ainsert` proves nothing; the ingestor watches the document's own doc-status
record until it says PROCESSED (or FAILED), and, if the pipeline went idle without reaching
it, runs the pipeline itself. Stage and progress are read from the same record and from the
pipeline's messages that name this document's chunks.
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
from lightrag.kg.shared_storage import get_namespace_data

from src.rag.parsers import RAGANYTHING_EXTENSIONS, DocumentParseError, read_text_document
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
    """The document could not be indexed (LightRAG marked it FAILED, or it cannot be parsed)."""


@dataclass
class IngestResult:
    doc_id: str
    chunks_count: int
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunks_count": self.chunks_count, "resumed": self.resumed}


class DocumentIngestor:
    """Knows how to index one task's stored upload; stateless between tasks."""

    def __init__(self, rag: LightRAG, rag_anything: Any, uploads_dir: Path, poll_seconds: float = 0.25):
        self.rag = rag
        self.rag_anything = rag_anything
        self.uploads_dir = uploads_dir
        self.poll_seconds = poll_seconds

    async def ingest(self, task: TaskRecord, report: ProgressCallback) -> IngestResult:
        path = self.uploads_dir / task.stored_name
        started = time.time()
        existing = await self.rag.doc_status.get_by_id(task.doc_id)
        if existing and existing.get("status") == DocStatus.PROCESSED:
            # An earlier attempt finished indexing before the process died: nothing to redo.
            return IngestResult(task.doc_id, int(existing.get("chunks_count") or 0), resumed=True)
        if not path.exists():
            raise IngestError(f"upload file for task {task.task_id} is missing")

        await report(Stage.PARSING, STAGE_PROGRESS[Stage.PARSING])
        if path.suffix.lower() in RAGANYTHING_EXTENSIONS:
            await self._ingest_with_raganything(task, path, report)
        else:
            text = await read_text_document(path)
            if existing is None:
                await report(Stage.CHUNKING, STAGE_PROGRESS[Stage.CHUNKING])
                await self.rag.ainsert(
                    text, ids=[task.doc_id], file_paths=[task.filename], track_id=task.task_id
                )
            await self._wait_until_processed(task.doc_id, started, report)

        record = await self.rag.doc_status.get_by_id(task.doc_id)
        if not record or record.get("status") != DocStatus.PROCESSED:
            status = record.get("status") if record else "missing"
            raise IngestError(f"document ended as {status}: {(record or {}).get('error_msg') or 'no detail'}")
        await report(Stage.DONE, STAGE_PROGRESS[Stage.DONE])
        return IngestResult(task.doc_id, int(record.get("chunks_count") or 0), resumed=existing is not None)

    async def _ingest_with_raganything(self, task: TaskRecord, path: Path, report: ProgressCallback) -> None:
        watcher = asyncio.create_task(self._watch(task.doc_id, report))
        try:
            await self.rag_anything.process_document_complete(
                str(path), doc_id=task.doc_id, file_name=task.filename, display_stats=False
            )
        except DocumentParseError:
            raise
        except Exception as exc:  # RAG-Anything wraps parser and pipeline errors alike
            raise IngestError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            watcher.cancel()

    async def _watch(self, doc_id: str, report: ProgressCallback) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            record = await self.rag.doc_status.get_by_id(doc_id)
            if record:
                await report(*await self._observe(doc_id, record))

    async def _wait_until_processed(self, doc_id: str, started: float, report: ProgressCallback) -> None:
        """Poll the doc-status record; kick the pipeline when nobody is working on our document."""
        while True:
            record = await self.rag.doc_status.get_by_id(doc_id)
            if record is None:
                raise IngestError(f"LightRAG has no record of document {doc_id}")
            status = record.get("status")
            if status == DocStatus.PROCESSED:
                return
            busy = await self._pipeline_busy()
            if status == DocStatus.FAILED and _updated_after(record, started):
                raise IngestError(record.get("error_msg") or "LightRAG marked the document FAILED")
            if not busy and status in (DocStatus.PENDING, DocStatus.PROCESSING, DocStatus.FAILED):
                # The run that would have taken our document ended (or never started): run one.
                await self.rag.apipeline_process_enqueue_documents()
                continue
            await report(*await self._observe(doc_id, record))
            await asyncio.sleep(self.poll_seconds)

    async def _pipeline_status(self) -> dict[str, Any]:
        return await get_namespace_data("pipeline_status", workspace=self.rag.workspace)

    async def _pipeline_busy(self) -> bool:
        return bool((await self._pipeline_status()).get("busy"))

    async def _observe(self, doc_id: str, record: dict[str, Any]) -> tuple[str, float]:
        status = record.get("status")
        if status == DocStatus.PENDING:
            return Stage.QUEUED, STAGE_PROGRESS[Stage.QUEUED]
        if status == DocStatus.PROCESSED:
            return Stage.MERGING, STAGE_PROGRESS[Stage.MERGING]
        chunks = set(record.get("chunks_list") or [])
        if not chunks:
            return Stage.CHUNKING, STAGE_PROGRESS[Stage.CHUNKING]
        messages = list((await self._pipeline_status()).get("history_messages") or [])[-4000:]
        extracted = 0
        for message in messages:
            if f"from {doc_id}" in message and message.startswith("Phase"):
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
