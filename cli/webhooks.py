"""`emoe-gate webhooks secret`: a tenant's webhook signing secret, to give to its receiver."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @groups["webhooks"].command("new-secret")
    def new_secret() -> None:
        """Print a fresh operator secret (`whsec_` + 32 random bytes) for EMOE_WEBHOOK_SECRET."""
        from workers.webhooks import new_secret as make

        typer.echo(make())

    @groups["webhooks"].command("secret")
    def secret(
        tenant: Annotated[str, typer.Option(help="The tenant whose receiver verifies the webhooks.")],
    ) -> None:
        """Print the tenant's Standard Webhooks secret (`whsec_...`), derived from EMOE_WEBHOOK_SECRET; while
        EMOE_WEBHOOK_SECRET_PREVIOUS is set, also the one it replaces (webhooks carry both signatures)."""
        from settings import get_settings
        from workers.webhooks import tenant_secrets

        if not tenant.strip():
            typer.echo("error: --tenant: must not be empty", err=True)
            raise typer.Exit(2)
        try:
            current, *previous = tenant_secrets(get_settings(), tenant)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(
            f"webhook secret of tenant {tenant!r} (give it to its receiver's Standard Webhooks verifier):"
        )
        typer.echo(current)
        for old in previous:
            typer.echo(f"previous secret, still signing until EMOE_WEBHOOK_SECRET_PREVIOUS is unset: {old}")
