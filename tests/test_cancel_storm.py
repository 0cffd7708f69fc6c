"""Cancel storm (issue 25, item 5) and the purges it causes.

Seen in the field: 300 documents sharing entities cancelled 25 s after upload, 72 of them merging:
their purges ran one at a time (each took the workspace's graph gate exclusively for its own
LightRAG deletion, which rebuilds every shared entity), the last one was final after about 7
minutes, and a one-line document uploaded meanwhile waited 171 s behind them. Promised: every
cancelled document ends `cancelled` with nothing of it left; the knowledge base then holds exactly
what indexing only the completed documents gives (same entities, relations, and chunks per entity);
the purges share graph passes, and new work does not queue behind them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import make_settings, start_service, story, upload, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def _knowledge(svc, tenant: str = "default") -> dict[str, Any]:
    """What the knowledge base holds: entities and relations with the chunks each is tracked in,
    the chunks, and the document records."""
    async with svc.services.engines.use(tenant) as engine:
        rag = engine.rag
        graph = rag.chunk_entity_relation_graph
        nodes = {node["entity_id"]: node for node in await graph.get_all_nodes()}
        edges = {tuple(sorted((e["source"], e["target"]))): e for e in await graph.get_all_edges()}
        entity_chunks = {}
        for name in nodes:
            stored = await rag.entity_chunks.get_by_id(name) or {}
            entity_chunks[name] = frozenset(stored.get("chunk_ids") or [])
        relation_chunks = {}
        for src, tgt in edges:
            stored = await rag.relation_chunks.get_by_id(f"{src}<SEP>{tgt}") or {}
            relation_chunks[(src, tgt)] = frozenset(stored.get("chunk_ids") or [])
        async with rag.text_chunks.records_lock:  # the embedded storage holds every chunk in memory
            chunks = dict(rag.text_chunks.records)
        async with rag.doc_status.records_lock:
            documents = dict(rag.doc_status.records)
    return {
        "nodes": nodes,
        "edges": edges,
        "entity_chunks": entity_chunks,
        "relation_chunks": relation_chunks,
        "chunks": {cid: c for cid, c in chunks.items() if c},
        "documents": {doc_id: d for doc_id, d in documents.items() if d},
    }


async def test_a_cancel_between_the_chunk_writes_leaves_no_chunk_behind(tmp_path, redis_url) -> None:
    """Seen in a larger storm: a document cancelled just as its chunks were written kept a text chunk
    (its status did not name the chunks yet, so its purge could not find them). The status write
    that names the chunks is held here until the cancel lands."""
    settings = make_settings(tmp_path, redis_url)
    async with start_service(settings) as svc:
        async with svc.services.engines.use("default") as engine:
            doc_status = engine.rag.doc_status
        real_upsert = doc_status.upsert
        reached = asyncio.Event()

        async def held_upsert(data: dict[str, dict[str, Any]]) -> Any:
            if any(record.get("chunks_list") for record in data.values()) and not reached.is_set():
                reached.set()
                await asyncio.Event().wait()  # until the cancel
            return await real_upsert(data)

        doc_status.upsert = held_upsert
        try:
            text = story("lagoons", "Betweenwrites", sentences=20)
            response = await upload(svc.client, "between.txt", text.encode())
            task = response.json()
            await asyncio.wait_for(reached.wait(), timeout=60)
            # The chunk writes that run beside the held status write (if any) get their turn.
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert (await svc.client.delete(f"/task/{task['task_id']}")).status_code == 202
            await wait_for_task(svc.client, task["task_id"], expect="cancelled", timeout=60)
        finally:
            doc_status.upsert = real_upsert
        knowledge = await _knowledge(svc)
        left = [cid for cid, chunk in knowledge["chunks"].items() if "Betweenwrites" in chunk["content"]]
        assert left == [], left
