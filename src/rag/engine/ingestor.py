"""Take one document into a tenant's knowledge base: parse it into a content list, index it.

Text files are read here (off the loop); rich formats (PDF, Office, pictures, ...) go through
RAG-Anything's parser framework (`RAGAnything.parse_document`, which runs our registered offline
parser in a child process and caches the result) and come back as a content list. Its text is
then indexed by the caller's task itself through the `DocumentIndexer` (no shared pipeline pass,
no waiting for other documents): completion is known when the call returns, and progress comes
from the indexer as chunks are extracted and entities/relations merged. Cancelling the caller
cancels the indexing coroutine; `purge` then takes out whatever the document wrote (pictures
included).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from lightrag import LightRAG
from lightrag.base import DocStatus

from src.core.scrub import scrub_paths
from src.rag.engine.indexer import DocumentIndexer, IndexingError
from src.rag.errors import IndexFailed, is_transient_message
from src.rag.knowledge import (
    DocumentContent,
    IndexProgress,
    IndexRequest,
    IndexResult,
    IndexStage,
    ProgressSink,
    PurgeOutcome,
    PurgeResult,
)
from src.rag.parsers import RAGANYTHING_EXTENSIONS, DocumentParseError, abort_parse, read_text_document
from src.rag.parsing.content import indexable_text

log = logging.getLogger(__name__)


class DocumentIngestor:
    """Knows how to take one document into one LightRAG workspace, and how to take it back out."""

    def __init__(self, rag: LightRAG, rag_anything: object, indexer: DocumentIndexer):
        self.rag = rag
        #: RAG-Anything around ``rag`` (its parser framework and parse cache).
        self.rag_anything = rag_anything
        self.indexer = indexer

    async def ingest(self, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """Index the request's document; return once it is PROCESSED and durable."""
        doc_id = request.doc_id
        content = request.content
        if content is None and await self._needs_content(doc_id):
            if request.source is None or not await asyncio.to_thread(request.source.exists):
                raise IndexFailed(f"the stored upload of document {doc_id} is missing")
            await on_progress(IndexProgress(IndexStage.PARSING))
            content = await self._parse(request.source, request.name or request.source.name, doc_id)
        try:
            outcome = await self.indexer.index(
                doc_id,
                self._text_of(content, request.name) if content is not None else None,
                file_path=request.name,
                track_id=request.track_id,
                on_progress=on_progress,
            )
        except IndexingError as exc:
            message = str(exc)
            raise IndexFailed(message, transient=is_transient_message(message)) from exc
        await on_progress(IndexProgress(IndexStage.DONE))
        return IndexResult(doc_id, outcome.chunks_count, resumed=outcome.resumed)

    async def _needs_content(self, doc_id: str) -> bool:
        """A record left by an earlier attempt is resumed from LightRAG's own full_docs copy; a
        PROCESSED one needs nothing (the upload file may already be gone)."""
        existing = await self.rag.doc_status.get_by_id(doc_id)
        if existing is None:
            return True
        if DocStatus(existing.get("status")) == DocStatus.PROCESSED:
            return False
        return not ((await self.rag.full_docs.get_by_id(doc_id)) or {}).get("content")

    async def purge(self, doc_id: str) -> PurgeResult:
        """Stop this document's indexing if it runs here, and delete everything it left."""
        result = await self.indexer.delete(doc_id)
        await asyncio.to_thread(shutil.rmtree, self.parsed_dir(doc_id), True)
        log.info("purged document %s: %s", doc_id, result.status)
        try:
            outcome = PurgeOutcome(result.status)
        except ValueError:
            outcome = PurgeOutcome.FAILED
        return PurgeResult(doc_id, outcome, result.message or "")

    async def close(self) -> None:
        await self.indexer.close()

    def parsed_dir(self, doc_id: str) -> Path:
        """Where the pictures extracted from a document are kept (per workspace, per document)."""
        return Path(self.rag.working_dir) / "parsed" / doc_id

    @staticmethod
    def _text_of(content: DocumentContent, name: str) -> str:
        """What is indexed of a content list: every item as text, in document order (tables as
        Markdown, equations as LaTeX, pictures as what OCR read in them)."""
        if content.plain:
            return str(content.items[0]["text"])
        text = indexable_text(list(content.items))
        if not text.strip():
            raise DocumentParseError(f"{name}: the document has no extractable text or pictures")
        return text

    async def _parse(self, path: Path, filename: str, doc_id: str) -> DocumentContent:
        """The upload as a content list (pictures kept under `parsed_dir`). Errors name the upload
        by its original filename, never a server path."""
        known = _public_names(path, filename)
        try:
            if path.suffix.lower() not in RAGANYTHING_EXTENSIONS:
                return DocumentContent.of_text(await read_text_document(path))
            content_list, _ = await self.rag_anything.parse_document(  # type: ignore[attr-defined]
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
        return DocumentContent(tuple(content_list))


def _public_names(path: Path, filename: str) -> dict[str, str]:
    """What a parse error may say about the upload -> the name the client gave it."""
    return {str(path.absolute()): filename, str(path): filename, path.name: filename}
