"""`ragsvc admin ...`: tenants and API keys, authenticated with the service's ADMIN_TOKEN."""

from __future__ import annotations

from typing import Annotated

import typer

from .cli_common import err, out, request
from .render import rows_table

admin = typer.Typer(help="Tenants and API keys (needs the service's ADMIN_TOKEN).", no_args_is_help=True)
AdminToken = Annotated[
    str, typer.Option("--admin-token", envvar="RAGSVC_ADMIN_TOKEN", help="The service's ADMIN_TOKEN.")
]


def _table(key: str | None, title: str):  # noqa: ANN202 - a renderer for `request`
    return lambda body: out().print(rows_table(body[key] if key else [body], title))


@admin.command("create-tenant")
def admin_create_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name (a-z, 0-9, '-', '_').")],
    token: AdminToken,
    max_running: Annotated[int | None, typer.Option(help="Tasks of this tenant running at once.")] = None,
    max_pending: Annotated[int | None, typer.Option(help="Tasks of this tenant waiting at once.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
) -> None:
    """Create a tenant (or update its quotas)."""
    create = lambda rag: rag.create_tenant(name, max_running, max_pending, rpm)  # noqa: E731
    request(ctx, create, _table(None, "Tenant"), admin_token=token)


@admin.command("tenants")
def admin_tenants(ctx: typer.Context, token: AdminToken) -> None:
    """List tenants, their quotas and key counts."""
    request(ctx, lambda rag: rag.list_tenants(), _table("tenants", "Tenants"), admin_token=token)


@admin.command("create-key")
def admin_create_key(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="Tenant that the key acts as.")],
    token: AdminToken,
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key for a tenant. The key is printed once; store it."""

    def show(result: dict) -> None:
        out().print(f"key id [bold]{result['key_id']}[/] for tenant [bold]{tenant}[/]:")
        out().print(result["api_key"], markup=False, highlight=False)
        err().print("Store this key now: it is not shown again.")

    request(ctx, lambda rag: rag.create_key(tenant, label), show, admin_token=token)


@admin.command("keys")
def admin_keys(
    ctx: typer.Context, tenant: Annotated[str, typer.Argument(help="Tenant.")], token: AdminToken
) -> None:
    """List a tenant's keys (ids and labels only)."""
    request(ctx, lambda rag: rag.list_keys(tenant), _table("keys", f"Keys of {tenant}"), admin_token=token)


@admin.command("revoke-key")
def admin_revoke_key(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key id.")], token: AdminToken
) -> None:
    """Revoke an API key at once."""
    request(ctx, lambda rag: rag.revoke_key(key_id), _table(None, "Revoked"), admin_token=token)
