"""The TaskRunner with an in-memory fake handler (saq's style): real Redis, no LightRAG, no app.

Each task's behaviour per attempt is scripted by the fake handler ("ok", "transient", "permanent",
"block"); the tests wait on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from src.tasks import admission as admission_module
from src.tasks.admission import Admission, yield_slot
from src.tasks.models import AttemptOutcome, Stage, TaskRecord, TaskStatus
from src.tasks.runner import RunnerConfig, TaskHandler, TaskRunner, spare_llm_room
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class FakeHandler:
    """Runs scripted attempts and records every call the runner makes."""

    def __init__(self, script: dict[str, list[str]] | None = None, default: str = "ok") -> None:
        self.script = script or {}
        self.default = default
        self.runs: Counter[str] = Counter()
        self.started: dict[str, asyncio.Event] = {}
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.discarded: list[str] = []
        self.finals: list[tuple[str, TaskStatus]] = []
        self.forgotten: list[str] = []
        self.fail_hook = False
        self.yielded: set[str] = set()

    def started_event(self, task_id: str) -> asyncio.Event:
        return self.started.setdefault(task_id, asyncio.Event())

    async def run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict:
        attempt = self.runs[task.task_id]
        self.runs[task.task_id] += 1
        steps = self.script.get(task.task_id, [])
        action = steps[attempt] if attempt < len(steps) else self.default
        await report(Stage.EXTRACTING, 50.0)
        self.started_event(task.task_id).set()
        if action == "transient":
            raise Transient("provider 503")
        if action == "permanent":
            raise Permanent("unsupported content")
        if action == "block":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(task.task_id)
                raise
        if action == "swallow":
            with contextlib.suppress(asyncio.CancelledError):  # as a careless library call might
                await self.release.wait()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(task.task_id)
                raise
        if action == "slow":
            await asyncio.sleep(0.3)
        if action == "yield":  # its slot-bound work is over; the rest waits (like a group commit)
            yield_slot()
            self.yielded.add(task.task_id)
            await self.release.wait()
        return {"attempt": task.attempt}

    async def discard(self, task: TaskRecord) -> None:
        self.discarded.append(task.task_id)

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Transient)

    async def after_final(self, task: TaskRecord, status: TaskStatus) -> None:
        self.finals.append((task.task_id, status))
        if self.fail_hook:
            raise RuntimeError("hook broke")

    async def forget(self, task_id: str) -> None:
        self.forgotten.append(task_id)


def _config(**overrides) -> RunnerConfig:
    values = dict(
        max_concurrent=2,
        lease_seconds=30.0,
        heartbeat_seconds=0.1,
        sweep_seconds=0.1,
        max_attempts=3,
        task_timeout_seconds=30.0,
        retry_base_seconds=0.05,
        retry_max_seconds=0.1,
        idle_poll_seconds=0.1,
    )
    values.update(overrides)
    return RunnerConfig(**values)


@asynccontextmanager
async def running(
    store: TaskStore, handler: TaskHandler, instance: str = "inst-1", **config
) -> AsyncIterator[TaskRunner]:
    runner = TaskRunner(store, handler, _config(**config), instance)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop(grace_seconds=0)


async def wait_final(store: TaskStore, task_id: str, timeout: float = 20.0) -> TaskRecord:
    return await wait_for(store, task_id, lambda r: r.status.is_final, timeout)


async def wait_for(
    store: TaskStore, task_id: str, condition: Callable[[TaskRecord], bool], timeout: float = 20.0
) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while True:
        rec = await store.get(task_id)
        if rec is not None and condition(rec):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} did not reach the expected state in {timeout}s: {rec}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_success(store: TaskStore) -> None:
    """Catches a completed task whose result, progress or hook is lost."""
    handler = FakeHandler()
    await store.create(record("ok"))
    async with running(store, handler):
        rec = await wait_final(store, "ok")
    assert rec.status == TaskStatus.COMPLETED and rec.result == {"attempt": 1} and rec.progress == 100
    assert handler.finals == [("ok", TaskStatus.COMPLETED)] and handler.discarded == []


async def test_transient_error_retries_with_backoff_then_succeeds(store: TaskStore) -> None:
    """Catches a transient error that fails the task at once, or a retry that skips the discard of
    the partial data."""
    handler = FakeHandler({"t": ["transient", "transient", "ok"]})
    await store.create(record("t"))
    async with running(store, handler):
        rec = await wait_final(store, "t")
    assert rec.status == TaskStatus.COMPLETED and rec.attempt == 3 and rec.failures == 2
    assert [h["outcome"] for h in rec.history] == ["retry", "retry", "completed"]
    assert handler.discarded == ["t", "t"] and handler.finals == [("t", TaskStatus.COMPLETED)]


async def test_permanent_error_fails_without_retry(store: TaskStore) -> None:
    """Catches a permanent error being retried (wasted LLM calls) or leaving partial data."""
    handler = FakeHandler({"p": ["permanent"]})
    await store.create(record("p"))
    async with running(store, handler):
        rec = await wait_final(store, "p")
    assert rec.status == TaskStatus.FAILED and rec.attempt == 1 and rec.error == "unsupported content"
    assert handler.runs["p"] == 1 and handler.discarded == ["p"]
    assert handler.finals == [("p", TaskStatus.FAILED)]


async def test_dead_letter_after_max_attempts(store: TaskStore) -> None:
    """Catches exhaustion never being reached (retried forever) or the dead letter skipping the hook
    (no webhook for a task that gave up)."""
    handler = FakeHandler(default="transient")
    await store.create(record("dl"))
    async with running(store, handler, max_attempts=3):
        rec = await wait_final(store, "dl")
        await wait_until(lambda: handler.finals, what="the after_final hook")
    assert rec.status == TaskStatus.FAILED and rec.attempt == 3 and rec.failures == 3
    assert rec.error.startswith("gave up after 3 failed attempts; last: provider 503")
    assert [h["outcome"] for h in rec.history] == ["retry"] * 3
    assert handler.runs["dl"] == 3 and handler.finals == [("dl", TaskStatus.FAILED)]


async def test_per_task_timeout_fails_the_task(store: TaskStore) -> None:
    """Catches a hung handler holding its slot forever (no per-task deadline)."""
    handler = FakeHandler({"slow": ["block"]})
    await store.create(record("slow"))
    async with running(store, handler, task_timeout_seconds=0.3):
        rec = await wait_final(store, "slow")
    assert rec.status == TaskStatus.FAILED and "timed out" in rec.error
    assert handler.cancelled == ["slow"] and handler.discarded == ["slow"]
    assert handler.finals == [("slow", TaskStatus.FAILED)]


async def test_cancel_pending_never_runs(store: TaskStore) -> None:
    """Catches a worker running a task that was cancelled before it was claimed."""
    handler = FakeHandler()
    await store.create(record("cp"))
    assert (await store.request_cancel("cp")).accepted
    await store.create(record("after"))
    async with running(store, handler):
        await wait_final(store, "after")
    assert handler.runs["cp"] == 0 and (await store.get("cp")).status == TaskStatus.CANCELLED


async def test_cancel_running_locally(store: TaskStore) -> None:
    """Catches a running cancel that lets the handler's coroutine go on, skips the purge, or fires
    the hook twice."""
    handler = FakeHandler({"cr": ["block"]})
    await store.create(record("cr"))
    async with running(store, handler) as runner:
        await asyncio.wait_for(handler.started_event("cr").wait(), 10)
        assert (await store.request_cancel("cr")).accepted
        assert runner.cancel_local("cr")
        rec = await wait_final(store, "cr")
    assert rec.status == TaskStatus.CANCELLED and rec.stage == Stage.CANCELLED
    assert handler.cancelled == ["cr"] and handler.discarded == ["cr"]
    assert handler.finals == [("cr", TaskStatus.CANCELLED)]


async def test_cancel_from_another_instance_reaches_the_worker(store: TaskStore) -> None:
    """Catches a cancel recorded in Redis (by another instance) that the heartbeat never notices."""
    handler = FakeHandler({"cx": ["block"]})
    await store.create(record("cx"))
    async with running(store, handler):
        await asyncio.wait_for(handler.started_event("cx").wait(), 10)
        await store.request_cancel("cx")  # no cancel_local: only the heartbeat can tell
        rec = await wait_final(store, "cx")
    assert rec.status == TaskStatus.CANCELLED and handler.cancelled == ["cx"]
    assert handler.finals == [("cx", TaskStatus.CANCELLED)]


async def test_a_swallowed_cancellation_is_repeated(store: TaskStore) -> None:
    """Catches a cancel that a library call swallowed leaving the task 'cancelling' for good."""
    handler = FakeHandler({"sw": ["swallow"]})
    await store.create(record("sw"))
    async with running(store, handler) as runner:
        await asyncio.wait_for(handler.started_event("sw").wait(), 10)
        await store.request_cancel("sw")
        assert runner.cancel_local("sw")
        rec = await wait_final(store, "sw")
    assert rec.status == TaskStatus.CANCELLED and handler.cancelled == ["sw"]
    assert handler.finals == [("sw", TaskStatus.CANCELLED)]


async def test_lost_lease_hands_the_task_over(store: TaskStore) -> None:
    """Catches a worker that keeps running (and later writes) after another attempt took its task."""
    handler = FakeHandler({"ll": ["block"]})
    await store.create(record("ll"))
    async with running(store, handler, max_concurrent=1) as runner:
        await asyncio.wait_for(handler.started_event("ll").wait(), 10)
        # The lease is taken over: another worker's sweeper requeued it and another worker claimed it.
        await store.requeue("ll", owner=None, max_failures=5, outcome=AttemptOutcome.LEASE_EXPIRED)
        thief = await store.claim("other-instance", 60)
        assert thief is not None and thief.attempt == 2
        await wait_until(lambda: handler.cancelled == ["ll"], what="the handler to be cancelled")
        await wait_until(lambda: runner.running_count == 0, what="the slot to be freed")
    rec = await store.get("ll")
    assert rec.status == TaskStatus.PROCESSING and rec.owner == "other-instance" and rec.attempt == 2
    assert handler.finals == [] and handler.discarded == []


async def test_a_refused_final_write_is_not_logged_as_completed(store: TaskStore, caplog) -> None:
    """Catches a runner that says "completed" (and fires the end hook) although its final write was
    refused because another attempt owns the task now."""
    handler = FakeHandler({"st": ["block"]})
    await store.create(record("st"))
    caplog.set_level("INFO", logger="src.tasks.runner")
    # No heartbeat during the test: the handler finishes before it could notice the lost lease.
    async with running(store, handler, max_concurrent=1, heartbeat_seconds=60.0) as runner:
        await asyncio.wait_for(handler.started_event("st").wait(), 10)
        await store.requeue("st", owner=None, max_failures=5, outcome=AttemptOutcome.LEASE_EXPIRED)
        assert (await store.claim("other-instance", 60)) is not None
        handler.release.set()
        await wait_until(lambda: runner.running_count == 0, what="the attempt to end")
    messages = [r.getMessage() for r in caplog.records]
    assert any("final write for attempt 1 refused" in m for m in messages), messages
    assert not any("completed in" in m for m in messages), messages
    rec = await store.get("st")
    assert rec.status == TaskStatus.PROCESSING and rec.owner == "other-instance"
    assert handler.finals == []


async def test_shutdown_drains_then_hands_back(store: TaskStore) -> None:
    """Catches a shutdown that kills short tasks instead of draining them, or that drops (or fails)
    the long ones instead of handing them back as interrupted."""
    handler = FakeHandler({"short": ["slow"], "long": ["block"]})
    await store.create(record("short"))
    await store.create(record("long"))
    runner = TaskRunner(store, handler, _config(), "inst-1")
    await runner.start()
    await asyncio.wait_for(handler.started_event("long").wait(), 10)
    await asyncio.wait_for(handler.started_event("short").wait(), 10)
    await runner.stop(grace_seconds=2.0)
    short, long = await store.get("short"), await store.get("long")
    assert short.status == TaskStatus.COMPLETED
    assert long.status == TaskStatus.PENDING and long.failures == 0 and long.owner is None
    assert long.history[-1]["outcome"] == "interrupted" and handler.cancelled == ["long"]
    assert handler.finals == [("short", TaskStatus.COMPLETED)]
    # The next start resumes it.
    handler.script["long"] = ["block", "ok"]
    async with running(store, handler):
        assert (await wait_final(store, "long")).status == TaskStatus.COMPLETED


async def test_restart_takes_back_own_tasks_and_dead_letters_exhausted_ones(store: TaskStore) -> None:
    """Catches tasks left 'processing' by this instance's previous run never being resumed, and a
    dead letter decided at start-up skipping the hook."""
    await store.create(record("resume"))
    await store.create(record("exhausted"))
    for _ in range(2):
        claimed = await store.claim("inst-1", 60)  # as the previous run of this instance
    await store.redis.hset(store.keys.task("exhausted"), "failures", 2)
    handler = FakeHandler()
    async with running(store, handler, max_attempts=3):
        resumed = await wait_final(store, "resume")
        await wait_until(lambda: ("exhausted", TaskStatus.FAILED) in handler.finals, what="dead letter hook")
    assert claimed and resumed.status == TaskStatus.COMPLETED and resumed.attempt == 2
    exhausted = await store.get("exhausted")
    assert exhausted.status == TaskStatus.FAILED and handler.runs["exhausted"] == 0
    assert Counter(handler.finals) == Counter(
        [("resume", TaskStatus.COMPLETED), ("exhausted", TaskStatus.FAILED)]
    )


async def test_sweeper_requeues_an_expired_lease_and_dead_letters(make_store) -> None:
    """Catches a task whose worker died staying 'processing' forever, and a sweeper dead letter that
    skips the hook."""
    store = make_store()
    await store.create(record("ghost"))
    await store.create(record("ghost-last"))
    await store.claim("dead-worker", 0.01)
    await store.claim("dead-worker", 0.01)
    await store.redis.hset(store.keys.task("ghost-last"), "failures", 2)
    handler = FakeHandler()
    async with running(store, handler, max_attempts=3):
        rec = await wait_final(store, "ghost")
        await wait_until(lambda: len(handler.finals) == 2, what="both hooks")
    assert rec.status == TaskStatus.COMPLETED and rec.history[0]["outcome"] == "lease-expired"
    assert (await store.get("ghost-last")).status == TaskStatus.FAILED
    assert Counter(handler.finals) == Counter(
        [("ghost", TaskStatus.COMPLETED), ("ghost-last", TaskStatus.FAILED)]
    )


async def test_sweeper_forgets_expired_records(store: TaskStore) -> None:
    """Catches leftovers of expired tasks (uploads) never being removed: forget is never called."""
    handler = FakeHandler()
    await store.create(record("exp"))
    async with running(store, handler):
        await wait_final(store, "exp")
        await store.redis.zadd(store.keys.expiry, {"default/exp": time.time() - 1})
        await wait_until(lambda: handler.forgotten == ["exp"], what="forget")


async def test_a_failing_hook_does_not_break_the_runner(store: TaskStore) -> None:
    """Catches an exception in after_final escaping into the runner (its slot or loop would die)."""
    handler = FakeHandler()
    handler.fail_hook = True
    for i in range(3):
        await store.create(record(f"h{i}"))
    async with running(store, handler, max_concurrent=1):
        for i in range(3):
            assert (await wait_final(store, f"h{i}")).status == TaskStatus.COMPLETED
    assert len(handler.finals) == 3


@pytest.mark.timeout(90)
async def test_hundreds_of_tasks_under_concurrency_all_finish(store: TaskStore) -> None:
    """Catches a slot leak or a dispatcher deadlock: some of many short tasks would never finish,
    or a hook would fire twice."""
    handler = FakeHandler()
    ids = [f"n{i:03d}" for i in range(300)]
    for task_id in ids:
        await store.create(record(task_id))
    async with running(store, handler, max_concurrent=8) as runner:
        await wait_until(lambda: len(handler.finals) == len(ids), timeout=60, what="all 300 tasks")
        await wait_until(lambda: runner.running_count == 0, what="all slots free")
    records = await store.get_many(ids)
    assert all(r.status == TaskStatus.COMPLETED for r in records) and len(records) == 300
    assert Counter(handler.finals) == Counter({(i, TaskStatus.COMPLETED): 1 for i in ids})
    assert await store.pending_count() == 0 and await store.running_ids() == []


# ------------------------------------------------------------------ admission: express slots, yielding


@asynccontextmanager
async def _slots_full_of_priority_1(store: TaskStore, handler: FakeHandler) -> AsyncIterator[TaskRunner]:
    """A runner with two slots and one express slot, both slots held by blocking priority-1 tasks."""
    now = time.time()
    for i in range(2):
        await store.create(record(f"low{i}", priority=1, created_at=now + i))
    async with running(store, handler, max_concurrent=2, express_slots=1) as runner:
        for i in range(2):
            await asyncio.wait_for(handler.started_event(f"low{i}").wait(), 10)
        yield runner


async def test_a_higher_priority_task_is_claimed_at_once_when_every_slot_is_taken(store: TaskStore) -> None:
    """Catches priority stopping at the queue: with every slot held by priority-1 documents, a
    priority-9 one must start now through an express slot, not when a slot frees up."""
    handler = FakeHandler(default="block")
    async with _slots_full_of_priority_1(store, handler) as runner:
        await store.create(record("urgent", priority=9))
        runner.notify()
        await asyncio.wait_for(handler.started_event("urgent").wait(), 10)
        assert runner.running_count == 3
        handler.release.set()
        for task_id in ("low0", "low1", "urgent"):
            assert (await wait_final(store, task_id)).status == TaskStatus.COMPLETED


async def test_an_express_slot_takes_no_task_that_does_not_outrank_the_running_ones(store: TaskStore) -> None:
    """Catches an express slot used as one more regular slot: a priority-1 task behind running
    priority-1 tasks waits, and the one express slot, once taken, admits nobody else."""
    handler = FakeHandler(default="block")
    async with _slots_full_of_priority_1(store, handler) as runner:
        await store.create(record("low2", priority=1))
        await store.create(record("urgent", priority=9))
        runner.notify()
        await asyncio.wait_for(handler.started_event("urgent").wait(), 10)
        # The express slot went to "urgent", never to the older "low2": it is still waiting.
        assert (await store.get("low2")).status == TaskStatus.PENDING
        assert runner.running_count == 3
        handler.release.set()
        for task_id in ("low0", "low1", "low2", "urgent"):
            assert (await wait_final(store, task_id)).status == TaskStatus.COMPLETED


def test_express_and_finishing_slots_are_bounded() -> None:
    """Catches unbounded admission: express slots only while the regular ones are full, only for a
    priority above the lowest running, never more than configured; a full finishing pool keeps the
    task in its slot."""
    admission = Admission(regular=2, express=1, finishing=1)
    regular = [admission.try_acquire(), admission.try_acquire()]
    assert all(slot is not None and not slot.express for slot in regular)
    assert admission.try_acquire() is None  # nothing runs yet: no priority to outrank
    admission.started(1)
    admission.started(4)
    express = admission.try_acquire()
    assert express is not None and express.express and express.min_priority == 2
    assert admission.try_acquire() is None  # the only express slot is taken
    admission.started(9)
    admission.finished(express, 9)
    assert admission.try_acquire() == express  # handed out again, still above priority 1
    admission.unused(express)
    # Yielding: the first task moves to the finishing pool and frees its slot; the pool is then full.
    assert admission.yielded(regular[0], 1)
    assert admission.lowest_running() == 4
    assert not admission.yielded(regular[1], 4)
    again = admission.try_acquire()
    assert again is not None and not again.express
    assert admission.in_use(express=False) == 2 and admission.finishing_count == 1
    admission.finished(regular[0], 1, yielded=True)
    assert admission.finishing_count == 0
    admission.started(9)
    admission.finished(again, 9)
    admission.finished(regular[1], 4)
    assert admission.in_use(express=False) == 0 and admission.lowest_running() is None
    with pytest.raises(ValueError):
        Admission(regular=0)


async def test_a_task_that_yields_its_slot_lets_the_next_one_start(store: TaskStore) -> None:
    """Catches a document that holds its slot while it only waits (merging, group commit): with one
    slot, the next task starts while the first one is still running."""
    handler = FakeHandler(script={"first": ["yield"]}, default="block")
    now = time.time()
    await store.create(record("first", created_at=now))
    await store.create(record("second", created_at=now + 1))
    async with running(store, handler, max_concurrent=1, finishing_slots=1) as runner:
        await asyncio.wait_for(handler.started_event("second").wait(), 10)
        assert handler.yielded == {"first"} and runner.running_count == 2
        assert (await store.get("first")).status == TaskStatus.PROCESSING
        handler.release.set()
        for task_id in ("first", "second"):
            assert (await wait_final(store, task_id)).status == TaskStatus.COMPLETED


def test_yield_slot_outside_a_task_does_nothing() -> None:
    """Catches a crash when code shared with non-task paths (a query, a test) calls it."""
    yield_slot()


class FakeLlm:
    """The LLM scheduler as the runner sees it: its slots, the calls waiting for one and whether
    every slot was taken a moment ago, as the test sets them; and its idle listeners."""

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self.waiting = 0
        self.was_full = False
        self.listeners: list[Callable[[], None]] = []

    def full_within(self, seconds: float) -> bool:
        return self.was_full

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def call_ended(self) -> None:
        for listener in list(self.listeners):
            listener()


async def _not_within(awaitable: Awaitable[object], seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(awaitable, seconds)


@pytest.fixture
def slow_spare_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spare task counts as starting (a call about to wait) for a minute, not half a second: the
    tests below must not depend on how fast this machine runs them."""
    monkeypatch.setattr(admission_module, "SPARE_START_SECONDS", 60.0)


