"""A shutdown that takes too long says why, in the log, while it is still stuck.

Why: a stop that hangs is found by whoever waits for it (an orchestrator's kill after its grace
period, a CI job's timeout) and leaves nothing to read. Past a deadline this logs every pending
asyncio task with the stack it is suspended in, and has `faulthandler` (a C thread, so it works
even if the event loop itself is blocked) write every thread's stack to stderr. It reports; it
never kills: the orchestrator's own timeout stays in charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import sys
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


def pending_tasks_report(limit_frames: int = 12) -> str:
    """Every unfinished task of the running loop with where it is suspended (innermost last)."""
    current = asyncio.current_task()
    lines: list[str] = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        if task is current or task.done():
            continue
        buffer = io.StringIO()
        task.print_stack(limit=limit_frames, file=buffer)
        lines.append(buffer.getvalue().rstrip())
    return "\n".join(lines) if lines else "(no other pending tasks)"


@contextlib.asynccontextmanager
async def reported_if_slow(what: str, after_seconds: float) -> AsyncIterator[None]:
    """Run the body; if it is still running after ``after_seconds``, log where everything waits."""
    loop_stuck_dump = _thread_dump_later(after_seconds + 5)

    async def report() -> None:
        await asyncio.sleep(after_seconds)
        log.warning(
            "%s still running after %.0f s; pending tasks:\n%s", what, after_seconds, pending_tasks_report()
        )

    watcher = asyncio.create_task(report(), name=f"watch: {what}")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if loop_stuck_dump:
            faulthandler.cancel_dump_traceback_later()


def _thread_dump_later(seconds: float) -> bool:
    """Arm faulthandler's watchdog thread (one per process; skipped when stderr has no fd)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, an embedded interpreter
        return False
    faulthandler.dump_traceback_later(seconds, exit=False)
    return True
