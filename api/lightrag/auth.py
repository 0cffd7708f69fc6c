"""LightRAG Server's authentication, on our tenant keys: `/auth-status`, `/login`, and the
dependency every compatible route uses.

A request names its tenant by an API key (``X-API-Key``, as LightRAG Server clients send it, or
``Authorization: Bearer <key>``) or by a session token this service signed (`/login` with the key
as the password; a guest token while no key exists). A guest token stops working as soon as keys
are required.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from api.body_limits import BoundedJsonRoute, before_body, remembered
from api.deps import ServicesDep, admit_tenant, authenticate_key, keys_required
from api.errors import ApiError
from api.lightrag.mount import PREFIX
from src.core.defaults import DEFAULT_TENANT
from src.rag.lightrag_compat import installed_lightrag_version
from src.tenancy.sessions import GUEST, USER
from src.wiring import Services

router = APIRouter(prefix=PREFIX, tags=["lightrag: auth"], route_class=BoundedJsonRoute)

#: What LightRAG Server reports as its API version; the WebUI only displays it.
API_VERSION = "ragsvc"
WEBUI_TITLE = "RAG ingestion service"
WEBUI_DESCRIPTION = "LightRAG's WebUI over the asynchronous task engine"


def versions() -> dict[str, str]:
    return {
        "core_version": installed_lightrag_version(),
        "api_version": API_VERSION,
        "webui_title": WEBUI_TITLE,
        "webui_description": WEBUI_DESCRIPTION,
    }


@before_body
async def get_compat_tenant(request: Request, services: ServicesDep) -> str:
    """The caller's tenant, before a JSON body is read (api/body_limits.py), counted once."""
    return await remembered(request, "compat-tenant", lambda: _compat_tenant(request, services))


async def _compat_tenant(request: Request, services: Services) -> str:
    api_key = request.headers.get("x-api-key")
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    session = services.sessions.verify(bearer) if services.sessions and bearer else None
    if api_key:
        return await authenticate_key(services, api_key)
    if session is not None:
        if session.role == GUEST and await keys_required(services):
            raise ApiError(401, "guest_access_ended", "API keys are required now: log in with a key")
        return await admit_tenant(services, session.tenant)
    return await authenticate_key(services, bearer or None)


CompatTenantDep = Annotated[str, Depends(get_compat_tenant)]


@router.get("/auth-status", summary="LightRAG Server: whether login is needed (a guest token if not)")
async def auth_status(services: ServicesDep) -> dict:
    if await keys_required(services):
        return {"auth_configured": True, "auth_mode": "enabled", **versions()}
    token = _sessions(services).issue(DEFAULT_TENANT, GUEST, "guest")
    return {
        "auth_configured": False,
        "access_token": token,
        "token_type": "bearer",
        "auth_mode": "disabled",
        "message": "Authentication is disabled. Using guest access.",
        **versions(),
    }


@router.post("/login", summary="LightRAG Server: a session token for an API key (the password)")
async def login(
    services: ServicesDep,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=500)] = "",
) -> dict:
    """The WebUI's login form: any user name, the tenant's API key as the password."""
    if not await keys_required(services):
        token = _sessions(services).issue(DEFAULT_TENANT, GUEST, username or "guest")
        return {
            "access_token": token,
            "token_type": "bearer",
            "auth_mode": "disabled",
            "message": "Authentication is disabled. Using guest access.",
            **versions(),
        }
    tenant = await services.tenants.resolve(password) if password else None
    if tenant is None:
        raise ApiError(401, "invalid_credentials", "Incorrect credentials: use an API key as the password")
    token = _sessions(services).issue(tenant, USER, username or tenant)
    return {"access_token": token, "token_type": "bearer", "auth_mode": "enabled", **versions()}


def _sessions(services: Services):  # noqa: ANN202 - SessionTokens, set at start-up
    if services.sessions is None:  # pragma: no cover - always built by start_services
        raise ApiError(503, "sessions_unavailable", "session tokens are not configured")
    return services.sessions
