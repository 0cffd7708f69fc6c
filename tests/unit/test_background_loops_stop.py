"""Background loops awaited at shutdown (the latency sampler, the upload sweeper) stop when the
service stops, whatever the Redis client does with the cancellation."""

from __future__ import annotations

import asyncio

import pytest

from src.core.metrics import Metrics
from tests.unit.helpers import assert_stops_within, swallowing_a_cancel

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def test_a_cancel_the_redis_ping_swallows_still_stops_the_sampler() -> None:
    """Catches a shutdown that hung for good (seen once in a full test run: the service's lifespan
    waited 10 minutes on a `metrics-sampler` task stuck 'cancelling'): the cancel of
    `stop_sampling` landed inside the Redis ping, the client swallowed it, and the loop slept on."""
    in_ping = asyncio.Event()
    release = asyncio.get_running_loop().create_future()

    async def swallowing_ping() -> float:
        await swallowing_a_cancel(in_ping, release)  # as a Redis client cleaning up its connection
        return 1.0

    metrics = Metrics()
    metrics.start_sampling(swallowing_ping, interval=0.001, redis_every=1)
    await asyncio.wait_for(in_ping.wait(), 10)
    try:
        await assert_stops_within(metrics.stop_sampling(), metrics._sampler, "stop_sampling()")
    finally:
        if not release.done():
            release.set_result(None)


async def test_a_cancel_the_upload_sweep_swallows_still_stops_the_sweeper() -> None:
    """The same for the upload sweeper's loop (its sweep asks Redis which tasks exist)."""
    from src.ingestion.upload_sweeper import UploadSweeper

    in_sweep = asyncio.Event()

    class Swallowing(UploadSweeper):
        async def sweep(self) -> int:
            await swallowing_a_cancel(in_sweep, asyncio.sleep(30))
            return 0

    async def no_tasks(ids: object) -> set[str]:
        return set()

    sweeper = Swallowing(None, no_tasks, orphan_seconds=60, interval_seconds=0.001)  # type: ignore[arg-type]
    sweeper.start()
    await asyncio.wait_for(in_sweep.wait(), 10)
    await assert_stops_within(sweeper.stop(), sweeper._loop, "UploadSweeper.stop()")
