"""A merge's description summaries, made before the merge and outside LightRAG's keyed locks.

Why: LightRAG's `merge_nodes_and_edges` holds an entity's keyed lock (a relation's: both
endpoints') across that entity's description-summary LLM call, and merges every entity before any
relation. A merge whose entities and relations both need a summary costs two LLM latencies, and
every merge that names the same hub entity waits behind them on the lock. LightRAG caches summary
calls by their prompt (`use_llm_func_with_cache`, cache type "summary"). So before a merge, the
description list of each entity and relation is computed here exactly as `_merge_nodes_then_upsert`
/ `_merge_edges_then_upsert` will compute it (the stored node or edge and its chunk-tracking record,
read in batch, plus the merge's new fragments, with LightRAG's source-id limit, de-duplication and
order), and LightRAG's own summary (`summarize_descriptions`) runs for every one that may need the
LLM: all of them at once, with the global_config (LLM function) and cache the merge will use. The
merge then finds its answers in the cache and holds its locks only for storage work.

Nothing here writes the graph: the merge is always LightRAG's own. A prediction that turns out
wrong (another merge changed the entity in between: merge_groups.py keeps merges that share
entities apart, so it is rare) costs one LLM call: the merge misses the cache and summarises under
its lock, as it always did. The outcome is counted (`ragsvc_merge_presummaries{outcome}`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from src.core.metrics import MERGE_PRESUMMARIES
from src.rag.lightrag_compat import (
    GRAPH_FIELD_SEP,
    SOURCE_IDS_LIMIT_METHOD_KEEP,
    apply_source_ids_limit,
    make_relation_chunk_key,
    merge_source_ids,
    summarize_descriptions,
)
from src.rag.tokenizer import lossless_encoding_name

log = logging.getLogger(__name__)

#: Items whose description list is built between two yields to the event loop.
_YIELD_EVERY = 64


@dataclass(frozen=True)
class Summary:
    """One call of LightRAG's summary as the merge will make it."""

    kind: str  # "Entity" or "Relation"
    name: str  # as LightRAG names it in the prompt
    descriptions: list[str]


class ObservedCache:
    """The LLM cache storage, with the keys read and written through it noted (which summaries the
    pre-summary wrote, which of them the merge read)."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.read: set[str] = set()
        self.written: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get_by_id(self, key: str) -> Any:
        self.read.add(key)
        return await self._storage.get_by_id(key)

    async def upsert(self, data: dict[str, Any]) -> None:
        await self._storage.upsert(data)
        self.written.update(data)


@dataclass
class PreSummary:
    """What a pre-summary wrote into the cache; `settle` counts what the merge used of it."""

    summaries: int = 0
    written: set[str] = field(default_factory=set)
    failed: int = 0

    def settle(self, merge_cache: ObservedCache) -> tuple[int, int]:
        """(used, wasted): the written entries the merge read, and the others."""
        used = len(self.written & merge_cache.read)
        wasted = len(self.written) - used
        if used:
            MERGE_PRESUMMARIES.labels("used").inc(used)
        if wasted:
            MERGE_PRESUMMARIES.labels("wasted").inc(wasted)
            log.debug(
                "pre-summary: %d of %d summaries made ahead were not used by the merge", wasted, used + wasted
            )
        return used, wasted


def fragments_by_item(chunk_results: Iterable[Any]) -> tuple[dict[str, list], dict[tuple[str, str], list]]:
    """The new fragments of each entity and of each relation (endpoints sorted), in the order
    `merge_nodes_and_edges` collects them."""
    nodes: dict[str, list] = defaultdict(list)
    edges: dict[tuple[str, str], list] = defaultdict(list)
    for maybe_nodes, maybe_edges in chunk_results:
        for name, fragments in maybe_nodes.items():
            nodes[name].extend(fragments)
        for key, fragments in maybe_edges.items():
            edges[tuple(sorted(key))].extend(fragments)  # type: ignore[arg-type]
    return nodes, edges


def _tracked_ids(record: Any, stored_source_ids: list[str]) -> list[str]:
    """The merge's ``existing_full_source_ids``: the chunk-tracking record's ids, else the stored
    element's own source ids."""
    tracked = []
    if record and isinstance(record, dict):
        tracked = [chunk_id for chunk_id in record.get("chunk_ids", []) if chunk_id]
    return tracked or [chunk_id for chunk_id in stored_source_ids if chunk_id]


