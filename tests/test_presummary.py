"""The pre-summary (src/rag/engine/presummary.py) against LightRAG's own merge, on real storages.

The summaries a merge will need are made before it, outside LightRAG's keyed locks; the merge must
then find every one of them in the LLM cache (no summary call of its own) and end with exactly the
graph LightRAG's merge makes with the same LLM. The summary prompts (which carry the description
list) are captured at the LLM function and compared with those LightRAG's merge sends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightrag import LightRAG

from src.core.metrics import MERGE_LOCKED_SUMMARIES, MERGE_PRESUMMARIES
from src.rag.builder import build_lightrag
from src.rag.engine import indexer as indexer_module
from src.rag.engine.indexer import DocumentIndexer, IndexProgress
from src.rag.engine.presummary import ObservedCache, presummarize
from src.rag.lightrag_compat import document_global_config, merge_nodes_and_edges, new_pipeline_status
from src.rag.prompts import classify_prompt
from tests.conftest import make_settings
from tests.test_indexer_equivalence import VICTIM, chunk_ids_of, residue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class SummaryLLM:
    """Wraps the offline LLM: notes each summary prompt; can hold summary calls and count them in flight."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.in_flight = 0
        self.cancelled = 0
        self.held: asyncio.Event | None = None
        self._changed = asyncio.Event()

    def wrap(self, llm: Callable[..., Any]) -> Callable[..., Any]:
        async def noted(prompt: str, *args: Any, **kwargs: Any) -> Any:
            if classify_prompt(prompt, kwargs.get("system_prompt") or "") != "summary":
                return await llm(prompt, *args, **kwargs)
            self.prompts.append(prompt)
            self.in_flight += 1
            self._changed.set()
            try:
                if self.held is not None:
                    await self.held.wait()
                return await llm(prompt, *args, **kwargs)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.in_flight -= 1
                self._changed.set()

        return noted

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(120):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def taken(self) -> list[str]:
        prompts, self.prompts = self.prompts, []
        return prompts


async def _build(tmp_path: Path, name: str, llm: SummaryLLM, **overrides: Any) -> LightRAG:
    settings = make_settings(tmp_path, None, embedding_provider="hash", chunk_token_size=200,
                             chunk_overlap_token_size=20, **overrides)  # fmt: skip
    # Unique workspaces: LightRAG's keyed locks and namespaces are process-global.
    return await build_lightrag(settings, workspace=f"{name}-{uuid.uuid4().hex[:8]}", llm_wrapper=llm.wrap)


# ---------------------------------------------------------------------------------- fragments
def entity(name: str, description: str, chunk: str, timestamp: int) -> dict[str, Any]:
    return {"entity_name": name, "entity_type": "LOCATION", "description": description, "source_id": chunk,
            "file_path": f"{chunk}.txt", "timestamp": timestamp}  # fmt: skip


def relation(src: str, tgt: str, description: str, chunk: str, timestamp: int) -> dict[str, Any]:
    return {"src_id": src, "tgt_id": tgt, "weight": 1.0, "description": description, "keywords": "port",
            "source_id": chunk, "file_path": f"{chunk}.txt", "timestamp": timestamp}  # fmt: skip


def chunk(*records: dict[str, Any]) -> tuple[dict, dict]:
    """One chunk's extraction result, shaped as LightRAG's `extract_entities` returns it."""
    nodes: dict[str, list] = defaultdict(list)
    edges: dict[tuple[str, str], list] = defaultdict(list)
    for record in records:
        if "entity_name" in record:
            nodes[record["entity_name"]].append(record)
        else:
            edges[(record["src_id"], record["tgt_id"])].append(record)
    return dict(nodes), dict(edges)


