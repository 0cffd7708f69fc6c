"""Admission and execution of tasks inside this process.

One dispatcher loop claims pending tasks from Redis whenever a semaphore slot is free; each
claimed task runs as its own asyncio task. One heartbeat loop renews the leases of all
running tasks (so a long LLM call never lets a lease lapse), and one sweeper loop requeues
tasks whose lease expired (their worker died) and prunes index entries of expired records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from src.tasks.models import Stage, TaskRecord, TaskStatus
from src.tasks.store import TaskStore
from src.uploads import remove_file

log = logging.getLogger(__name__)


class TaskHandler(Protocol):
    async def __call__(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict: ...


@dataclass
class RunnerConfig:
    max_concurrent: int
    lease_seconds: float
    heartbeat_seconds: float
    sweep_seconds: float
    max_attempts: int
    uploads_dir: Path
    idle_poll_seconds: float = 1.0


@dataclass
class _Running:
    task: TaskRecord
    job: asyncio.Task | None = None
    last_report: tuple[str, float] = ("", -1.0)
    started: float = field(default_factory=time.monotonic)


class TaskRunner:
    """Runs at most ``max_concurrent`` tasks at once, claimed from the shared Redis queue."""

    def __init__(self, store: TaskStore, handler: TaskHandler, config: RunnerConfig, instance_id: str):
        self.store = store
        self.handler = handler
        self.config = config
        self.instance_id = instance_id
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._wake = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._loops: list[asyncio.Task] = []
        self._accepting = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Take back what this instance owned before a restart, then start the loops."""
        resumed = 0
        for task_id in await self.store.running_ids():
            outcome = await self.store.requeue(
                task_id, owner=self.instance_id, max_attempts=self.config.max_attempts, lease_before=None
            )
            resumed += outcome == "requeued"
        if resumed:
            log.warning("resumed %d task(s) left running by this instance's previous run", resumed)
        self._accepting = True
        self._stopped = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="task-dispatcher"),
            asyncio.create_task(self._heartbeat_loop(), name="task-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="task-sweeper"),
        ]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, give running tasks ``grace_seconds``, then hand the rest back to the queue."""
        self._accepting = False
        self._stopped.set()
        self._wake.set()
        jobs = [r.job for r in self._running.values() if r.job]
        if jobs:
            await asyncio.wait(jobs, timeout=grace_seconds)
        for running in list(self._running.values()):
            if running.job and not running.job.done():
                running.job.cancel()
        jobs = [r.job for r in self._running.values() if r.job]
        if jobs:
            await asyncio.wait(jobs, timeout=5)
        for loop in self._loops:
            loop.cancel()
        await asyncio.wait(self._loops, timeout=5)
        self._loops.clear()

    def notify(self) -> None:
        """A task was enqueued: wake the dispatcher now instead of at its next poll."""
        self._wake.set()

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        return self.config.max_concurrent

    # ------------------------------------------------------------------ loops
    async def _dispatch_loop(self) -> None:
        while self._accepting:
            await self._slots.acquire()
            claimed: TaskRecord | None = None
            try:
                self._wake.clear()
                claimed = await self.store.claim(self.instance_id, self.config.lease_seconds)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:
                log.exception("claiming a task failed; retrying")
            if claimed is None or not self._accepting:
                self._slots.release()
                if claimed is not None:  # stopping: give it straight back
                    await self.store.requeue(
                        claimed.task_id, owner=self.instance_id, max_attempts=1_000_000, lease_before=None
                    )
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.config.idle_poll_seconds)
                continue
            running = _Running(task=claimed)
            self._running[claimed.task_id] = running
            running.job = asyncio.create_task(self._execute(running), name=f"task-{claimed.task_id}")

    async def _execute(self, running: _Running) -> None:
        task = running.task
        epoch = task.attempt
        log.info("task %s attempt %d started (doc %s)", task.task_id, epoch, task.doc_id)

        async def report(stage: str, progress: float) -> None:
            if (stage, progress) != running.last_report:
                running.last_report = (stage, progress)
                await self.store.report_progress(task.task_id, epoch, stage, progress)

        try:
            result = await self.handler(task, report)
        except asyncio.CancelledError:
            # Shutdown: leave the task 'processing'; stop() / the next start requeues it.
            log.warning("task %s interrupted by shutdown; it will be resumed", task.task_id)
            with contextlib.suppress(Exception):
                await self.store.requeue(
                    task.task_id, owner=self.instance_id, max_attempts=1_000_000, lease_before=None
                )
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.warning("task %s failed: %s", task.task_id, message)
            await self._finish(task, epoch, TaskStatus.FAILED, error=message, stage=Stage.FAILED)
        else:
            log.info("task %s completed in %.2fs", task.task_id, time.monotonic() - running.started)
            await self._finish(task, epoch, TaskStatus.COMPLETED, result=result, stage=Stage.DONE)
            if task.stored_name:
                await remove_file(self.config.uploads_dir / task.stored_name)
        finally:
            self._running.pop(task.task_id, None)
            self._slots.release()

    async def _finish(self, task: TaskRecord, epoch: int, status: TaskStatus, **kwargs) -> None:
        progress = 100.0 if status == TaskStatus.COMPLETED else 0.0
        outcome = await self.store.finish(task.task_id, epoch, status, progress=progress, **kwargs)
        if outcome != "ok":
            log.warning("task %s: final write for attempt %d refused (%s)", task.task_id, epoch, outcome)

    async def _heartbeat_loop(self) -> None:
        while await self._pause(self.config.heartbeat_seconds):
            for task_id, running in list(self._running.items()):
                try:
                    alive = await self.store.heartbeat(
                        task_id, running.task.attempt, self.instance_id, self.config.lease_seconds
                    )
                except Exception:
                    log.exception("heartbeat for task %s failed", task_id)
                    continue
                if not alive and running.job and not running.job.done():
                    log.error("task %s lost its lease; stopping this attempt", task_id)
                    running.job.cancel()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")
            if not await self._pause(self.config.sweep_seconds):
                return

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once on stop(); False means stop. A stop flag, not just task.cancel(),
        ends the loops: a cancellation swallowed inside a library call must not keep them alive."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        return not self._stopped.is_set()

    async def sweep(self) -> None:
        """Requeue tasks whose lease lapsed (their worker died) and forget expired records."""
        now = time.time()
        for task_id in await self.store.running_ids(lease_before=now):
            if task_id in self._running:
                continue
            outcome = await self.store.requeue(
                task_id, owner=None, max_attempts=self.config.max_attempts, lease_before=now
            )
            log.warning("task %s lease expired: %s", task_id, outcome)
            self._wake.set()
        for task_id in await self.store.prune_expired():
            for leftover in await asyncio.to_thread(list, self.config.uploads_dir.glob(f"{task_id}.*")):
                await remove_file(leftover)