def _within_limit(
    fragments: list[dict[str, Any]], existing: list[str], limit: Any, method: Any, keep: bool
) -> list[dict[str, Any]] | None:
    """The fragments the merge keeps under the source-id limit, or None when it skips the summary
    (KEEP mode, the limit already reached by stored chunks, no fragment left)."""
    new_ids = [dp["source_id"] for dp in fragments if dp.get("source_id")]
    allowed = set(apply_source_ids_limit(merge_source_ids(existing, new_ids), limit, method))
    if not keep:
        return list(fragments)
    stored = set(existing)
    kept = [
        dp
        for dp in fragments
        if not (dp.get("source_id") and dp["source_id"] not in allowed and dp["source_id"] not in stored)
    ]
    if len(existing) >= limit and not kept:
        return None
    return kept


def _new_descriptions(fragments: list[dict[str, Any]]) -> list[str]:
    """De-duplicated by description (first kept), sorted by timestamp, then longest first."""
    unique: dict[str, dict[str, Any]] = {}
    for dp in fragments:
        description = dp.get("description")
        if description and description not in unique:
            unique[description] = dp
    ordered = sorted(unique.values(), key=lambda x: (x.get("timestamp", 0), -len(x.get("description", ""))))
    return [dp["description"] for dp in ordered]


def entity_descriptions(
    name: str,
    fragments: list[dict[str, Any]],
    node: dict[str, Any] | None,
    record: Any,
    config: dict[str, Any],
) -> list[str] | None:
    """The description list `_merge_nodes_then_upsert` summarises for ``name`` (None: no summary)."""
    already: list[str] = []
    sources: list[str] = []
    if node:
        sources = (node.get("source_id") or "").split(GRAPH_FIELD_SEP)
        description = (node.get("description") or "").strip()
        if description:
            already = description.split(GRAPH_FIELD_SEP)
    method = config.get("source_ids_limit_method")
    kept = _within_limit(
        fragments,
        _tracked_ids(record, sources),
        config.get("max_source_ids_per_entity"),
        method,
        keep=method == SOURCE_IDS_LIMIT_METHOD_KEEP,
    )
    if kept is None:
        return None
    return already + _new_descriptions(kept) or [f"Entity {name}"]


def relation_descriptions(
    pair: tuple[str, str],
    fragments: list[dict[str, Any]],
    edge: dict[str, Any] | None,
    record: Any,
    config: dict[str, Any],
) -> list[str] | None:
    """The description list `_merge_edges_then_upsert` summarises for ``pair`` (None: no summary)."""
    if pair[0] == pair[1]:
        return None
    already: list[str] = []
    sources: list[str] = []
    if edge:
        if edge.get("source_id") is not None:
            sources = edge["source_id"].split(GRAPH_FIELD_SEP)
        if edge.get("description") is not None:
            already = edge["description"].split(GRAPH_FIELD_SEP)
    method = config.get("source_ids_limit_method")
    kept = _within_limit(
        fragments,
        _tracked_ids(record, sources),
        config.get("max_source_ids_per_relation"),
        method,
        keep=(method or SOURCE_IDS_LIMIT_METHOD_KEEP) == SOURCE_IDS_LIMIT_METHOD_KEEP,
    )
    if kept is None:
        return None
    return (already + _new_descriptions(kept)) or None  # LightRAG fails such a relation itself


