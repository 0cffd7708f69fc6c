"""Cancel storm (issue 25, item 5): many running documents sharing entities cancelled while some of
them merge, and one unrelated one-line document uploaded meanwhile.

Seen in the field: 300 documents cancelled 25 s after upload, 72 of them merging: their purges ran
one at a time (each took the workspace's graph gate exclusively for its own LightRAG deletion, which
rebuilds every shared entity) and the one-line document waited 171 s behind them. Promised: every
cancelled document ends `cancelled` with nothing of it left; the knowledge base then holds exactly
what indexing only the completed documents gives (same entities, relations, and chunks per entity);
the purges share graph passes, and the unrelated document does not queue behind them.

The storm is smaller here (a test's budget on two shared cores) but has the field's shape: a base of
completed documents naming the same people and places, then a wave of documents cancelled once a
part of them reached the merge. Before/after figures of this harness: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.rag.engine.scope import GraphGate
from tests.helpers import FINAL, llm_settings, start_service, story, upload, wait_for_task, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BASE = 60
DOCUMENTS = 60
SENTENCES = 30
#: Documents that reached the merge (or later) when the cancels are sent.
MERGING_AT_CANCEL = 24
TOPICS = ["harbours", "orchards", "glaciers", "deserts", "canals", "forests", "islands", "mines"]
#: The one-line document during the storm may take this much longer than alone (generous: the old
#: code's purge queue cost 20 s here, the field's 170 s).
STORM_ALLOWANCE_SECONDS = 10.0


def _settings(tmp_path, redis_url, mock, name: str):
    return llm_settings(tmp_path / name, redis_url, mock, max_concurrent_tasks=4, llm_max_async=8)


async def _views(client, task_ids: list[str]) -> dict[str, dict]:
    out = {}
    for task_id in task_ids:
        response = await client.get(f"/task/{task_id}")
        assert response.status_code == 200, response.text
        out[task_id] = response.json()
    return out


async def _knowledge(svc) -> dict[str, Any]:
    """What the knowledge base holds: entities and relations with the chunks each is tracked in,
    the chunks (by the document they belong to), and the graph's own source lists."""
    async with svc.services.engines.use("default") as engine:
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
    return {
        "nodes": nodes,
        "edges": edges,
        "entity_chunks": entity_chunks,
        "relation_chunks": relation_chunks,
        "chunks": {cid: c for cid, c in chunks.items() if c},
    }


