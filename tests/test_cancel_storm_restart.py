"""Real processes: kill -9 in the middle of a cancel storm's purge pass, then a restart (issue 25, item 5).

Documents sharing people and places with completed ones are caught mid-merge (their extraction
answered, every embedding call held at the mock LLM, so their merges wrote graph nodes and wait for
entity vectors); a batch of them is cancelled, and their purge pass deletes their chunks, flushes
that to disk and then waits for the embeddings of the shared entities it rebuilds. The service is
killed there, with one more document's cancel acknowledged just before, and restarted on the same
data dir and embedded Redis. Promised: every cancelled task ends `cancelled`, the completed
documents are all there once, and the knowledge base equals one that only ever indexed them.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from src.rag.storage.sqlite_store import read_kv_namespace
from tests.helpers import FINAL, hold_llm, mock_stats, release_llm, story, wait_sync
from tests.procs import (
    kill_embedded_redis,
    service_env,
    spawn_service,
    start_mock_llm,
    start_service,
    stop_process,
    terminate_and_wait,
    wait_http,
)
from tests.stored_knowledge import assert_forgotten, assert_same_knowledge, stored_knowledge

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

SLOTS = 4
BASE = 4
STORM = 6
TOPICS = ["harbours", "orchards", "glaciers", "deserts"]


def _env(data_dir: Path, listener, mock) -> dict[str, str]:
    return service_env(
        data_dir,
        listener,
        mock,
        EMBEDDING_PROVIDER="openai",  # the mock's embeddings: holding them holds merges and rebuilds
        EMBEDDING_BASE_URL=mock.base_url,
        EMBEDDING_API_KEY="test-key",
        EMBEDDING_MODEL="mock-embedding",
        EMBEDDING_DIM="384",
        MAX_CONCURRENT_TASKS=str(SLOTS),
        # Background flushes 3 s apart: the pass's deletions reach the disk before the kill, and a
        # cancel acknowledged right before the kill is on disk only if the cancel made it durable.
        STORAGE_FLUSH_INTERVAL_SECONDS="3",
        # Longer than the wait after the restart: the killed run's tasks must be taken back by the
        # restart itself, not by the sweeper once their leases expire.
        LEASE_SECONDS="180",
    )


def _views(base: str, task_ids: list[str]) -> dict[str, dict]:
    out = {}
    for task_id in task_ids:
        response = httpx.get(f"{base}/task/{task_id}", timeout=10)
        assert response.status_code == 200, response.text
        out[task_id] = response.json()
    return out


def _all_final(base: str, task_ids: list[str]) -> dict[str, dict] | None:
    views = _views(base, task_ids)
    return views if all(v["status"] in FINAL for v in views.values()) else None


def _upload(base: str, name: str, text: str) -> dict:
    response = httpx.post(f"{base}/insert", files={"file": (name, text.encode())}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def _logged(log_path: Path, prefix: str) -> list[str]:
    messages = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            message = json.loads(line).get("msg", "")
        except (ValueError, AttributeError):
            continue
        if message.startswith(prefix):
            messages.append(message)
    return messages


def _on_disk(workspace: Path, namespace: str) -> dict:
    try:
        return read_kv_namespace(workspace, namespace)
    except Exception:  # not created yet, or mid-checkpoint: asked again at the next poll
        return {}


#: Stages of a document whose chunk vectors are still being written (DocumentIndexer._write_chunks).
VECTORS_HELD = ("chunking", "extracting")


def test_kill9_mid_purge_pass_then_restart_leaves_only_the_completed_documents(
    tmp_path: Path, listen
) -> None:
    mock = start_mock_llm()
    http, reference_http = listen(), listen()
    base = http.url
    data_dir, reference_dir = tmp_path / "data", tmp_path / "reference"
    env, log = _env(data_dir, http, mock), tmp_path / "service.log"
    reference_log = tmp_path / "reference.log"
    # The reference (a service that only ever indexes the completed documents) starts beside it.
    service = spawn_service(env, log)
    reference_env = _env(reference_dir, reference_http, mock)
    reference: subprocess.Popen | None = spawn_service(reference_env, reference_log)
    try:
        wait_http(f"{base}/health", timeout=120, proc=service)
        wait_http(f"{reference_http.url}/health", timeout=120, proc=reference)
        kept: list[str] = []
        references: list[str] = []
        for i in range(BASE):
            text = story(TOPICS[i % len(TOPICS)], f"Kept{i:02d}x")
            kept.append(_upload(base, f"kept{i}.txt", text)["task_id"])
            references.append(_upload(reference_http.url, f"kept{i}.txt", text)["task_id"])
        for url, ids in ((base, kept), (reference_http.url, references)):
            done = wait_sync(
                lambda url=url, ids=ids: _all_final(url, ids),
                timeout=120,
                message="the completed documents indexed",
            )
            assert {x["status"] for x in done.values()} == {"completed"}, done
        assert terminate_and_wait(reference, reference_log) in (0, -signal.SIGTERM)
        reference = None

        # The storm's documents: the first SLOTS reach their extraction, then merge with every
        # embedding held (they write graph nodes and wait); the others wait for their chunk vectors.
        hold_llm(mock, "extract")
        storm: dict[str, str] = {}  # task id -> doc id
        for i in range(STORM):
            created = _upload(base, f"gone{i}.txt", story(TOPICS[i % len(TOPICS)], f"Gone{i:02d}x"))
            storm[created["task_id"]] = created["doc_id"]
        ids = list(storm)
        wait_sync(
            lambda: mock_stats(mock)["held_by_kind"].get("extract", 0) >= SLOTS,
            timeout=60,
            message="storm documents in their extraction",
        )
        # The late document is one that had no task slot yet: it starts after the embeddings are
        # held, so its chunk vectors never come and it cannot merge. One of the first SLOTS seen in
        # `extracting` may only be finishing its extraction (its vectors written before the hold):
        # it would merge after the look, beside the cancelled ones, and hold the purge pass's gate.
        without_slot = [t for t, v in _views(base, ids).items() if v["status"] == "pending"]
        assert without_slot, "every storm document got a task slot at once"
        hold_llm(mock, "extract", "embeddings")
        release_llm(mock, "extract")

        def stuck() -> dict[str, dict] | None:
            views = _views(base, ids)
            merging = [t for t, v in views.items() if v["stage"] == "merging" and v["progress"] > 80]
            waiting = [t for t in without_slot if views[t]["stage"] in VECTORS_HELD]
            ready = all(v["status"] == "processing" for v in views.values()) and merging and waiting
            return views if ready else None

        views = wait_sync(stuck, timeout=60, message="storm documents held mid-merge and mid-chunking")
        merged = [t for t, v in views.items() if v["stage"] == "merging" and v["progress"] > 80]
        late = next(t for t in without_slot if views[t]["stage"] in VECTORS_HELD)
        workspace = data_dir / "rag" / "restart"
        wait_sync(  # its status and chunk written by a background flush: on disk when it is cancelled
            lambda: (
                storm[late] in _on_disk(workspace, "doc_status")
                and any(
                    c.get("full_doc_id") == storm[late] for c in _on_disk(workspace, "text_chunks").values()
                )
            ),
            timeout=30,
            message="the late document's records on disk",
        )

        for task_id in ids:
            if task_id != late:
                response = httpx.delete(f"{base}/task/{task_id}", timeout=30)
                assert response.status_code == 202, response.text

        def mid_pass() -> bool:
            """A pass started, deleted the merged documents' chunks and flushed that, and has not
            removed their records: it waits for the vectors of the entities it rebuilds."""
            if not _logged(log, "purge pass"):
                return False
            statuses, chunks = _on_disk(workspace, "doc_status"), _on_disk(workspace, "text_chunks")
            owners = {c.get("full_doc_id") for c in chunks.values()}
            return any(storm[t] in statuses and storm[t] not in owners for t in merged)

        try:
            wait_sync(mid_pass, timeout=60, message="a purge pass mid-way on disk")
        except AssertionError as exc:  # what CI keeps of this moment: the tasks, the passes, the disk
            statuses, chunks = _on_disk(workspace, "doc_status"), _on_disk(workspace, "text_chunks")
            owners = {c.get("full_doc_id") for c in chunks.values()}
            disk = {t: (storm[t] in statuses, storm[t] in owners) for t in ids}
            raise AssertionError(
                f"{exc}; merged={merged} late={late} passes={_logged(log, 'purge pass')} "
                f"(status on disk, chunks on disk)={disk} views={_views(base, ids)}"
            ) from None
        response = httpx.delete(f"{base}/task/{late}", timeout=30)
        assert response.status_code == 202, response.text
        wait_sync(
            lambda: _views(base, [late])[late]["status"] == "cancelled",
            timeout=30,
            interval=0.02,
            message="the late document's cancel acknowledged",
        )
        before_kill = _views(base, ids)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        in_pass = [t for t in merged if before_kill[t]["status"] == "cancelling"]
        assert in_pass, {t: before_kill[t]["status"] for t in merged}  # the kill hit the pass
        release_llm(mock)  # the dead process's calls go nowhere; the restarted one's are answered

        service = start_service(env, log)
        try:
            views = wait_sync(lambda: _all_final(base, [*kept, *ids]), timeout=60, message="final")
        except AssertionError:
            views = _views(base, [*kept, *ids])
            left = {t: v["status"] for t, v in views.items() if v["status"] not in FINAL}
            raise AssertionError(f"tasks not final 60 s after the restart: {left}") from None
        assert {t: views[t]["status"] for t in ids} == dict.fromkeys(ids, "cancelled")
        assert {t: views[t]["status"] for t in kept} == dict.fromkeys(kept, "completed")
        for task_id in ids:
            assert httpx.get(f"{base}/documents/{storm[task_id]}", timeout=10).status_code == 404
        for task_id in kept:
            document = httpx.get(f"{base}/documents/{views[task_id]['doc_id']}", timeout=10)
            assert document.status_code == 200 and document.json()["status"] == "processed", document.text
        assert terminate_and_wait(service, log) in (0, -signal.SIGTERM)
        print(
            f"\nRESTART MID-PASS: {len(in_pass)} document(s) in the pass at the kill, "
            f"{len(ids)} cancelled; {len(_logged(log, 'purge pass'))} pass(es) logged over both runs"
        )

        stormed = stored_knowledge(workspace)
        assert_forgotten(stormed, [f"Gone{i:02d}x" for i in range(STORM)])
        assert_same_knowledge(stormed, stored_knowledge(reference_dir / "rag" / "restart"))
    finally:
        for proc in (service, reference, mock):
            stop_process(proc, timeout=10)
        kill_embedded_redis(data_dir)
        kill_embedded_redis(reference_dir)
