"""Re-indexing changed content under the same document id: one task, the old version visible until
the new one is complete, never a mix of the two (src/rag/engine/versions.py).

Real Redis, real LightRAG storages, the mock OpenAI-compatible LLM (held to catch the re-index in
the middle). Both versions share their first paragraph, so they share chunks: the ones a careless
swap or purge would delete from the new version.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.rag.engine import versions
from src.rag.knowledge import DocumentContent, IndexRequest
from tests.helpers import (
    Service,
    context_for,
    hold,
    llm_settings,
    mock_stats,
    release,
    start_service,
    story,
    wait_for_task,
    wait_held,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHARED = story("lighthouses", "Sharedmark", 14)
OLD = SHARED + "\n\n" + story("tides", "Alphawort", 14)
NEW = SHARED + "\n\n" + story("rivers", "Betaquill", 14)
QUESTION = "Sharedmark Alphawort Betaquill project"


def _settings(tmp_path, redis_url, mock):  # noqa: ANN001, ANN202
    return llm_settings(
        tmp_path, redis_url, mock, llm_max_async=2, chunk_token_size=120, chunk_overlap_token_size=10
    )


async def _insert(svc: Service, text: str) -> dict:
    response = await svc.client.post("/insert/text", json={"text": text, "doc_id": "manual"})
    assert response.status_code == 202, response.text
    return response.json()


async def _chunk_lists(svc: Service) -> dict[str, list[str]]:
    """Every doc-status record's chunk list, internal versions included (read from the storage)."""
    async with svc.services.engines.use("default") as engine:
        found = {}
        for doc_id in ("manual", "manual#next", "manual#retired"):
            record = await engine.rag.doc_status.get_by_id(doc_id)
            if record is not None:
                found[doc_id] = list(record.get("chunks_list") or [])
        return found


async def _documents(svc: Service) -> list[str]:
    listed = await svc.client.get("/documents")
    assert listed.status_code == 200, listed.text
    return [d["doc_id"] for d in listed.json()["documents"]]


async def test_reindex_swaps_versions_and_queries_never_see_a_mix(tmp_path, redis_url) -> None:
    """Catches a 409 for new content under an indexed id, a query that sees the new version's
    chunks before it is complete (they are written before extraction), a swap that loses the chunks
    both versions share, and an old version that is not purged."""
    with MockServer(MockConfig()) as mock:
        async with start_service(_settings(tmp_path, redis_url, mock)) as svc:
            first = await _insert(svc, OLD)
            assert (await wait_for_task(svc.client, first["task_id"]))["status"] == "completed"
            old_chunks = (await _chunk_lists(svc))["manual"]
            before = await context_for(svc, QUESTION)
            assert "Alphawort" in before and "Betaquill" not in before

            await hold(mock, "extract", "glean")
            second = await _insert(svc, NEW)  # was 409 doc_exists
            assert second["doc_id"] == "manual" and not second.get("duplicate")
            await wait_held(mock, 1)
            lists = await _chunk_lists(svc)
            assert set(lists) == {"manual", "manual#next"}, lists
            assert set(lists["manual#next"]) & set(old_chunks), "the versions should share chunks"
            # The new version's chunks are stored (vectors and records) but not yet visible.
            during = await context_for(svc, QUESTION)
            assert "Alphawort" in during and "Betaquill" not in during, during[-600:]
            assert await _documents(svc) == ["manual"]
            again = await svc.client.post("/insert/text", json={"text": OLD + " changed", "doc_id": "manual"})
            assert again.status_code == 409 and again.json()["code"] == "doc_in_progress", again.text
            await release(mock)

            final = await wait_for_task(svc.client, second["task_id"])
            assert final["status"] == "completed", final
            after = await context_for(svc, QUESTION)
            assert "Betaquill" in after and "Alphawort" not in after, after[-600:]
            assert "Sharedmark" in after
            lists = await _chunk_lists(svc)
            assert set(lists) == {"manual"}, lists  # no version record is left
            new_chunks = set(lists["manual"])
            async with svc.services.engines.use("default") as engine:
                stored = await engine.rag.text_chunks.get_by_ids(sorted(new_chunks))
                assert all(r is not None and r["full_doc_id"] == "manual" for r in stored), stored
                gone = await engine.rag.text_chunks.get_by_ids(sorted(set(old_chunks) - new_chunks))
                assert gone and all(r is None for r in gone)
                assert not await engine.rag.chunk_entity_relation_graph.has_node("Alphawort")
            document = (await svc.client.get("/documents/manual")).json()
            assert document["status"] == "processed" and document["track_id"] == second["task_id"]
            assert await _documents(svc) == ["manual"]


