"""`wait_event`: a bounded wait on an event that never swallows its caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from src.core.waiting import raise_if_cancel_swallowed, wait_event

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


async def test_a_cancel_arriving_as_the_event_fires_still_cancels() -> None:
    """Catches the Python 3.11 `asyncio.wait_for` behaviour (gh-86296): the event firing in the
    same loop iteration as the cancel returned the result and dropped the cancel, so a delegated
    query whose client left waited out its full timeout."""
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, 30))
    await asyncio.sleep(0)  # the waiter is parked on the event
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_the_bound_running_out_is_false_and_the_event_true() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_a_cancel_a_library_call_swallowed_is_raised_after_it() -> None:
    """Catches a long wait that keeps running after its caller went away because a call inside it
    caught the CancelledError (seen as a delegated query waiting out its 30 s bound)."""

    async def swallowing_call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # the library's bug: the task is still being cancelled

    async def waiter() -> str:
        await swallowing_call()
        raise_if_cancel_swallowed()
        return "ran on"

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_no_pending_cancel_means_nothing_is_raised() -> None:
    raise_if_cancel_swallowed()
    async with asyncio.timeout(5):  # a bound that did not expire leaves nothing pending
        await asyncio.sleep(0)
    raise_if_cancel_swallowed()