#: What the graph holds before the merge under test: Harbor Board with two fragments (c1, c2),
#: Pier Nine with one, Old Quay summarised from three (c1, c2, c6), and one relation.
STORED = [
    chunk(entity("Harbor Board", "The Harbor Board runs the port.", "c1", 1),
          entity("Pier Nine", "Pier Nine is the oldest pier.", "c1", 1),
          entity("Old Quay", "Old Quay was built in 1850.", "c1", 1),
          relation("Harbor Board", "Pier Nine", "The Harbor Board owns Pier Nine.", "c1", 1)),
    chunk(entity("Harbor Board", "The Harbor Board sets the tariffs.", "c2", 2),
          entity("Old Quay", "Old Quay hosts the fish market.", "c2", 2)),
    chunk(entity("Old Quay", "Old Quay is closed on Sundays.", "c6", 2)),
]  # fmt: skip

#: The merge under test, force_llm_summary_on_merge 3 (FIFO, no limit): Harbor Board 2 stored + 2
#: new (summary), Pier Nine 1 + 1 (joined), Fresh Dock 4 new of which 3 unique, two with one
#: timestamp (summary; order by length), Tide Office 1, Old Quay 1 summary + 1 (joined);
#: Harbor Board~Pier Nine 1 stored + 2 (summary, one named backwards), Fresh Dock~Tide Office 3 new
#: (summary).
MERGED = [
    chunk(entity("Harbor Board", "Harbor Board approved a new crane.", "c3", 3),
          entity("Fresh Dock", "Fresh Dock opened in May.", "c3", 3),
          entity("Old Quay", "Old Quay got a new roof.", "c3", 3),
          relation("Pier Nine", "Harbor Board", "Harbor Board leases Pier Nine to ferries.", "c3", 3),
          relation("Fresh Dock", "Tide Office", "Tide Office schedules Fresh Dock.", "c3", 3)),
    chunk(entity("Harbor Board", "The Harbor Board hired pilots.", "c4", 4),
          entity("Fresh Dock", "Fresh Dock handles containers.", "c4", 4),
          entity("Fresh Dock", "Fresh Dock opened in May.", "c4", 4),
          entity("Pier Nine", "Pier Nine was repaired.", "c4", 4),
          relation("Harbor Board", "Pier Nine", "Pier Nine reports to the Harbor Board.", "c4", 4),
          relation("Tide Office", "Fresh Dock", "Fresh Dock sends tide data to Tide Office.", "c4", 4)),
    chunk(entity("Fresh Dock", "Fresh Dock is the largest terminal of the whole coast.", "c5", 4),
          entity("Tide Office", "Tide Office measures tides.", "c5", 5),
          relation("Fresh Dock", "Tide Office", "Fresh Dock and Tide Office share a radio.", "c5", 5)),
]  # fmt: skip


def kinds(prompts: list[str]) -> set[str]:
    """What the summary prompts summarise: Entity, Relation (the word before "Name:")."""
    return {prompt.split("Name:", 1)[0].split()[-1] for prompt in prompts}


def merge_config(rag: LightRAG, method: str, limit: int) -> dict[str, Any]:
    config = document_global_config(rag, rag.llm_model_func)
    config.update(
        force_llm_summary_on_merge=3,
        source_ids_limit_method=method,
        max_source_ids_per_entity=limit,
        max_source_ids_per_relation=limit,
    )
    return config


async def lightrag_merge(rag: LightRAG, results: list, config: dict[str, Any], cache: Any = None) -> None:
    await merge_nodes_and_edges(
        chunk_results=results,
        knowledge_graph_inst=rag.chunk_entity_relation_graph,
        entity_vdb=rag.entities_vdb,
        relationships_vdb=rag.relationships_vdb,
        global_config=config,
        pipeline_status=new_pipeline_status(),
        pipeline_status_lock=asyncio.Lock(),
        llm_response_cache=cache or rag.llm_response_cache,
        entity_chunks_storage=rag.entity_chunks,
        relation_chunks_storage=rag.relation_chunks,
    )


