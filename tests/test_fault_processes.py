"""Real processes: SIGTERM drain-and-requeue, and two instances sharing one Redis (fencing, takeover)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import hold_llm, mock_stats, release_llm, story, wait_held_sync, wait_sync
from tests.procs import (
    embedded_redis_pid,
    kill_embedded_redis,
    service_env,
    start_mock_llm,
    start_service,
    statuses,
    terminate_and_wait,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(900)]
FINAL = ("completed", "failed", "cancelled")


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def upload_docs(base: str, count: int, prefix: str) -> list[str]:
    ids = []
    for i in range(count):
        text = story(f"subject {i}", f"{prefix}{i}x", 14).encode()
        response = httpx.post(f"{base}/insert", files={"file": (f"{prefix}{i}.txt", text)}, timeout=30)
        assert response.status_code == 202, response.text
        ids.append(response.json()["task_id"])
    return ids


def wait_all_final(base: str, ids: list[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    current: list[str] = []
    while time.monotonic() < deadline:
        current = statuses(base, ids)
        if all(s in FINAL for s in current):
            break
        time.sleep(0.5)
    return current


def persist_everything(data_dir: Path) -> None:
    """Have the embedded Redis rewrite its AOF and wait until the rewrite is done: everything it
    holds is then on disk (appendfsync everysec alone gives no moment to wait for)."""
    from src.core.embedded_redis import socket_path_for

    client = redis.Redis(unix_socket_path=str(socket_path_for(data_dir / "redis")), decode_responses=True)
    try:
        client.bgrewriteaof()

        def rewritten() -> bool:
            info = client.info("persistence")
            return info["aof_rewrite_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0

        wait_sync(rewritten, timeout=60, interval=0.05, message="AOF rewrite finished")
        assert client.info("persistence")["aof_last_bgrewrite_status"] == "ok"
    finally:
        client.close()


def test_sigterm_drains_then_requeues_and_the_next_start_resumes(tmp_path: Path, listen) -> None:
    data_dir = tmp_path / "data"
    http = listen()
    base = http.url
    mock = start_mock_llm()
    env = service_env(data_dir, http, mock, SHUTDOWN_GRACE_SECONDS="1")
    service = start_service(env, tmp_path / "service.log")
    try:
        hold_llm(mock, "extract")  # the running tasks are mid-extraction when SIGTERM arrives
        ids = upload_docs(base, 6, "Drainmark")
        wait_held_sync(mock, 2)  # both slots are extracting
        assert terminate_and_wait(service, tmp_path / "service.log") in (0, -signal.SIGTERM)
        release_llm(mock)

        service = start_service(env, tmp_path / "service.log")
        assert wait_all_final(base, ids, 300) == ["completed"] * 6
        views = [httpx.get(f"{base}/task/{t}", timeout=10).json() for t in ids]
        interrupted = [v for v in views if any(h["outcome"] == "interrupted" for h in v["history"])]
        assert interrupted, "at least one running task should have been handed back at shutdown"
        assert all(v["failures"] == 0 for v in views), "a shutdown must not count as a failed attempt"
        assert terminate_and_wait(service, tmp_path / "service.log") in (0, -signal.SIGTERM)
    finally:
        for proc in (service, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_embedded_redis(data_dir)


def test_two_instances_share_one_redis_without_double_runs_and_take_over_a_crash(
    tmp_path: Path, redis_url: str, listen
) -> None:
    mock = start_mock_llm()
    shared_uploads = tmp_path / "uploads"
    common = dict(
        REDIS_URL=redis_url,
        UPLOAD_DIR=str(shared_uploads),
        LEASE_SECONDS="4",
        HEARTBEAT_SECONDS="1",
        SWEEP_SECONDS="1",
        REDIS_PREFIX=f"two{uuid.uuid4().hex[:8]}:",
    )
    listeners = [listen(), listen()]
    envs = [
        service_env(
            tmp_path / f"node{i}", listeners[i], mock, INSTANCE_ID=f"node-{i}", WORKSPACE=f"node{i}", **common
        )
        for i in range(2)
    ]
    procs = [start_service(envs[i], tmp_path / f"node{i}.log") for i in range(2)]
    bases = [listener.url for listener in listeners]
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        hold_llm(mock, "extract")  # node-0's tasks are caught mid-extraction
        ids = upload_docs(bases[0], 6, "Twinmark") + upload_docs(bases[1], 6, "Twinmark2")

        def node0_extracting() -> bool:
            owners = [store.hmget(f"{common['REDIS_PREFIX']}task:{t}", "status", "owner") for t in ids]
            return ["processing", "node-0"] in owners and mock_stats(mock)["held"] >= 1

        wait_sync(node0_extracting, timeout=120, message="node-0 running a task")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        release_llm(mock)

        assert wait_all_final(bases[1], ids, 400) == ["completed"] * len(ids)
        views = [httpx.get(f"{bases[1]}/task/{t}", timeout=10).json() for t in ids]
        # node-1 took over what node-0 was running when it died.
        taken_over = [v for v in views if any(h["outcome"] == "lease-expired" for h in v["history"])]
        assert taken_over, "the crashed node's running tasks must be recovered by the other node"
        for view in views:
            # Attempts never overlap in time: no task ran on both nodes at once.
            spans = sorted((_ts(h["started_at"]), _ts(h["ended_at"])) for h in view["history"])
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                assert end <= start, view
            assert view["attempt"] == len(view["history"]), view
    finally:
        store.close()
        for proc in (*procs, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_embedded_redis_is_restarted_when_it_dies(tmp_path: Path, listen) -> None:
    """Catches an unsupervised embedded Redis (issue 12 item 15): after kill -9 of the server every
    route answered 503 forever. Now the service restarts it on the same data (AOF) and socket:
    routes recover, a task accepted before the crash is still there, /health counts the restart."""
    data_dir = tmp_path / "data"
    http = listen()
    base = http.url
    mock = start_mock_llm(latency=0.05)
    env = service_env(data_dir, http, mock, ADMIN_TOKEN="fault-admin")  # /health details need it
    service = start_service(env, tmp_path / "service.log")
    try:
        [task_id] = upload_docs(base, 1, "Supervised")
        assert wait_all_final(base, [task_id], 120) == ["completed"]
        persist_everything(data_dir)  # the completed record is on disk, not only in memory
        first_pid = embedded_redis_pid(data_dir)
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)

        deadline = time.monotonic() + 60
        recovered = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{base}/task/{task_id}", timeout=5)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                recovered = response.json()
                break
            time.sleep(0.2)
        assert recovered is not None, "routes never recovered after the embedded Redis died"
        assert recovered["status"] == "completed"
        new_pid = embedded_redis_pid(data_dir)
        assert new_pid is not None and new_pid != first_pid
        admin = {"Authorization": "Bearer fault-admin"}
        health = httpx.get(f"{base}/health", headers=admin, timeout=10).json()
        assert health["redis"]["embedded"]["restarts"] >= 1
        assert health["redis"]["embedded"]["state"] == "running"
        [later] = upload_docs(base, 1, "AfterRestart")
        assert wait_all_final(base, [later], 120) == ["completed"]
    finally:
        for proc in (service, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_embedded_redis(data_dir)
