"""DELETE /documents/{id} goes through the purge a cancel uses, so it stops the document's LLM work.

The document is indexed without a task (as when a document's task record already expired): no live
task guards it, so the delete is allowed while its extraction runs. Real Redis, real LightRAG, the
mock OpenAI-compatible LLM server.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.conftest import start_service
from tests.docs_factory import story
from tests.test_reliability import context_for, extraction_calls, llm_settings, mock_stats

pytestmark = pytest.mark.timeout(600)


async def test_delete_document_stops_its_in_flight_llm_work(tmp_path, redis_url) -> None:
    """Catches a delete that bypasses the purge (or waits for the document to finish): the document's
    indexing coroutine must be stopped, so only the LLM calls in flight at the delete still happen."""
    with MockServer(MockConfig(latency=0.6)) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_async=2, chunk_token_size=200)
        async with start_service(settings) as svc:
            async with svc.services.engines.use("default") as engine:
                indexing = asyncio.create_task(
                    engine.indexer.index(
                        "orphan-1",
                        story("canals", "Orphanora", 120),
                        file_path="orphan.txt",
                        track_id="no-task",
                    )
                )
            chunks = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                doc = await svc.client.get("/documents/orphan-1")
                if doc.status_code == 200:
                    chunks = doc.json().get("chunks_count") or 0
                if chunks and extraction_calls(mock_stats(mock)) >= 1:
                    break
                await asyncio.sleep(0.1)
            assert chunks >= 8, f"the document should span many chunks, got {chunks}"

            calls_at_delete = extraction_calls(mock_stats(mock))
            deleted = await svc.client.delete("/documents/orphan-1")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["status"] == "success"

            # Only the calls in flight at the delete (llm_max_async = 2, each maybe followed by its
            # gleaning call) may still have reached the provider; a full run needs ~2 per chunk.
            after_delete = extraction_calls(mock_stats(mock)) - calls_at_delete
            assert calls_at_delete < 2 * chunks - 8, "the scenario must delete early in the extraction"
            assert after_delete <= 2 * 2 + 2, (calls_at_delete, after_delete, chunks)
            assert (await svc.client.get("/documents/orphan-1")).status_code == 404
            with pytest.raises(Exception, match="deleted while it was being indexed"):
                await asyncio.wait_for(indexing, timeout=60)
            assert "Orphanora" not in await context_for(svc, "Orphanora canals")
