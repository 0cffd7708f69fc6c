"""DocumentIndexer against the supported LightRAG itself, on real storages in tmp dirs.

The same document indexed by our per-document engine (workspace A) and by LightRAG's own
`ainsert` (workspace B) with the same deterministic LLM (the offline stand-in) and the offline
hash embedding must give the same knowledge graph, chunks, vectors and doc-status record.
Then: cancel at each stage leaves nothing behind and does not disturb a concurrent document;
an interrupted attempt resumes idempotently; documents never wait for each other; hundreds of
concurrent tiny documents all finish.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lightrag import LightRAG
from lightrag.base import DocStatus
from lightrag.kg.shared_storage import get_storage_keyed_lock
from lightrag.utils import make_relation_chunk_key

from src.rag.builder import build_lightrag
from src.rag.engine.indexer import DocumentIndexer, IndexingError, IndexProgress
from tests.conftest import make_settings
from tests.docs_factory import story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SEP = "<SEP>"
VICTIM = story("canals", "Victimora", 30)
BYSTANDER = story("ferries", "Bystandor", 6)


class LLMControl:
    """Wraps the deterministic LLM: extraction calls for a document containing a marker wait."""

    def __init__(self) -> None:
        self.holds: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.calls: dict[str, int] = {}

    def hold(self, marker: str) -> None:
        self.holds[marker] = asyncio.Event()
        self.entered[marker] = asyncio.Event()

    def release(self, marker: str) -> None:
        self.holds.pop(marker).set()

    def wrap(self, llm: Callable[..., Any]) -> Callable[..., Any]:
        async def controlled(prompt: str, *args: Any, **kwargs: Any) -> Any:
            for marker in list(self.holds):
                if marker in prompt:
                    self.calls[marker] = self.calls.get(marker, 0) + 1
                    self.entered[marker].set()
                    event = self.holds.get(marker)
                    if event is not None:
                        await event.wait()
            return await llm(prompt, *args, **kwargs)

        return controlled


async def _build(tmp_path: Path, workspace: str, control: LLMControl | None = None, **overrides) -> LightRAG:
    settings = make_settings(
        tmp_path,
        None,
        embedding_provider="hash",
        chunk_token_size=200,
        chunk_overlap_token_size=20,
        **overrides,
    )
    # Unique workspaces: LightRAG's shared locks are process-global and bound to the first loop.
    workspace = f"{workspace}-{uuid.uuid4().hex[:8]}"
    return await build_lightrag(settings, workspace=workspace, llm_wrapper=control.wrap if control else None)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[LightRAG, LightRAG, LLMControl]]:
    control = LLMControl()
    ours = await _build(tmp_path, "ours", control)
    theirs = await _build(tmp_path, "theirs")
    yield ours, theirs, control
    await ours.finalize_storages()
    await theirs.finalize_storages()


# ---------------------------------------------------------------------------------- snapshots
async def graph_view(rag: LightRAG) -> dict[str, Any]:
    graph = rag.chunk_entity_relation_graph
    nodes = {
        n["entity_id"]: (
            n.get("entity_type"),
            frozenset((n.get("description") or "").split(SEP)),
            frozenset((n.get("source_id") or "").split(SEP)),
            frozenset((n.get("file_path") or "").split(SEP)),
        )
        for n in await graph.get_all_nodes()
    }
    edges = {}
    for e in await graph.get_all_edges():
        key = tuple(sorted((e["source"], e["target"])))
        edges[key] = (
            frozenset((e.get("description") or "").split(SEP)),
            frozenset((e.get("keywords") or "").split(",")),
            frozenset((e.get("source_id") or "").split(SEP)),
            e.get("weight"),
        )
    return {"nodes": nodes, "edges": edges}


async def kv_view(storage: Any, keys: list[str], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for key, value in zip(keys, await storage.get_by_ids(keys), strict=True):
        if value is not None:
            out[key] = {
                k: (sorted(v) if isinstance(v, list) and k != "chunk_ids" else v)
                for k, v in value.items()
                if k not in ("create_time", "update_time", "_id", *drop)
            }
            if "chunk_ids" in out[key]:
                out[key]["chunk_ids"] = sorted(out[key]["chunk_ids"])
    return out


async def vector_ids(rag: LightRAG) -> dict[str, set[str]]:
    out = {}
    for name in ("chunks_vdb", "entities_vdb", "relationships_vdb"):
        storage = getattr(rag, name)
        out[name] = {d["__id__"] for d in (await storage.client_storage)["data"]}
    return out


def status_view(record: dict[str, Any]) -> dict[str, Any]:
    ignored = {"created_at", "updated_at", "track_id", "metadata", "_id", "create_time", "update_time"}
    return {k: v for k, v in record.items() if k not in ignored}


async def residue(rag: LightRAG, doc_id: str, chunk_ids: set[str]) -> list[str]:
    """Everything in the workspace that still refers to ``doc_id`` or its chunks."""
    found = []
    if await rag.doc_status.get_by_id(doc_id):
        found.append("doc_status")
    if await rag.full_docs.get_by_id(doc_id):
        found.append("full_docs")
    if await rag.full_entities.get_by_id(doc_id) or await rag.full_relations.get_by_id(doc_id):
        found.append("full_entities/relations")
    if any(await rag.text_chunks.get_by_ids(list(chunk_ids))):
        found.append("text_chunks")
    view = await graph_view(rag)
    for name, (_, _, sources, _) in view["nodes"].items():
        if sources & chunk_ids:
            found.append(f"node {name}")
    for key, (_, _, sources, _) in view["edges"].items():
        if sources & chunk_ids:
            found.append(f"edge {key}")
    ids = await vector_ids(rag)
    if ids["chunks_vdb"] & chunk_ids:
        found.append("chunk vectors")
    for data in rag.entity_chunks._data.values():  # also records whose node never made it
        if set(data.get("chunk_ids", [])) & chunk_ids:
            found.append(f"entity_chunks {data.get('_id')}")
    for data in rag.relation_chunks._data.values():
        if set(data.get("chunk_ids", [])) & chunk_ids:
            found.append(f"relation_chunks {data.get('_id')}")
    return sorted(set(found))


async def chunk_ids_of(rag: LightRAG, text: str) -> set[str]:
    """The chunk ids LightRAG derives from ``text`` (deterministic)."""
    from lightrag.utils import compute_mdhash_id

    parts = rag.chunking_func(
        rag.tokenizer, text, None, False, rag.chunk_overlap_token_size, rag.chunk_token_size
    )
    return {compute_mdhash_id(p["content"], prefix="chunk-") for p in parts}


async def assert_same_document(ours: LightRAG, theirs: LightRAG, doc_id: str) -> None:
    mine, reference = await ours.doc_status.get_by_id(doc_id), await theirs.doc_status.get_by_id(doc_id)
    assert mine["status"] == DocStatus.PROCESSED
    assert status_view(mine) == status_view(reference)
    assert sorted(mine["metadata"]) == sorted(reference["metadata"])
    chunks = list(mine["chunks_list"])
    assert await kv_view(ours.text_chunks, chunks, drop=("llm_cache_list",)) == await kv_view(
        theirs.text_chunks, chunks, drop=("llm_cache_list",)
    )
    assert await kv_view(ours.full_docs, [doc_id]) == await kv_view(theirs.full_docs, [doc_id])
    assert await kv_view(ours.full_entities, [doc_id]) == await kv_view(theirs.full_entities, [doc_id])
    assert await kv_view(ours.full_relations, [doc_id]) == await kv_view(theirs.full_relations, [doc_id])
    graph = await graph_view(ours)
    assert graph == await graph_view(theirs)
    names = list(graph["nodes"])
    assert await kv_view(ours.entity_chunks, names) == await kv_view(theirs.entity_chunks, names)
    rel_keys = [make_relation_chunk_key(*k) for k in graph["edges"]]
    assert await kv_view(ours.relation_chunks, rel_keys) == await kv_view(theirs.relation_chunks, rel_keys)
    vectors = await vector_ids(ours)
    assert vectors == await vector_ids(theirs)
    assert vectors["chunks_vdb"] >= set(chunks) and len(vectors["entities_vdb"]) == len(names)
    assert len(vectors["relationships_vdb"]) == len(graph["edges"])


# ---------------------------------------------------------------------------------- tests
async def test_same_graph_chunks_vectors_and_status_as_lightrags_own_insert(pair) -> None:
    """Catches any drift from LightRAG's process_document: records, chunk ids, graph, vectors."""
    ours, theirs, _ = pair
    events: list[IndexProgress] = []

    async def sink(progress: IndexProgress) -> None:
        events.append(progress)

    outcome = await DocumentIndexer(ours).index(
        "doc-eq", VICTIM, file_path="canals.txt", track_id="t-ours", on_progress=sink
    )
    await theirs.ainsert(VICTIM, ids=["doc-eq"], file_paths=["canals.txt"], track_id="t-theirs")
    assert outcome.chunks_count >= 3 and not outcome.resumed
    await assert_same_document(ours, theirs, "doc-eq")
    # Progress came from the source: every chunk completion and every merged item, in order.
    extracted = [e.chunks_extracted for e in events if e.stage == "extracting"]
    assert extracted == sorted(extracted) and extracted[-1] == outcome.chunks_count
    merging = [e for e in events if e.stage == "merging"]
    assert merging and max(e.merged for e in merging) == merging[-1].merge_total > 0
    assert events[-1].stage == "done"
    # A second document sharing entities (Lisbon, Maria Costa...) merges the same way.
    await DocumentIndexer(ours).index("doc-eq2", BYSTANDER, file_path="ferries.txt", track_id="x")
    await theirs.ainsert(BYSTANDER, ids=["doc-eq2"], file_paths=["ferries.txt"], track_id="y")
    await assert_same_document(ours, theirs, "doc-eq2")
    # Indexing a PROCESSED document again is a no-op.
    again = await DocumentIndexer(ours).index("doc-eq", VICTIM, file_path="canals.txt", track_id="t")
    assert again.already_processed and again.chunks_count == outcome.chunks_count


