"""Index ONE document from text to PROCESSED with LightRAG's own building blocks.

LightRAG's batch pipeline (`apipeline_process_enqueue_documents`) waits for a whole batch
(`asyncio.gather`) before it looks at documents that arrived meanwhile, so a document's wait
depends on every other document. `DocumentIndexer` runs the body of LightRAG's per-document
`process_document` (lightrag.py) for exactly one document, owned by the
caller's task: the same doc-status and full_docs records, `rag.chunking_func`, chunk upserts,
`operate.extract_entities`, `operate.merge_nodes_and_edges` (with LightRAG's keyed locks), the
entity/relation chunk-tracking storages and the LLM cache. No document waits for another.

One module (~650 lines) because it is one concept that must be read as a whole: the mirror of
LightRAG's `process_document`, its cancellation and its resume/purge rules depend on each other
line by line, and the equivalence test (tests/test_indexer_equivalence.py) pins them together.
What a running document owns is in `scope.py`; the clean-up before deleting an unfinished one in
`partial_delete.py`.

Cancellation is per document and needs no prompt matching: every document gets its own
`pipeline_status` dict (LightRAG checks its `cancellation_requested` flag at each chunk, entity
and relation) and its own LLM function (a thin wrapper in its `global_config`) that can abort
the document's in-flight LLM calls. Stages that LightRAG fans out into tasks are never cancelled
from outside (that would orphan LightRAG's inner tasks, which would keep writing); they are
told to stop and are awaited, then the caller's cancellation continues.

Deletes use `rag.adelete_by_doc_id`, which LightRAG refuses while its pipeline `busy` flag is
set because it is not safe against concurrent merges. We never set that flag; instead a
workspace gate lets merges run together (shared) and gives a delete the graph alone
(exclusive), so a delete waits at most for merge phases in flight, never for whole documents.

It mirrors the supported LightRAG release (`lightrag_compat.SUPPORTED_LIGHTRAG`, whose internals
it reaches through that module); tests/test_indexer_equivalence.py checks the equivalence.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightrag import LightRAG
from lightrag.base import DeletionResult, DocStatus
from lightrag.utils import (
    compute_mdhash_id,
    get_content_summary,
    sanitize_text_for_encoding,
)

from src.core.metrics import MERGE_LOCKED_SUMMARIES
from src.rag.engine import versions
from src.rag.engine.chunking import CHILD_CHUNKING_MIN_CHARS, ChunkingFailed, chunk_in_child
from src.rag.engine.merge_groups import MergeGroup, MergeGroupFailed, MergeGroups, MergeJob
from src.rag.engine.modal import MODAL_KEY, link_modal_entities, modal_chunk_records
from src.rag.engine.partial_delete import prepare_partial_delete
from src.rag.engine.presummary import ObservedCache, presummarize
from src.rag.engine.purges import PurgeBatches, delete_together, drop_unmerged, never_merged
from src.rag.engine.scope import (
    UNWIND_SECONDS,
    CoalescedReport,
    DocumentCancelledError,
    DocumentScope,
    GraphGate,
    GraphLocks,
    NoGraphLocks,
    ObservedGraph,
    ScopedVectors,
    wait_out,
)
from src.rag.knowledge import IndexProgress, IndexStage, ProgressSink
from src.rag.lightrag_compat import (
    DELETE_REFUSED_WHILE_BUSY,
    chunks_by_default_chunking,
    document_global_config,
    extract_entities,
    merge_nodes_and_edges,
    persist_all,
)
from src.rag.scheduler import call_context, current_call_context
from src.rag.storage.fence import extracting_ahead
from src.rag.tokenizer import lossless_encoding_name

log = logging.getLogger(__name__)

#: A document of this many chunks (~300 KB of text) or more embeds its chunks as bulk work: with
#: e5 on this machine's cores, in a niced background lane (src/rag/e5_bulk_lane.py), so it never
#: takes the CPU from the documents and queries beside it.
BULK_DOCUMENT_CHUNKS = 64


class IndexingError(Exception):
    """The document could not be indexed; LightRAG's doc status says FAILED with this message."""


class DocumentMissingError(IndexingError):
    """Neither the caller nor LightRAG's full_docs has the document's text."""


@dataclass
class IndexOutcome:
    doc_id: str
    chunks_count: int
    resumed: bool  # a record from an earlier attempt existed
    already_processed: bool = False


Flush = Callable[[], Awaitable[None]]


