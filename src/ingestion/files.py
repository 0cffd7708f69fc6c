"""The uploads directory has one owner: this module.

Stored uploads are named ``<task_id><ext>`` (never a client-chosen name); an upload being
streamed is ``<task_id>.part`` until it is complete and valid. Everything that needs a path,
a removal or a clean-up asks `UploadFiles` instead of joining paths itself, so the naming
rule lives in one place.

It also bounds the directory: `check_room` refuses an upload (507) when the free disk would
fall below MIN_FREE_DISK_BYTES or the directory would grow past MAX_UPLOADS_DIR_BYTES. The
directory's size is measured once at start-up and then tracked as files are written and removed
(never walked per request); free space is asked of the file system at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

import aiofiles
import aiofiles.os

from src.ingestion.errors import InsufficientStorage

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"


#: How long a free-space reading is reused (statvfs is cheap, but not free on a network file system).
_FREE_SPACE_TTL = 1.0


class UploadFiles:
    def __init__(self, uploads_dir: Path, *, max_dir_bytes: int = 0, min_free_bytes: int = 0):
        self.dir = uploads_dir
        #: 0 = no bound on the directory's size / on the free space left.
        self.max_dir_bytes = max_dir_bytes
        self.min_free_bytes = min_free_bytes
        #: Bytes of uploads (stored and partial) in the directory, as far as this process knows.
        self.bytes_used = 0
        self._free: int | None = None
        self._free_at = 0.0

    def path(self, stored_name: str) -> Path:
        """Where a task's stored upload lives (``stored_name`` comes from the task record)."""
        return self.dir / Path(stored_name).name

    def part_path(self, task_id: str) -> Path:
        return self.dir / f"{task_id}{PART_SUFFIX}"

    def final_path(self, task_id: str, extension: str) -> Path:
        return self.dir / f"{task_id}{extension}"

    # ------------------------------------------------------------------ room on disk
    async def check_room(self, incoming: int) -> None:
        """Refuse (InsufficientStorage) when ``incoming`` more bytes would break a storage bound."""
        if self.max_dir_bytes and self.bytes_used + incoming > self.max_dir_bytes:
            raise InsufficientStorage(
                f"the uploads directory is full ({self.bytes_used} of {self.max_dir_bytes} bytes used); "
                "retry later"
            )
        if self.min_free_bytes:
            free = await self.free_bytes()
            if free - incoming < self.min_free_bytes:
                raise InsufficientStorage(
                    f"not enough free disk space to store the upload (at least {self.min_free_bytes} bytes "
                    "must stay free); retry later"
                )

    async def free_bytes(self) -> int:
        now = time.monotonic()
        if self._free is None or now - self._free_at > _FREE_SPACE_TTL:
            self._free = (await asyncio.to_thread(shutil.disk_usage, self.dir)).free
            self._free_at = now
        return self._free

    def grew(self, nbytes: int) -> None:
        """``nbytes`` were written to an upload (the free-space reading shrinks with them)."""
        self.bytes_used += nbytes
        if self._free is not None:
            self._free -= nbytes

    def shrank(self, nbytes: int) -> None:
        self.bytes_used = max(0, self.bytes_used - nbytes)
        if self._free is not None:
            self._free += nbytes

    def measure(self) -> int:
        """Blocking; run at start-up in a thread: the directory's size, the base of the tracking."""
        total = 0
        for entry in os.scandir(self.dir):
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        self.bytes_used = total
        return total

    # ------------------------------------------------------------------ files
    async def write(self, task_id: str, extension: str, data: bytes) -> Path:
        """Store small content (raw text) as the upload of ``task_id``."""
        await self.check_room(len(data))
        path = self.final_path(task_id, extension)
        async with aiofiles.open(path, "wb") as fh:
            await fh.write(data)
        self.grew(len(data))
        return path

    async def remove(self, stored_name: str) -> None:
        if stored_name:
            await self.remove_path(self.path(stored_name))

    async def remove_path(self, path: Path) -> None:
        """Delete an upload file (stored or partial) and account for the space it frees."""
        try:
            size = (await aiofiles.os.stat(path)).st_size
        except FileNotFoundError:
            return
        await remove_file(path)
        self.shrank(size)

    async def remove_leftovers(self, task_id: str) -> int:
        """Delete every file of ``task_id`` (its record expired); returns how many were removed."""
        leftovers = await asyncio.to_thread(list, self.dir.glob(f"{task_id}.*"))
        for leftover in leftovers:
            await self.remove_path(leftover)
        return len(leftovers)

    async def writable(self) -> bool:
        """Can uploads be stored at all (a health check)?"""
        return await asyncio.to_thread(os.access, self.dir, os.W_OK)

    def remove_partials(self) -> int:
        """Blocking; run at start-up in a thread. A crash mid-upload leaves a ``.part`` file that no
        task refers to (no 202 was sent for it)."""
        count = 0
        for leftover in self.dir.glob(f"*{PART_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            count += 1
        if count:
            log.info("removed %d partial upload(s) left by an earlier run", count)
        return count


async def remove_file(path: Path) -> None:
    """Delete a file off the event loop; a file that is already gone is fine."""
    try:
        await aiofiles.os.remove(path)
    except FileNotFoundError:
        pass