@pytest.mark.parametrize("stage", ["chunking", "extracting", "merging"])
async def test_cancel_at_each_stage_leaves_nothing_and_spares_a_concurrent_document(
    pair, tmp_path: Path, stage: str
) -> None:
    """Catches orphaned LightRAG tasks writing after the cancel, partial merges the delete misses,
    and a delete that damages (or waits for) another document being indexed."""
    ours, theirs, control = pair
    # The bystander shares entities with the victim, so it waits for the victim's stuck merge for
    # its patience, then merges beside it (a short patience keeps the test short).
    indexer = DocumentIndexer(ours, merge_patience=0.2)
    victim_chunks = await chunk_ids_of(ours, VICTIM)
    reached = asyncio.Event()
    release_chunking = threading.Event()
    held_lock = None

    async def sink(progress: IndexProgress) -> None:
        if progress.stage == stage and (stage != "merging" or progress.merged >= 1):
            reached.set()

    if stage == "chunking":
        original = ours.chunking_func

        def slow_chunking(*args: Any) -> Any:
            if "Victimora" in args[1]:
                release_chunking.wait(30)
            return original(*args)

        ours.chunking_func = slow_chunking
    elif stage == "extracting":
        control.hold("Victimora")
    else:
        # Hold LightRAG's own keyed lock on an entity only the victim has, so its merge stops
        # midway with some entities already merged.
        held_lock = get_storage_keyed_lock(["Victimora"], namespace=f"{ours.workspace}:GraphDB")
        await held_lock.__aenter__()

    victim = asyncio.create_task(
        indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="tv", on_progress=sink)
    )
    await asyncio.wait_for(reached.wait(), 60)
    if stage == "extracting":
        await control.entered["Victimora"].wait()
    bystander = asyncio.create_task(indexer.index("doc-b", BYSTANDER, file_path="b.txt", track_id="tb"))
    if stage == "merging":
        await bystander  # merged concurrently while the victim sits in its merge
    victim.cancel()
    if held_lock is not None:
        # The stopped merge unwinds once it gets the lock (LightRAG checks its cancellation flag
        # there): held until the victim has ended, the lock and the unwind would wait on each other.
        await asyncio.sleep(0)
        await held_lock.__aexit__(None, None, None)
    with pytest.raises(asyncio.CancelledError):
        await victim
    result = await indexer.delete("doc-v")
    release_chunking.set()
    if "Victimora" in control.holds:
        control.release("Victimora")
    assert result.status == "success", result.message
    await bystander
    assert await residue(ours, "doc-v", victim_chunks) == []
    # The bystander is exactly what LightRAG makes of it alone.
    await theirs.ainsert(BYSTANDER, ids=["doc-b"], file_paths=["b.txt"], track_id="x")
    await assert_same_document(ours, theirs, "doc-b")


