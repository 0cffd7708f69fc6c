"""`GET /usage`: the tokens the caller's tenant spent today and this month, and its budgets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ServicesDep, TenantDep
from api.errors import ApiError

router = APIRouter(tags=["usage"])


@router.get("/usage", summary="Tokens spent by the tenant (UTC day and month) and its token budgets")
async def usage(tenant: TenantDep, services: ServicesDep) -> dict[str, Any]:
    """LLM, vision and embedding tokens of every task and query of the tenant: the providers' own
    counts when they report them, else counted with the tokenizer; the offline stand-ins cost 0."""
    if services.usage is None:  # pragma: no cover - always built by start_services
        raise ApiError(503, "usage_unavailable", "usage accounting is not configured")
    quota = await services.tenants.quota(tenant)
    spent = await services.usage.spent(tenant)
    return {
        "tenant": tenant,
        **spent,
        "budgets": {"daily_tokens": quota.daily_tokens, "monthly_tokens": quota.monthly_tokens},
    }
