"""Drive one document into the knowledge base and report where it is.

Text files are read here (off the loop); rich formats (PDF, Office, pictures, ...) go through
RAG-Anything's parser framework (`RAGAnything.parse_document`, which runs our registered offline
parser in a thread and caches the result) and come back as a content list. Its text is then
indexed by this task itself through the `DocumentIndexer` (no shared pipeline pass, no waiting
for other documents): completion is known when the call returns, and progress comes from the
indexer as chunks are extracted and entities/relations merged. Cancelling the task cancels the
indexing coroutine; `purge` then takes out whatever the document wrote (pictures included).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from lightrag.base import DocStatus

from src.core.scrub import scrub_paths
from src.rag.engine.indexer import (
    CHUNKING,
    DONE,
    EXTRACTING,
    MERGING,
    DocumentIndexer,
    IndexingError,
    IndexProgress,
)
from src.rag.parsers import RAGANYTHING_EXTENSIONS, DocumentParseError, abort_parse, read_text_document
from src.rag.parsing.content import indexable_text
from src.rag.scheduler import call_context
from src.tasks.admission import yield_slot
from src.tasks.models import Stage, TaskRecord

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], Awaitable[None]]

#: How far each stage takes the progress bar (extraction interpolates between its bounds).
STAGE_PROGRESS = {
    Stage.PARSING: 10.0,
    Stage.QUEUED: 15.0,
    Stage.CHUNKING: 20.0,
    Stage.EXTRACTING: 25.0,
    Stage.MERGING: 80.0,
    Stage.DONE: 100.0,
}
_INDEXER_STAGES = {
    CHUNKING: Stage.CHUNKING,
    EXTRACTING: Stage.EXTRACTING,
    MERGING: Stage.MERGING,
    DONE: Stage.DONE,
}


def progress_percent(progress: IndexProgress) -> tuple[str, float]:
    """Map the indexer's counts to (stage, percent): extraction fills 25-80, merging 80-99."""
    stage = _INDEXER_STAGES[progress.stage]
    if stage == Stage.EXTRACTING and progress.chunks_total:
        span = STAGE_PROGRESS[Stage.MERGING] - STAGE_PROGRESS[Stage.EXTRACTING]
        value = STAGE_PROGRESS[Stage.EXTRACTING] + span * progress.chunks_extracted / progress.chunks_total
    elif stage == Stage.MERGING and progress.merge_total:
        span = 99.0 - STAGE_PROGRESS[Stage.MERGING]
        value = STAGE_PROGRESS[Stage.MERGING] + span * min(1.0, progress.merged / progress.merge_total)
    else:
        value = STAGE_PROGRESS[stage]
    return stage, float(round(value))


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

    def __init__(self, rag: LightRAG, rag_anything: Any, indexer: DocumentIndexer, uploads_dir: Path):
        self.rag = rag
        self.rag_anything = rag_anything
        self.indexer = indexer
        self.uploads_dir = uploads_dir

    async def ingest(self, task: TaskRecord, report: ProgressCallback) -> IngestResult:
        """Index the task's document. Every LLM and embedding call it causes — also in the tasks
        the indexer spawns, which copy this context — is admitted by the provider schedulers at
        the task's priority, fairly among tenants (src/rag/scheduler.py)."""
        with call_context(priority=task.priority, tenant=task.tenant):
            return await self._ingest(task, report)

    async def _ingest(self, task: TaskRecord, report: ProgressCallback) -> IngestResult:
        path = self.uploads_dir / task.stored_name
        existing = await self.rag.doc_status.get_by_id(task.doc_id)
        text: str | None = None
        # A record left by an earlier attempt is resumed from LightRAG's own full_docs copy;
        # a PROCESSED one needs nothing (the upload file may already be gone).
        needs_text = existing is None or (
            existing.get("status") != DocStatus.PROCESSED
            and not ((await self.rag.full_docs.get_by_id(task.doc_id)) or {}).get("content")
        )
        if needs_text:
            if not await asyncio.to_thread(path.exists):
                raise IngestError(f"upload file for task {task.task_id} is missing")
            await report(Stage.PARSING, STAGE_PROGRESS[Stage.PARSING])
            text = await self._extract_text(path, task.filename or path.name, task.doc_id)

        async def on_progress(progress: IndexProgress) -> None:
            if progress.stage == MERGING:
                # Extraction (most of the LLM work) is over; merging waits mostly on LightRAG's keyed
                # locks and on the group commit: that must not keep the next document from starting.
                yield_slot()
            await report(*progress_percent(progress))

        try:
            outcome = await self.indexer.index(
                task.doc_id, text, file_path=task.filename, track_id=task.task_id, on_progress=on_progress
            )
        except IndexingError as exc:
            message = str(exc)
            raise IngestError(message, transient=is_transient_message(message)) from exc
        await report(Stage.DONE, STAGE_PROGRESS[Stage.DONE])
        return IngestResult(task.doc_id, outcome.chunks_count, resumed=outcome.resumed)

    async def purge(self, doc_id: str) -> str:
        """Stop this document's indexing if it runs here, and delete everything it left."""
        result = await self.indexer.delete(doc_id)
        await asyncio.to_thread(shutil.rmtree, self.parsed_dir(doc_id), True)
        log.info("purged document %s: %s", doc_id, result.status)
        return result.status

    async def close(self) -> None:
        await self.indexer.close()

    def parsed_dir(self, doc_id: str) -> Path:
        """Where the pictures extracted from a document are kept (per workspace, per document)."""
        return Path(self.rag.working_dir) / "parsed" / doc_id

    async def _extract_text(self, path: Path, filename: str, doc_id: str) -> str:
        """The upload's text: its content list with tables as Markdown, equations as LaTeX and
        pictures as what OCR read in them. Errors name the upload by its original filename, never
        a server path."""
        known = _public_names(path, filename)
        try:
            if path.suffix.lower() not in RAGANYTHING_EXTENSIONS:
                return await read_text_document(path)
            content_list, _ = await self.rag_anything.parse_document(
                str(path), output_dir=str(self.parsed_dir(doc_id)), display_stats=False
            )
        except asyncio.CancelledError:
            abort_parse(path)  # RAG-Anything's parse thread waits on a child process: stop it
            raise
        except DocumentParseError as exc:
            raise DocumentParseError(scrub_paths(str(exc), known)) from None
        except Exception as exc:  # RAG-Anything wraps parser failures
            detail = scrub_paths(f"{type(exc).__name__}: {exc}", known)
            raise DocumentParseError(f"{filename}: could not parse the file ({detail})") from None
        text = indexable_text(content_list)
        if not text.strip():
            raise DocumentParseError(f"{filename}: the document has no extractable text or pictures")
        return text


def _public_names(path: Path, filename: str) -> dict[str, str]:
    """What a parse error may say about the upload -> the name the client gave it."""
    return {str(path.absolute()): filename, str(path): filename, path.name: filename}