async def test_interrupted_attempt_resumes_with_same_chunks_and_no_duplicates(pair) -> None:
    """Catches LightRAG's non-idempotent re-merge (duplicated descriptions/sources) on resume."""
    ours, theirs, _ = pair
    await DocumentIndexer(ours).index("doc-b", BYSTANDER, file_path="b.txt", track_id="tb")
    lock = get_storage_keyed_lock(["Victimora"], namespace=f"{ours.workspace}:GraphDB")
    merged = asyncio.Event()

    async def sink(progress: IndexProgress) -> None:
        if progress.stage == "merging" and progress.merged >= 2:
            merged.set()

    first = DocumentIndexer(ours)
    async with lock:
        attempt = asyncio.create_task(
            first.index("doc-v", VICTIM, file_path="v.txt", track_id="tv", on_progress=sink)
        )
        await asyncio.wait_for(merged.wait(), 60)
        attempt.cancel()  # like a shutdown or a died worker: no purge
        with pytest.raises(asyncio.CancelledError):
            await attempt
    left = await ours.doc_status.get_by_id("doc-v")
    assert left["status"] == DocStatus.PROCESSING and left["metadata"]["merge_entities"]

    # A new attempt (a fresh indexer, as after a restart) resumes from LightRAG's records alone.
    outcome = await DocumentIndexer(ours).index("doc-v", None, file_path="ignored", track_id="other")
    assert outcome.resumed and not outcome.already_processed
    record = await ours.doc_status.get_by_id("doc-v")
    assert record["track_id"] == "tv" and record["created_at"] == left["created_at"]
    await theirs.ainsert(BYSTANDER, ids=["doc-b"], file_paths=["b.txt"], track_id="x")
    await theirs.ainsert(VICTIM, ids=["doc-v"], file_paths=["v.txt"], track_id="y")
    await assert_same_document(ours, theirs, "doc-v")
    await assert_same_document(ours, theirs, "doc-b")