async def test_cancelled_reindex_keeps_the_old_version_whole(tmp_path, redis_url) -> None:
    """Catches a cancel (or failure) of a re-index that purges the document by its id: the version
    queries see must stay, with every chunk it shares with the abandoned one."""
    with MockServer(MockConfig()) as mock:
        async with start_service(_settings(tmp_path, redis_url, mock)) as svc:
            first = await _insert(svc, OLD)
            assert (await wait_for_task(svc.client, first["task_id"]))["status"] == "completed"
            old_chunks = (await _chunk_lists(svc))["manual"]
            await hold(mock, "extract", "glean")
            second = await _insert(svc, NEW)
            await wait_held(mock, 1)
            cancel = await svc.client.delete(f"/task/{second['task_id']}")
            assert cancel.status_code == 202, cancel.text
            await release(mock)
            final = await wait_for_task(svc.client, second["task_id"])
            assert final["status"] == "cancelled", final

            async def versions_gone() -> bool:
                return set(await _chunk_lists(svc)) == {"manual"}

            await wait_until(versions_gone, message="the abandoned version purged")
            assert (await _chunk_lists(svc))["manual"] == old_chunks
            async with svc.services.engines.use("default") as engine:
                stored = await engine.rag.text_chunks.get_by_ids(old_chunks)
            assert all(r is not None for r in stored)
            context = await context_for(svc, QUESTION)
            assert "Alphawort" in context and "Sharedmark" in context and "Betaquill" not in context
            document = (await svc.client.get("/documents/manual")).json()
            assert document["status"] == "processed" and document["track_id"] == first["task_id"]

            # The id is free again: the same new content re-indexes it (and deletes it cleanly after).
            third = await _insert(svc, NEW)
            assert (await wait_for_task(svc.client, third["task_id"]))["status"] == "completed"
            assert "Betaquill" in await context_for(svc, QUESTION)
            deleted = await svc.client.delete("/documents/manual")
            assert deleted.status_code == 200, deleted.text
            assert await _chunk_lists(svc) == {}
            assert "Sharedmark" not in await context_for(svc, QUESTION)


async def test_a_reindex_resumed_after_its_swap_only_purges_the_old_version(tmp_path, redis_url) -> None:
    """Catches a resumed re-index (the task died after the switch, before the old version's purge)
    that indexes again or leaves the old version behind, and a swapped-out version that queries
    still see while it waits for its purge."""
    with MockServer(MockConfig()) as mock:
        async with start_service(_settings(tmp_path, redis_url, mock)) as svc:
            first = await _insert(svc, OLD)
            assert (await wait_for_task(svc.client, first["task_id"]))["status"] == "completed"
            old_chunks = set((await _chunk_lists(svc))["manual"])
            async with svc.services.engines.use("default") as engine:
                # What a task that died between the swap and the purge leaves.
                await engine.indexer.index("manual#next", NEW, file_path="manual.txt", track_id="task-2")
                async with engine.indexer.gate.exclusive():
                    assert await versions.swap(engine.rag, "manual")
                    assert not await versions.swap(engine.rag, "manual")  # done: nothing to swap
            lists = await _chunk_lists(svc)
            assert set(lists) == {"manual", "manual#retired"}, lists
            assert set(lists["manual#retired"]) == old_chunks - set(lists["manual"])
            waiting = await context_for(svc, QUESTION)
            assert "Betaquill" in waiting and "Alphawort" not in waiting, waiting[-600:]
            calls = (await asyncio.to_thread(mock_stats, mock))["kinds"]["extract"]

            async with svc.services.engines.use("default") as engine:
                request = IndexRequest(
                    "manual",
                    "manual.txt",
                    content=DocumentContent.of_text(NEW),
                    track_id="task-2",
                    replaces=True,
                )
                result = await engine.ingestor.ingest(request, _no_progress)
            assert result.resumed and result.doc_id == "manual"
            assert (await asyncio.to_thread(mock_stats, mock))["kinds"]["extract"] == calls
            assert set(await _chunk_lists(svc)) == {"manual"}
            async with svc.services.engines.use("default") as engine:
                left = await engine.rag.text_chunks.get_by_ids(sorted(old_chunks - set(lists["manual"])))
            assert left and all(r is None for r in left)
            assert "Sharedmark" in await context_for(svc, QUESTION)


async def _no_progress(_progress: object) -> None:
    return None


async def test_a_swap_cut_off_before_its_switch_is_undone_not_purged(tmp_path, redis_url) -> None:
    """Catches the leftover of a swap that died between its two steps (the old version's own chunks
    already moved to the retired record, the document not yet switched) being purged: that would
    cut those chunks out of the version queries see."""
    with MockServer(MockConfig()) as mock:
        async with start_service(_settings(tmp_path, redis_url, mock)) as svc:
            first = await _insert(svc, OLD)
            assert (await wait_for_task(svc.client, first["task_id"]))["status"] == "completed"
            old_chunks = (await _chunk_lists(svc))["manual"]
            async with svc.services.engines.use("default") as engine:
                rag = engine.rag
                await engine.indexer.index("manual#next", NEW, file_path="manual.txt", track_id="task-2")
                new_chunks = set((await rag.doc_status.get_by_id("manual#next"))["chunks_list"])
                old_only = [c for c in old_chunks if c not in new_chunks]
                # The swap's first step only (what versions.swap writes before its switch).
                await versions._set_owner(rag, old_only, "manual#retired")  # noqa: SLF001
                old_record = await rag.doc_status.get_by_id("manual")
                await rag.doc_status.upsert(
                    {"manual#retired": {**old_record, "chunks_list": old_only, "chunks_count": len(old_only)}}
                )
                await engine.ingestor._retire("manual")  # noqa: SLF001 - what a retried task does first
                kept = await rag.text_chunks.get_by_ids(old_chunks)
            assert all(r is not None and r["full_doc_id"] == "manual" for r in kept), kept
            assert set(await _chunk_lists(svc)) == {"manual", "manual#next"}
            assert "Alphawort" in await context_for(svc, QUESTION)

            # The retried task then finishes the re-index from there.
            async with svc.services.engines.use("default") as engine:
                request = IndexRequest(
                    "manual",
                    "manual.txt",
                    content=DocumentContent.of_text(NEW),
                    track_id="task-2",
                    replaces=True,
                )
                await engine.ingestor.ingest(request, _no_progress)
            assert set(await _chunk_lists(svc)) == {"manual"}
            after = await context_for(svc, QUESTION)
            assert "Betaquill" in after and "Sharedmark" in after and "Alphawort" not in after
