"""Per-tenant request rate limits, shared by all instances through Redis (the `limits` library,
moving window)."""

from __future__ import annotations

import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from src.tenancy.tenants import TenantRegistry


def _limits_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


class RateLimiter:
    def __init__(self, redis_url: str, prefix: str, tenants: TenantRegistry, default_rpm: int):
        self.storage = RedisStorage(
            _limits_uri(redis_url), implementation="redispy", key_prefix=f"{prefix}limits"
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.tenants = tenants
        self.default_rpm = default_rpm

    async def hit(self, tenant: str) -> float | None:
        """Count one request; None if allowed, else seconds until the next one would be."""
        rpm = (await self.tenants.quota(tenant)).requests_per_minute or self.default_rpm
        if rpm <= 0:
            return None
        item = RateLimitItemPerMinute(rpm)
        if await self.limiter.hit(item, tenant):
            return None
        stats = await self.limiter.get_window_stats(item, tenant)
        return max(1.0, stats.reset_time - time.time())

    async def close(self) -> None:
        """Nothing to release explicitly: the storage's connection pool closes with the process."""
