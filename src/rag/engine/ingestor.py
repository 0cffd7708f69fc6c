"""Take one document into a tenant's knowledge base: parse it into a content list, index it.

Text files are read here (off the loop); rich formats (PDF, Office, pictures, ...) go through
RAG-Anything's parser framework (`RAGAnything.parse_document`, which runs our registered offline
parser in a child process and caches the result) and come back as a content list. Its pictures,
tables and equations are described by RAG-Anything's modal processors (src/rag/engine/modal.py) and
indexed, with the text, by the caller's task itself through the `DocumentIndexer` (no shared
pipeline pass, no waiting for other documents): completion is known when the call returns, and progress comes
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
from src.rag.engine import versions
from src.rag.engine.indexer import DocumentIndexer, IndexingError, TextHandoff
from src.rag.engine.modal import MODAL_KEY, ModalDescriber, split_content
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

log = logging.getLogger(__name__)


class NotPlainText(ValueError):
    """Only plain text is extracted ahead of the owner."""


class DocumentIngestor:
    """Knows how to take one document into one LightRAG workspace, and how to take it back out."""

    def __init__(
        self,
        rag: LightRAG,
        rag_anything: object,
        indexer: DocumentIndexer,
        describer: ModalDescriber | None = None,
    ):
        self.rag = rag
        #: RAG-Anything around ``rag`` (its parser framework and parse cache).
        self.rag_anything = rag_anything
        self.indexer = indexer
        #: Describes pictures, tables and equations (offline, honestly, when no model is set).
        self.describer = describer or ModalDescriber(rag, rag_anything, vision_func=None, llm_is_model=False)

    async def ingest(self, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """Index the request's document; return once it is PROCESSED and durable."""
        if request.replaces:
            return await self._replace(request, on_progress)
        return await self._ingest_as(request.doc_id, request, on_progress)

    async def _replace(self, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """New content for a document: indexed as its next version, swapped in, the old version
        purged (src/rag/engine/versions.py). Resumes wherever an earlier attempt stopped."""
        doc_id, task = request.doc_id, request.track_id
        staging = versions.next_id(doc_id)
        current = await self.rag.doc_status.get_by_id(doc_id)
        staged = await self.rag.doc_status.get_by_id(staging)
        if current is not None and current.get("track_id") == task:
            if not _processed(current):  # this task indexes the document itself (nothing to replace)
                return await self._ingest_as(doc_id, request, on_progress)
            if staged is not None:  # an earlier attempt died mid-swap, after the switch
                await self._swap(doc_id)
            await self._retire(doc_id)  # swapped by an earlier attempt: the old version's purge is left
            return IndexResult(doc_id, int(current.get("chunks_count") or 0), resumed=True)
        await self._retire(doc_id)  # an earlier re-index's old version, if its purge never ran
        if staged is not None and staged.get("track_id") != task:
            await self._drop_version(staging)  # an abandoned re-index's new version
        if current is None or not _processed(current):
            # Nothing queries could see: index the new content under the document's own id.
            if current is not None:
                await self.indexer.delete(doc_id)
            return await self._ingest_as(doc_id, request, on_progress)
        result = await self._ingest_as(staging, request, on_progress)
        await self._swap(doc_id)
        await self._retire(doc_id)
        return IndexResult(doc_id, result.chunks_count, resumed=result.resumed)

    async def _swap(self, doc_id: str) -> None:
        """Swap the new version in, alone in the graph (no merge writes meanwhile), and make it
        durable before the old version's purge starts."""
        async with self.indexer.gate.exclusive():
            await versions.swap(self.rag, doc_id)
            await self.indexer.flush()
        await asyncio.to_thread(self._swap_parsed, doc_id)

    async def _retire(self, doc_id: str) -> None:
        """Purge the old version a swap left (only the chunks the visible version does not list);
        a retired record whose swap never switched is undone instead (versions.restore_unswapped)."""
        retired = versions.retired_id(doc_id)
        if await self.rag.doc_status.get_by_id(retired) is not None:
            async with self.indexer.gate.exclusive():
                await versions.restore_unswapped(self.rag, doc_id)  # then no record is left to purge
        await self._drop_version(retired)

    async def _drop_version(self, version: str) -> None:
        """Purge an internal version record (its chunks the visible document lists are kept) and
        the pictures parsed for it."""
        if await self.rag.doc_status.get_by_id(version) is not None:
            await self.indexer.delete(version)
        await asyncio.to_thread(shutil.rmtree, self.parsed_dir(version), True)

    def _swap_parsed(self, doc_id: str) -> None:
        """The pictures parsed from the new version take the document's directory (blocking)."""
        current, staged = self.parsed_dir(doc_id), self.parsed_dir(versions.next_id(doc_id))
        retired = self.parsed_dir(versions.retired_id(doc_id))
        if staged.exists():
            if current.exists():
                shutil.rmtree(retired, True)
                current.rename(retired)
            staged.rename(current)

    async def pre_extract(self, request: IndexRequest) -> int:
        """Extract a waiting document ahead of its workspace's owner (answers kept in the shared LLM
        cache only). Plain text only: a rich format's parse (pictures described by a model) could
        differ between instances, and then so would the prompts. Returns its chunks."""
        if request.content is not None and request.content.plain:
            text = str(request.content.items[0]["text"])
        elif request.source is not None and request.source.suffix.lower() not in RAGANYTHING_EXTENSIONS:
            text = await read_text_document(request.source)
        else:
            raise NotPlainText(f"{request.name}: not a plain-text document")
        return await self.indexer.pre_extract(request.doc_id, text)

    async def abandon_replacement(self, doc_id: str, track_id: str) -> None:
        """A re-index that will not complete: its new version goes, the visible one stays."""
        await self._drop_version(versions.next_id(doc_id))
        await self._retire(doc_id)
        current = await self.rag.doc_status.get_by_id(doc_id)
        if current is not None and current.get("track_id") == track_id and not _processed(current):
            await self.purge(doc_id)  # this task was indexing the document itself: nothing to keep

    async def _ingest_as(self, doc_id: str, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """Index the request's content under ``doc_id`` (the document, or its next version)."""
        content = request.content
        if content is None and await self._needs_content(doc_id):
            if request.source is None or not await asyncio.to_thread(request.source.exists):
                raise IndexFailed(f"the stored upload of document {doc_id} is missing")
            await on_progress(IndexProgress(IndexStage.PARSING))
            content = await self._parse(request.source, request.name or request.source.name, doc_id)
        text: str | None = None
        modal: list[dict] = []
        if content is not None:
            text, modal = await self._text_and_modal(content, request.name, on_progress)
        handed = TextHandoff(text)
        del text, content  # a big text is held by the indexer alone (and dropped once chunked)
        try:
            outcome = await self.indexer.index(
                doc_id,
                handed,
                file_path=request.name,
                track_id=request.track_id,
                on_progress=on_progress,
                modal_chunks=modal,
            )
        except IndexingError as exc:
            message = str(exc)
            raise IndexFailed(message, transient=is_transient_message(message)) from exc
        await on_progress(IndexProgress(IndexStage.DONE))
        return IndexResult(request.doc_id, outcome.chunks_count, resumed=outcome.resumed)

    async def _needs_content(self, doc_id: str) -> bool:
        """A record left by an earlier attempt is resumed from LightRAG's own full_docs copy; a
        PROCESSED one needs nothing (the upload file may already be gone)."""
        existing = await self.rag.doc_status.get_by_id(doc_id)
        if existing is None:
            return True
        if _processed(existing):
            return False
        stored = (await self.rag.full_docs.get_by_id(doc_id)) or {}
        return not (stored.get("content") or stored.get(MODAL_KEY))

    async def purge(self, doc_id: str, *, delete_llm_cache: bool = False) -> PurgeResult:
        """Stop this document's indexing if it runs here, and delete everything it left (with the
        versions an unfinished re-index of it left)."""
        if not versions.is_version(doc_id):
            for version in (versions.next_id(doc_id), versions.retired_id(doc_id)):
                await self._drop_version(version)
        result = await self.indexer.delete(doc_id, delete_llm_cache=delete_llm_cache)
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

    async def _text_and_modal(
        self, content: DocumentContent, name: str, on_progress: ProgressSink
    ) -> tuple[str, list[dict]]:
        """The text to chunk, and the pictures, tables and equations as multimodal chunks: described
        item by item (model calls run in this task, at its priority; progress counts the items)."""
        if content.plain:
            return str(content.items[0]["text"]), []
        items_list = list(content.items)
        text, items = split_content(items_list)
        modal: list[dict] = []
        if items:

            async def on_item(done: int, total: int) -> None:
                await on_progress(IndexProgress(IndexStage.PARSING, items_total=total, items_described=done))

            modal = [chunk.as_dict() for chunk in await self.describer.describe(items_list, items, on_item)]
        if not text.strip() and not modal:
            raise DocumentParseError(f"{name}: the document has no extractable text or pictures")
        return text, modal

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


def _processed(record: dict) -> bool:
    return str(getattr(record.get("status"), "value", record.get("status"))) == DocStatus.PROCESSED.value


def _public_names(path: Path, filename: str) -> dict[str, str]:
    """What a parse error may say about the upload -> the name the client gave it."""
    return {str(path.absolute()): filename, str(path): filename, path.name: filename}
