"""ROLE=api and ROLE=worker as real processes (uvicorn via `python main.py`) on one Redis and one
DATA_DIR: the api process accepts everything and runs nothing; the worker process runs every task
(documents and queries) and serves only /health and /metrics."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import story, wait_sync
from tests.procs import service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]

ADMIN = {"Authorization": "Bearer roles-admin"}
FINAL = ("completed", "failed", "cancelled")


def wait_final(base: str, task_id: str, expect: str = "completed") -> dict:
    def probe() -> dict | None:
        view = httpx.get(f"{base}/task/{task_id}", timeout=10).json()
        return view if view["status"] in FINAL else None

    view = wait_sync(probe, timeout=150, message=f"task {task_id} final")
    assert view["status"] == expect, view
    return view


@pytest.fixture
def roles(tmp_path: Path, redis_url: str, listen) -> Iterator[tuple[str, str, Path]]:
    """An api process and a worker process sharing Redis and DATA_DIR: (api url, worker url, log dir)."""
    data_dir = tmp_path / "data"
    common = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"roles:{uuid.uuid4().hex[:8]}:",
        "ADMIN_TOKEN": "roles-admin",
        "SWEEP_SECONDS": "1",
        "HEARTBEAT_SECONDS": "1",
    }
    api_http, worker_http = listen(), listen()
    api_env = service_env(data_dir, api_http, ROLE="api", INSTANCE_ID="api-1", **common)
    worker_env = service_env(data_dir, worker_http, ROLE="worker", INSTANCE_ID="worker-1", **common)
    worker = api = None
    try:
        # The worker first: an api process without a live worker reports /health degraded (503).
        worker = start_service(worker_env, tmp_path / "worker.log")
        api = start_service(api_env, tmp_path / "api.log")
        yield api_http.url, worker_http.url, tmp_path
    finally:
        stop_process(api)
        stop_process(worker)


def test_api_process_accepts_and_a_worker_process_completes(roles) -> None:
    """Catches an api role that runs tasks itself (or answers from a stale knowledge base of its own),
    and a worker that serves the API: uploads and /query/async on the api are completed by the worker,
    /query and /query/stream on the api are answered through the worker, the worker answers 404 on
    /insert, and /health works on both."""
    api, worker, logs = roles
    for base in (api, worker):
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{base}/metrics", headers=ADMIN, timeout=10).status_code == 200
    for method, path in (
        ("POST", "/insert"),
        ("GET", "/tasks"),
        ("POST", "/query"),
        ("GET", "/openapi.json"),
    ):
        refused = httpx.request(method, f"{worker}{path}", timeout=10)
        assert refused.status_code == 404 and refused.json()["code"] == "not_found", (path, refused.text)

    text = story("salt marshes", "Rolemarker").encode()
    accepted = httpx.post(f"{api}/insert", files={"file": ("marsh.txt", text)}, timeout=30)
    assert accepted.status_code == 202, accepted.text
    done = wait_final(api, accepted.json()["task_id"])
    assert done["history"][-1]["owner"] == "worker-1", done

    asked = httpx.post(
        f"{api}/query/async",
        json={"query": "Rolemarker project", "mode": "naive", "only_need_context": True},
        timeout=30,
    )
    assert asked.status_code == 202, asked.text
    answered = wait_final(api, asked.json()["task_id"])
    assert "Rolemarker" in answered["result"]["context"] and answered["history"][-1]["owner"] == "worker-1"

    # The api role delegates direct queries to the workers (its own knowledge base would be stale).
    direct = httpx.post(
        f"{api}/query",
        json={"query": "Rolemarker project", "mode": "naive", "only_need_context": True},
        timeout=120,
    )
    assert direct.status_code == 200 and "Rolemarker" in direct.json()["response"], direct.text
    streamed = httpx.post(
        f"{api}/query/stream",
        json={"query": "Rolemarker project", "mode": "naive", "only_need_context": True},
        timeout=120,
    )
    assert streamed.status_code == 200, streamed.text
    pieces = [json.loads(line) for line in streamed.text.splitlines() if line.strip()]
    assert len(pieces) == 1 and "Rolemarker" in pieces[0]["response"], pieces
    # Document reads (one, or the listing) come from the durable rows the worker wrote; deletion
    # needs the knowledge base's own process.
    doc = httpx.get(f"{api}/documents/{done['doc_id']}", timeout=30)
    assert doc.status_code == 200 and doc.json()["status"] == "processed", doc.text
    listed = httpx.get(f"{api}/documents", params={"status": "processed"}, timeout=30).json()
    assert [d["doc_id"] for d in listed["documents"]] == [done["doc_id"]] and listed["counts"][
        "processed"
    ] == 1
    missing = httpx.get(f"{api}/documents/doc-nothere", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "doc_not_found", missing.text
    refused = httpx.delete(f"{api}/documents/{done['doc_id']}", timeout=30)
    assert refused.status_code == 503 and refused.json()["code"] == "not_in_this_role", refused.text
    assert refused.json()["role"] == "api"

    health = httpx.get(f"{api}/health", headers=ADMIN, timeout=10).json()
    assert health["storage"]["loaded_tenants"] == [], health  # the api process never loaded a knowledge base
    api_log = (logs / "api.log").read_text(errors="replace")
    assert "started (doc" not in api_log and "knowledge base of tenant" not in api_log
