"""Tokens each tenant spent, per UTC day and month, and the budgets that refuse new work once spent.

A finished task or answered query adds its meter (src/rag/usage.py) to the tenant's day and month
hashes in Redis (one pipelined write per unit of work, shared by every instance). A tenant may have
a daily and a monthly token budget (`TenantQuota.daily_tokens` / `monthly_tokens`); while either is
spent, uploads, texts and queries are refused (402 `token_budget_exhausted`) before anything is
stored. Work already accepted finishes: a budget never loses a document half-way.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis

from src.core.errors import DomainError
from src.core.metrics import Metrics
from src.rag.usage import UsageMeter
from src.tenancy.tenants import TenantRegistry

#: How long the per-period counters are kept (a month is readable for a year).
DAY_TTL_SECONDS = 40 * 86400
MONTH_TTL_SECONDS = 400 * 86400
log = logging.getLogger(__name__)
FIELDS = tuple(k for k in UsageMeter().as_dict() if k != "total_tokens")


class TokenBudgetExhausted(DomainError):
    """The tenant's daily or monthly token budget is spent."""


def _periods(now: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


class UsageLedger:
    def __init__(
        self, redis: aioredis.Redis, prefix: str, tenants: TenantRegistry, metrics: Metrics | None = None
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.tenants = tenants
        self.metrics = metrics

    def _key(self, tenant: str, period: str) -> str:
        return f"{self.prefix}usage:{tenant}:{period}"

    async def add(self, tenant: str, meter: UsageMeter, now: float | None = None) -> None:
        """Add one unit of work's tokens to the tenant's day and month."""
        spent = {k: v for k, v in meter.as_dict().items() if v and k != "total_tokens"}
        if not spent:
            return
        if self.metrics is not None:
            for kind in ("llm_input", "llm_output", "vision_input", "vision_output"):
                if spent.get(f"{kind}_tokens"):
                    self.metrics.tokens.labels(tenant, kind).inc(spent[f"{kind}_tokens"])
            if spent.get("embedding_tokens"):
                self.metrics.tokens.labels(tenant, "embedding").inc(spent["embedding_tokens"])
        day, month = _periods(now if now is not None else time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for period, ttl in ((day, DAY_TTL_SECONDS), (month, MONTH_TTL_SECONDS)):
                key = self._key(tenant, period)
                for name, value in spent.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, ttl)
            await pipe.execute()

    async def spent(self, tenant: str, now: float | None = None) -> dict[str, dict[str, int]]:
        """The tenant's usage today and this month (UTC), with the totals."""
        day, month = _periods(now if now is not None else time.time())
        out: dict[str, dict[str, int]] = {}
        for name, period in (("day", day), ("month", month)):
            raw = await self.redis.hgetall(self._key(tenant, period))
            meter = UsageMeter(**{f: int(raw.get(f, 0) or 0) for f in FIELDS})
            out[name] = {"period": period, **meter.as_dict()}  # type: ignore[dict-item]
        return out

    async def check(self, tenant: str) -> None:
        """Refuse new work while a budget of the tenant is spent (nothing to read without one)."""
        quota = await self.tenants.quota(tenant)
        if quota.daily_tokens is None and quota.monthly_tokens is None:
            return
        spent = await self.spent(tenant)
        for name, budget in (("day", quota.daily_tokens), ("month", quota.monthly_tokens)):
            if budget is not None and spent[name]["total_tokens"] >= budget:
                raise TokenBudgetExhausted(
                    f"the tenant's {'daily' if name == 'day' else 'monthly'} token budget of {budget} "
                    f"is spent ({spent[name]['total_tokens']} tokens in {spent[name]['period']} UTC)"
                )


async def record_usage(ledger: UsageLedger | None, tenant: str, meter: UsageMeter) -> None:
    """Add a finished unit of work to the ledger; a Redis hiccup here costs a count, never the work."""
    if ledger is None:
        return
    try:
        await ledger.add(tenant, meter)
    except Exception:  # noqa: BLE001 - the work itself succeeded or failed on its own
        log.warning("could not record the token usage of tenant %s", tenant, exc_info=True)
