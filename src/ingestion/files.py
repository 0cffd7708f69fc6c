"""The uploads directory has one owner: this module.

Stored uploads are named ``<task_id><ext>`` (never a client-chosen name). Until its task record
exists an upload is ``<task_id>.<instance>.part``: while it streams in, and after it arrived
complete (a batch's files wait there for the rest of the body), so a file of a request that never
got its 202 is never mistaken for a task's upload. Everything that needs a path, a removal or a
clean-up asks `UploadFiles` instead of joining paths itself, so the naming rule lives in one place.

Several instances may share the directory (README, "Run several instances"): each holds an
exclusive `flock` on ``.instances/<instance>.lock`` for its lifetime, so a part file's owner is
provably gone when its lock can be taken (the kernel drops it when the process dies, kill -9 too).
Start-up and the periodic sweep (`src/ingestion/upload_sweeper.py`) remove only part files whose
owner is gone; complete uploads no task refers to only after ORPHAN_UPLOAD_SECONDS.

It also bounds the directory: `check_room` refuses an upload (507) when the free disk would
fall below MIN_FREE_DISK_BYTES or the directory would grow past MAX_UPLOADS_DIR_BYTES. The
directory's size is measured once at start-up and then tracked as files are written and removed
(never walked per request); free space is asked of the file system at most once a second.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

import aiofiles
import aiofiles.os

from src.ingestion.errors import InsufficientStorage

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
#: Holds one ``<instance>.lock`` per instance using the directory (see the module docstring).
LOCK_DIR = ".instances"
#: A part file without a provable owner (no lock file: written by an older version, or the lock
#: directory was removed) is abandoned once untouched this long: a live upload writes at least once
#: per UPLOAD_IDLE_TIMEOUT_SECONDS (30 s) or is aborted.
UNOWNED_PART_SECONDS = 3600.0
#: What a stored upload's name looks like: ``<task_id><ext>`` (task ids are UUIDs).
_STORED_NAME = re.compile(r"([0-9A-Za-z-]{8,64})\.[0-9A-Za-z]{1,16}")


#: How long a free-space reading is reused (statvfs is cheap, but not free on a network file system).
_FREE_SPACE_TTL = 1.0


def instance_tag(instance_id: str) -> str:
    """The instance id as it appears in part file names (file-name safe, no dots)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", instance_id):
        return instance_id
    return "i" + hashlib.sha256(instance_id.encode()).hexdigest()[:16]


class UploadFiles:
    def __init__(
        self,
        uploads_dir: Path,
        *,
        max_dir_bytes: int = 0,
        min_free_bytes: int = 0,
        instance_id: str = "",
    ):
        self.dir = uploads_dir
        #: Carried by this instance's part file names ("" only in tests of naming alone).
        self.tag = instance_tag(instance_id) if instance_id else ""
        self._lock_fd: int | None = None
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
        """Where an upload of this instance waits until its task record exists."""
        tag = f".{self.tag}" if self.tag else ""
        return self.dir / f"{task_id}{tag}{PART_SUFFIX}"

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

    async def promote(self, part: Path, task_id: str, extension: str) -> Path:
        """The received upload becomes the task's stored upload: called just before the task record
        is written (a complete file without a record is then an orphan, see `orphans`)."""
        final = self.final_path(task_id, extension)
        await asyncio.to_thread(_rename_touched, part, final)
        return final

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

    # ------------------------------------------------------------------ ownership and clean-up
    def claim_instance(self) -> bool:
        """Blocking; at start-up. Lock ``.instances/<tag>.lock`` for this process's lifetime; False
        when another live process holds it (the same INSTANCE_ID twice: its files are left alone)."""
        lock_dir = self.dir / LOCK_DIR
        try:
            lock_dir.mkdir(exist_ok=True)
            fd = os.open(lock_dir / f"{self.tag}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only directory: /health reports it; nothing to clean then
            log.warning("cannot lock instance %s in %s: %s", self.tag, self.dir, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log.warning("another live process uses instance id %s on %s", self.tag, self.dir)
            return False
        self._lock_fd = fd
        return True

    def release_instance(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the lock
            self._lock_fd = None

    def _owner_gone(self, tag: str, mtime: float, now: float) -> bool:
        """Is the writer of a part file tagged ``tag`` provably gone?"""
        if tag == self.tag:
            return False  # this process's own uploads (its earlier life is handled at start-up)
        try:
            fd = os.open(self.dir / LOCK_DIR / f"{tag}.lock", os.O_RDWR)
        except FileNotFoundError:
            return now - mtime > UNOWNED_PART_SECONDS  # no lock to ask: only age can tell
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its process holds the lock: alive
        finally:
            os.close(fd)  # also releases the lock just taken
        return True

    def remove_abandoned_parts(self, *, own: bool = False) -> int:
        """Blocking; in a thread. Remove part files whose writer is gone: those of dead instances
        (lock free), unowned ones past UNOWNED_PART_SECONDS and, with ``own`` (at start-up, once this
        instance holds its lock, before it serves), those of this instance's previous run."""
        count = 0
        now = time.time()
        for entry in os.scandir(self.dir):
            if not entry.name.endswith(PART_SUFFIX) or not entry.is_file(follow_symlinks=False):
                continue
            stem = entry.name[: -len(PART_SUFFIX)]
            tag = stem.partition(".")[2]
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            mine = own and self._lock_fd is not None and tag == self.tag
            if (
                mine
                or (tag and self._owner_gone(tag, mtime, now))
                or (not tag and now - mtime > UNOWNED_PART_SECONDS)
            ):
                size = _unlink(entry.path)
                if size is not None:
                    self.shrank(size)
                    count += 1
        if count:
            log.info("removed %d partial upload(s) whose writer is gone", count)
        return count

    def orphans(self, older_than: float, now: float | None = None) -> dict[str, Path]:
        """Blocking; in a thread. Stored uploads (``<task_id><ext>``) unchanged for ``older_than``
        seconds, by task id: the caller keeps those a task record still refers to."""
        limit = (now if now is not None else time.time()) - older_than
        found: dict[str, Path] = {}
        for entry in os.scandir(self.dir):
            match = _STORED_NAME.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if max(info.st_mtime, info.st_ctime) < limit:
                found[match.group(1)] = Path(entry.path)
        return found


def _rename_touched(source: Path, target: Path) -> None:
    os.replace(source, target)
    os.utime(target)  # its age now counts from the moment a task record may refer to it


def _unlink(path: str) -> int | None:
    """Remove a file; its size, or None if it was gone already."""
    try:
        size = os.stat(path, follow_symlinks=False).st_size
        os.unlink(path)
    except FileNotFoundError:
        return None
    return size


async def remove_file(path: Path) -> None:
    """Delete a file off the event loop; a file that is already gone is fine."""
    try:
        await aiofiles.os.remove(path)
    except FileNotFoundError:
        pass
