"""Real processes: the service under uvicorn with its embedded Redis, killed with -9 mid-ingestion.

The mock OpenAI-compatible server holds the extraction calls (tests/helpers.py hold_llm) so that
ingestion is still running when the service is killed; the restarted service must finish every
task, and LightRAG must hold each document exactly once.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from src.rag.storage.sqlite_store import read_kv_namespace
from tests.helpers import hold_llm, release_llm, story, wait_held_sync, wait_sync
from tests.procs import (
    kill_embedded_redis,
    service_env,
    start_mock_llm,
    start_service,
    statuses,
    terminate_and_wait,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(900)]


def wait_all_final(base: str, task_ids: list[str], timeout: float = 400) -> list[str]:
    """The tasks' statuses once all are final (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(base, task_ids)
        if all(s in ("completed", "failed", "cancelled") for s in current) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def assert_each_document_once_on_disk(workspace_dir: Path, doc_ids: list[str]) -> dict:
    """What the embedded SQLite store holds: exactly ``doc_ids`` in full_docs and doc_status, each
    with its own chunks. Returns the doc-status records."""
    full_docs = read_kv_namespace(workspace_dir, "full_docs")
    doc_status = read_kv_namespace(workspace_dir, "doc_status")
    chunks = read_kv_namespace(workspace_dir, "text_chunks")
    assert sorted(full_docs) == sorted(doc_ids)  # every document once, nothing else
    assert sorted(doc_status) == sorted(doc_ids)
    for doc_id in doc_ids:
        owned = [c for c in chunks.values() if c.get("full_doc_id") == doc_id]
        assert len(owned) == doc_status[doc_id]["chunks_count"] >= 1
    return doc_status


