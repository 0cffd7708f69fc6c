"""A stalled node: two real uvicorn instances on one Redis; the one running a task is frozen with
SIGSTOP past its lease, the other takes the task over, then the frozen one is resumed (SIGCONT).
Its late writes must be refused as stale, and the task must complete exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import hold_llm, release_llm, story, wait_held_sync, wait_sync
from tests.procs import service_env, start_mock_llm, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]
DEADLINE = 240.0  # below the file's timeout, so a stuck step fails with its own message


class Receiver:
    """Loopback webhook receiver counting deliveries."""

    def __init__(self) -> None:
        self.deliveries: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def poll(what: str, probe, timeout: float = DEADLINE):
    return wait_sync(probe, timeout=timeout, message=what)


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def test_stalled_node_is_fenced_and_its_task_completes_exactly_once(
    tmp_path: Path, redis_url: str, listen
) -> None:
    """Catches a node that, resumed after its lease expired, still writes its attempt's progress or
    final state over the new owner's (no epoch fence), finishes the task a second time, or sends a
    second completion webhook; and a lease that is never taken back from a frozen node."""
    mock = start_mock_llm()
    hold_llm(mock, "extract")  # each attempt waits at its first extraction call until released
    receiver = Receiver()
    prefix = f"stall{uuid.uuid4().hex[:8]}:"
    common = dict(
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        UPLOAD_DIR=str(tmp_path / "uploads"),
        # Long enough that a live node on a loaded machine keeps its lease; the frozen one loses it.
        LEASE_SECONDS="8",
        HEARTBEAT_SECONDS="1",
        SWEEP_SECONDS="0.5",
        MAX_CONCURRENT_TASKS="1",
        LLM_MAX_ASYNC="1",
        CHUNK_TOKEN_SIZE="200",
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
    )
    listeners = [listen(), listen()]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    procs: list = []
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for i in range(2):
            node = dict(INSTANCE_ID=f"node-{i}", WORKSPACE=f"n{i}")
            env = service_env(tmp_path / f"node{i}", listeners[i], mock, **node, **common)
            procs.append(start_service(env, logs[i]))
        bases = [listener.url for listener in listeners]
        accepted = httpx.post(
            f"{bases[0]}/insert",
            params={"callback_url": receiver.url},
            files={"file": ("locks.txt", story("canal locks", "Stallmark", 8).encode())},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        task_id, doc_id = accepted.json()["task_id"], accepted.json()["doc_id"]
        key = f"{prefix}task:{task_id}"

        # Freeze whichever node runs the task, while it is extracting (its call is held).
        wait_held_sync(mock, 1, timeout=DEADLINE)
        record = store.hgetall(key)
        assert record.get("status") == "processing" and record.get("attempt") == "1", record
        owner = record["owner"]
        stalled = int(owner.rsplit("-", 1)[1])
        other = 1 - stalled
        os.kill(procs[stalled].pid, signal.SIGSTOP)

        # Its lease runs out; the other node's sweeper takes the task back and runs attempt 2.
        def taken_over() -> bool:
            record = store.hgetall(key)
            assert record.get("status") not in ("failed", "cancelled"), record
            return record.get("attempt") == "2" and record.get("owner") == f"node-{other}"

        poll("attempt 2 claimed by the other node", taken_over)
        wait_held_sync(mock, 2, timeout=DEADLINE)  # attempt 2 is extracting (held): it is running
        os.kill(procs[stalled].pid, signal.SIGCONT)  # resumed while attempt 2 runs

        # The resumed node finds out it lost the task: its heartbeat is answered "lost" or its final
        # write is refused as stale. Either way it must not write over attempt 2.
        def stalled_node_fenced() -> bool:
            return any(
                task_id in line and ("lost its lease" in line or "refused" in line)
                for line in log_lines(logs[stalled])
            )

        poll("the resumed node being refused", stalled_node_fenced)
        release_llm(mock)  # attempt 2 goes on to the end

        def final() -> dict | None:
            view = httpx.get(f"{bases[other]}/task/{task_id}", timeout=10).json()
            assert view["status"] not in ("failed", "cancelled"), view
            return view if view["status"] == "completed" and view.get("webhook") else None

        view = poll("the task completed and its webhook recorded", final)
        outcomes = [(h["attempt"], h["owner"], h["outcome"]) for h in view["history"]]
        # The frozen node's attempt ended as lease-expired, never as completed; exactly one attempt
        # completed, the last one, and the attempts are numbered without gaps (one claim each).
        assert outcomes[0] == (1, f"node-{stalled}", "lease-expired"), outcomes
        assert [o[0] for o in outcomes] == list(range(1, len(outcomes) + 1)), outcomes
        assert [o[2] for o in outcomes].count("completed") == 1 and outcomes[-1][2] == "completed", outcomes
        assert all(o[2] in ("lease-expired", "completed") for o in outcomes), outcomes
        assert view["attempt"] == len(outcomes) and view["progress"] == 100, view
        assert view["webhook"]["delivered"] is True
        winner = int(outcomes[-1][1].rsplit("-", 1)[1])
        document = httpx.get(f"{bases[winner]}/documents/{doc_id}", timeout=30)
        assert document.status_code == 200, document.text

        # Once fenced, nothing of the resumed node's attempt lands: the record is still attempt 2's
        # and exactly one completion was announced.
        again = httpx.get(f"{bases[other]}/task/{task_id}", timeout=10).json()
        assert again["history"] == view["history"] and again["status"] == "completed", again
        assert [d["event"] for d in receiver.deliveries] == ["task.completed"], receiver.deliveries
    except BaseException:
        for path in logs:
            print(f"--- {path.name}", *log_lines(path)[-40:], sep="\n")
        raise
    finally:
        for proc in procs:
            stop_process(proc)
        stop_process(mock)
        receiver.close()
        store.close()
