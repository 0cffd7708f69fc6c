"""The background lane of the offline e5 embeddings: a big document's chunks, in a niced child.

e5 runs on this machine's cores (~1 s per 1,200-token chunk on 2 cores), and a 99 MB text is
~25,000 chunks: embedded in the service's process they held both cores for hours, so one-line
documents uploaded beside it took six times as long as alone, however fairly the embedding
scheduler interleaved their calls. The indexer marks the chunk embeddings of a document of
``BULK_DOCUMENT_CHUNKS`` chunks or more as bulk work (``CallContext.bulk``); the embedding batcher
sends those through a scheduler of their own to this lane, whose child process
(src/rag/e5_child.py) runs at niceness ``BULK_NICENESS``: the big document advances on the CPU the
rest of the service leaves idle, and never holds the model the other documents and queries use.

The child is started at the first bulk call and restarted after it dies; a call whose caller is
cancelled still has its answer read (and dropped), so the pipe stays in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Sequence

import numpy as np

from src.rag.child_process import child_command, child_env
from src.rag.embedding_e5 import E5_DIM

logger = logging.getLogger(__name__)

#: The child's niceness: the kernel's scheduler gives a nice-0 thread ~70 times its share.
BULK_NICENESS = 19
#: Longest answer header line; the vectors follow it as raw bytes.
_LINE_LIMIT = 1 << 20


class BulkEmbeddingFailed(RuntimeError):
    """The bulk child could not embed a request (it died, or the model raised)."""


def _child_env(threads: int | None) -> dict[str, str]:
    env = child_env(OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    # EMBEDDING_THREADS, else what the operator gave the service's own model.
    omp_threads = str(int(threads)) if threads else os.environ.get("OMP_NUM_THREADS")
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    return env


class E5BulkLane:
    """One niced child process with its own e5 model; one request at a time through its pipes."""

    def __init__(self, niceness: int = BULK_NICENESS, threads: int | None = None) -> None:
        self.niceness = int(niceness)
        self.threads = threads
        self._proc: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._calls: set[asyncio.Task[np.ndarray]] = set()
        #: Child processes started (1 + restarts), for tests and /metrics-style diagnostics.
        self.started = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def embed(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        """Rows for ``texts`` (L2-normalised, as the in-process model's)."""
        self._bind_loop()
        call = asyncio.ensure_future(self._roundtrip([str(t) for t in texts], bool(is_query)))
        self._calls.add(call)
        call.add_done_callback(self._finished)
        # A cancelled caller leaves the call to finish: its answer must still be read off the pipe.
        return await asyncio.shield(call)

    def _finished(self, call: asyncio.Task[np.ndarray]) -> None:
        self._calls.discard(call)
        if not call.cancelled():
            call.exception()  # read: a dropped call's failure is not "never retrieved"

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a process-wide lane outlives an event loop in tests
            self._kill()
            self._loop, self._lock, self._proc = loop, asyncio.Lock(), None

    async def _roundtrip(self, texts: list[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.empty((0, E5_DIM), dtype=np.float32)
        assert self._lock is not None
        async with self._lock:
            proc = await self._running()
            assert proc.stdin is not None and proc.stdout is not None
            request = json.dumps({"query": is_query, "texts": texts}).encode("ascii") + b"\n"
            try:
                proc.stdin.write(request)
                await proc.stdin.drain()
                header = await proc.stdout.readline()
                answer = json.loads(header) if header else None
                if answer is None:
                    raise ConnectionResetError("end of output")
                if "error" in answer:
                    raise BulkEmbeddingFailed(f"bulk embedding failed: {answer['error']}")
                rows = int(answer["rows"])
                raw = await proc.stdout.readexactly(rows * E5_DIM * 4)
            except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError, ValueError) as exc:
                self._kill()
                code = await proc.wait()
                raise BulkEmbeddingFailed(f"the bulk embedding process stopped (exit {code}): {exc}") from exc
        return np.frombuffer(raw, dtype="<f4").reshape(rows, E5_DIM).astype(np.float32)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        self._proc = await asyncio.create_subprocess_exec(
            *child_command("src.rag.e5_child", str(self.niceness)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_env(self.threads),
            limit=_LINE_LIMIT,
        )
        self.started += 1
        logger.info("bulk embedding process started (pid %d, niceness %d)", self._proc.pid, self.niceness)
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Stop the child (its calls in flight fail); the next bulk call starts a new one."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if self._loop is not asyncio.get_running_loop():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


_shared: E5BulkLane | None = None


def shared_bulk_lane(threads: int | None = None) -> E5BulkLane:
    """The process-wide lane (every knowledge base shares it, as they share the in-process model);
    ``threads``: EMBEDDING_THREADS, the model's OpenMP threads."""
    global _shared
    if _shared is None:
        _shared = E5BulkLane(threads=threads)
    return _shared


async def close_bulk_lane() -> None:
    """At shutdown: the child goes with the service (it would also exit at the end of its stdin)."""
    if _shared is not None:
        await _shared.close()
