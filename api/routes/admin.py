"""Admin API: tenants and their API keys. Enabled only when ADMIN_TOKEN is set; the token is
compared in constant time. Plaintext keys are returned once, at creation, and never stored."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.body_limits import BoundedJsonRoute, before_body
from api.deps import ServicesDep
from api.errors import ApiError
from src.tenancy.tenants import TENANT_PATTERN, TenantQuota


@before_body
async def require_admin(request: Request, services: ServicesDep) -> None:
    token = services.settings.admin_token
    if not token:
        raise ApiError(404, "not_found", "the admin API is disabled (set ADMIN_TOKEN to enable it)")
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise ApiError(
            401, "invalid_admin_token", "admin token missing or wrong", headers={"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], route_class=BoundedJsonRoute
)


class TenantCreate(BaseModel):
    name: str = Field(pattern=TENANT_PATTERN, description="lower-case letters, digits, '-' and '_'")
    max_running: int | None = Field(default=None, ge=0, le=10_000)
    max_pending: int | None = Field(default=None, ge=0, le=10_000_000)
    requests_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    daily_tokens: int | None = Field(default=None, ge=0, le=10**15, description="token budget per UTC day")
    monthly_tokens: int | None = Field(default=None, ge=0, le=10**15, description="token budget per month")


class KeyCreate(BaseModel):
    label: str = Field(default="", max_length=100)


@router.post("/tenants", status_code=201, summary="Create (or update the quotas of) a tenant")
async def create_tenant(body: TenantCreate, services: ServicesDep) -> dict:
    quota = TenantQuota(
        body.max_running, body.max_pending, body.requests_per_minute, body.daily_tokens, body.monthly_tokens
    )
    await services.tenants.create_tenant(body.name, quota)
    return {"tenant": body.name, **quota.__dict__}


@router.get("/tenants", summary="List tenants with their quotas and key counts")
async def list_tenants(services: ServicesDep) -> dict:
    return {"tenants": await services.tenants.list_tenants()}


@router.post("/tenants/{tenant}/keys", status_code=201, summary="Create an API key (shown once)")
async def create_key(tenant: str, body: KeyCreate, services: ServicesDep) -> dict:
    if not await services.tenants.exists(tenant):
        raise ApiError(404, "tenant_not_found", f"tenant {tenant} does not exist; create it first")
    key_id, key = await services.tenants.create_key(tenant, body.label)
    return {
        "tenant": tenant,
        "key_id": key_id,
        "api_key": key,
        "note": "store this key now; it is not shown again",
    }


@router.get("/tenants/{tenant}/keys", summary="List a tenant's keys (ids and labels, never secrets)")
async def list_keys(tenant: str, services: ServicesDep) -> dict:
    if not await services.tenants.exists(tenant):
        raise ApiError(404, "tenant_not_found", f"tenant {tenant} does not exist")
    return {"tenant": tenant, "keys": await services.tenants.list_keys(tenant)}


@router.delete("/keys/{key_id}", summary="Revoke an API key")
async def revoke_key(key_id: str, services: ServicesDep) -> dict:
    if not await services.tenants.revoke_key(key_id):
        raise ApiError(404, "key_not_found", f"key {key_id} not found")
    return {"key_id": key_id, "revoked": True}
