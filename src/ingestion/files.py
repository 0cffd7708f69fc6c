"""The uploads directory has one owner: this module.

Stored uploads are named ``<task_id><ext>`` (never a client-chosen name); an upload being
streamed is ``<task_id>.part`` until it is complete and valid. Everything that needs a path,
a removal or a clean-up asks `UploadFiles` instead of joining paths itself, so the naming
rule lives in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiofiles
import aiofiles.os

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"


class UploadFiles:
    def __init__(self, uploads_dir: Path):
        self.dir = uploads_dir

    def path(self, stored_name: str) -> Path:
        """Where a task's stored upload lives (``stored_name`` comes from the task record)."""
        return self.dir / Path(stored_name).name

    def part_path(self, task_id: str) -> Path:
        return self.dir / f"{task_id}{PART_SUFFIX}"

    def final_path(self, task_id: str, extension: str) -> Path:
        return self.dir / f"{task_id}{extension}"

    async def write(self, task_id: str, extension: str, data: bytes) -> Path:
        """Store small content (raw text) as the upload of ``task_id``."""
        path = self.final_path(task_id, extension)
        async with aiofiles.open(path, "wb") as fh:
            await fh.write(data)
        return path

    async def remove(self, stored_name: str) -> None:
        if stored_name:
            await remove_file(self.path(stored_name))

    async def remove_leftovers(self, task_id: str) -> int:
        """Delete every file of ``task_id`` (its record expired); returns how many were removed."""
        leftovers = await asyncio.to_thread(list, self.dir.glob(f"{task_id}.*"))
        for leftover in leftovers:
            await remove_file(leftover)
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