def may_need_llm(descriptions: list[str], config: dict[str, Any]) -> bool:
    """False only when LightRAG's summary surely joins the list without the LLM: fewer fragments
    than ``force_llm_summary_on_merge`` and fewer UTF-8 bytes than its token limits (a byte-level
    BPE token is at least one byte). Skipping those spares tokenizing every list twice."""
    if len(descriptions) < 2:
        return False
    if len(descriptions) >= config["force_llm_summary_on_merge"]:
        return True
    if lossless_encoding_name(config["tokenizer"]) is None:
        return True  # another tokenizer: let LightRAG count
    size = sum(len(d.encode("utf-8")) for d in descriptions)
    return size >= min(config["summary_max_tokens"], config["summary_context_size"])


async def predict(
    chunk_results: list[Any],
    graph: Any,
    entity_chunks: Any,
    relation_chunks: Any,
    config: dict[str, Any],
) -> list[Summary]:
    """The summaries the merge of ``chunk_results`` will ask LightRAG for, as of the stored data now
    (only those that may reach the LLM)."""
    nodes, edges = fragments_by_item(chunk_results)
    names = list(nodes)
    pairs = [pair for pair in edges if pair[0] != pair[1]]
    stored_nodes = await graph.get_nodes_batch(names) if names else {}
    stored_edges = await graph.get_edges_batch([{"src": s, "tgt": t} for s, t in pairs]) if pairs else {}
    node_records = await _records(entity_chunks, names)
    edge_records = await _records(relation_chunks, [make_relation_chunk_key(*pair) for pair in pairs])
    summaries: list[Summary] = []
    for i, name in enumerate(names, start=1):
        descriptions = entity_descriptions(
            name, nodes[name], stored_nodes.get(name), node_records.get(name), config
        )
        if descriptions is not None and may_need_llm(descriptions, config):
            summaries.append(Summary("Entity", name, descriptions))
        if i % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    for i, pair in enumerate(pairs, start=1):
        record = edge_records.get(make_relation_chunk_key(*pair))
        descriptions = relation_descriptions(pair, edges[pair], stored_edges.get(pair), record, config)
        if descriptions is not None and may_need_llm(descriptions, config):
            summaries.append(Summary("Relation", f"({pair[0]}, {pair[1]})", descriptions))
        if i % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return summaries


async def _records(storage: Any, keys: list[str]) -> dict[str, Any]:
    if storage is None or not keys:
        return {}
    return dict(zip(keys, await storage.get_by_ids(keys), strict=True))


def cache_enabled(cache: Any) -> bool:
    """Whether LightRAG keeps summary answers in ``cache`` (else a pre-summary would be lost)."""
    config = getattr(cache, "global_config", None) or {}
    return cache is not None and bool(config.get("enable_llm_cache_for_entity_extract"))


async def presummarize(
    chunk_results: list[Any],
    graph: Any,
    entity_chunks: Any,
    relation_chunks: Any,
    config: dict[str, Any],
    cache: Any,
) -> PreSummary:
    """Make the summaries the merge of ``chunk_results`` will need, all at once, into ``cache``.

    Its calls go through ``config["llm_model_func"]``, the merge's own (the document's or group's
    scope: stopping it aborts them). A failed call is only logged: the merge makes it again itself,
    under its lock, and fails or succeeds exactly as LightRAG does."""
    if not cache_enabled(cache):
        return PreSummary()
    summaries = await predict(chunk_results, graph, entity_chunks, relation_chunks, config)
    if not summaries:
        return PreSummary()
    observed = ObservedCache(cache)
    results = await asyncio.gather(
        *(
            summarize_descriptions(s.kind, s.name, s.descriptions, GRAPH_FIELD_SEP, config, observed)
            for s in summaries
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        log.debug(
            "pre-summary: %d of %d summaries failed (first: %r)", len(failures), len(summaries), failures[0]
        )
    return PreSummary(len(summaries), set(observed.written), len(failures))
