"""LightRAG Server (lightrag-hku[api] 1.4.16) in its own venv, pointed at the mock, for side-by-side runs.

The venv lives in a cache dir (``$RAG_BENCH_CACHE`` or ``~/.cache/rag-bench/lrs-venv``) and is
created on first use; if that fails the comparison is skipped with a note. Env var names were
checked against ``lightrag/api/config.py`` of that release (LLM_BINDING, LLM_BINDING_HOST,
LLM_BINDING_API_KEY, EMBEDDING_*, MAX_ASYNC, MAX_PARALLEL_INSERT, WORKING_DIR, INPUT_DIR, ...).
tiktoken is seeded offline with the service's own ``seed_tiktoken_cache`` (LightRAG's default
tokenizer would otherwise download o200k_base at start-up).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import Mock, free_port, stop_process, wait_http

LRS_VERSION = "1.4.16"


def cache_dir() -> Path:
    return Path(os.environ.get("RAG_BENCH_CACHE", Path.home() / ".cache" / "rag-bench"))


def ensure_venv(log) -> tuple[Path | None, str]:
    """Return (path of the lightrag-server executable, note). Creates the venv if missing."""
    venv = cache_dir() / "lrs-venv"
    exe = venv / "bin" / "lightrag-server"
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import importlib.metadata as m; print(m.version('lightrag-hku'))"]
    if exe.exists():
        out = subprocess.run(check, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == LRS_VERSION:
            return exe, f"lightrag-hku[api] {LRS_VERSION} (cached venv)"
    log(f"creating LightRAG Server venv in {venv} (pip install lightrag-hku[api]=={LRS_VERSION}) ...")
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"lightrag-hku[api]=={LRS_VERSION}"],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        out = subprocess.run(check, capture_output=True, text=True, check=True)
        return exe, f"lightrag-hku[api] {out.stdout.strip()} (venv created by this run)"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"LightRAG Server comparison skipped: installing lightrag-hku[api] failed ({exc})"


@dataclass
class LightRAGServer:
    exe: Path
    workdir: Path
    mock: Mock
    max_async: int = 4
    max_parallel_insert: int = 2
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> LightRAGServer:
        from src.rag.tokenizer import seed_tiktoken_cache

        self.workdir.mkdir(parents=True, exist_ok=True)
        tiktoken_dir = seed_tiktoken_cache(self.workdir / "tiktoken")
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "EMBEDDING_", "MAX_"))}
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            WORKING_DIR=str(self.workdir / "rag_storage"),
            INPUT_DIR=str(self.workdir / "inputs"),
            LLM_BINDING="openai",
            LLM_BINDING_HOST=self.mock.v1,
            LLM_BINDING_API_KEY="bench-key",
            LLM_MODEL="mock-gpt",
            EMBEDDING_BINDING="openai",
            EMBEDDING_BINDING_HOST=self.mock.v1,
            EMBEDDING_BINDING_API_KEY="bench-key",
            EMBEDDING_MODEL="mock-embedding",
            EMBEDDING_DIM="384",
            MAX_ASYNC=str(self.max_async),
            MAX_PARALLEL_INSERT=str(self.max_parallel_insert),
            TIKTOKEN_CACHE_DIR=str(tiktoken_dir),
            LOG_LEVEL="WARNING",
            WORKERS="1",
        )
        env.update(self.env_extra)
        log = open(self.workdir / "lightrag-server.log", "ab")  # noqa: SIM115 - lives with the process
        # cwd = its own work dir: lightrag-server loads ./.env, which must not be ours.
        self.proc = subprocess.Popen([str(self.exe)], cwd=self.workdir, env=env, stdout=log, stderr=log)
        wait_http(f"{self.base}/health", timeout=timeout, proc=self.proc)
        return self

    def counts(self, client: httpx.Client | None = None) -> dict:
        get = client.get if client is not None else httpx.get
        return get(f"{self.base}/documents/status_counts", timeout=30).json().get("status_counts", {})

    def busy(self, client: httpx.Client | None = None) -> bool:
        get = client.get if client is not None else httpx.get
        return bool(get(f"{self.base}/documents/pipeline_status", timeout=30).json().get("busy"))

    def wait_processed(self, n: int, timeout: float) -> float:
        """Seconds until ``n`` documents are PROCESSED (or FAILED) and the pipeline is idle."""
        t0 = time.monotonic()
        with httpx.Client() as client:  # one client for every poll: a new one costs ~16 ms of CPU
            while time.monotonic() - t0 < timeout:
                c = self.counts(client)
                done = int(c.get("processed", 0)) + int(c.get("failed", 0))
                if done >= n and not self.busy(client):
                    return time.monotonic() - t0
                time.sleep(0.05)
            counts = self.counts(client)
            raise TimeoutError(f"LightRAG Server did not process {n} docs in {timeout}s: {counts}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
