"""Removes upload files no task will ever use, on every instance that shares the uploads directory.

Two kinds are left behind by crashes: part files whose writer died (an upload or a batch cut off by
kill -9, on this instance or another one sharing the directory), and stored uploads no task record
refers to (a crash between a file's promotion and its record, or a record gone without its file).
`UploadFiles` decides from the file system what is provably abandoned; this loop adds the one fact
it cannot know, whether a task record still refers to a stored upload, and runs both periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from src.core.waiting import raise_if_cancel_swallowed
from src.ingestion.files import UploadFiles

log = logging.getLogger(__name__)


class UploadSweeper:
    def __init__(
        self,
        files: UploadFiles,
        existing_tasks: Callable[[Iterable[str]], Awaitable[set[str]]],
        *,
        orphan_seconds: float,
        interval_seconds: float,
    ):
        self.files = files
        self.existing_tasks = existing_tasks
        #: A stored upload must be this old before it can be an orphan (a file is promoted just
        #: before its record is written: far longer than that window).
        self.orphan_seconds = orphan_seconds
        self.interval_seconds = interval_seconds
        self._loop: asyncio.Task | None = None

    async def sweep(self) -> int:
        """One pass; returns how many files were removed."""
        removed = await asyncio.to_thread(self.files.remove_abandoned_parts)
        candidates = await asyncio.to_thread(self.files.orphans, self.orphan_seconds)
        if candidates:
            referred = await self.existing_tasks(candidates)
            for task_id, path in candidates.items():
                if task_id not in referred:
                    await self.files.remove_path(path)
                    removed += 1
                    log.info("removed upload %s: no task refers to it", path.name)
        return removed

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="upload-sweeper")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # Redis down, a file system hiccup: the next pass retries
                log.warning("upload sweep skipped: %s: %s", type(exc).__name__, exc)
            raise_if_cancel_swallowed()  # by the Redis client: stop() would wait for good
