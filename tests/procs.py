"""Helpers for tests that run the service as a real process (uvicorn), with the mock LLM beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {timeout}s")


def start_mock_llm(port: int, latency: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mock_llm", "--port", str(port), "--latency", str(latency)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    return proc


def service_env(data_dir: Path, port: int, llm_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LLM_", "EMBEDDING_"))}
    env.update(
        DATA_DIR=str(data_dir),
        HOST="127.0.0.1",
        PORT=str(port),
        WORKSPACE="restart",
        LLM_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        LLM_API_KEY="test-key",
        LLM_MODEL="mock-model",
        EMBEDDING_PROVIDER="onnx",
        MAX_CONCURRENT_TASKS="2",
        LEASE_SECONDS="30",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def start_service(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    wait_http(f"http://127.0.0.1:{env['PORT']}/health", timeout=120)
    return proc


def statuses(base: str, task_ids: list[str]) -> list[str]:
    return [httpx.get(f"{base}/task/{t}", timeout=10).json()["status"] for t in task_ids]


def embedded_redis_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def kill_embedded_redis(data_dir: Path) -> None:
    """Kill the embedded redis-server a service left running (it outlives the service by design)."""
    pid = embedded_redis_pid(data_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