async def test_failed_attempt_is_marked_like_lightrag_and_retried_cleanly(pair, tmp_path: Path) -> None:
    """Catches a missing FAILED record (LightRAG's shape) and leftovers of the failed attempt."""
    ours, theirs, _ = pair
    failing = {"on": True}
    original = ours.llm_model_func

    async def flaky(prompt: str, *args: Any, **kwargs: Any) -> Any:
        if failing["on"] and "Victimora" in prompt and "Observation 3" in prompt:
            raise RuntimeError("provider said 503 service unavailable")
        return await original(prompt, *args, **kwargs)

    ours.llm_model_func = flaky
    indexer = DocumentIndexer(ours)
    with pytest.raises(IndexingError, match="503"):
        await indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="tv")
    record = await ours.doc_status.get_by_id("doc-v")
    assert record["status"] == DocStatus.FAILED and "503" in record["error_msg"]
    assert record["chunks_count"] == len(record["chunks_list"]) >= 3
    failing["on"] = False
    outcome = await indexer.index("doc-v", None)
    assert outcome.resumed
    await theirs.ainsert(VICTIM, ids=["doc-v"], file_paths=["v.txt"], track_id="y")
    await assert_same_document(ours, theirs, "doc-v")


async def test_documents_never_wait_for_each_other(pair) -> None:
    """Catches a pass barrier: B must reach PROCESSED while A is still held in extraction."""
    ours, _, control = pair
    indexer = DocumentIndexer(ours)
    control.hold("Victimora")
    slow = asyncio.create_task(indexer.index("doc-a", VICTIM, file_path="a.txt", track_id="ta"))
    await asyncio.wait_for(control.entered["Victimora"].wait(), 60)
    fast = await asyncio.wait_for(indexer.index("doc-b", BYSTANDER, file_path="b.txt", track_id="tb"), 120)
    assert fast.chunks_count >= 1 and not slow.done()
    assert (await ours.doc_status.get_by_id("doc-b"))["status"] == DocStatus.PROCESSED
    assert (await ours.doc_status.get_by_id("doc-a"))["status"] == DocStatus.PROCESSING
    control.release("Victimora")
    assert (await slow).chunks_count >= 3


