"""CoalescedReport: a merge's per-entity hooks schedule at most one progress report at a time,
and the last count always reaches the report."""

from __future__ import annotations

import asyncio

import pytest

from src.rag.engine.scope import CoalescedReport

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def test_a_burst_of_hook_calls_is_one_report_that_sees_the_last_count() -> None:
    """Catches a task per merged entity (thousands of ready callbacks in one burst held the event
    loop) and a coalesced report that loses the final count."""
    counts = {"merged": 0}
    seen: list[int] = []
    gate = asyncio.Event()

    async def report() -> None:
        seen.append(counts["merged"])
        await gate.wait()

    hook = CoalescedReport(report)
    for _ in range(1000):
        counts["merged"] += 1
        hook()
    tasks_before = len(asyncio.all_tasks())
    await asyncio.sleep(0)
    assert seen == [1000]  # one report, with every change made before it ran
    counts["merged"] += 1
    hook()  # a change while that report runs schedules exactly one more
    hook()
    assert len(asyncio.all_tasks()) <= tasks_before + 1
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [1000, 1001]
