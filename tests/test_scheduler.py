"""CallScheduler: admission order (priority, tenant round robin, age), bound, cancellation.

No timing: every test drives the scheduler with events and asserts on order and counts.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from src.rag.scheduler import CallContext, CallScheduler, call_context, current_call_context

pytestmark = pytest.mark.unit


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Holds one slot busy (``blocker``) so calls queue, then records the order they start in."""

    def __init__(self, scheduler: CallScheduler) -> None:
        self.scheduler = scheduler
        self.order: list[str] = []
        self.gate = asyncio.Event()

    async def blocker(self) -> None:
        await self.gate.wait()

    async def call(
        self, name: str, priority: int, tenant: str = "t", merging: bool = False, flow: str = ""
    ) -> None:
        async def body() -> None:
            self.order.append(name)

        with call_context(priority=priority, tenant=tenant, merging=merging, flow=flow):
            await self.scheduler.run(body)


async def test_priority_overtakes_queued_low_priority_calls() -> None:
    """Catches a FIFO semaphore: a priority-9 call queued last must start before priority-1 calls."""
    s = CallScheduler(1, "t-prio")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    low = [asyncio.create_task(r.call(f"low{i}", 1)) for i in range(5)]
    await _settle()
    high = asyncio.create_task(r.call("high", 9))
    await _settle()
    r.gate.set()
    await asyncio.gather(hold, *low, high)
    assert r.order[0] == "high"
    assert r.order[1:] == [f"low{i}" for i in range(5)]  # then by age


async def test_merge_calls_go_first_within_their_priority() -> None:
    """Catches a merge's summary call (made under LightRAG's keyed entity lock, which every document
    merging that entity waits for) queued behind extraction calls of its priority; a higher
    priority still goes before it."""
    s = CallScheduler(1, "t-merge")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    calls = [asyncio.create_task(r.call(f"extract{i}", 5)) for i in range(3)]
    await _settle()
    calls.append(asyncio.create_task(r.call("merge", 5, merging=True)))
    calls.append(asyncio.create_task(r.call("low-merge", 1, merging=True)))
    calls.append(asyncio.create_task(r.call("urgent", 9)))
    await _settle()
    r.gate.set()
    await asyncio.gather(hold, *calls)
    assert r.order == ["urgent", "merge", "extract0", "extract1", "extract2", "low-merge"]


async def test_tenants_take_turns_at_equal_priority() -> None:
    """Catches plain age ordering: tenant A's flood queued first must not starve tenant B."""
    s = CallScheduler(1, "t-rr")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    calls = [asyncio.create_task(r.call(f"a{i}", 5, "A")) for i in range(4)]
    await _settle()
    calls += [asyncio.create_task(r.call(f"b{i}", 5, "B")) for i in range(2)]
    await _settle()
    r.gate.set()
    await asyncio.gather(hold, *calls)
    assert r.order == ["a0", "b0", "a1", "b1", "a2", "a3"]


async def test_documents_of_one_tenant_take_turns() -> None:
    """Catches age ordering within a tenant: a big document's hundreds of queued calls (its chunks'
    embeddings) must not hold back a one-line document of the same tenant and priority, and two
    tenants still take turns before their documents do."""
    s = CallScheduler(1, "t-flows")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    calls = [asyncio.create_task(r.call(f"big{i}", 5, "A", flow="big")) for i in range(200)]
    await _settle()
    calls += [asyncio.create_task(r.call(f"small{i}", 5, "A", flow="small")) for i in range(2)]
    calls.append(asyncio.create_task(r.call("other", 5, "B", flow="x")))
    await _settle()
    r.gate.set()
    await asyncio.gather(hold, *calls)
    assert r.order[:5] == ["big0", "other", "small0", "big1", "small1"]
    assert r.order[5:] == [f"big{i}" for i in range(2, 200)]


async def test_age_orders_calls_of_one_tenant_and_priority() -> None:
    """Catches LIFO / unordered admission within one tenant."""
    s = CallScheduler(1, "t-age")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    calls = []
    for i in range(6):
        calls.append(asyncio.create_task(r.call(f"c{i}", 3)))
        await _settle()
    r.gate.set()
    await asyncio.gather(hold, *calls)
    assert r.order == [f"c{i}" for i in range(6)]


async def test_bound_never_exceeded_under_hundreds_of_calls() -> None:
    """Catches over-admission (e.g. granting a slot twice when cancels and releases interleave)."""
    s = CallScheduler(7, "t-bound")
    in_flight = 0
    peak = 0
    rng = random.Random(7)

    async def body() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        assert in_flight <= 7
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        in_flight -= 1

    async def one(i: int) -> None:
        with call_context(priority=i % 10, tenant=f"t{i % 4}"):
            await s.run(body)

    tasks = [asyncio.create_task(one(i)) for i in range(400)]
    await _settle()
    for t in tasks[::13]:  # cancel some while waiting or running
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert peak == 7
    assert s.peak == 7
    assert s.active == 0 and s.waiting == 0