@pytest.mark.usefixtures("slow_spare_starts")
async def test_spare_slots_are_lent_only_while_the_llm_has_room() -> None:
    """Catches spare slots lent as plain extra slots (with no room at the LLM), lent beyond its room
    (counting the spare tasks that have just started), or beyond ``spare``."""
    room = [0]
    admission = Admission(regular=2, spare=2, llm_room=lambda: room[0])
    regular = [await admission.acquire(), await admission.acquire()]
    assert not any(slot.spare for slot in regular)
    await _not_within(admission.acquire())  # no room at the LLM
    waiting = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0.05)
    room[0] = 1
    admission.llm_changed()
    first = await asyncio.wait_for(waiting, 2)
    assert first.spare and admission.spare_in_use == 1
    await _not_within(admission.acquire())  # its one call of room is promised to the task just lent
    room[0] = 3
    second = await asyncio.wait_for(admission.acquire(), 2)
    assert second.spare and admission.spare_in_use == 2
    room[0] = 16
    await _not_within(admission.acquire())  # every spare slot is lent
    admission.started(5)
    admission.finished(first, 5)
    assert admission.spare_in_use == 1
    admission.finished(regular[0], 5)  # a regular slot goes before a spare one
    assert not (await asyncio.wait_for(admission.acquire(), 2)).spare
    assert Admission(regular=1, spare=4).spare == 0  # nothing says when the LLM has room: none lent


