"""`emoe-gate migrate`, `emoe-gate audit verify` and `emoe-gate audit redact`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: EMOE_DATABASE_URL, else the embedded SQLite file)."),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def open_database(url: str | None, *, create: bool = False) -> str:
    """Resolve the URL and bring SQLite to head (PostgreSQL must already be migrated). Without `create`, a
    SQLite file that does not exist is an error (a typo in `--db` must not audit a new, empty database)."""
    from sqlalchemy.engine import make_url

    from audit.db import SchemaNotReady, ensure_schema, is_sqlite, resolve_url

    url = resolve_url(url)
    if not create and is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            raise _fail(
                f"no such database: {path} (check --db or EMOE_DATABASE_URL; `emoe-gate serve` or "
                "`emoe-gate migrate` creates it)"
            )
    try:
        ensure_schema(url)
    except SchemaNotReady as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # connection refused, bad URL: say which database
        raise _fail(f"cannot open the audit database: {exc}") from exc
    return url


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @app.command("migrate")
    def migrate(
        db: DbOption = None,
        revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    ) -> None:
        """Bring the audit database's schema to the latest migration (the explicit step on PostgreSQL)."""
        from sqlalchemy.engine import make_url

        from audit.db import current_revision, resolve_url, upgrade

        url = resolve_url(db)
        shown = make_url(url).render_as_string(hide_password=True)
        try:
            before = current_revision(url)
            upgrade(url, revision)
            after = current_revision(url)
        except Exception as exc:
            raise _fail(f"migrating {shown} failed: {exc}") from exc
        typer.echo(f"{shown}: {before or 'empty'} -> {after}")

    @groups["audit"].command("verify")
    def verify(
        db: DbOption = None,
        expect_head: Annotated[
            str | None,
            typer.Option(help="A row_hash (or 8+ digit prefix) recorded earlier: fail if the chain lost it."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Walk the hash chains (decisions, then review verdicts); exit 1 naming the first bad row (altered,
        deleted or inserted rows)."""
        from audit.chain import verify_chain
        from audit.db import session_scope
        from audit.reviews import verify_reviews

        if expect_head is not None and len(expect_head) < 8:
            raise _fail(f"--expect-head: give at least 8 hex digits of a row_hash, got {expect_head!r}")
        url = open_database(db)
        with session_scope(url) as session:
            report = verify_chain(session, expect_head=expect_head)
            reviews = verify_reviews(session)
        if as_json:
            typer.echo(json.dumps({**report.__dict__, "reviews": reviews.__dict__}))
        else:
            typer.echo(str(report), err=not report.ok)
            typer.echo(str(reviews), err=not reviews.ok)
        if not (report.ok and reviews.ok):
            raise typer.Exit(1)

    @groups["audit"].command("redact")
    def redact(
        older_than: Annotated[
            float,
            typer.Option("--older-than", help="Redact prompts of finished jobs older than this many days."),
        ],
        db: DbOption = None,
        check: Annotated[
            bool, typer.Option("--verify/--no-verify", help="Verify the chain afterwards.")
        ] = True,
    ) -> None:
        """Replace old prompt texts (and reviewers' notes) by their hash; the chains stay valid."""
        from audit.chain import verify_chain
        from audit.db import session_scope
        from audit.retention import redact_notes, redact_prompts
        from audit.reviews import verify_reviews

        if older_than < 0:
            raise _fail(f"--older-than: must be a number of days >= 0, got {older_than}")
        url = open_database(db)
        with session_scope(url) as session:
            count = redact_prompts(session, timedelta(days=older_than))
            notes = redact_notes(session, timedelta(days=older_than))
        typer.echo(f"redacted the prompts of {count} jobs older than {older_than:g} days")
        if notes:
            typer.echo(f"redacted {notes} review notes")
        if check:
            with session_scope(url) as session:
                report = verify_chain(session)
                reviews = verify_reviews(session)
            typer.echo(str(report), err=not report.ok)
            typer.echo(str(reviews), err=not reviews.ok)
            if not (report.ok and reviews.ok):
                raise typer.Exit(1)
