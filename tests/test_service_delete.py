"""DELETE /documents/{id} goes through the purge a cancel uses, so it stops the document's LLM work.

The document is indexed without a task (as when a document's task record already expired): no live
task guards it, so the delete is allowed while its extraction runs. Real Redis, real LightRAG, the
mock OpenAI-compatible LLM server.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import (
    context_for,
    extraction_calls,
    hold,
    llm_settings,
    mock_stats,
    release,
    start_service,
    story,
    wait_held,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_delete_document_stops_its_in_flight_llm_work(tmp_path, redis_url) -> None:
    """Catches a delete that bypasses the purge (or waits for the document to finish): the document's
    indexing coroutine must be stopped, so only the LLM calls in flight at the delete still happen."""
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_async=2, chunk_token_size=200)
        async with start_service(settings) as svc:
            await hold(mock, "extract", "glean")  # the extraction waits at the mock until released
            async with svc.services.engines.use("default") as engine:
                indexing = asyncio.create_task(
                    engine.indexer.index(
                        "orphan-1",
                        story("canals", "Orphanora", 120),
                        file_path="orphan.txt",
                        track_id="no-task",
                    )
                )
            await wait_held(mock, 2)  # both LLM slots are extracting its chunks

            async def chunked() -> int:
                doc = await svc.client.get("/documents/orphan-1")
                return doc.status_code == 200 and (doc.json().get("chunks_count") or 0)

            chunks = await wait_until(chunked, message="the document's chunks recorded")
            assert chunks >= 8, f"the document should span many chunks, got {chunks}"

            calls_at_delete = extraction_calls(mock_stats(mock))
            deleted = await svc.client.delete("/documents/orphan-1")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["status"] == "success"
            await release(mock)
            await wait_until(
                lambda: asyncio.to_thread(lambda: mock_stats(mock)["in_flight"] == 0),
                message="the held calls answered",
            )

            # Only the two calls held at the delete (each maybe followed by its gleaning call) reached
            # the provider; a full run needs ~2 per chunk.
            after_delete = extraction_calls(mock_stats(mock)) - calls_at_delete
            assert after_delete <= 2 * 2, (calls_at_delete, after_delete, chunks)
            assert (await svc.client.get("/documents/orphan-1")).status_code == 404
            with pytest.raises(Exception, match="deleted while it was being indexed"):
                await asyncio.wait_for(indexing, timeout=60)
            assert "Orphanora" not in await context_for(svc, "Orphanora canals")
