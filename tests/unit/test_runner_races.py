"""Runner branches that only a race reaches in the service, each made to happen on purpose (the fake
handler of tests/unit/test_runner.py, real Redis): a cancel recorded just as the work succeeds or
fails, a timeout that is not the task's deadline, a task claimed while the runner stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from src.tasks.models import AttemptOutcome, TaskRecord, TaskStatus
from src.tasks.store import TaskStore
from tests.unit.helpers import record
from tests.unit.test_runner import FakeHandler, Permanent, running, wait_final, wait_for

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

#: No heartbeat during these tests: a cancel must be found by the final write itself.
QUIET = {"heartbeat_seconds": 30.0, "lease_seconds": 120.0}


class RacingHandler(FakeHandler):
    """Its attempts end by recording a cancel in Redis (as another instance would), then succeed,
    fail permanently, or time out on something other than the task's deadline."""

    def __init__(self, store: TaskStore, ending: str) -> None:
        super().__init__()
        self.store, self.ending = store, ending

    async def run(self, task: TaskRecord, report: Callable[[str, float], Awaitable[None]]) -> dict:
        self.runs[task.task_id] += 1
        if self.ending == "upstream-timeout":
            if self.runs[task.task_id] == 1:
                raise TimeoutError("read timed out")
            return {"attempt": task.attempt}
        assert (await self.store.request_cancel(task.task_id)).accepted
        if self.ending == "permanent":
            raise Permanent("unsupported content")
        return {"attempt": task.attempt}


async def test_a_cancel_recorded_as_the_work_completes_undoes_the_document(store: TaskStore) -> None:
    """Catches a completion that, answered `cancelling` (the cancel won the race), keeps the indexed
    document or records `completed`: the user asked for it to be gone."""
    handler = RacingHandler(store, "complete")
    await store.create(record("cw"))
    async with running(store, handler, **QUIET):
        rec = await wait_final(store, "cw")
    assert rec.status == TaskStatus.CANCELLED, rec
    assert handler.discarded == ["cw"] and handler.finals == [("cw", TaskStatus.CANCELLED)]


async def test_a_cancel_recorded_as_the_work_fails_ends_cancelled(store: TaskStore) -> None:
    """Catches a failure that, answered `cancelling`, leaves the task `cancelling` for good or
    records `failed` for a task the user cancelled."""
    handler = RacingHandler(store, "permanent")
    await store.create(record("cf"))
    async with running(store, handler, **QUIET):
        rec = await wait_final(store, "cf")
    assert rec.status == TaskStatus.CANCELLED, rec
    assert handler.discarded == ["cf", "cf"]  # the failure's purge, then the cancel's
    assert handler.finals == [("cf", TaskStatus.CANCELLED)]


async def test_a_timeout_that_is_not_the_deadline_is_retried(store: TaskStore) -> None:
    """Catches a provider's read timeout (a TimeoutError raised inside the attempt) taken for the
    task's own deadline: the task would fail at once instead of being retried."""
    handler = RacingHandler(store, "upstream-timeout")
    await store.create(record("ut"))
    async with running(store, handler, task_timeout_seconds=30.0):
        rec = await wait_final(store, "ut")
    assert rec.status == TaskStatus.COMPLETED and rec.attempt == 2 and rec.failures == 1, rec
    assert [h["outcome"] for h in rec.history] == ["retry", "completed"]
    assert "read timed out" in rec.history[0]["error"]


async def test_a_task_claimed_while_the_runner_stops_is_handed_straight_back(store: TaskStore) -> None:
    """Catches a stopping runner that starts a task it claimed at the last moment (it would be cut
    off by the shutdown) or hands it back as a failed attempt (a clean restart would burn attempts)."""
    handler = FakeHandler()
    async with running(store, handler) as runner:
        real_claim = store.claim
        claimed: list[str] = []

        async def claim_as_stop_begins(*args, **kwargs):  # noqa: ANN002, ANN003
            task = await real_claim(*args, **kwargs)
            if task is not None:
                claimed.append(task.task_id)
                runner._accepting = False  # the shutdown began while this claim was in flight
            return task

        store.claim = claim_as_stop_begins  # type: ignore[method-assign]
        await store.create(record("late"))
        runner.notify()
        rec = await wait_for(store, "late", lambda r: r.status == TaskStatus.PENDING and bool(r.history))
    assert claimed == ["late"] and handler.runs["late"] == 0
    assert rec.failures == 0 and not rec.owner
    assert [h["outcome"] for h in rec.history] == [AttemptOutcome.INTERRUPTED]


async def test_a_cancel_landing_before_the_attempt_first_runs_still_ends_cancelled(store: TaskStore) -> None:
    """The cancel-storm hang (issue 25 item 5): a DELETE that lands between the claim and the first
    step of the attempt's coroutine. `Task.cancel()` on a task that never ran closes its coroutine
    without running it, so neither the cancel path nor the `finally` that frees the slot ever ran:
    the task stayed `cancelling` for good (its lease renewed by every heartbeat, as it was still
    listed as running here) and its slot was lost. Seen once the cancelled tasks gave their slots
    up before their purges: new claims then raced the storm's DELETEs."""
    handler = FakeHandler()
    async with running(store, handler) as runner:
        real_claim = store.claim
        stop_at_once: list[str] = []

        async def claim_then_cancel_before_it_runs(*args, **kwargs):  # noqa: ANN002, ANN003
            task = await real_claim(*args, **kwargs)
            if task is not None and not stop_at_once:
                stop_at_once.append(task.task_id)
                assert (await store.request_cancel(task.task_id)).accepted
                # Runs before the attempt's first step: the runner creates that task right after
                # this call returns, and the loop runs callbacks in the order they were scheduled.
                asyncio.get_running_loop().call_soon(runner.cancel_local, task.task_id)
            return task

        store.claim = claim_then_cancel_before_it_runs  # type: ignore[method-assign]
        await store.create(record("early"))
        runner.notify()
        rec = await wait_final(store, "early", timeout=10.0)
        assert stop_at_once == ["early"]
        assert rec.status == TaskStatus.CANCELLED, rec
        assert handler.discarded == ["early"] and handler.finals == [("early", TaskStatus.CANCELLED)]
        # Its slot came back: another task runs in it.
        store.claim = real_claim  # type: ignore[method-assign]
        await store.create(record("after"))
        runner.notify()
        assert (await wait_final(store, "after", timeout=10.0)).status == TaskStatus.COMPLETED
        assert "early" not in runner._running