async def test_cancel_storm_purges_together_and_never_starves_new_work(tmp_path, redis_url) -> None:
    config = MockConfig(latency=0.3, latency_jitter=0.1, seed=11)
    with MockServer(config) as mock:
        texts: dict[str, str] = {}  # task id -> text
        async with start_service(_settings(tmp_path, redis_url, mock, "storm")) as svc:
            client = svc.client
            started = time.monotonic()
            alone = await upload(client, "alone.txt", b"Zephyrine Quarry opened in Tromso.")
            await wait_for_task(client, alone.json()["task_id"], expect="completed", timeout=120)
            alone_seconds = time.monotonic() - started

            base = []
            for i in range(BASE):
                text = story(TOPICS[i % len(TOPICS)], f"Base{i:03d}", sentences=SENTENCES)
                task_id = (await upload(client, f"base{i}.txt", text.encode())).json()["task_id"]
                base.append(task_id)
                texts[task_id] = text
            for task_id in base:
                await wait_for_task(client, task_id, expect="completed", timeout=300)

            storm: dict[str, str] = {}  # task id -> doc id
            for i in range(DOCUMENTS):
                text = story(TOPICS[i % len(TOPICS)], f"Storm{i:03d}", sentences=SENTENCES)
                response = await upload(client, f"storm{i}.txt", text.encode())
                assert response.status_code == 202, response.text
                storm[response.json()["task_id"]] = response.json()["doc_id"]
                texts[response.json()["task_id"]] = text
            ids = list(storm)

            async def enough_merging() -> bool:
                views = await _views(client, ids)
                late = [
                    v for v in views.values() if v["stage"] in ("merging", "done") or v["status"] in FINAL
                ]
                return len(late) >= MERGING_AT_CANCEL

            await wait_until(enough_merging, timeout=300, interval=0.2, message="documents merging")
            async with svc.services.engines.use("default") as engine:
                indexer = engine.indexer
            exclusive_holds = 0
            real_exclusive = GraphGate.exclusive

            def counted_exclusive(gate: GraphGate):
                nonlocal exclusive_holds
                if gate is indexer.gate:
                    exclusive_holds += 1
                return real_exclusive(gate)

            GraphGate.exclusive = counted_exclusive  # type: ignore[method-assign]
            knowledge_bases = svc.services.knowledge_bases
            real_purge = knowledge_bases.purge
            purged = 0  # purges that found the document and deleted it

            async def counted_purge(*args: Any, **kwargs: Any) -> Any:
                nonlocal purged
                result = await real_purge(*args, **kwargs)
                purged += result.outcome == "success"
                return result

            knowledge_bases.purge = counted_purge  # type: ignore[method-assign]
            try:
                cancels_sent = time.monotonic()
                for task_id in ids:
                    response = await client.delete(f"/task/{task_id}")
                    assert response.status_code in (200, 202, 409), response.text
                unrelated = await upload(
                    client, "unrelated.txt", b"Quillon Barrow ferries cross the Vesterfjord."
                )
                unrelated_id = unrelated.json()["task_id"]
                unrelated_done: float | None = None
                all_final: float | None = None
                deadline = cancels_sent + 300
                while time.monotonic() < deadline and (unrelated_done is None or all_final is None):
                    views = await _views(client, [*ids, unrelated_id])
                    if unrelated_done is None and views[unrelated_id]["status"] in FINAL:
                        assert views[unrelated_id]["status"] == "completed", views[unrelated_id]
                        unrelated_done = time.monotonic() - cancels_sent
                    if all_final is None and all(views[t]["status"] in FINAL for t in ids):
                        all_final = time.monotonic() - cancels_sent
                    await asyncio.sleep(0.2)
            finally:
                GraphGate.exclusive = real_exclusive  # type: ignore[method-assign]
                knowledge_bases.purge = real_purge  # type: ignore[method-assign]
            assert all_final is not None, "cancelled documents not final within 300 s"
            assert unrelated_done is not None, "the unrelated document did not complete within 300 s"

            views = await _views(client, ids)
            cancelled = [t for t in ids if views[t]["status"] == "cancelled"]
            completed = [t for t in ids if views[t]["status"] == "completed"]
            assert len(cancelled) + len(completed) == len(ids), {t: views[t]["status"] for t in ids}
            assert len(cancelled) >= DOCUMENTS // 2, (len(cancelled), len(completed))
            for task_id in cancelled:
                assert views[task_id]["failures"] == 0, views[task_id]["history"]
                assert (await client.get(f"/documents/{storm[task_id]}")).status_code == 404
            for task_id in completed:
                document = await client.get(f"/documents/{storm[task_id]}")
                assert document.status_code == 200 and document.json()["status"] == "processed", document.text
            stormed = await _knowledge(svc)
            print(
                f"\nCANCEL STORM: alone {alone_seconds:.1f} s; after the cancels every task final in "
                f"{all_final:.1f} s, the unrelated document completed in {unrelated_done:.1f} s; "
                f"{len(cancelled)} cancelled ({purged} purged), {len(completed)} completed; "
                f"graph passes {exclusive_holds}, "
                f"purge passes {getattr(indexer, 'purges', None) and indexer.purges.passes}"
            )

        # Nothing of a cancelled document is left, and every shared entity keeps exactly what the
        # completed documents gave it: the same as a knowledge base that only ever indexed them.
        for task_id in cancelled:
            marker = texts[task_id].split(" project")[0].split()[-1]
            assert not any(marker in c["content"] for c in stormed["chunks"].values()), marker
            assert not any(marker.lower() in name.lower() for name in stormed["nodes"]), marker
        known_chunks = set(stormed["chunks"])
        for name, chunk_ids in stormed["entity_chunks"].items():
            assert chunk_ids and chunk_ids <= known_chunks, (name, chunk_ids - known_chunks)
        for pair, chunk_ids in stormed["relation_chunks"].items():
            assert chunk_ids and chunk_ids <= known_chunks, (pair, chunk_ids - known_chunks)

        async with start_service(_settings(tmp_path, redis_url, mock, "reference")) as ref:
            kept = [*base, *completed]
            for task_id in kept:
                response = await upload(ref.client, f"{task_id}.txt", texts[task_id].encode())
                assert response.status_code == 202, response.text
                await wait_for_task(ref.client, response.json()["task_id"], expect="completed", timeout=300)
            for one_line in (
                b"Zephyrine Quarry opened in Tromso.",
                b"Quillon Barrow ferries cross the Vesterfjord.",
            ):
                response = await upload(ref.client, "line.txt", one_line)
                await wait_for_task(ref.client, response.json()["task_id"], expect="completed", timeout=120)
            reference = await _knowledge(ref)
        assert set(stormed["chunks"]) == set(reference["chunks"])
        assert set(stormed["nodes"]) == set(reference["nodes"]), set(stormed["nodes"]) ^ set(
            reference["nodes"]
        )
        assert set(stormed["edges"]) == set(reference["edges"]), set(stormed["edges"]) ^ set(
            reference["edges"]
        )
        differing = [
            n
            for n in reference["entity_chunks"]
            if stormed["entity_chunks"][n] != reference["entity_chunks"][n]
        ]
        assert not differing, differing[:5]
        differing = [
            p
            for p in reference["relation_chunks"]
            if stormed["relation_chunks"][p] != reference["relation_chunks"][p]
        ]
        assert not differing, differing[:5]

    # The purges shared graph passes (the old code took the graph alone once per purge), and new
    # work did not queue behind them.
    assert purged >= MERGING_AT_CANCEL // 2, purged
    assert exclusive_holds * 2 <= purged, (exclusive_holds, purged)
    assert unrelated_done <= alone_seconds + STORM_ALLOWANCE_SECONDS, (unrelated_done, alone_seconds)