async def test_a_document_queued_for_a_merge_slot_is_cancelled_at_once(pair) -> None:
    """Catches a cancel that waits for another document's merge: with one merge slot held by a
    merge stuck on LightRAG's keyed lock, the queued document stops and is purged meanwhile."""
    ours, _, _ = pair
    indexer = DocumentIndexer(ours, merge_concurrency=1)
    held = get_storage_keyed_lock(["Victimora"], namespace=f"{ours.workspace}:GraphDB")
    await held.__aenter__()
    merging: dict[str, asyncio.Event] = {"doc-v": asyncio.Event(), "doc-b": asyncio.Event()}

    def sink_for(doc_id: str) -> Any:
        async def sink(progress: IndexProgress) -> None:
            if progress.stage == "merging":
                merging[doc_id].set()

        return sink

    first = asyncio.create_task(
        indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="tv", on_progress=sink_for("doc-v"))
    )
    await asyncio.wait_for(merging["doc-v"].wait(), 60)
    queued = asyncio.create_task(
        indexer.index("doc-b", BYSTANDER, file_path="b.txt", track_id="tb", on_progress=sink_for("doc-b"))
    )
    await asyncio.wait_for(merging["doc-b"].wait(), 60)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert not first.done()  # still stuck in its merge: the cancel did not wait for it
    deleted = asyncio.create_task(indexer.delete("doc-b"))  # a delete waits for merges in flight
    await asyncio.sleep(0)
    await held.__aexit__(None, None, None)
    assert (await deleted).status == "success"
    assert (await first).chunks_count >= 3
    assert await residue(ours, "doc-b", await chunk_ids_of(ours, BYSTANDER)) == []


async def test_delete_from_outside_stops_the_running_document(pair) -> None:
    """Catches DELETE /documents waiting for (or racing) a document still being indexed here."""
    ours, _, control = pair
    indexer = DocumentIndexer(ours)
    control.hold("Victimora")
    running = asyncio.create_task(indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="tv"))
    await asyncio.wait_for(control.entered["Victimora"].wait(), 60)
    assert indexer.indexing("doc-v")
    result = await indexer.delete("doc-v")
    control.release("Victimora")  # the provider call itself was only abandoned, not answered
    assert result.status == "success"
    with pytest.raises(IndexingError, match="deleted while it was being indexed"):
        await running
    assert await residue(ours, "doc-v", await chunk_ids_of(ours, VICTIM)) == []
    assert (await indexer.delete("doc-v")).status == "not_found"