async def graph_of(rag: LightRAG) -> dict[str, Any]:
    """Every node and edge with its exact description, sources, type / keywords and weight."""
    graph = rag.chunk_entity_relation_graph
    nodes = {
        n["entity_id"]: (n.get("entity_type"), n.get("description"), n.get("source_id"), n.get("file_path"))
        for n in await graph.get_all_nodes()
    }
    edges = {
        tuple(sorted((e["source"], e["target"]))): (
            e.get("description"),
            e.get("keywords"),
            e.get("source_id"),
            e.get("weight"),
        )
        for e in await graph.get_all_edges()
    }
    return {"nodes": nodes, "edges": edges}


@pytest.fixture
async def two(tmp_path: Path) -> Any:
    """Two workspaces with the same LLM: ours (pre-summary, then the merge), theirs (the merge alone)."""
    llms = SummaryLLM(), SummaryLLM()
    rags = [await _build(tmp_path, name, llm) for name, llm in zip(("ours", "theirs"), llms, strict=True)]
    yield rags, llms
    for rag in rags:
        await rag.finalize_storages()


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("method", "limit", "summaries"),
    [
        ("FIFO", 300, 4),  # no limit: the four lists above reach the LLM
        ("FIFO", 2, 4),  # FIFO trims source ids only: the same four
        ("KEEP", 3, 4),  # Harbor Board keeps c3 and drops c4 (3 fragments); Old Quay is skipped
    ],
)
async def test_the_merge_after_a_pre_summary_sends_nothing_and_ends_as_lightrags(
    two: Any, method: str, limit: int, summaries: int
) -> None:
    """Catches a description list predicted differently from LightRAG's merge (stored data, new
    fragments, de-duplication, order, the source-id limit): the merge would miss the cache and call
    the LLM under its lock, or the graph would differ."""
    (ours, theirs), (our_llm, their_llm) = two
    for rag in (ours, theirs):
        await lightrag_merge(rag, STORED, merge_config(rag, method, limit))
    assert our_llm.taken() == their_llm.taken()  # the same stored state (Old Quay was summarised)

    await lightrag_merge(theirs, MERGED, merge_config(theirs, method, limit))
    sent_by_lightrag = their_llm.taken()

    config = merge_config(ours, method, limit)
    ahead = await presummarize(
        MERGED, ours.chunk_entity_relation_graph, ours.entity_chunks, ours.relation_chunks, config,
        ours.llm_response_cache,
    )  # fmt: skip
    sent_ahead = our_llm.taken()
    seen = ObservedCache(ours.llm_response_cache)
    await lightrag_merge(ours, MERGED, config, cache=seen)

    assert sorted(sent_ahead) == sorted(sent_by_lightrag)
    assert len(sent_by_lightrag) == summaries
    assert our_llm.taken() == []  # every summary of the merge was a cache hit
    assert ahead.settle(seen) == (summaries, 0)
    assert await graph_of(ours) == await graph_of(theirs)


async def test_a_prediction_the_merge_cannot_use_is_counted_and_the_merge_summarises_itself(two: Any) -> None:
    """Catches a wrong prediction that changes the graph (the merge must summarise the entity as it
    now is, under its lock, like LightRAG) or goes uncounted."""
    (ours, theirs), (our_llm, _) = two
    config = merge_config(ours, "FIFO", 300)
    await lightrag_merge(ours, STORED, config)
    ahead = await presummarize(
        MERGED, ours.chunk_entity_relation_graph, ours.entity_chunks, ours.relation_chunks, config,
        ours.llm_response_cache,
    )  # fmt: skip
    # Another merge changes Harbor Board between the pre-summary and this merge.
    other = [chunk(entity("Harbor Board", "Harbor Board bought a tug.", "c7", 6))]
    await lightrag_merge(ours, other, config)
    our_llm.taken()
    wasted_before = MERGE_PRESUMMARIES.labels("wasted")._value.get()
    seen = ObservedCache(ours.llm_response_cache)
    await lightrag_merge(ours, MERGED, config, cache=seen)
    assert [p for p in our_llm.taken() if "Harbor Board" in p]  # summarised again, as it now is
    assert ahead.settle(seen) == (3, 1)
    assert MERGE_PRESUMMARIES.labels("wasted")._value.get() - wasted_before == 1

    their_config = merge_config(theirs, "FIFO", 300)
    for results in (STORED, other, MERGED):
        await lightrag_merge(theirs, results, their_config)
    assert await graph_of(ours) == await graph_of(theirs)