async def test_purges_interrupted_by_a_restart_mid_storm_are_resumed(tmp_path, redis_url) -> None:
    """The service stops (no grace) while the storm's purges run; the next start purges what is
    left: every cancelled document ends `cancelled` and nothing of it stays in the knowledge base."""
    config = MockConfig(latency=0.3, latency_jitter=0.1, seed=5)
    with MockServer(config) as mock:
        settings = _settings(tmp_path, redis_url, mock, "restart").model_copy(
            update={"shutdown_grace_seconds": 0.0}
        )
        prefix = f"test:storm-restart-{time.monotonic_ns()}:"
        texts: dict[str, str] = {}
        async with start_service(settings, prefix) as svc:
            client = svc.client
            base = []
            for i in range(20):
                text = story(TOPICS[i % len(TOPICS)], f"Kept{i:03d}", sentences=SENTENCES)
                base.append((await upload(client, f"kept{i}.txt", text.encode())).json()["task_id"])
            for task_id in base:
                await wait_for_task(client, task_id, expect="completed", timeout=300)
            storm: dict[str, str] = {}
            for i in range(24):
                text = story(TOPICS[i % len(TOPICS)], f"Gone{i:03d}", sentences=SENTENCES)
                response = await upload(client, f"gone{i}.txt", text.encode())
                storm[response.json()["task_id"]] = response.json()["doc_id"]
                texts[response.json()["task_id"]] = text
            ids = list(storm)

            async def enough_merging() -> bool:
                views = await _views(client, ids)
                late = [
                    v for v in views.values() if v["stage"] in ("merging", "done") or v["status"] in FINAL
                ]
                return len(late) >= 8

            await wait_until(enough_merging, timeout=300, interval=0.2, message="documents merging")
            accepted = []
            for task_id in ids:
                response = await client.delete(f"/task/{task_id}")
                assert response.status_code in (200, 202, 409), response.text
                if response.status_code != 409:
                    accepted.append(task_id)
            interrupted = [t for t, v in (await _views(client, accepted)).items() if v["status"] not in FINAL]
        assert accepted

        async with start_service(settings, prefix) as svc:
            client = svc.client

            async def all_final() -> bool:
                return all(v["status"] in FINAL for v in (await _views(client, ids)).values())

            await wait_until(
                all_final, timeout=240, interval=0.5, message="storm tasks final after the restart"
            )
            views = await _views(client, ids)
            for task_id in accepted:
                assert views[task_id]["status"] == "cancelled", views[task_id]
                assert (await client.get(f"/documents/{storm[task_id]}")).status_code == 404
            knowledge = await _knowledge(svc)
        print(
            f"\nRESTART MID-STORM: {len(accepted)} cancels accepted, {len(interrupted)} not final at the stop"
        )
        for task_id in accepted:
            marker = texts[task_id].split(" project")[0].split()[-1]
            assert not any(marker in c["content"] for c in knowledge["chunks"].values()), marker
            assert not any(marker.lower() in name.lower() for name in knowledge["nodes"]), marker
        known_chunks = set(knowledge["chunks"])
        for name, chunk_ids in knowledge["entity_chunks"].items():
            assert chunk_ids and chunk_ids <= known_chunks, (name, chunk_ids - known_chunks)
        for pair, chunk_ids in knowledge["relation_chunks"].items():
            assert chunk_ids and chunk_ids <= known_chunks, (pair, chunk_ids - known_chunks)
        for i in range(20):  # the completed documents are all still there
            assert any(f"Kept{i:03d}".lower() in name.lower() for name in knowledge["nodes"]), i