def test_the_llm_has_room_for_spare_tasks_only_if_it_was_full_and_few_calls_wait() -> None:
    """Catches spare tasks started for an LLM that documents are not waiting for (they parse or
    embed: it was not full a moment ago), or beyond a backlog of half its slots."""
    llm = FakeLlm(limit=8)
    assert spare_llm_room(llm) == 0
    llm.was_full = True
    assert spare_llm_room(llm) == 4
    llm.waiting = 3
    assert spare_llm_room(llm) == 1
    llm.waiting = 5
    assert spare_llm_room(llm) == 0
    llm.limit, llm.waiting = 1, 0
    assert spare_llm_room(llm) == 1  # LLM_MAX_ASYNC=1: until one call waits


@pytest.mark.usefixtures("slow_spare_starts")
async def test_a_spare_slot_starts_a_task_when_the_llm_has_room(store: TaskStore) -> None:
    """Catches the runner not lending a spare slot when the LLM has room, including while it holds
    an express slot it found no task for (the dispatcher then waits for its lane's wake-up, not for
    the admission); a spare slot lent while enough calls wait for the LLM, or while the running
    documents do something else (it was not full a moment ago); and more spare tasks started at
    once than the LLM has room for."""
    handler = FakeHandler(default="block")
    llm = FakeLlm(limit=2)
    now = time.time()
    for i in range(5):
        await store.create(record(f"doc{i}", created_at=now + i))
    config = {"max_concurrent": 2, "express_slots": 1, "spare_slots": 2, "idle_poll_seconds": 30.0}
    async with running(store, handler, llm=llm, **config) as runner:
        for i in range(2):
            await asyncio.wait_for(handler.started_event(f"doc{i}").wait(), 10)
        assert len(llm.listeners) == 1
        llm.call_ended()  # not full a moment ago: the documents are busy with something else
        await _not_within(handler.started_event("doc2").wait(), 0.5)
        llm.was_full, llm.waiting = True, 1
        llm.call_ended()  # a backlog of half its slots waits: no room
        await _not_within(handler.started_event("doc2").wait(), 0.5)
        llm.waiting = 0
        llm.call_ended()
        await asyncio.wait_for(handler.started_event("doc2").wait(), 5)  # the head of the queue
        assert runner.running_count == 3
        llm.call_ended()
        await _not_within(handler.started_event("doc3").wait(), 0.2)  # doc2's calls fill the backlog
        llm.limit = 8
        llm.call_ended()
        await asyncio.wait_for(handler.started_event("doc3").wait(), 5)
        llm.call_ended()
        await _not_within(handler.started_event("doc4").wait(), 0.5)  # both spare slots are lent
        assert runner.metrics.registry.get_sample_value("ragsvc_spare_task_slots_lent_total") == 2
        handler.release.set()
        for i in range(5):
            assert (await wait_final(store, f"doc{i}")).status == TaskStatus.COMPLETED
    assert llm.listeners == []  # stopping the runner removed its listener