class TextHandoff:
    """A document's text handed down a chain of calls and taken by the one that uses it, so that no
    caller's frame keeps it alive: a 99 MB text was held two or three times over (the upload's
    decoded text beside its cleaned copy, both kept by the frames above the chunking) for the whole
    of its indexing."""

    __slots__ = ("_text",)

    def __init__(self, text: str | None) -> None:
        self._text = text

    def take(self) -> str | None:
        text, self._text = self._text, None
        return text


@dataclass
class _MergeMember:
    """What the merge of one document needs besides its extraction results."""

    scope: DocumentScope
    global_config: dict[str, Any]
    file_path: str
    on_node: Callable[[str], None]
    on_edge: Callable[[str, str], None]


def _counted_locked_summaries(llm: Callable[..., Any]) -> Callable[..., Any]:
    """The merge's LLM function, counted: a merge calls the LLM only for a summary the cache did not
    have, made under LightRAG's keyed locks."""

    async def summary(*args: Any, **kwargs: Any) -> Any:
        MERGE_LOCKED_SUMMARIES.inc()
        return await llm(*args, **kwargs)

    return summary


def _now() -> str:
    return datetime.now(UTC).isoformat()


class DocumentIndexer:
    """Indexes and deletes single documents of one LightRAG workspace."""

    def __init__(
        self,
        rag: LightRAG,
        *,
        flush: Flush | None = None,
        chunk_concurrency: int | None = None,
        merge_concurrency: int | None = None,
        merge_group_docs: int | None = None,
        merge_patience: float | None = None,
        split_by_character: str | None = None,
        split_by_character_only: bool = False,
        child_chunking_chars: int = CHILD_CHUNKING_MIN_CHARS,
        chunk_memory_bytes: int = 2 * 1024**3,
        graph_locks: GraphLocks | None = None,
    ):
        self.rag = rag
        self.flush: Flush = flush or self.flush_all
        #: Per-document bound on chunks in extraction at once, like LightRAG's extract_entities.
        self.chunk_concurrency = max(1, chunk_concurrency or int(rag.llm_model_max_async))
        #: Merges at once in this workspace; documents that arrive while they run wait and are then
        #: merged together, as one group (see merge_groups.py). Merges sharing entities serialise on
        #: LightRAG's keyed locks anyway, so a few concurrent groups are enough; a document that
        #: shares entities with a running group waits for it (up to ``merge_patience`` seconds).
        self.merges = MergeGroups(
            self._merge_group,
            concurrency=max(1, merge_concurrency or 2),
            max_docs=max(1, merge_group_docs or max(16, 4 * int(rag.llm_model_max_async))),
            **({} if merge_patience is None else {"patience": merge_patience}),
        )
        self.split_by_character = split_by_character
        self.split_by_character_only = split_by_character_only
        #: Texts this long are chunked in a child process under ``chunk_memory_bytes`` (chunking.py).
        self.child_chunking_chars = child_chunking_chars
        self.chunk_memory_bytes = chunk_memory_bytes
        #: The same merge/deletion rules across instances when several index this workspace
        #: (src/ingestion/graph_locks.py); nothing with embedded storages.
        self.graph_locks = graph_locks or NoGraphLocks()
        self.gate = GraphGate(self.graph_locks)
        self.purges = PurgeBatches(self._purge_pass)
        self._jobs: dict[str, asyncio.Task] = {}

    # ------------------------------------------------------------------ public
    def indexing(self, doc_id: str) -> bool:
        job = self._jobs.get(doc_id)
        return job is not None and not job.done()

    async def flush_all(self) -> None:
        """Persist every storage, as LightRAG does after each document."""
        await persist_all(self.rag)

    async def index(
        self,
        doc_id: str,
        text: str | TextHandoff | None = None,
        *,
        file_path: str = "",
        track_id: str = "",
        on_progress: ProgressSink | None = None,
        modal_chunks: list[dict[str, Any]] | None = None,
    ) -> IndexOutcome:
        """Index ``doc_id`` (``text`` may be None to resume from full_docs) and return when PROCESSED.
        A ``TextHandoff`` lets the caller keep no reference to a big text while it is indexed.

        ``modal_chunks`` (src/rag/engine/modal.py ``ModalChunk.as_dict()``) are the document's
        pictures, tables and equations as RAG-Anything's multimodal chunks: kept with the text in
        full_docs (so a resumed attempt has them), indexed as chunks of this document after its text
        chunks, each with its own entity and ``belongs_to`` relations, as ``insert_content_list``
        writes them.

        Cancelling the caller stops the document's work (LightRAG's own cancellation flag plus
        its in-flight LLM calls) and waits for it to unwind; nothing is deleted here (the caller
        decides: purge for a user cancel, keep for a shutdown so that a later attempt resumes).
        """
        while (previous := self._jobs.get(doc_id)) is not None and not previous.done():
            # The same document indexed twice in this process: let the first attempt finish.
            await asyncio.wait({previous})
        job = asyncio.create_task(
            self._index(doc_id, text, file_path, track_id, on_progress, modal_chunks or []),
            name=f"index-{doc_id}",
        )
        del text  # the job has it
        self._jobs[doc_id] = job
        job.add_done_callback(lambda t, d=doc_id: self._jobs.pop(d, None) if self._jobs.get(d) is t else None)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            if not job.done():
                job.cancel()
                await wait_out(job, UNWIND_SECONDS)
                raise
            if job.cancelled():
                # Not our caller: a purge/delete of this document stopped it.
                raise IndexingError(f"document {doc_id} was deleted while it was being indexed") from None
            raise

    async def pre_extract(self, doc_id: str, text: str) -> int:
        """Run the extraction calls of ``doc_id``'s chunks and keep only their answers, in the LLM
        cache; nothing else is written. Called on an instance that does not own the workspace
        (src/ingestion/prefetch.py): the owner, indexing the same text later, chunks it the same
        way, sends the same prompts and finds every answer in the shared cache. Returns the chunks."""
        rag = self.rag
        content = await asyncio.to_thread(sanitized, text)
        chunks = await self._chunks(doc_id, content, "unknown_source")
        if not chunks:
            return 0
        scope = DocumentScope(doc_id, rag.llm_model_func)
        progress = IndexProgress(IndexStage.EXTRACTING, chunks_total=len(chunks))

        async def no_report() -> None:
            return None

        with extracting_ahead():
            extraction = self._extract(
                scope, chunks, document_global_config(rag, scope.llm), progress, no_report, record_cache=False
            )
            await self._stage(scope, extraction)
        if rag.llm_response_cache is not None:
            await rag.llm_response_cache.index_done_callback()
        return len(chunks)

    async def delete(self, doc_id: str, *, delete_llm_cache: bool = False) -> DeletionResult:
        """Stop this document's indexing if it runs here, then delete it and all it derived, on disk.

        Never waits for other documents: only for merge phases in flight (see GraphGate) and for
        the group commit it shares with them.
        """
        job = self._jobs.get(doc_id)
        if job is not None and not job.done():
            job.cancel()
            await wait_out(job, UNWIND_SECONDS)
        result = await self._purge(doc_id, delete_llm_cache=delete_llm_cache)
        # Durable before the caller reports it (a task `cancelled`, a 200 to DELETE): a kill -9
        # before the next background flush brought the document back, with no task left to purge it.
        await self.flush()
        return result

    async def _purge(self, doc_id: str, *, delete_llm_cache: bool = False) -> DeletionResult:
        """A document that never reached the graph is dropped at once, without the gate; the others
        are deleted in the next purge pass (together with every other document waiting for one),
        or alone under the gate when their LLM cache goes too (see purges.py)."""
        record = await self.rag.doc_status.get_by_id(doc_id)
        if record is None:
            return DeletionResult("not_found", doc_id, f"Document {doc_id} not found.", 404, "")
        keep = await versions.base_chunks(self.rag, doc_id)
        if keep and keep & set(record.get("chunks_list") or []):
            # A version's chunks that its visible document lists are that document's: not ours to
            # delete (versions.py).
            own = [c for c in record.get("chunks_list") or [] if c not in keep]
            record = {**record, "chunks_list": own, "chunks_count": len(own)}
            await self.rag.doc_status.upsert({doc_id: record})
        entities = await self.rag.full_entities.get_by_id(doc_id)
        relations = await self.rag.full_relations.get_by_id(doc_id)
        if not delete_llm_cache and never_merged(record, entities, relations):
            result = await drop_unmerged(self.rag, doc_id, record)
            await persist_all(self.rag)
        elif delete_llm_cache:
            async with self.gate.exclusive():
                result = await self._delete_alone(doc_id, delete_llm_cache=True)
        else:
            result = await self.purges.purge(doc_id)
        log.info("deleted document %s: %s", doc_id, result.status)
        return result

    async def _purge_pass(self, doc_ids: list[str]) -> dict[str, DeletionResult]:
        """Delete every document of a pass under one exclusive hold of the gate."""
        results: dict[str, DeletionResult] = {}
        records: dict[str, dict[str, Any]] = {}
        async with self.gate.exclusive():
            for doc_id in doc_ids:
                record = await self.rag.doc_status.get_by_id(doc_id)
                if record is None:
                    results[doc_id] = DeletionResult(
                        "not_found", doc_id, f"Document {doc_id} not found.", 404, ""
                    )
                    continue
                if record.get("status") != DocStatus.PROCESSED:
                    await prepare_partial_delete(self.rag, doc_id, record)
                records[doc_id] = record
            if len(records) > 1:
                joint = await delete_together(self.rag, list(records), records)
                if joint.status == "success":
                    for doc_id, record in records.items():
                        path = str(record.get("file_path") or "")
                        results[doc_id] = DeletionResult("success", doc_id, joint.message, 200, path)
                    return results
                log.warning(
                    "joint deletion of %d documents failed (%s); deleting each alone",
                    len(records),
                    joint.message,
                )
            for doc_id in records:
                results[doc_id] = await self._delete_alone(doc_id)
        return results

    async def _delete_alone(self, doc_id: str, *, delete_llm_cache: bool = False) -> DeletionResult:
        """LightRAG's own deletion of one document; the caller holds the gate exclusively."""
        record = await self.rag.doc_status.get_by_id(doc_id)
        if record is None:
            return DeletionResult("not_found", doc_id, f"Document {doc_id} not found.", 404, "")
        if record.get("status") != DocStatus.PROCESSED:
            await prepare_partial_delete(self.rag, doc_id, record)
        while True:
            result = await self.rag.adelete_by_doc_id(doc_id, delete_llm_cache)
            if result.status != DELETE_REFUSED_WHILE_BUSY:
                return result
            # Only an outside caller of LightRAG's own pipeline sets `busy`; we never do.
            log.warning("LightRAG refused deleting %s (%s); retrying", doc_id, result.message)
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Stop every document indexing in this process (they resume on a later attempt)."""
        jobs = [job for job in self._jobs.values() if not job.done()]
        for job in jobs:
            job.cancel()
        for job in jobs:
            await wait_out(job, UNWIND_SECONDS)
        await self.purges.close()

    # ------------------------------------------------------------------ records
    async def _enqueue(
        self,
        doc_id: str,
        text: str,
        file_path: str,
        track_id: str,
        created_at: str | None = None,
        modal: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], str]:
        """full_docs + PENDING doc status, as `apipeline_enqueue_documents` writes them (plus the
        multimodal chunks, when the document has any)."""
        content = await asyncio.to_thread(sanitized, text)
        path = file_path.strip() if isinstance(file_path, str) else ""
        path = path or "unknown_source"
        now = _now()
        status = {
            "status": DocStatus.PENDING,
            "content_summary": get_content_summary(content),
            "content_length": len(content),
            "created_at": created_at or now,
            "updated_at": now,
            "file_path": path,
            "track_id": track_id,
        }
        full_doc: dict[str, Any] = {"content": content, "file_path": path}
        if modal:
            full_doc[MODAL_KEY] = modal
        await self.rag.full_docs.upsert({doc_id: full_doc})
        await self.rag.doc_status.upsert({doc_id: dict(status)})
        return status, content

    async def _index(
        self,
        doc_id: str,
        given: str | TextHandoff | None,
        file_path: str,
        track_id: str,
        on_progress: ProgressSink | None,
        modal: list[dict[str, Any]],
    ) -> IndexOutcome:
        text = given.take() if isinstance(given, TextHandoff) else given
        del given
        record = await self.rag.doc_status.get_by_id(doc_id)
        if record is not None and record.get("status") == DocStatus.PROCESSED:
            # Processed by an earlier attempt; possibly in this process and not yet on disk.
            await self.flush()
            return IndexOutcome(doc_id, int(record.get("chunks_count") or 0), True, already_processed=True)
        if record is None:
            if not text and not modal:
                raise DocumentMissingError(f"no text for document {doc_id}")
            record, content = await self._enqueue(doc_id, text or "", file_path, track_id, modal=modal)
            del text  # the cleaned copy is the document from here on
            return await self._process(doc_id, record, TextHandoff(content), False, on_progress)
        # Left PENDING/PROCESSING/FAILED by an attempt that died or failed: resume from its records.
        stored = await self.rag.full_docs.get_by_id(doc_id) or {}
        content = stored.get("content") or text or ""
        del text
        modal = stored.get(MODAL_KEY) or modal
        if not content and not modal:
            raise DocumentMissingError(f"no text for document {doc_id} (full_docs has none)")
        if self._may_hold_derived_data(record) or not (stored.get("content") or stored.get(MODAL_KEY)):
            # Take out what the earlier attempt wrote: LightRAG's merge is not idempotent
            # (re-merging a chunk would duplicate its descriptions). Same ids, same text after.
            await self._purge(doc_id)
            record, content = await self._enqueue(
                doc_id,
                content,
                _resolve_path(record.get("file_path"), stored.get("file_path"), file_path),
                record.get("track_id") or track_id,
                created_at=record.get("created_at"),
                modal=modal,
            )
        stored = {}
        return await self._process(doc_id, record, TextHandoff(content), True, on_progress)

    @staticmethod
    def _may_hold_derived_data(record: dict[str, Any]) -> bool:
        return record.get("status") != DocStatus.PENDING or bool(record.get("chunks_list"))

    # ------------------------------------------------------------------ the per-document body
    async def _process(
        self,
        doc_id: str,
        record: dict[str, Any],
        content: TextHandoff,
        resumed: bool,
        on_progress: ProgressSink | None,
    ) -> IndexOutcome:
        try:
            return await self._process_once(doc_id, record, content, resumed, on_progress)
        except MergeGroupFailed as exc:
            # Take out what the group wrote for this document, then merge it alone: the group's
            # failure may be another document's fault, and a retry must not depend on it. Its text
            # is read back from full_docs (no frame here keeps a big text for this rare case).
            log.warning("document %s: %s; purging it and indexing it again alone", doc_id, exc)
            stored = (await self.rag.full_docs.get_by_id(doc_id)) or {}
            modal = stored.get(MODAL_KEY)
            await self._purge(doc_id)
            record, text = await self._enqueue(
                doc_id,
                stored.pop("content", None) or "",
                str(record.get("file_path") or ""),
                str(record.get("track_id") or ""),
                created_at=record.get("created_at"),
                modal=modal,
            )
            del stored
            handed = TextHandoff(text)
            del text
            return await self._process_once(doc_id, record, handed, resumed, on_progress, solo=True)

    async def _process_once(
        self,
        doc_id: str,
        record: dict[str, Any],
        text: TextHandoff,
        resumed: bool,
        on_progress: ProgressSink | None,
        solo: bool = False,
    ) -> IndexOutcome:
        rag = self.rag
        stored = await rag.full_docs.get_by_id(doc_id) or {}
        file_path = _resolve_path(record.get("file_path"), stored.get("file_path"))
        modal_items = stored.get(MODAL_KEY) or []
        del stored  # its copy of the text
        progress = IndexProgress(IndexStage.CHUNKING)

        async def report() -> None:
            if on_progress is not None:
                with contextlib.suppress(Exception):
                    await on_progress(IndexProgress(**progress.__dict__))

        async def write_status(
            status: DocStatus, chunk_ids: list[str], ended: bool = False, **extra: Any
        ) -> None:
            """LightRAG's doc-status record of this attempt (``extra``: metadata beyond the times,
            or ``error_msg``)."""
            error = {"error_msg": extra.pop("error_msg")} if "error_msg" in extra else {}
            metadata: dict[str, Any] = {"processing_start_time": processing_start_time}
            if ended:
                metadata["processing_end_time"] = int(time.time())
            await rag.doc_status.upsert(
                {
                    doc_id: {
                        "status": status,
                        **error,
                        "chunks_count": len(chunk_ids),
                        "chunks_list": chunk_ids,
                        "content_summary": record.get("content_summary"),
                        "content_length": record.get("content_length"),
                        "created_at": record.get("created_at"),
                        "file_path": file_path,
                        "track_id": record.get("track_id"),
                        "updated_at": _now(),
                        "metadata": {**metadata, **extra},
                    }
                }
            )

        scope = DocumentScope(doc_id, rag.llm_model_func)
        global_config = document_global_config(rag, scope.llm)
        chunks: dict[str, Any] = {}
        processing_start_time = int(time.time())
        merged_entities: set[str] = set()
        merged_edges: set[tuple[str, str]] = set()
        merge_intent: dict[str, Any] = {}
        job: MergeJob | None = None
        await report()
        try:
            chunks = await self._chunks(doc_id, text.take() or "", file_path)
            modal, owners = modal_chunk_records(modal_items, doc_id, file_path, len(chunks), rag.tokenizer)
            chunks.update(modal)
            # A new version of a document (versions.py) writes only the chunks its visible version
            # lacks: the others are in the graph already, and merging them again duplicates.
            shared = await versions.base_chunks(rag, doc_id)
            fresh = {chunk_id: chunk for chunk_id, chunk in chunks.items() if chunk_id not in shared}
            processing_start_time = int(time.time())
            # The status names the chunks before any of them is written (LightRAG writes the three
            # at once): a cancel landing between the writes must leave no chunk its purge cannot find.
            await write_status(DocStatus.PROCESSING, list(chunks))
            vectors = await self._write_chunks(fresh)
            try:
                progress.stage, progress.chunks_total = IndexStage.EXTRACTING, len(fresh)
                await report()
                extraction = self._extract(scope, fresh, global_config, progress, report)
                chunk_results = await self._stage(scope, extraction)
                # Written before anything of the document merges; awaited directly, so a cancel
                # reaches its embedding calls at once (the batcher drops them).
                await vectors
            finally:
                if not vectors.done():
                    vectors.cancel()
                    await wait_out(vectors, UNWIND_SECONDS)
            chunk_results = link_modal_entities(list(fresh), chunk_results, owners, file_path)

            all_nodes = {name for nodes, _ in chunk_results for name in nodes}
            all_edges = {tuple(sorted(key)) for _, edges in chunk_results for key in edges}
            progress.stage, progress.merge_total = IndexStage.MERGING, len(all_nodes) + len(all_edges)
            await report()
            merge_intent = {
                "merge_entities": sorted(all_nodes | {n for e in all_edges for n in e}),
                "merge_relations": [list(e) for e in sorted(all_edges)],
            }
            # Recorded before merging, so a purge after a crash mid-merge finds every entity and
            # relation the merge may have touched (LightRAG records them only when it is done).
            await write_status(DocStatus.PROCESSING, list(chunks), **merge_intent)

            merged_report = CoalescedReport(report)

            def on_node(name: str) -> None:
                if name in all_nodes and name not in merged_entities:
                    merged_entities.add(name)
                    progress.merged = len(merged_entities) + len(merged_edges)
                    merged_report()

            def on_edge(src: str, tgt: str) -> None:
                key = tuple(sorted((src, tgt)))
                if key in all_edges and key not in merged_edges:
                    merged_edges.add(key)  # type: ignore[arg-type]
                    progress.merged = len(merged_entities) + len(merged_edges)
                    merged_report()

            job = MergeJob(
                doc_id,
                chunk_results,
                priority=current_call_context().priority,
                solo=solo,
                context=_MergeMember(scope, global_config, file_path, on_node, on_edge),
            )
            scope.on_stop.append(lambda: self.merges.stop(job))  # queued: leaves the queue at once
            await self._stage(scope, self.merges.merge(job))
            await write_status(DocStatus.PROCESSED, list(chunks), ended=True)
        except asyncio.CancelledError:
            if job is not None and not job.started:
                # Stopped while it waited for a merge: nothing of it reached the graph, so its purge
                # needs no graph pass (purges.py); the record says so from now on.
                await write_status(DocStatus.PROCESSING, list(chunks))
            raise  # stopped, not failed: the record stays as it is (resumable or purged by the caller)
        except MergeGroupFailed:
            raise  # not this document's failure (yet): the caller purges it and merges it alone
        except Exception as exc:
            log.error("indexing document %s failed: %s", doc_id, exc)
            if rag.llm_response_cache:
                with contextlib.suppress(Exception):
                    await rag.llm_response_cache.index_done_callback()
            chunk_ids = list(chunks) or list(record.get("chunks_list") or [])
            # The merge intent is kept when the merge had begun, so the purge finds what it touched.
            await write_status(DocStatus.FAILED, chunk_ids, ended=True, error_msg=str(exc), **merge_intent)
            raise IndexingError(str(exc)) from exc
        await self.flush()
        progress.stage = IndexStage.DONE
        await report()
        return IndexOutcome(doc_id, len(chunks), resumed)

    async def _write_chunks(self, fresh: dict[str, Any]) -> asyncio.Future[Any]:
        """Write the chunk records, and start writing their vectors: returned, to be awaited before
        the merge.

        The vectors are written while the chunks are extracted: their embedding calls (a round trip
        to a remote provider, or e5 on this machine) no longer stand between a document's upload
        and its first LLM call. The records go first: LightRAG's extraction notes each chunk's LLM
        cache keys in its record. A big document's vectors are bulk work (src/rag/e5_bulk_lane.py)
        and are written before its extraction starts: extracting thousands of chunks beside them
        would take the CPU the bulk lane leaves to the other documents."""
        rag = self.rag
        bulk = len(fresh) >= BULK_DOCUMENT_CHUNKS
        with call_context(bulk=bulk):
            await rag.text_chunks.upsert(fresh)
            vectors = asyncio.ensure_future(rag.chunks_vdb.upsert(fresh))
        if bulk:
            await vectors
        return vectors

    async def _chunks(self, doc_id: str, content: str, file_path: str) -> dict[str, Any]:
        """The text chunk records of ``content``, with LightRAG's ``chunking_func`` (off the loop;
        a big text with LightRAG's default chunking in a child process: chunking.py)."""
        rag = self.rag
        if not content.strip():
            return {}
        encoding = lossless_encoding_name(rag.tokenizer)
        if (
            len(content) >= self.child_chunking_chars
            and encoding is not None
            and self.split_by_character is None
            and chunks_by_default_chunking(rag)
        ):
            try:
                result: Any = await chunk_in_child(
                    content,
                    encoding,
                    rag.chunk_token_size,
                    rag.chunk_overlap_token_size,
                    self.chunk_memory_bytes,
                )
            except ChunkingFailed as exc:
                raise IndexingError(str(exc)) from exc
        else:
            result = await asyncio.to_thread(
                rag.chunking_func,
                rag.tokenizer,
                content,
                self.split_by_character,
                self.split_by_character_only,
                rag.chunk_overlap_token_size,
                rag.chunk_token_size,
            )
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, (list, tuple)):
            raise TypeError(f"chunking_func must return a list or tuple of dicts, got {type(result)}")
        # Off the loop: hashing a big document's chunks (100 MB of text) took a quarter second.
        return await asyncio.to_thread(_chunk_records, result, doc_id, file_path)

    async def _stage(self, scope: DocumentScope, coro: Awaitable[Any]) -> Any:
        """Run a stage that LightRAG fans out into tasks; on cancel, stop it and let it unwind."""
        task = asyncio.ensure_future(coro)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            scope.stop()
            await wait_out(task, UNWIND_SECONDS)
            raise

    async def _merge_group(self, group: MergeGroup) -> None:
        """LightRAG's `merge_nodes_and_edges` for one document, or for a group of documents at once."""
        rag = self.rag
        jobs = group.jobs
        members: list[_MergeMember] = [job.context for job in jobs]

        def on_node(name: str) -> None:
            for member in members:
                member.on_node(name)

        def on_edge(src: str, tgt: str) -> None:
            for member in members:
                member.on_edge(src, tgt)

        graph = ObservedGraph(rag.chunk_entity_relation_graph, on_node, on_edge)
        if len(jobs) == 1:  # exactly LightRAG's own merge of one document
            scope, global_config, doc_id = members[0].scope, members[0].global_config, jobs[0].doc_id
        else:  # LightRAG's phase 3 (the per-document entity/relation lists) is done below, per member
            scope = DocumentScope(f"group of {len(jobs)}", rag.llm_model_func)
            group.on_all_stopped.append(scope.stop)
            if group.all_stopped():
                scope.stop()
            global_config = {**members[0].global_config, "llm_model_func": scope.llm}
            doc_id = None
        chunk_results = [result for job in jobs for result in job.chunk_results]
        # Its LLM and embedding calls run under LightRAG's keyed locks: admitted first.
        with call_context(priority=group.priority, merging=True):
            # The summaries first, all at once and without a lock (presummary.py); reads only, so
            # outside the gate: a delete meanwhile at worst makes a prediction miss.
            ahead = await presummarize(
                chunk_results,
                rag.chunk_entity_relation_graph,
                rag.entity_chunks,
                rag.relation_chunks,
                global_config,
                rag.llm_response_cache,
            )
            # Seen only to count what the merge used of the summaries made ahead.
            seen = ObservedCache(rag.llm_response_cache) if ahead.written else None
            async with self.gate.shared(), self._merge_locks(jobs):
                await merge_nodes_and_edges(
                    chunk_results=chunk_results,
                    knowledge_graph_inst=graph,
                    entity_vdb=ScopedVectors(rag.entities_vdb, scope),
                    relationships_vdb=ScopedVectors(rag.relationships_vdb, scope),
                    global_config={
                        **global_config,
                        "llm_model_func": _counted_locked_summaries(global_config["llm_model_func"]),
                    },
                    full_entities_storage=rag.full_entities if doc_id else None,
                    full_relations_storage=rag.full_relations if doc_id else None,
                    doc_id=doc_id,
                    pipeline_status=scope.status,
                    pipeline_status_lock=scope.lock,
                    llm_response_cache=seen if seen is not None else rag.llm_response_cache,
                    entity_chunks_storage=rag.entity_chunks,
                    relation_chunks_storage=rag.relation_chunks,
                    current_file_number=1,
                    total_files=1,
                    file_path=members[0].file_path if doc_id else f"{len(jobs)} documents",
                )
                if doc_id is None:
                    await self._record_group_members(jobs, graph)
            if seen is not None:
                ahead.settle(seen)

    def _merge_locks(self, jobs: list[MergeJob]) -> contextlib.AbstractAsyncContextManager[None]:
        """Across instances: the entities the merge writes (with every relation's endpoints), held
        around LightRAG's merge, which takes the same names as keyed locks inside this process."""
        return self.graph_locks.merging(frozenset().union(*(job.lock_keys() for job in jobs)))

    async def _record_group_members(self, jobs: list[MergeJob], graph: ObservedGraph) -> None:
        """LightRAG's phase 3 for each member of a group: the entities and relations it merged,
        plus the relation endpoints the group created (LightRAG's `added_entities`)."""
        group_nodes = set().union(*(job.node_names() for job in jobs))
        added = (graph.missing & graph.upserted_nodes) - group_nodes
        for job in jobs:
            edges = job.edge_keys()
            names = job.node_names() & graph.upserted_nodes
            names |= {name for key in edges for name in key if name in added}
            pairs = edges & graph.upserted_edges
            if names:
                await self.rag.full_entities.upsert(
                    {job.doc_id: {"entity_names": list(names), "count": len(names)}}
                )
            if pairs:
                await self.rag.full_relations.upsert(
                    {job.doc_id: {"relation_pairs": [list(p) for p in pairs], "count": len(pairs)}}
                )

    async def _extract(
        self,
        scope: DocumentScope,
        chunks: dict[str, Any],
        global_config: dict[str, Any],
        progress: IndexProgress,
        report: Callable[[], Awaitable[None]],
        record_cache: bool = True,
    ) -> list:
        """`extract_entities` chunk by chunk, so each completion is seen; results in chunk order.
        ``record_cache``: note each chunk's cache entries in its text-chunk record (LightRAG's
        ``llm_cache_list``, read by a delete with the LLM cache); off when no chunk is written."""
        semaphore = asyncio.Semaphore(self.chunk_concurrency)

        async def one(chunk_id: str, chunk: dict[str, Any]) -> Any:
            async with semaphore:
                if scope.stopped:
                    raise DocumentCancelledError(f"document {scope.doc_id} was stopped")
                result = await extract_entities(
                    {chunk_id: chunk},
                    global_config=global_config,
                    pipeline_status=scope.status,
                    pipeline_status_lock=scope.lock,
                    llm_response_cache=self.rag.llm_response_cache,
                    text_chunks_storage=self.rag.text_chunks if record_cache else None,
                )
            progress.chunks_extracted += 1
            await report()
            return result[0]

        tasks = [asyncio.ensure_future(one(cid, chunk)) for cid, chunk in chunks.items()]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
        if failed is not None:
            # Like LightRAG: the first failure stops the document's other chunks.
            scope.stop()
            if pending:
                await asyncio.wait(pending)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()
            raise failed.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]


