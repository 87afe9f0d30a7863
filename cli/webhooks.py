"""`emoe-gate webhooks secret` and `rotate`: a tenant's webhook signing secret, to give to its receiver, and
its rotation with an overlap window; `adopt-secret`: this machine's operator secret becomes the deployment's
(real-mode processes check at start that they sign with it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

TenantOption = Annotated[
    str, typer.Option("--tenant", metavar="TENANT", help="The tenant whose receiver verifies the webhooks.")
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", metavar="URL", help="Database URL (default: EMOE_DATABASE_URL or embedded SQLite)."),
]
WHEN = "%Y-%m-%d %H:%M:%S UTC"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @groups["webhooks"].command("new-secret")
    def new_secret() -> None:
        """Print a fresh operator secret (`whsec_` + 32 random bytes) for EMOE_WEBHOOK_SECRET."""
        from workers.webhooks import new_secret as make

        typer.echo(make())

    @groups["webhooks"].command("secret")
    def secret(tenant: TenantOption, db: DbOption = None) -> None:
        """Print the tenant's current Standard Webhooks secret (`whsec_...`, last line), derived from
        EMOE_WEBHOOK_SECRET and its generation; before it, the older ones that still sign."""
        from audit.keys import check_tenant
        from audit.webhook_secrets import generations
        from cli.service import _keys_session, _settings
        from workers.webhooks import tenant_secret, webhook_secret

        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise _fail(f"--tenant: {exc}") from exc
        try:
            settings = _settings(database_url=db)
            operator = webhook_secret(settings)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        with _keys_session(db) as session:
            state = generations(session, tenant)
        if state.previous_until is not None and len(state.signing()) > 1:
            typer.echo(
                f"previous secret (generation {state.current - 1}), still signing until "
                f"{state.previous_until.strftime(WHEN)}: {tenant_secret(operator, tenant, state.current - 1)}"
            )
        if settings.webhook_secret_previous:
            for g in state.signing():
                typer.echo(
                    f"under the previous operator secret (generation {g}), still signing until "
                    f"EMOE_WEBHOOK_SECRET_PREVIOUS is unset: "
                    f"{tenant_secret(settings.webhook_secret_previous, tenant, g)}"
                )
        typer.echo(
            f"webhook secret of tenant {tenant!r}, generation {state.current} (give it to its receiver's "
            "Standard Webhooks verifier):"
        )
        typer.echo(tenant_secret(operator, tenant, state.current))

    @groups["webhooks"].command("rotate")
    def rotate(
        tenant: TenantOption,
        overlap: Annotated[
            str,
            typer.Option(
                metavar="DURATION",
                help="How long the old secret still signs too: e.g. 24h, 90m, 2d, 0 (at most 30d).",
            ),
        ] = "24h",
        db: DbOption = None,
    ) -> None:
        """Give the tenant a new webhook secret (printed on the last line); its webhooks carry both signatures
        until the overlap ends, then only the new one (an older generation still in its overlap stops now)."""
        from audit.keys import check_tenant
        from audit.webhook_secrets import parse_overlap
        from audit.webhook_secrets import rotate as start_next
        from cli.service import _keys_session, _settings
        from workers.webhooks import tenant_secret, webhook_secret

        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise _fail(f"--tenant: {exc}") from exc
        try:
            window = parse_overlap(overlap)
        except ValueError as exc:
            raise _fail(f"--overlap: {exc}") from exc
        try:
            operator = webhook_secret(_settings(database_url=db))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        now = datetime.now(UTC)
        with _keys_session(db) as session:
            state = start_next(session, tenant, window, now)
        if state.previous_until is None:
            typer.echo(f"the previous secret (generation {state.current - 1}) no longer signs")
        else:
            typer.echo(
                f"the previous secret (generation {state.current - 1}) still signs until "
                f"{state.previous_until.strftime(WHEN)}; after that only the new one"
            )
        typer.echo(
            f"new webhook secret of tenant {tenant!r}, generation {state.current} (give it to its receiver's "
            "Standard Webhooks verifier):"
        )
        typer.echo(tenant_secret(operator, tenant, state.current))

    @groups["webhooks"].command("adopt-secret")
    def adopt_secret(
        db: DbOption = None,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Record this machine's operator secret (EMOE_WEBHOOK_SECRET, else EMOE_HOME/webhook_secret) as the
        one the deployment signs with, e.g. to replace a lost one: real-mode processes with another refuse to
        start."""
        import socket

        from audit.webhook_secrets import adopt_operator_secret, recorded_operator_secret
        from cli.service import _keys_session, _settings, operator_fingerprints

        try:
            fingerprint, _, source = operator_fingerprints(_settings(database_url=db))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        with _keys_session(db) as session:
            recorded = recorded_operator_secret(session)
            if recorded is not None and recorded.fingerprint == fingerprint:
                typer.echo(f"this machine's secret ({source}) is already the deployment's: nothing changed")
                return
        if not yes:
            replaced = (
                f"recorded {recorded.recorded_at.strftime(WHEN)} by {recorded.recorded_by}"
                if recorded is not None
                else "none recorded yet"
            )
            typer.confirm(
                f"Make this machine's webhook secret ({source}) the deployment's (was: {replaced})? Every "
                "tenant's webhook secret and every dashboard session change with it: tenants must be given "
                "their new secrets (`emoe-gate webhooks secret --tenant T`), and every machine must then run "
                "with this secret",
                abort=True,
            )
        with _keys_session(db) as session:
            old = adopt_operator_secret(
                session, fingerprint=fingerprint, source=source, host=socket.gethostname()
            )
        was = f"replacing the one recorded by {old.recorded_by}" if old is not None else "the first recorded"
        typer.echo(
            f"adopted this machine's webhook secret ({source}) as the deployment's, {was}: give each tenant "
            "its new secret (`emoe-gate webhooks secret --tenant T`) and set the same EMOE_WEBHOOK_SECRET on "
            "every machine"
        )