async def test_cancelling_a_waiting_call_does_not_leak_a_slot() -> None:
    """Catches a cancelled waiter that keeps its queue entry or is later granted a slot nobody frees."""
    s = CallScheduler(1, "t-cancel-wait")
    r = Recorder(s)
    hold = asyncio.create_task(s.run(r.blocker))
    await _settle()
    waiting = asyncio.create_task(r.call("gone", 9))
    after = asyncio.create_task(r.call("after", 1))
    await _settle()
    assert s.waiting == 2
    waiting.cancel()
    await _settle()
    assert s.waiting == 1
    r.gate.set()
    await asyncio.gather(hold, after)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert r.order == ["after"]
    assert s.active == 0 and s.waiting == 0


async def test_cancel_right_after_the_slot_was_granted_hands_it_on() -> None:
    """Catches the race where a waiter is granted a slot and cancelled before it resumes."""
    s = CallScheduler(1, "t-cancel-granted")
    r = Recorder(s)
    await s.acquire()  # this test holds the only slot
    first = asyncio.create_task(r.call("first", 5))
    second = asyncio.create_task(r.call("second", 5))
    await _settle()
    s.release()  # grants "first" its slot synchronously ...
    assert s.active == 1 and s.waiting == 1
    first.cancel()  # ... and it is cancelled before it could run
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled()
    assert r.order == ["second"]
    assert s.active == 0 and s.waiting == 0


async def test_cancelling_a_running_call_releases_its_slot() -> None:
    """Catches a slot kept by a call cancelled mid-flight."""
    s = CallScheduler(1, "t-cancel-run")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    running = asyncio.create_task(s.run(forever))
    await started.wait()
    assert s.active == 1
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert s.active == 0

    async def ok() -> str:
        return "ok"

    assert await s.run(ok) == "ok"


async def test_context_is_copied_into_spawned_tasks_and_restored() -> None:
    """Catches a context that leaks out of its block or does not reach child tasks."""
    outer = current_call_context()
    with call_context(priority=42, tenant="acme"):  # clamped to 0..9
        child = await asyncio.create_task(asyncio.sleep(0, result=current_call_context()))
        assert child.priority == 9 and child.tenant == "acme"
        with call_context(priority=2):
            assert current_call_context().tenant == "acme"
        with call_context(merging=True):  # the merge flag is kept by nested contexts
            with call_context(priority=3):
                assert current_call_context() == CallContext(3, "acme", merging=True)
    assert current_call_context() == outer


def test_scheduler_needs_a_slot() -> None:
    """Catches a zero limit that would deadlock every call."""
    with pytest.raises(ValueError):
        CallScheduler(0)


async def test_listeners_hear_of_the_last_slot_taken_and_of_a_slot_left_idle() -> None:
    """Catches the task runner not looking again for spare task slots (src/tasks/admission.py) when
    the LLM fills up or a slot goes idle: the listeners are called then, and a slot handed on to a
    waiting call is never reported idle; and whether every slot was taken a moment ago (``full_within``)."""
    scheduler = CallScheduler(limit=1)
    heard: list[int] = []
    remove = scheduler.add_listener(lambda: heard.append(scheduler.limit - scheduler.active))
    gate = asyncio.Event()
    first = asyncio.ensure_future(scheduler.run(gate.wait))
    second = asyncio.ensure_future(scheduler.run(gate.wait))
    await _settle()
    assert scheduler.active == 1 and scheduler.waiting == 1
    gate.set()
    await asyncio.gather(first, second)
    # The first call took the last slot, the second took it over (full again: no idle slot in
    # between), the second's end left it idle.
    assert heard == [0, 0, 1]
    assert scheduler.full_within(60) and not CallScheduler(limit=1).full_within(60)
    remove()
    await scheduler.run(asyncio.sleep, 0)
    assert heard == [0, 0, 1]


async def test_a_failing_listener_is_dropped_and_never_costs_a_slot() -> None:
    """Catches a listener's error (a task runner whose event loop is closed: setting its events
    raises) escaping into ``acquire``/``release``: the slot taken just before would never be given
    back, and every later call would wait for good."""
    scheduler = CallScheduler(limit=1)

    def broken() -> None:
        raise RuntimeError("Event loop is closed")

    heard: list[int] = []
    scheduler.add_listener(broken)
    scheduler.add_listener(lambda: heard.append(scheduler.active))
    assert await scheduler.run(asyncio.sleep, 0, "first") == "first"
    assert scheduler.active == 0 and heard == [1, 0]  # the other listener still hears
    for _ in range(3):
        await asyncio.wait_for(scheduler.run(asyncio.sleep, 0), 2)
    assert scheduler.active == 0 and len(heard) == 8