async def test_a_documents_summaries_run_at_once_and_stop_with_the_document(tmp_path: Path) -> None:
    """Catches entity and relation summaries made one phase after the other (or under the keyed
    locks), and pre-summary calls left running after their document was cancelled."""
    reference, llm = SummaryLLM(), SummaryLLM()
    theirs = await _build(tmp_path, "ref", reference, llm_max_async=64)
    ours = await _build(tmp_path, "held", llm, llm_max_async=64)
    try:
        for rag in (theirs, ours):
            rag.force_llm_summary_on_merge = 3  # read into each document's global_config
        # How many summaries the document's merge needs (not which: equal-timestamp descriptions
        # are ordered as LightRAG's extraction returns the chunks).
        await DocumentIndexer(theirs).index("doc-v", VICTIM, file_path="v.txt", track_id="t")
        needed = reference.taken()
        assert len(needed) >= 3 and {"Entity", "Relation"} <= kinds(needed), kinds(needed)

        llm.held = asyncio.Event()
        merging = asyncio.Event()

        async def sink(progress: IndexProgress) -> None:
            if progress.stage == "merging":
                merging.set()

        indexer = DocumentIndexer(ours)
        running = asyncio.create_task(
            indexer.index("doc-v", VICTIM, file_path="v.txt", track_id="t", on_progress=sink)
        )
        await llm.until(lambda: llm.in_flight == len(needed))  # every entity and relation at once
        assert len(llm.prompts) == len(needed) and merging.is_set()
        assert {"Entity", "Relation"} <= kinds(llm.prompts)  # in one round
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert llm.in_flight == 0 and llm.cancelled == len(needed)  # aborted, not left running
        llm.held.set()
        assert len(llm.prompts) == len(needed)  # and the merge made none
        assert (await indexer.delete("doc-v")).status == "success"
        assert await residue(ours, "doc-v", await chunk_ids_of(ours, VICTIM)) == []
    finally:
        await theirs.finalize_storages()
        await ours.finalize_storages()


async def test_a_document_merged_after_its_pre_summary_is_lightrags_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches the indexer's pre-summary path drifting from LightRAG's merge of the same extraction
    results (exact descriptions), and a merge that still summarises under its locks. (LightRAG's own
    `ainsert` orders equal-timestamp chunks as a set iterates, so the reference is its merge.)"""
    our_llm, their_llm = SummaryLLM(), SummaryLLM()
    ours = await _build(tmp_path, "ours", our_llm)
    theirs = await _build(tmp_path, "theirs", their_llm)
    merged: list[list] = []
    real_merge = indexer_module.merge_nodes_and_edges

    async def noted_merge(**kwargs: Any) -> None:
        merged.append(kwargs["chunk_results"])
        await real_merge(**kwargs)

    monkeypatch.setattr(indexer_module, "merge_nodes_and_edges", noted_merge)
    try:
        ours.force_llm_summary_on_merge = 3
        locked, used = MERGE_LOCKED_SUMMARIES._value.get(), MERGE_PRESUMMARIES.labels("used")._value.get()
        await DocumentIndexer(ours).index("doc-v", VICTIM, file_path="v.txt", track_id="t")
        sent = our_llm.taken()
        await lightrag_merge(theirs, merged[0], merge_config(theirs, "FIFO", 300))
        assert len(sent) >= 3 and sorted(sent) == sorted(their_llm.taken())
        assert MERGE_LOCKED_SUMMARIES._value.get() == locked
        assert MERGE_PRESUMMARIES.labels("used")._value.get() - used == len(sent)
        assert await graph_of(ours) == await graph_of(theirs)
    finally:
        await ours.finalize_storages()
        await theirs.finalize_storages()
