"""The idle-knowledge-base reaper stops at shutdown even when closing a knowledge base swallows
its cancel (the same rule as tests/unit/test_background_loops_stop.py; here because the tenant
engines import LightRAG, which the unit layer does not)."""

from __future__ import annotations

import asyncio

import pytest

from src.core.metrics import Metrics
from src.rag.engine.tenant_engines import TenantEngines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_a_cancel_an_eviction_swallows_still_stops_the_reaper(settings) -> None:
    """Catches `TenantEngines.close()` waiting for good on a reaper whose eviction (LightRAG's
    storages closing) caught the cancel: the loop would sleep on, 'cancelling' forever."""
    in_eviction = asyncio.Event()

    class Swallowing(TenantEngines):
        async def evict_idle(self) -> None:
            in_eviction.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass

    engines = Swallowing(settings, Metrics(), max_cached=1, idle_seconds=60)
    engines.start_reaper(interval=0.001)
    reaper = engines._reaper
    await asyncio.wait_for(in_eviction.wait(), 10)
    closing = asyncio.create_task(engines.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    try:
        assert closing in done, "TenantEngines.close() still waiting for its reaper after 5 s"
    finally:
        if reaper is not None and not reaper.done():
            reaper.cancel()  # free the old code's loop, so the test ends
            await asyncio.wait({reaper}, timeout=5)
        closing.cancel()
