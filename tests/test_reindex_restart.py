"""kill -9 in the middle of a re-index (the service under uvicorn, its embedded Redis, the mock LLM
holding the new version's extraction): the restarted service finishes the same task, and neither
version is lost on the way — the old one answers until the swap, the new one after it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from src.rag.storage.sqlite_store import read_kv_namespace
from tests.helpers import hold_llm, release_llm, wait_held_sync, wait_sync
from tests.procs import kill_embedded_redis, service_env, start_mock_llm, start_service, terminate_and_wait
from tests.test_reindex import NEW, OLD, QUESTION

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]


def _insert(base: str, text: str) -> str:
    response = httpx.post(f"{base}/insert/text", json={"text": text, "doc_id": "manual"}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def _status(base: str, task_id: str) -> str:
    return httpx.get(f"{base}/task/{task_id}", timeout=10).json()["status"]


def _context(base: str) -> str:
    body = {"query": QUESTION, "mode": "naive", "only_need_context": True}
    response = httpx.post(f"{base}/query", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["response"]


def test_kill9_mid_reindex_loses_neither_version(tmp_path: Path, listen) -> None:
    data_dir = tmp_path / "data"
    http = listen()  # kept open: the restarted service serves on the same socket
    base = http.url
    mock = start_mock_llm()
    env = service_env(
        data_dir, http, mock, EMBEDDING_PROVIDER="hash", CHUNK_SIZE="120", CHUNK_OVERLAP_SIZE="10"
    )
    service = start_service(env, tmp_path / "service.log")
    try:
        first = _insert(base, OLD)
        wait_sync(
            lambda: _status(base, first) == "completed", timeout=120, message="the first version indexed"
        )
        hold_llm(mock, "extract")
        second = _insert(base, NEW)
        wait_held_sync(mock, 1)
        during = _context(base)
        assert "Alphawort" in during and "Betaquill" not in during
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        release_llm(mock)

        service = start_service(env, tmp_path / "service.log")
        # Until the restarted service has finished the task, the old version is what answers.
        assert "Sharedmark" in _context(base)
        wait_sync(lambda: _status(base, second) == "completed", timeout=300, message="the re-index resumed")
        after = _context(base)
        assert "Betaquill" in after and "Sharedmark" in after and "Alphawort" not in after, after[-600:]
        listed = httpx.get(f"{base}/documents", timeout=10).json()
        assert [d["doc_id"] for d in listed["documents"]] == ["manual"]
        assert terminate_and_wait(service, tmp_path / "service.log") in (0, -signal.SIGTERM)

        workspace = data_dir / "rag" / "restart"
        doc_status = read_kv_namespace(workspace, "doc_status")
        assert sorted(doc_status) == ["manual"] and doc_status["manual"]["track_id"] == second
        chunks = read_kv_namespace(workspace, "text_chunks")
        assert sorted(chunks) == sorted(doc_status["manual"]["chunks_list"])
        assert {c["full_doc_id"] for c in chunks.values()} == {"manual"}
        assert sorted(read_kv_namespace(workspace, "full_docs")) == ["manual"]
    finally:
        for proc in (service, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_embedded_redis(data_dir)