async def test_hundreds_of_concurrent_tiny_documents_all_finish(tmp_path: Path) -> None:
    """Deadlock test: catches lock-order or gate bugs that only show with many documents at once."""
    rag = await _build(tmp_path, "many", entity_extract_max_gleaning=0)
    try:
        indexer = DocumentIndexer(rag)
        texts = [f"Doc{i}mark was written in Lisbon by Maria Costa about topic {i % 7}." for i in range(200)]
        outcomes = await asyncio.gather(
            *(indexer.index(f"tiny-{i}", t, file_path=f"t{i}.txt", track_id="b") for i, t in enumerate(texts))
        )
        assert all(o.chunks_count == 1 for o in outcomes)
        statuses = await rag.doc_status.get_by_ids([f"tiny-{i}" for i in range(200)])
        assert all(s["status"] == DocStatus.PROCESSED for s in statuses)
        # Deleting a few while others index concurrently also finishes.
        more = [indexer.index(f"late-{i}", f"Late{i}mark met Maria Costa in Lisbon.") for i in range(50)]
        deletes = [indexer.delete(f"tiny-{i}") for i in range(0, 200, 10)]
        results = await asyncio.gather(*more, *deletes)
        assert all(r.status == "success" for r in results[50:])
        node = await rag.chunk_entity_relation_graph.get_node("Maria Costa")
        assert node is not None and len(node["source_id"].split(SEP)) >= 200
    finally:
        await rag.finalize_storages()


async def test_missing_text_and_a_busy_lightrag_pipeline(pair) -> None:
    """Catches an unclear error for a document with no text anywhere, and a delete that gives up
    (or fails) while an outside caller runs LightRAG's own pipeline (its `busy` flag)."""
    from lightrag.kg.shared_storage import get_namespace_data

    from src.rag.engine.indexer import DocumentMissingError

    ours, _, _ = pair
    indexer = DocumentIndexer(ours)
    with pytest.raises(DocumentMissingError):
        await indexer.index("doc-none", None)
    await indexer.index("doc-b", BYSTANDER, file_path="b.txt", track_id="tb")
    status = await get_namespace_data("pipeline_status", workspace=ours.workspace)
    status.update({"busy": True, "job_name": "Default Job"})
    real_delete, refusals, refused_twice = ours.adelete_by_doc_id, [], asyncio.Event()

    async def counted_delete(doc_id: str, *args: Any, **kwargs: Any) -> Any:
        result = await real_delete(doc_id, *args, **kwargs)
        refusals.append(result.status)
        if len(refusals) >= 2:
            refused_twice.set()
        return result

    ours.adelete_by_doc_id = counted_delete
    deleting = asyncio.create_task(indexer.delete("doc-b"))
    await asyncio.wait_for(refused_twice.wait(), 30)
    assert not deleting.done()  # LightRAG said not_allowed twice; we retried instead of failing
    assert refusals[:2] == ["not_allowed", "not_allowed"], refusals
    status["busy"] = False
    assert (await asyncio.wait_for(deleting, 30)).status == "success"


# ---------------------------------------------------------------------------------- merge groups
GROUPED = {f"doc-g{i}": story(topic, marker, 4) for i, (topic, marker) in enumerate(
    [("tides", "Tidora"), ("winds", "Windora"), ("rivers", "Rivora")]
)}  # fmt: skip


async def _hold_a_merge(ours: LightRAG, indexer: DocumentIndexer) -> tuple[asyncio.Task, Any]:
    """Start the victim and keep its merge stuck on LightRAG's keyed lock of its own entity."""
    held = get_storage_keyed_lock(["Victimora"], namespace=f"{ours.workspace}:GraphDB")
    await held.__aenter__()
    merging = asyncio.Event()

    async def sink(progress: IndexProgress) -> None:
        if progress.stage == "merging":
            merging.set()

    first = asyncio.create_task(
        indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="tv", on_progress=sink)
    )
    await asyncio.wait_for(merging.wait(), 60)
    return first, held


