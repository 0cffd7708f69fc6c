"""One task-running process per DATA_DIR.

Why: what a worker keeps in DATA_DIR is written as if it were alone: the embedded knowledge bases
(SQLite files whose in-memory view is the truth, flushed by one group-commit writer per workspace),
the instance id that names its task leases (a restarted instance takes back every task leased
under that id), the parse cache. Two processes that run tasks on one DATA_DIR would overwrite each
other's knowledge base and take back each other's running tasks. So a process that runs tasks
holds an exclusive lock on ``DATA_DIR/.runner.lock`` for its lifetime (kill -9 drops it with the
process) and a second one is refused at start-up. An api-role process runs nothing and writes
nothing there: any number of them may share a worker's DATA_DIR (docs/architecture.md, Roles).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".runner.lock"


class DataDirInUse(RuntimeError):
    """Another live process runs tasks on this DATA_DIR."""


class DataDirLock:
    """The exclusive lock of a DATA_DIR, held while this process runs tasks on it."""

    def __init__(self, data_dir: Path, instance_id: str) -> None:
        self.path = data_dir / LOCK_NAME
        self.instance_id = instance_id
        self._fd: int | None = None

    def acquire(self) -> None:
        """Blocking (a local file); raises DataDirInUse naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"DATA_DIR {self.path.parent} is in use by another process that runs tasks ({holder}). "
                "Two such processes on one DATA_DIR would overwrite each other's knowledge bases and "
                "take back each other's tasks: give each instance its own DATA_DIR (shared knowledge "
                "bases go in PostgreSQL, docs/scaling.md), or run ROLE=api processes beside one worker."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, instance {self.instance_id}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None
