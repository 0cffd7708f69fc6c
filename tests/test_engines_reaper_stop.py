"""The idle-knowledge-base reaper stops at shutdown even when closing a knowledge base swallows
its cancel (the same rule as tests/unit/test_background_loops_stop.py; here because the tenant
engines import LightRAG, which the unit layer does not)."""

from __future__ import annotations

import asyncio

import pytest

from src.core.metrics import Metrics
from src.rag.engine.tenant_engines import TenantEngines
from tests.unit.helpers import assert_stops_within, swallowing_a_cancel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_a_cancel_an_eviction_swallows_still_stops_the_reaper(settings) -> None:
    """Catches `TenantEngines.close()` waiting for good on a reaper whose eviction (LightRAG's
    storages closing) caught the cancel: the loop would sleep on, 'cancelling' forever."""
    in_eviction = asyncio.Event()

    class Swallowing(TenantEngines):
        async def evict_idle(self) -> None:
            await swallowing_a_cancel(in_eviction, asyncio.sleep(30))

    engines = Swallowing(settings, Metrics(), max_cached=1, idle_seconds=60)
    engines.start_reaper(interval=0.001)
    await asyncio.wait_for(in_eviction.wait(), 10)
    await assert_stops_within(engines.close(), engines._reaper, "TenantEngines.close()")