class ProgressBurst(FakeHandler):
    """Reports a burst of progress in one stage (as a merge does, entity by entity), a new stage,
    another burst, then waits for ``release``."""

    async def run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict:
        for percent in range(1, 41):
            await report(Stage.EXTRACTING, float(percent))
        await report(Stage.MERGING, 0.0)
        for percent in range(1, 41):
            await report(Stage.MERGING, float(percent))
        self.started_event(task.task_id).set()
        await self.release.wait()
        return {}


async def test_progress_within_a_stage_is_written_at_most_every_interval_and_the_latest_last(
    store: TaskStore,
) -> None:
    """Catches one Redis write per progress report (a one-chunk document made ~23), a new stage
    held back with the burst, the burst's last value never written (no trailing write), or an
    older value written after a newer one."""
    written: list[tuple[str, float]] = []
    real = store.report_progress

    async def recording(task_id: str, epoch: int, stage: str, progress: float) -> bool:
        await asyncio.sleep(0.01)  # a round trip: later reports arrive meanwhile
        ok = await real(task_id, epoch, stage, progress)
        written.append((str(stage), progress))  # once it is in the record
        return ok

    store.report_progress = recording
    handler = ProgressBurst(default="ok")
    await store.create(record("burst"))
    async with running(store, handler) as runner:
        await asyncio.wait_for(handler.started_event("burst").wait(), 10)
        assert written[0] == (Stage.EXTRACTING, 1.0)  # the first report of a stage at once
        assert (Stage.MERGING, 0.0) in written  # a new stage at once, not after the interval
        assert len(written) <= 6, written  # 82 reports
        await wait_until(lambda: written[-1] == (Stage.MERGING, 40.0), what="the burst's last value")
        record_now = await store.get("burst")
        assert (record_now.stage, record_now.progress) == (Stage.MERGING, 40.0)
        order = [(0 if stage == Stage.EXTRACTING else 1, progress) for stage, progress in written]
        assert order == sorted(order), written  # never an older value after a newer one
        handler.release.set()
        assert (await wait_final(store, "burst")).status == TaskStatus.COMPLETED
        assert runner.running_count == 0
