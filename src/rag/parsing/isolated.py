"""Run one document's parse in a child process (src/rag/parsing/worker.py) and wait for it off the
event loop.

Why a process: a hostile document (a zip bomb, a PDF bomb stream, a 40000 × 40000 PNG) made the
service grow by gigabytes and stalled its loop. The child runs under an address-space limit; this
side stops it when it makes no progress for ``timeout_seconds`` (each finished page, slide, sheet or
image counts) and kills it when its task is cancelled (``abort_parse``). Blocking: call it from a
thread. Errors name the file, never a server path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from src.core.scrub import scrub_paths
from src.rag.child_process import child_command, child_env
from src.rag.parsing.content import ContentList, DocumentParseError
from src.rag.parsing.limits import ParseLimits
from src.rag.parsing.worker import EXIT_MEMORY, EXIT_REJECTED, PROGRESS_PREFIX
from src.rag.parsing.zipguard import check_zip_bounds

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

#: Live parse processes by the path they parse, so a cancelled task can kill its own.
_live: dict[str, set[subprocess.Popen]] = {}
_live_lock = threading.Lock()
_ZIP_KINDS = frozenset({"docx", "pptx", "xlsx", "odt", "epub", "bundle"})


def _child_env(limits: ParseLimits) -> dict[str, str]:
    threads = str(limits.ocr_threads)
    return child_env(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)


def run_isolated(
    kind: str,
    path: Path,
    out_dir: Path,
    limits: ParseLimits,
    on_progress: ProgressFn | None = None,
) -> ContentList:
    """Parse ``path`` as ``kind`` in a child; extracted images go to ``out_dir``. Raises
    DocumentParseError (the document is unusable or over a limit)."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(name)
    if kind in _ZIP_KINDS:  # cheap (central directory only): refuse a bomb without a process
        check_zip_bounds(path, limits.max_expanded_bytes, limits.max_compression_ratio)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        child_command("src.rag.parsing.worker", kind, str(path), str(out_dir), limits.to_json()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(limits),
    )
    key = str(path.resolve())
    with _live_lock:
        _live.setdefault(key, set()).add(proc)
    try:
        out, message = _wait(proc, name, limits.timeout_seconds, on_progress)
    finally:
        with _live_lock:
            procs = _live.get(key)
            if procs is not None:
                procs.discard(proc)
                if not procs:
                    del _live[key]
    message = scrub_paths(message.strip()[-2000:], {str(path): name, str(out_dir): "…"})
    if proc.returncode == 0:
        if message:
            logger.warning("parse of %s: %s", name, message)
        return json.loads(out)
    if proc.returncode == EXIT_REJECTED:
        raise DocumentParseError(message)
    if proc.returncode == EXIT_MEMORY:
        raise DocumentParseError(f"{name}: parsing needs more memory than PARSE_MEMORY_BYTES allows")
    if proc.returncode == -signal.SIGKILL:
        raise DocumentParseError(f"{name}: parsing was stopped")
    raise DocumentParseError(
        f"{name}: the parse process failed (exit {proc.returncode}; memory limit PARSE_MEMORY_BYTES?)"
    )


def _wait(
    proc: subprocess.Popen, name: str, idle_timeout: float, on_progress: ProgressFn | None
) -> tuple[bytes, str]:
    """Collect stdout and the error text, forward progress lines; kill the child after
    ``idle_timeout`` seconds without progress."""
    out: list[bytes] = []
    errors: list[str] = []
    last_progress = [time.monotonic()]

    def read_out() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            if line.startswith(PROGRESS_PREFIX):
                last_progress[0] = time.monotonic()
                with contextlib.suppress(ValueError):
                    done, total = (int(v) for v in line[len(PROGRESS_PREFIX) :].split())
                    if on_progress is not None:
                        try:
                            on_progress(done, total)
                        except Exception:  # a progress consumer never breaks the parse
                            logger.exception("parse progress callback failed")
            else:
                errors.append(line)

    readers = [threading.Thread(target=fn, daemon=True) for fn in (read_out, read_err)]
    for reader in readers:
        reader.start()
    timed_out = False
    while True:
        idle_left = idle_timeout - (time.monotonic() - last_progress[0])
        if idle_left <= 0:
            timed_out = True
            proc.kill()
            proc.wait()
            break
        try:
            proc.wait(timeout=min(1.0, idle_left))
            break
        except subprocess.TimeoutExpired:
            continue
    for reader in readers:
        reader.join(timeout=10)
    if timed_out:
        raise DocumentParseError(
            f"{name}: parsing made no progress for {idle_timeout:g} s (PARSE_TIMEOUT_SECONDS)"
        )
    return b"".join(out), "".join(errors)


def abort_parse(path: Path) -> int:
    """Kill the parse processes working on ``path`` (its task was cancelled); returns how many."""
    with _live_lock:
        procs = list(_live.get(str(Path(path).resolve()), ()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    if procs:
        logger.info("aborted %d parse process(es) of %s", len(procs), Path(path).name)
    return len(procs)