async def _until_waiting(indexer: DocumentIndexer, n: int) -> None:
    async with asyncio.timeout(120):
        while indexer.merges.waiting < n:
            await asyncio.sleep(0.01)


async def test_documents_waiting_for_a_merge_are_merged_as_one_group_like_lightrag_one_by_one(pair) -> None:
    """Catches the grouped merge drifting from LightRAG's own per-document merges: the graph,
    vectors, chunk tracking and each document's full_entities/full_relations (LightRAG's phase 3,
    which we write per member) must equal LightRAG inserting the same documents one by one."""
    ours, theirs, _ = pair
    indexer = DocumentIndexer(ours, merge_concurrency=1)
    first, held = await _hold_a_merge(ours, indexer)
    waiting = [
        asyncio.create_task(indexer.index(doc_id, text, file_path=f"{doc_id}.txt", track_id="tg"))
        for doc_id, text in GROUPED.items()
    ]
    await _until_waiting(indexer, len(GROUPED))
    await held.__aexit__(None, None, None)
    await first
    await asyncio.gather(*waiting)
    assert indexer.merges.largest_group == len(GROUPED) and indexer.merges.docs_grouped == len(GROUPED)
    await theirs.ainsert(VICTIM, ids=["doc-v"], file_paths=["v.txt"], track_id="x")
    for doc_id, text in GROUPED.items():
        await theirs.ainsert(text, ids=[doc_id], file_paths=[f"{doc_id}.txt"], track_id="x")
    for doc_id in ["doc-v", *GROUPED]:
        await assert_same_document(ours, theirs, doc_id)
    # Shared entities carry every member's chunks exactly once (no duplicated merge).
    node = await ours.chunk_entity_relation_graph.get_node("Lisbon")
    sources = node["source_id"].split(SEP)
    assert len(sources) == len(set(sources))
    for text in GROUPED.values():
        assert await chunk_ids_of(ours, text) & set(sources)


async def test_a_failed_group_merges_each_member_again_alone_so_only_the_bad_one_fails(pair) -> None:
    """Catches one document's merge failure failing the documents it was grouped with, and a
    group's partial writes left behind (the good document must end exactly as LightRAG makes it)."""
    ours, theirs, _ = pair
    indexer = DocumentIndexer(ours, merge_concurrency=1)
    original = ours.entities_vdb.upsert

    async def refusing(data: dict[str, Any]) -> Any:
        if any(v.get("entity_name") == "Poisonia" for v in data.values()):
            raise RuntimeError("vector store refused Poisonia")
        return await original(data)

    ours.entities_vdb.upsert = refusing
    first, held = await _hold_a_merge(ours, indexer)
    good_text, bad_text = GROUPED["doc-g0"], story("poison", "Poisonia", 4)
    good = asyncio.create_task(indexer.index("doc-good", good_text, file_path="good.txt", track_id="tg"))
    bad = asyncio.create_task(indexer.index("doc-bad", bad_text, file_path="bad.txt", track_id="tb"))
    await _until_waiting(indexer, 2)
    await held.__aexit__(None, None, None)
    await first
    assert (await good).chunks_count >= 1
    with pytest.raises(IndexingError, match="Poisonia"):
        await bad
    assert indexer.merges.largest_group == 2
    assert (await ours.doc_status.get_by_id("doc-bad"))["status"] == DocStatus.FAILED
    assert (await indexer.delete("doc-bad")).status == "success"
    await theirs.ainsert(VICTIM, ids=["doc-v"], file_paths=["v.txt"], track_id="x")
    await theirs.ainsert(good_text, ids=["doc-good"], file_paths=["good.txt"], track_id="x")
    await assert_same_document(ours, theirs, "doc-good")
    await assert_same_document(ours, theirs, "doc-v")
