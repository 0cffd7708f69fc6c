"""The service as a real process (uvicorn via `python main.py`), with the mock LLM beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import scrubbed_env, wait_http

__all__ = [
    "ROOT",
    "embedded_redis_pid",
    "kill_embedded_redis",
    "service_env",
    "start_mock_llm",
    "start_service",
    "statuses",
    "stop_process",
    "terminate_and_wait",
    "wait_http",
]

ROOT = Path(__file__).resolve().parent.parent


def start_mock_llm(port: int, latency: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mock_llm", "--port", str(port), "--latency", str(latency)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
    return proc


def service_env(data_dir: Path, port: int, llm_port: int | None = None, **extra: str) -> dict[str, str]:
    """A scrubbed environment for `python main.py`: own data dir and port, the mock LLM at
    ``llm_port`` (else the offline LLM), onnx embeddings; ``extra`` overrides anything."""
    env = scrubbed_env(
        DATA_DIR=str(data_dir),
        HOST="127.0.0.1",
        PORT=str(port),
        WORKSPACE="restart",
        EMBEDDING_PROVIDER="onnx",
        MAX_CONCURRENT_TASKS="2",
        LEASE_SECONDS="30",
        LOG_LEVEL="INFO",
    )
    if llm_port is None:
        env["LLM_PROVIDER"] = "offline"
    else:
        env.update(
            LLM_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
            LLM_API_KEY="test-key",
            LLM_MODEL="mock-model",
        )
    env.update(extra)
    return env


def start_service(env: dict[str, str], log_path: Path, timeout: float = 120) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    log.close()  # the child holds its own descriptor
    try:
        wait_http(f"http://127.0.0.1:{env['PORT']}/health", timeout=timeout, proc=proc)
    except AssertionError:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; a stopped (SIGSTOP) process is resumed first."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def terminate_and_wait(proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> int:
    """SIGTERM and the exit status; a stop that outlasts ``timeout`` fails with the service log's tail
    (where the service's shutdown watch reports what it is waiting for)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tail = log_path.read_text(errors="replace").splitlines()[-120:]
        message = f"the service did not stop within {timeout:.0f} s of SIGTERM; its log ends with:"
        raise AssertionError("\n".join([message, *tail])) from None


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
