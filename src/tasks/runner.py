"""Admission and execution of tasks inside this process.

One dispatcher loop per lane claims pending tasks from Redis whenever a slot of that lane is free;
each claimed task runs as its own asyncio task. Documents (ingestion lane, MAX_CONCURRENT_TASKS
slots plus express slots for tasks of higher priority than the lowest one running and spare slots
while the LLM would otherwise go idle, gated by workspace ownership; a document past its LLM-heavy
work yields its slot: src/tasks/admission.py)
and queries (query lane, MAX_CONCURRENT_QUERIES slots, any instance may run them) never wait for
each other's slots. One heartbeat loop renews the leases of all running tasks (so a long LLM call
never lets a lease lapse) and notices cancel requests made through other instances; one sweeper
loop requeues tasks whose lease expired (their worker died) and prunes index entries of expired
records. With a claim gate (several instances sharing workspaces) one takeover loop looks every
`idle_poll_seconds` for documents running on other instances and has the gate take workspaces
whose owner is gone: the lease (30 s) must not keep a dead owner's running documents waiting
once its ownership lock is free (seconds). With guest claims on, a dispatcher that finds nothing
of its own takes a waiting plain document of a workspace another instance owns (`claim_guest`):
a real claim, run as a guest (`claimed_as_guest`), whose merges the graph locks serialise with
the owner's.

Every attempt ends in exactly one of: completed; failed (permanent error, timeout, or retries
exhausted); requeued with backoff (transient error); cancelled (after its partial data is
purged); handed back to the queue (shutdown, lost lease). What a final state means for the
domain (files, webhooks) is the handler's business: the runner calls ``after_final`` once per final
state it persisted and ``forget`` for records whose TTL ended; it knows no files, no LightRAG.

One module (~660 lines): the dispatchers, the heartbeat, the sweeper, the takeover loop and an
attempt's outcomes all act on the same table of running tasks and the same lease/epoch rules;
split, each part would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from src.core.logs import current_task_id, current_tenant
from src.core.metrics import Metrics
from src.core.waiting import wait_event
from src.tasks.admission import SPARE_DEMAND_SECONDS, Admission, Slot, bind_yield_hook, yield_slot
from src.tasks.keys import INGEST_LANE, QUERY_LANE
from src.tasks.models import (
    AttemptOutcome,
    FinishOutcome,
    HeartbeatResult,
    RequeueOutcome,
    Stage,
    TaskRecord,
    TaskStatus,
)
from src.tasks.store import TaskStore

log = logging.getLogger(__name__)

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
#: Progress within one stage is written at most this often per task, the latest value at the end of
#: the interval: a merge reports each entity and relation it merges (a one-chunk document made ~23
#: progress writes, a Redis script each). A new stage is written at once.
PROGRESS_INTERVAL_SECONDS = 0.25
_T = TypeVar("_T")

#: Set in the attempt of a task this instance claimed as a guest (its workspace is owned elsewhere).
_claimed_as_guest: ContextVar[bool] = ContextVar("ragsvc_claimed_as_guest", default=False)


def claimed_as_guest() -> bool:
    """Does the current attempt run as a guest (claimed in a workspace another instance owns)?"""
    return _claimed_as_guest.get()


class TaskHandler(Protocol):
    """What the runner needs from the domain: run a task, undo its effects, classify its errors,
    and react to its end (the runner itself knows nothing of what a task touches)."""

    async def run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict: ...

    async def discard(self, task: TaskRecord) -> None: ...

    def is_transient(self, exc: BaseException) -> bool: ...

    async def after_final(self, task: TaskRecord, status: TaskStatus) -> None:
        """Called once after this runner persisted a final state (completed, failed, cancelled) of
        ``task``, including dead letters decided at start-up or by the sweeper. ``task`` may be the
        record as claimed (its status field is not updated); ``status`` is what was persisted."""
        ...

    async def forget(self, task_id: str) -> None:
        """Called once for a task whose record expired (its TTL ended): drop what is left of it."""
        ...


class StopReason(StrEnum):
    """Why the runner cancelled a task's coroutine."""

    USER = "user"
    LEASE_LOST = "lease-lost"
    SHUTDOWN = "shutdown"
    #: This instance stopped owning the task's workspace: hand the task back for the new owner.
    OWNERSHIP_LOST = "ownership-lost"