#: Characters cleaned per call: each regex pass over a slice holds the GIL (and so the event loop)
#: for milliseconds, where one pass over a 100 MB text held it for about a second.
SANITIZE_SLICE_CHARS = 1 << 20


def sanitized(text: str, slice_chars: int = SANITIZE_SLICE_CHARS) -> str:
    """``sanitize_text_for_encoding(text)``, done slice by slice (cut after a newline) so that a big
    document lets the event loop run between slices. Its clean-ups are per character, HTML
    entities never span a newline, and each slice is cleaned between two sentinels so that only the
    whole text's ends are stripped."""
    if len(text) <= slice_chars:
        return sanitize_text_for_encoding(text)
    text = text.strip()
    parts = []
    start = 0
    while start < len(text):
        end = text.find("\n", start + slice_chars)
        end = len(text) if end < 0 else end + 1
        parts.append(sanitize_text_for_encoding("x" + text[start:end] + "x")[1:-1])
        start = end
    return "".join(parts).strip()


def _chunk_records(pieces: Iterable[dict[str, Any]], doc_id: str, file_path: str) -> dict[str, Any]:
    """The chunk records of a document's pieces, by content id, as LightRAG stores them."""
    return {
        compute_mdhash_id(dp["content"], prefix="chunk-"): {
            **dp,
            "full_doc_id": doc_id,
            "file_path": file_path,
            "llm_cache_list": [],
        }
        for dp in pieces
    }


def _resolve_path(*candidates: Any) -> str:
    """LightRAG's `_resolve_doc_file_path`: the first non-placeholder path."""
    for candidate in candidates:
        if (
            isinstance(candidate, str)
            and candidate.strip()
            and candidate.strip()
            not in (
                "no-file-path",
                "unknown_source",
            )
        ):
            return candidate.strip()
    return "unknown_source"