def test_kill9_mid_ingestion_then_restart_completes_every_task_once(tmp_path: Path, listen) -> None:
    data_dir = tmp_path / "data"
    http = listen()  # kept open: the restarted service serves on the same socket
    base = http.url
    mock = start_mock_llm()
    env = service_env(data_dir, http, mock, EMBEDDING_PROVIDER="hash")  # lookups by marker word only
    service = start_service(env, tmp_path / "service.log")
    try:
        task_ids, doc_ids = [], []

        def send(i: int) -> None:
            text = story(f"subject {i}", f"Restartmark{i}", 14).encode()
            response = httpx.post(f"{base}/insert", files={"file": (f"doc{i}.txt", text)}, timeout=30)
            assert response.status_code == 202, response.text
            task_ids.append(response.json()["task_id"])
            doc_ids.append(response.json()["doc_id"])

        send(0)  # one document completes before the crash...
        wait_sync(lambda: statuses(base, task_ids) == ["completed"], timeout=120, message="doc 0 completed")
        hold_llm(mock, "extract")  # ...the others are caught mid-extraction (both slots busy)
        for i in range(1, 6):
            send(i)
        wait_held_sync(mock, 2)
        before_kill = statuses(base, task_ids)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        assert before_kill.count("completed") == 1 and before_kill.count("processing") == 2, before_kill
        release_llm(mock)  # the dead process's calls go nowhere; the restarted one's are answered

        service = start_service(env, tmp_path / "service.log")
        current = wait_all_final(base, task_ids)
        assert current == ["completed"] * 6, current

        for doc_id in doc_ids:
            doc = httpx.get(f"{base}/documents/{doc_id}", timeout=10).json()
            assert doc["status"] == "processed"
        answer = httpx.post(
            f"{base}/query",
            json={"query": "Restartmark3", "mode": "naive", "only_need_context": True},
            timeout=60,
        )
        assert "Restartmark3" in answer.json()["response"]

        # uvicorn re-raises the signal after a graceful shutdown, so the exit status says SIGTERM.
        assert terminate_and_wait(service, tmp_path / "service.log") in (0, -signal.SIGTERM)
        assert b"Application shutdown complete" in (tmp_path / "service.log").read_bytes()

        workspace_dir = data_dir / "rag" / "restart"
        assert_each_document_once_on_disk(workspace_dir, doc_ids)
    finally:
        for proc in (service, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_embedded_redis(data_dir)


def test_kill9_under_steady_upload_load_loses_no_acknowledged_task(tmp_path: Path, listen) -> None:
    """Catches an acknowledged upload lost, or a document indexed twice, when the process dies while
    uploads keep arriving and processed documents still wait for the coalesced flush (issue 16:
    crash safety must survive the group commit, not only a quiet kill)."""
    data_dir = tmp_path / "data"
    http = listen()
    base = http.url
    mock = start_mock_llm(latency=0.05)
    # A long flush interval and commit delay widen the window in which finished documents are not
    # yet on disk (the commit delay alone would flush them within 20 ms).
    env = service_env(
        data_dir,
        http,
        mock,
        EMBEDDING_PROVIDER="hash",
        MAX_CONCURRENT_TASKS="4",
        STORAGE_FLUSH_INTERVAL_SECONDS="2",
        STORAGE_COMMIT_DELAY_SECONDS="2",
    )
    service = start_service(env, tmp_path / "service.log")
    acknowledged: dict[str, str] = {}  # task id -> doc id: the 202s the client received
    sent: list[float] = []  # when each upload was sent (monotonic)
    acknowledged_at: list[float] = []  # when each 202 was sent
    stop = threading.Event()

    def uploader() -> None:
        i = 0
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                text = story(f"topic {i}", f"Steadymark{i}", 6).encode()
                started = time.monotonic()
                sent.append(started)
                try:
                    r = client.post("/insert", files={"file": (f"steady{i}.txt", text)})
                    if r.status_code == 202:
                        acknowledged[r.json()["task_id"]] = r.json()["doc_id"]
                        acknowledged_at.append(started)
                except httpx.HTTPError:
                    pass  # sent while the service was down (reset, or timed out in the backlog)
                i += 1
                time.sleep(0.3)  # the pace of the load, not a synchronisation

    thread = threading.Thread(target=uploader, daemon=True)
    thread.start()
    try:

        def mid_load() -> bool:
            current = statuses(base, list(acknowledged))
            return current.count("completed") >= 4 and "processing" in current

        wait_sync(mid_load, timeout=180, message="4 completed while others run")
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        killed = time.monotonic()
        # Uploads keep coming while the service is down (the test keeps its listening socket, so
        # they wait in the backlog or fail; an acknowledged one must never be lost)...
        wait_sync(lambda: any(t > killed for t in sent), timeout=60, message="an upload sent while down")
        service = start_service(env, tmp_path / "service.log")
        restarted = time.monotonic()
        # ...and while it resumes its tasks.
        wait_sync(
            lambda: sum(t > restarted for t in acknowledged_at) >= 3,
            timeout=120,
            message="3 uploads acknowledged after the restart",
        )
        stop.set()
        thread.join(timeout=30)
        assert any(killed < t < restarted for t in sent), "no upload reached the dead service's port"

        task_ids = list(acknowledged)
        current = wait_all_final(base, task_ids)
        assert current == ["completed"] * len(task_ids), dict(zip(task_ids, current, strict=True))

        assert terminate_and_wait(service, tmp_path / "service.log") in (0, -signal.SIGTERM)
        workspace_dir = data_dir / "rag" / "restart"
        doc_status = assert_each_document_once_on_disk(workspace_dir, sorted(acknowledged.values()))
        assert {record["status"] for record in doc_status.values()} == {"processed"}
    finally:
        stop.set()
        for proc in (service, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_embedded_redis(data_dir)


def test_kill9_mid_batch_leaves_no_file_without_a_task_after_the_restart(tmp_path: Path, listen) -> None:
    """Catches the files of a batch cut off by kill -9 staying on disk forever: its files that had
    fully arrived were already stored under their final names while their tasks did not exist yet
    (only `.part` files were swept). Now they keep this instance's part name until their task is
    submitted, and the restarted instance removes them before it serves; what was acknowledged
    before the kill (a 202) still completes."""
    data_dir = tmp_path / "data"
    http = listen()
    port, base = http.port, http.url
    env = service_env(data_dir, http)
    uploads = data_dir / "uploads"
    service = start_service(env, tmp_path / "service.log")
    try:
        acknowledged = httpx.post(
            f"{base}/insert",
            files={"file": ("kept.txt", story("fjords", "Ackedbefore").encode())},
            timeout=30,
        )
        assert acknowledged.status_code == 202, acknowledged.text
        task_id = acknowledged.json()["task_id"]

        parts = [
            b'--b\r\nContent-Disposition: form-data; name="files"; filename="f%d.txt"\r\n\r\n' % i
            + story(f"batch topic {i}", f"Batchkill{i}").encode()
            + b"\r\n"
            for i in range(3)
        ]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 10000000\r\n\r\n" + parts[0] + parts[1] + parts[2][:200]
            )
            wait_sync(  # two files complete and a third streaming: three files of the batch
                lambda: len([p for p in uploads.iterdir() if p.is_file()]) >= 4,
                timeout=60,
                message="the batch's files on disk",
            )
            service.send_signal(signal.SIGKILL)
            service.wait(timeout=10)
        service = start_service(env, tmp_path / "service.log")
        on_disk = {p.name.split(".")[0] for p in uploads.iterdir() if p.is_file()}
        assert on_disk <= {task_id}, f"files without a task after the restart: {on_disk}"
        assert wait_all_final(base, [task_id], timeout=120) == ["completed"]
        assert [p for p in uploads.iterdir() if p.is_file()] == []  # the completed task's file too
    finally:
        terminate_and_wait(service, tmp_path / "service.log")
        kill_embedded_redis(data_dir)