class ClaimGate(Protocol):
    """Which tenants this instance may take tasks of (one ingestion owner per workspace when
    several instances share the knowledge bases; see src/ingestion/ownership.py)."""

    def claimable(self) -> list[str] | None:
        """The tenants whose tasks may be claimed now; None means every tenant."""
        ...

    async def acquire_more(self, pending: list[str], running: dict[str, int], free_slots: int) -> bool:
        """Nothing claimable and slots free: try to take more tenants with pending work."""
        ...

    async def adopt(self, tenants: list[str]) -> None:
        """``tenants`` have documents running on other instances: take the ones nobody owns any
        more (their owner died or stalled), whether or not anything of theirs waits."""
        ...

    async def begin_guest(self, tenant: str) -> bool:
        """About to claim a document of ``tenant`` as a guest: False if this instance cannot now."""
        ...

    def end_guest(self, tenant: str) -> None:
        """A guest attempt of ``tenant`` (or a guest claim that found nothing) is over."""
        ...

    async def holders_alive(self, instance_ids: list[str]) -> set[str] | None:
        """Which of these instances still hold a live lock session (None: cannot tell)."""
        ...


class LlmCapacity(Protocol):
    """The LLM scheduler as the runner sees it (src/rag/scheduler.py): spare task slots are lent
    while the LLM is what documents wait for and few calls wait for it (src/tasks/admission.py)."""

    limit: int

    @property
    def waiting(self) -> int: ...

    def full_within(self, seconds: float) -> bool:
        """Was every LLM slot taken at some moment of the last ``seconds``?"""
        ...

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever a call takes the last free slot, or ends and leaves a slot
        idle; returns its remover."""
        ...


def spare_llm_room(llm: LlmCapacity) -> int:
    """LLM calls spare tasks may add now: up to a backlog of half the LLM's slots (rounded up)
    waiting, if every slot was taken a moment ago; else none (documents parsing or waiting for
    embeddings leave the LLM idle too, and more of them at once would not help it)."""
    if not llm.full_within(SPARE_DEMAND_SECONDS):
        return 0
    return max(0, (llm.limit + 1) // 2 - llm.waiting)


@dataclass
class RunnerConfig:
    max_concurrent: int
    lease_seconds: float
    heartbeat_seconds: float
    sweep_seconds: float
    max_attempts: int
    task_timeout_seconds: float = 1800.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 60.0
    idle_poll_seconds: float = 1.0
    #: Extra slots only for tasks of higher priority than the lowest running (0 = none).
    express_slots: int = 0
    #: Tasks that yielded their slot (src/tasks/admission.py) and are still finishing (0 = no yielding).
    finishing_slots: int = 0
    #: Slots lent only while the LLM has idle slots (src/tasks/admission.py), and the LLM scheduler
    #: that says so (None: no spare slot is lent).
    spare_slots: int = 0
    llm: LlmCapacity | None = None
    #: Slots of the query lane (0 = this runner claims no query tasks) and a query task's time limit.
    max_concurrent_queries: int = 0
    query_timeout_seconds: float = 300.0
    #: With a claim gate: claim waiting documents of workspaces other instances own (guests).
    guest_claims: bool = False
    #: Name suffixes (".pdf", ...) of documents only a workspace's owner takes (rich formats).
    guest_skip_suffixes: tuple[str, ...] = ()


@dataclass
class _Lane:
    """One queue lane as this runner dispatches it: its own slots and wake-up event."""

    name: str
    admission: Admission
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Which tenants may be claimed (the ingestion lane with shared storages only).
    gate: ClaimGate | None = None


@dataclass
class _Running:
    task: TaskRecord
    lane: _Lane
    slot: Slot = field(default_factory=lambda: Slot(express=False))
    #: The task gave its slot up for a place in the finishing pool.
    yielded: bool = False
    job: asyncio.Task | None = None
    last_report: tuple[str, float] = ("", -1.0)
    #: What the task's record says (the last progress written) and when it was written (monotonic).
    written: tuple[str, float] = ("", -1.0)
    written_at: float = 0.0
    #: Writes of this task's progress, one at a time (the latest value wins, in order), and the one
    #: scheduled for the end of the interval.
    progress_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    trailing: asyncio.Task | None = None
    started: float = field(default_factory=time.monotonic)
    #: When the stage named in last_report began (for the stage-duration histogram).
    stage_started: float = field(default_factory=time.monotonic)
    stop_reason: StopReason | None = None
    #: The handler's work is over and its outcome is being recorded: a user cancel or a lost lease
    #: must not interrupt that (the fenced final write decides), or the outcome and its hook are lost.
    finishing: bool = False
    #: When the job was last asked to stop (monotonic); a stop not obeyed is asked again.
    stop_asked: float = 0.0
    #: The job's coroutine has begun. Until then it must not be cancelled: `Task.cancel()` on a task
    #: that never ran closes its coroutine unrun (no cancel path, no `finally` freeing the slot); a
    #: stop asked before that is found by the job itself when it begins (see `_stop_job`).
    entered: bool = False
    #: Claimed as a guest (the task's workspace is owned by another instance).
    guest: bool = False

    def stop_job(self) -> None:
        """Cancel the job, or leave the stop to it if it has not begun (it checks ``stop_reason``)."""
        if self.job is not None and self.entered:
            self.job.cancel()


class TaskRunner:
    """Runs at most ``max_concurrent`` tasks at once, claimed from the shared Redis queue."""

    def __init__(
        self,
        store: TaskStore,
        handler: TaskHandler,
        config: RunnerConfig,
        instance_id: str,
        metrics: Metrics | None = None,
        gate: ClaimGate | None = None,
    ):
        self.store = store
        self.gate = gate
        self.metrics = metrics or Metrics()
        self.handler = handler
        self.config = config
        self.instance_id = instance_id
        self._ingest = _Lane(
            INGEST_LANE,
            Admission(
                config.max_concurrent,
                config.express_slots,
                config.finishing_slots,
                config.spare_slots,
                (lambda llm=config.llm: spare_llm_room(llm)) if config.llm is not None else None,
            ),
            gate=gate,
        )
        self._lanes = [self._ingest]
        if config.max_concurrent_queries > 0:
            queries = config.max_concurrent_queries
            self._lanes.append(_Lane(QUERY_LANE, Admission(queries)))
        self._running: dict[str, _Running] = {}
        self._loops: list[asyncio.Task] = []
        self._accepting = False
        self._stopped = asyncio.Event()
        self._remove_llm_listener: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Take back what this instance owned before a restart, then start the loops."""
        resumed = 0
        for task_id in await self.store.running_ids():
            outcome = await self.store.requeue(
                task_id,
                owner=self.instance_id,
                max_failures=self.config.max_attempts,
                outcome=AttemptOutcome.INTERRUPTED,
                error="the service restarted while this attempt ran",
            )
            resumed += outcome in (RequeueOutcome.REQUEUED, RequeueOutcome.DEAD_LETTERED)
            if outcome == RequeueOutcome.DEAD_LETTERED:
                await self._after_dead_letter(task_id)
        if resumed:
            log.warning("took back %d task(s) left running by this instance's previous run", resumed)
        self._accepting = True
        self._stopped = asyncio.Event()
        with contextlib.suppress(*_REDIS_DOWN):
            await self.store.touch_instance(self.instance_id)
        self._loops = [
            *(
                asyncio.create_task(self._dispatch_loop(lane), name=f"task-dispatcher{lane.name}")
                for lane in self._lanes
            ),
            asyncio.create_task(self._heartbeat_loop(), name="task-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="task-sweeper"),
        ]
        if self.gate is not None:
            self._loops.append(asyncio.create_task(self._takeover_loop(), name="task-takeover"))
        if self.config.llm is not None and self._ingest.admission.spare:
            self._remove_llm_listener = self.config.llm.add_listener(self._llm_changed)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, give running tasks ``grace_seconds``, then hand the rest back to the queue."""
        self._accepting = False
        if self._remove_llm_listener is not None:
            self._remove_llm_listener()
            self._remove_llm_listener = None
        self._stopped.set()
        self._wake_all()
        jobs = [r.job for r in self._running.values() if r.job]
        if jobs:
            await asyncio.wait(jobs, timeout=grace_seconds)
        for running in list(self._running.values()):
            if running.job and not running.job.done():
                running.stop_reason = running.stop_reason or StopReason.SHUTDOWN
                running.stop_job()
        jobs = [r.job for r in self._running.values() if r.job]
        if jobs:
            await asyncio.wait(jobs, timeout=10)
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=5)
        self._loops.clear()

    def _llm_changed(self) -> None:
        """The LLM took its last free slot or left one idle: a spare task slot may be lent (a
        dispatcher that holds an express slot it found no task for waits for its lane's wake-up,
        not for the admission)."""
        if self._ingest.admission.llm_changed():
            self._ingest.wake.set()

    def notify(self) -> None:
        """A task was enqueued: wake the dispatchers now instead of at their next poll."""
        self._wake_all()

    def _wake_all(self) -> None:
        for lane in self._lanes:
            lane.wake.set()

    def cancel_local(self, task_id: str) -> bool:
        """Stop a task running in this process at once (the cancel was recorded in Redis first)."""
        running = self._running.get(task_id)
        if running is None or running.job is None or running.job.done():
            return False
        if running.stop_reason is None and not running.finishing:
            running.stop_reason = StopReason.USER
            running.stop_asked = time.monotonic()
            running.stop_job()
        return True

    def abandon_tenant(self, tenant: str) -> int:
        """Stop every task of ``tenant`` running here without touching its knowledge base, and hand
        them back to the queue (this instance no longer owns the tenant's workspace)."""
        stopped = 0
        for running in list(self._running.values()):
            if running.task.tenant != tenant or running.job is None or running.job.done():
                continue
            if running.lane is not self._ingest:
                continue  # queries only read: any instance may run them
            if running.stop_reason is None:
                running.stop_reason = StopReason.OWNERSHIP_LOST
                running.stop_asked = time.monotonic()
                running.stop_job()
                stopped += 1
        return stopped

    async def reclaim_tenant(self, tenant: str) -> int:
        """This instance owns ``tenant``'s workspace: requeue the tasks other instances hold whose lock
        session has ended (a dead or stalled owner or guest) now, instead of waiting for their
        leases to lapse. Each requeue is fenced by the attempt it names."""
        reclaimed = 0
        held: list[TaskRecord] = []
        for task_id in await self.store.running_ids():
            if task_id in self._running:
                continue
            record = await self.store.get(task_id)
            if record is None or record.tenant != tenant or record.owner in ("", self.instance_id):
                continue
            if record.lane != INGEST_LANE:
                continue  # a query task is not tied to the workspace's owner
            held.append(record)
        if held and self.gate is not None:
            # A guest (or a previous owner still handing its tasks back) whose lock session lives
            # runs its attempt legitimately; one whose session ended (killed, stalled) does not.
            alive = await self.gate.holders_alive(sorted({str(r.owner) for r in held}))
            held = [] if alive is None else [r for r in held if r.owner not in alive]
        for record in held:
            task_id = record.task_id
            outcome = await self.store.requeue(
                task_id,
                owner=record.owner,
                max_failures=self.config.max_attempts,
                outcome=AttemptOutcome.LEASE_EXPIRED,
                error="the instance running this attempt lost its lock session",
                epoch=record.attempt,
            )
            if outcome == RequeueOutcome.DEAD_LETTERED:
                await self._after_dead_letter(task_id)
            reclaimed += outcome in (RequeueOutcome.REQUEUED, RequeueOutcome.DEAD_LETTERED)
        if reclaimed:
            log.warning("took over %d task(s) of tenant %s from its previous owner", reclaimed, tenant)
            self._ingest.wake.set()
        return reclaimed

    def running_by_tenant(self) -> dict[str, int]:
        """Documents being indexed here, per tenant (queries are not counted)."""
        counts: dict[str, int] = {}
        for running in self._running.values():
            if running.lane is self._ingest:
                counts[running.task.tenant] = counts.get(running.task.tenant, 0) + 1
        return counts

    @property
    def running_count(self) -> int:
        """Documents being indexed here (queries: :attr:`running_queries`)."""
        return sum(1 for r in self._running.values() if r.lane is self._ingest)

    @property
    def running_queries(self) -> int:
        return len(self._running) - self.running_count

    @property
    def capacity(self) -> int:
        return self.config.max_concurrent

    # ------------------------------------------------------------------ dispatch
    async def _dispatch_loop(self, lane: _Lane) -> None:
        gate = lane.gate
        while self._accepting:
            slot = await lane.admission.acquire()
            claimed: TaskRecord | None = None
            guest = False
            try:
                lane.wake.clear()
                tenants = gate.claimable() if gate else None
                lease = self.config.lease_seconds
                claimed = await self.store.claim(
                    self.instance_id, lease, tenants, lane.name, min_priority=slot.min_priority
                )
                if claimed is None and gate is not None and self._accepting and not slot.express:
                    free = lane.admission.regular - self.running_count
                    pending = await self.store.tenants_with_pending()
                    if await gate.acquire_more(pending, self.running_by_tenant(), free):
                        tenants = gate.claimable()
                        claimed = await self.store.claim(self.instance_id, lease, tenants, lane.name)
                    if claimed is None and self.config.guest_claims and self._accepting:
                        claimed = await self._claim_guest(gate, pending)
                        guest = claimed is not None
            except asyncio.CancelledError:
                lane.admission.unused(slot)
                raise
            except _REDIS_DOWN as exc:
                log.warning("cannot claim tasks, Redis unavailable: %s", exc)
            except Exception:
                log.exception("claiming a task failed; retrying")
            if claimed is None or not self._accepting:
                lane.admission.unused(slot)
                if claimed is not None:  # stopping: give it straight back
                    if guest and gate is not None:
                        gate.end_guest(claimed.tenant)
                    await self.store.requeue(
                        claimed.task_id,
                        owner=self.instance_id,
                        max_failures=self.config.max_attempts,
                        outcome=AttemptOutcome.INTERRUPTED,
                        counts_as_failure=False,
                    )
                    return
                await wait_event(lane.wake, self.config.idle_poll_seconds)
                continue
            running = _Running(task=claimed, lane=lane, slot=slot, guest=guest)
            if slot.spare:
                self.metrics.spare_lent.inc()
            lane.admission.started(claimed.priority)
            self._running[claimed.task_id] = running
            running.job = asyncio.create_task(self._execute(running), name=f"task-{claimed.task_id}")

    async def _claim_guest(self, gate: ClaimGate, pending: list[str]) -> TaskRecord | None:
        """A waiting plain document of a workspace another instance owns (a few such tenants are
        tried, in random order so that guests spread over the workspaces with work)."""
        owned = set(gate.claimable() or [])
        tenants = [t for t in pending if t not in owned]
        random.shuffle(tenants)
        for tenant in tenants[:3]:
            if not await gate.begin_guest(tenant):
                return None
            claimed: TaskRecord | None = None
            try:
                claimed = await self.store.claim_guest(
                    tenant,
                    self.instance_id,
                    self.config.lease_seconds,
                    rich_suffixes=self.config.guest_skip_suffixes,
                )
            finally:
                if claimed is None:
                    gate.end_guest(tenant)
            if claimed is not None:
                log.info(
                    "claimed task %s of tenant %s as a guest (its workspace is owned elsewhere)",
                    claimed.task_id,
                    tenant,
                )
                return claimed
        return None

    # ------------------------------------------------------------------ one attempt
    async def _execute(self, running: _Running) -> None:
        running.entered = True
        task = running.task
        epoch = task.attempt
        if running.guest:
            _claimed_as_guest.set(True)
        current_task_id.set(task.task_id)
        current_tenant.set(task.tenant)
        bind_yield_hook(lambda: self._yield_slot(running))
        if epoch == 1:
            self.metrics.admission_wait.observe(max(0.0, time.time() - task.created_at))
        log.info(
            "task %s attempt %d started (doc %s, status %s)", task.task_id, epoch, task.doc_id, task.status
        )

        async def report(stage: str, progress: float) -> None:
            if (stage, progress) == running.last_report:
                return
            now = time.monotonic()
            new_stage = stage != running.last_report[0]
            if new_stage:
                if running.last_report[0]:
                    self.metrics.stage_duration.labels(running.last_report[0]).observe(
                        now - running.stage_started
                    )
                running.stage_started = now
            running.last_report = (stage, progress)
            wait = running.written_at + PROGRESS_INTERVAL_SECONDS - now
            if new_stage or wait <= 0:
                await self._write_progress(running, epoch)
            elif running.trailing is None or running.trailing.done():
                running.trailing = asyncio.create_task(self._write_progress(running, epoch, after=wait))

        try:
            if task.status == TaskStatus.CANCELLING:
                running.finishing = True
                await self._cancel(task, epoch)
                return
            limit = (
                self.config.task_timeout_seconds
                if running.lane is self._ingest
                else self.config.query_timeout_seconds
            )
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    try:
                        if running.stop_reason is not None:
                            # Stopped before this coroutine began (`_Running.stop_job`): the same
                            # ways out as a stop that lands in the work.
                            raise asyncio.CancelledError(f"stopped before it began ({running.stop_reason})")
                        result = await self.handler.run(task, report)
                    finally:
                        running.finishing = True
            except asyncio.CancelledError:
                reason = running.stop_reason
                if reason == StopReason.USER:
                    current = asyncio.current_task()
                    while current is not None and current.cancelling():
                        current.uncancel()
                    await self._cancel(task, epoch)
                    return
                if reason == StopReason.LEASE_LOST:
                    return  # another worker owns the task now; its epoch fences us out
                if reason == StopReason.OWNERSHIP_LOST:
                    current = asyncio.current_task()
                    while current is not None and current.cancelling():
                        current.uncancel()
                    await self._hand_back(task, epoch, "this instance lost the ownership of the workspace")
                    return
                await self._hand_back(task, epoch)
                raise
            except TimeoutError as exc:
                if deadline.expired():
                    await self._fail(task, epoch, f"timed out after {limit:g} s")
                else:
                    await self._retry_or_fail(task, epoch, str(exc) or "timeout")
            except Exception as exc:
                message = str(exc) or type(exc).__name__
                if self.handler.is_transient(exc):
                    await self._retry_or_fail(task, epoch, message)
                else:
                    await self._fail(task, epoch, message)
            else:
                outcome = await self._persist_final(
                    task, epoch, TaskStatus.COMPLETED, result=result, stage=Stage.DONE, progress=100.0
                )
                if outcome == FinishOutcome.CANCELLING:  # a cancel won the race: undo the work
                    await self._cancel(task, epoch)
                    return
                if outcome == FinishOutcome.OK:  # a refused (stale) write was logged as such
                    log.info(
                        "task %s completed in %.2fs%s",
                        task.task_id,
                        time.monotonic() - running.started,
                        " as a guest" if running.guest else "",
                    )
        finally:
            if running.trailing is not None:
                running.trailing.cancel()
            self._running.pop(task.task_id, None)
            if running.guest and self.gate is not None:
                self.gate.end_guest(task.tenant)
            running.lane.admission.finished(running.slot, task.priority, running.yielded)
            running.lane.wake.set()  # an express slot that found nothing may now find a regular one

    async def _write_progress(self, running: _Running, epoch: int, after: float = 0.0) -> None:
        """Write the task's latest progress (``after`` seconds from now), unless it is written
        already. One write at a time per task, so an older value never lands after a newer one."""
        if after > 0:
            await asyncio.sleep(after)
        async with running.progress_lock:
            wanted = running.last_report
            if wanted == running.written:
                return
            running.written, running.written_at = wanted, time.monotonic()
            with contextlib.suppress(*_REDIS_DOWN):  # progress is best effort during an outage
                await self.store.report_progress(running.task.task_id, epoch, *wanted)

    def _yield_slot(self, running: _Running) -> None:
        if not running.yielded and running.lane.admission.yielded(running.slot, running.task.priority):
            running.yielded = True
            running.lane.wake.set()

    async def _cancel(self, task: TaskRecord, epoch: int) -> None:
        """Stop this task's LLM work, delete its partial data, then record 'cancelled'. The slot goes
        first: a purge waits for graph passes, not for the LLM, and must not keep new work out."""
        yield_slot()
        with contextlib.suppress(*_REDIS_DOWN):
            await self.store.report_progress(task.task_id, epoch, Stage.CLEANUP, 0.0)
        await self.handler.discard(task)
        await self._persist_final(
            task, epoch, TaskStatus.CANCELLED, error="cancelled by user", stage=Stage.CANCELLED, progress=0.0
        )
        log.info("task %s cancelled; its partial data was removed", task.task_id)

    async def _fail(self, task: TaskRecord, epoch: int, message: str) -> None:
        log.warning("task %s failed: %s", task.task_id, message)
        await self.handler.discard(task)  # no half-indexed document stays behind
        outcome = await self._persist_final(
            task, epoch, TaskStatus.FAILED, error=message, stage=Stage.FAILED, progress=0.0
        )
        if outcome == FinishOutcome.CANCELLING:
            await self._cancel(task, epoch)

    async def _retry_or_fail(self, task: TaskRecord, epoch: int, message: str) -> None:
        """Transient error: purge partial data and requeue with exponential backoff and full jitter."""
        await self.handler.discard(task)
        delay = min(self.config.retry_max_seconds, self.config.retry_base_seconds * 2 ** (task.failures))
        delay = random.uniform(delay / 2, delay)
        outcome = await self._persist(
            lambda: self.store.requeue(
                task.task_id,
                owner=self.instance_id,
                max_failures=self.config.max_attempts,
                not_before=time.time() + delay,
                outcome=AttemptOutcome.RETRY,
                error=message,
                epoch=epoch,
            )
        )
        self.metrics.retries.inc()
        self._observe_end(task, AttemptOutcome.RETRY)
        if outcome == RequeueOutcome.DEAD_LETTERED:  # retries exhausted
            await self._call_after_final(task, TaskStatus.FAILED)
        log.warning("task %s transient failure (%s): %s in %.1fs", task.task_id, message, outcome, delay)

    def _observe_end(self, task: TaskRecord, outcome: str) -> None:
        running = self._running.get(task.task_id)
        self.metrics.finished.labels(outcome).inc()
        if running is not None:
            self.metrics.task_duration.labels(outcome).observe(time.monotonic() - running.started)

    async def _hand_back(self, task: TaskRecord, epoch: int, why: str = "service shut down") -> None:
        log.warning("task %s interrupted (%s); it will be resumed", task.task_id, why)
        with contextlib.suppress(Exception):
            await self.store.requeue(
                task.task_id,
                owner=self.instance_id,
                max_failures=self.config.max_attempts,
                outcome=AttemptOutcome.INTERRUPTED,
                error=why,
                counts_as_failure=False,
                epoch=epoch,
            )

    async def _persist_final(
        self, task: TaskRecord, epoch: int, status: TaskStatus, **kwargs
    ) -> FinishOutcome:
        outcome = await self._persist(lambda: self.store.finish(task.task_id, epoch, status, **kwargs))
        if outcome == FinishOutcome.OK:
            self._observe_end(task, status.value)
            await self._call_after_final(task, status)
        else:
            log.warning("task %s: final write for attempt %d refused (%s)", task.task_id, epoch, outcome)
        return outcome

    async def _call_after_final(self, task: TaskRecord, status: TaskStatus) -> None:
        """The handler's end-of-task hook; its failure is logged, never fails the runner."""
        try:
            await self.handler.after_final(task, status)
        except Exception:
            log.exception("after_final hook failed for task %s (%s)", task.task_id, status)

    async def _after_dead_letter(self, task_id: str) -> None:
        """A task this runner did not hold was dead-lettered: hand the hook its stored record."""
        try:
            record = await self.store.get(task_id)
        except _REDIS_DOWN as exc:
            log.warning("task %s dead-lettered; its record could not be read: %s", task_id, exc)
            return
        if record is not None:
            await self._call_after_final(record, TaskStatus.FAILED)

    async def _persist(self, write: Callable[[], Awaitable[_T]]) -> _T:
        """Retry a state write until Redis answers: a finished attempt's outcome is never dropped."""
        delay = 0.2
        while True:
            try:
                return await write()
            except _REDIS_DOWN as exc:
                log.warning("Redis unavailable (%s); retrying the write in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ background loops
    async def _heartbeat_loop(self) -> None:
        while await self._pause(self.config.heartbeat_seconds):
            # Says "a worker is alive" (an api-role /health depends on it; ownership counts the fleet).
            with contextlib.suppress(*_REDIS_DOWN):
                await self.store.touch_instance(self.instance_id)
            for task_id, running in list(self._running.items()):
                try:
                    state = await self.store.heartbeat(
                        task_id, running.task.attempt, self.instance_id, self.config.lease_seconds
                    )
                except _REDIS_DOWN as exc:
                    log.warning("heartbeat for task %s failed: %s", task_id, exc)
                    continue
                if not running.job or running.job.done() or running.finishing:
                    continue
                if running.stop_reason:
                    self._ask_again(running)
                    continue
                if state == HeartbeatResult.LOST:
                    log.error("task %s lost its lease; stopping this attempt", task_id)
                    running.stop_reason = StopReason.LEASE_LOST
                    running.stop_asked = time.monotonic()
                    running.stop_job()
                elif state == HeartbeatResult.CANCEL_REQUESTED:
                    self.cancel_local(task_id)

    def _ask_again(self, running: _Running) -> None:
        """A cancellation swallowed inside a library call would leave the handler running for good:
        while its work goes on, cancel it again every couple of heartbeats."""
        if running.job and time.monotonic() - running.stop_asked > 2 * self.config.heartbeat_seconds:
            log.warning(
                "task %s ignored its cancellation (%s); cancelling again",
                running.task.task_id,
                running.stop_reason,
            )
            running.stop_asked = time.monotonic()
            running.stop_job()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except _REDIS_DOWN as exc:
                log.warning("sweep skipped, Redis unavailable: %s", exc)
            except Exception:
                log.exception("sweep failed")
            if not await self._pause(self.config.sweep_seconds):
                return

    async def _takeover_loop(self) -> None:
        """Documents running elsewhere whose owner lost its workspace are taken over at once."""
        assert self.gate is not None
        while await self._pause(self.config.idle_poll_seconds):
            try:
                elsewhere = await self.store.tenants_running_elsewhere(self.instance_id)
                if not elsewhere:
                    continue
                owned = set(self.gate.claimable() or [])
                for tenant in elsewhere:
                    if tenant in owned:
                        # Ours already, yet another instance still holds a task of it: that attempt
                        # is a previous owner's (fenced by attempt when requeued).
                        await self.reclaim_tenant(tenant)
                await self.gate.adopt([t for t in elsewhere if t not in owned])
            except _REDIS_DOWN as exc:
                log.warning("takeover check skipped, Redis unavailable: %s", exc)
            except Exception:
                log.exception("takeover check failed")

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once on stop(); False means stop. A stop flag, not just task.cancel(),
        ends the loops: a cancellation swallowed inside a library call must not keep them alive."""
        await wait_event(self._stopped, seconds)
        return not self._stopped.is_set()

    async def sweep(self) -> None:
        """Requeue tasks whose lease lapsed (their worker died) and forget expired records."""
        now = time.time()
        for task_id in await self.store.running_ids(lease_before=now):
            if task_id in self._running:
                continue
            outcome = await self.store.requeue(
                task_id,
                owner=None,
                max_failures=self.config.max_attempts,
                lease_before=now,
                outcome=AttemptOutcome.LEASE_EXPIRED,
                error="the worker running this attempt stopped renewing its lease",
            )
            log.warning("task %s lease expired: %s", task_id, outcome)
            if outcome == RequeueOutcome.DEAD_LETTERED:
                await self._after_dead_letter(task_id)
            self._wake_all()
        for task_id in await self.store.prune_expired():
            try:
                await self.handler.forget(task_id)
            except Exception:
                log.exception("forget hook failed for task %s", task_id)
