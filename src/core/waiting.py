"""Waiting for an event with a bound, without losing a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the inner result and *swallows* a cancellation that
arrives in the same loop iteration as the result (CPython gh-86296, fixed in 3.12 by rebuilding
``wait_for`` on ``asyncio.timeout``). A waiter woken by a notice at the moment its caller goes away
would then keep running. ``asyncio.timeout`` counts cancellations (``uncancel``), so an outside
cancel always wins over the bound expiring or the event firing.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` was set within ``seconds``; False when the bound ran out."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


def raise_if_cancel_swallowed() -> None:
    """Raise the cancellation of the current task if one is pending but was not delivered.

    `Task.cancelling()` counts cancel requests not yet taken back by ``uncancel``; a library call
    that catches the CancelledError (or, on 3.11, ``wait_for`` returning a result it raced with)
    leaves the count up while the task runs on. Loops that wait for a long time call this after
    each library call, so a caller that went away stops them at once instead of at their bound.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
