"""A slow shutdown reports where it waits; a quick one says nothing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from src.core.shutdown_watch import reported_if_slow

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def _stuck_forever(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_slow_body_logs_every_pending_task_with_its_stack(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    stuck = asyncio.create_task(_stuck_forever(release), name="the-stuck-one")
    caplog.set_level(logging.WARNING, logger="src.core.shutdown_watch")
    async with reported_if_slow("shutdown", after_seconds=0.05):
        await asyncio.sleep(1.0)  # twenty times the deadline: the report must have fired
    release.set()
    await stuck
    [record] = [r for r in caplog.records if "still running" in r.getMessage()]
    message = record.getMessage()
    assert "shutdown still running after" in message
    assert "the-stuck-one" in message and "_stuck_forever" in message
    assert "test_a_slow_body_logs" in message  # the stopping task itself, suspended in its body
    assert "watch: shutdown" not in message  # but not the watcher that reports


async def test_a_quick_body_logs_nothing_and_leaves_no_watcher(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="src.core.shutdown_watch")
    async with reported_if_slow("shutdown", after_seconds=5):
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "still running" in r.getMessage()]
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watch:")]
