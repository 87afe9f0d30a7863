"""`emoe-gate migrate`, `emoe-gate audit verify`, `audit checkpoint`, `audit new-key` and `audit redact`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="Database URL (default: EMOE_DATABASE_URL, else the embedded SQLite file).",
    ),
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


def _audit_key() -> bytes:
    """The audit key from settings, or a one-line error (exit 2)."""
    from audit.checkpoint import CheckpointError, load_key
    from settings import get_settings

    settings = get_settings()
    try:
        return load_key(settings.audit_key, settings.audit_key_file)
    except CheckpointError as exc:
        raise _fail(str(exc)) from exc


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], str]:
    """The checkpoint's chain positions and time, or a one-line error (exit 2)."""
    from audit.checkpoint import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(path, _audit_key())
    except CheckpointError as exc:
        raise _fail(str(exc)) from exc


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @app.command("migrate")
    def migrate(
        db: DbOption = None,
        revision: Annotated[
            str, typer.Option("--revision", metavar="REVISION", help="Target revision.")
        ] = "head",
        app_role: Annotated[
            str | None,
            typer.Option(
                "--app-role",
                metavar="ROLE",
                help=(
                    "PostgreSQL: the role the gateway and workers connect as; it gets SELECT and INSERT on "
                    "the hash-chained tables and no more (run migrate as the tables' owner)."
                ),
            ),
        ] = None,
    ) -> None:
        """Bring the audit database's schema to the latest migration (the explicit step on PostgreSQL)."""
        from sqlalchemy.engine import make_url

        from audit.db import RoleError, check_app_role, current_revision, grant_app_role, resolve_url, upgrade

        url = resolve_url(db)
        shown = make_url(url).render_as_string(hide_password=True)
        try:
            if app_role is not None:  # a bad role is refused before anything is migrated
                check_app_role(url, app_role)
            before = current_revision(url)
            upgrade(url, revision)
            after = current_revision(url)
            if app_role is not None:
                grant_app_role(url, app_role)
        except RoleError as exc:
            raise _fail(str(exc)) from exc
        except Exception as exc:
            raise _fail(f"migrating {shown} failed: {exc}") from exc
        typer.echo(f"{shown}: {before or 'empty'} -> {after}")
        if app_role is not None:
            typer.echo(
                f"{app_role}: SELECT and INSERT on the hash-chained tables (decisions, artifacts, reviews; "
                "UPDATE only of artifacts' quality score and review notes, which no chain covers), no "
                "DELETE, TRUNCATE or ALTER; SELECT, INSERT, UPDATE, DELETE on the other tables"
            )

    @groups["audit"].command("verify")
    def verify(
        db: DbOption = None,
        expect_head: Annotated[
            str | None,
            typer.Option(
                metavar="HASH",
                help="A row_hash (or 8+ digit prefix) recorded earlier: fail if the chain lost it.",
            ),
        ] = None,
        checkpoint: Annotated[
            Path | None,
            typer.Option(
                "--checkpoint",
                metavar="FILE",
                help="A file from `audit checkpoint`: fail unless the log still extends it (needs the key).",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Walk the hash chains (decisions, artifacts, review verdicts) and print each one's row count and
        head; exit 1 naming the first bad row (altered, deleted or inserted rows)."""
        from audit.checkpoint import verify_all
        from audit.db import session_scope

        if expect_head is not None and len(expect_head) < 8:
            raise _fail(f"--expect-head: give at least 8 hex digits of a row_hash, got {expect_head!r}")
        at = made = None
        if checkpoint is not None:
            at, made = _read_checkpoint(checkpoint)
        url = open_database(db)
        with session_scope(url) as session:
            reports = verify_all(session, at, expect_head=expect_head)
        ok = all(r.ok for r in reports)
        if as_json:
            decisions, artifacts, reviews = (r.__dict__ for r in reports)
            out = {**decisions, "artifacts": artifacts, "reviews": reviews}
            if checkpoint is not None:
                out["checkpoint"] = {"file": str(checkpoint), "created_at": made, "extended": ok}
            typer.echo(json.dumps(out))
        else:
            for report in reports:
                typer.echo(str(report), err=not report.ok)
            if checkpoint is not None:
                verdict = "the log extends it" if ok else "the log does NOT extend it"
                typer.echo(f"checkpoint {checkpoint} (made {made}): {verdict}", err=not ok)
        if not ok:
            raise typer.Exit(1)

    @groups["audit"].command("checkpoint")
    def checkpoint_command(
        out: Annotated[
            Path,
            typer.Option("--out", metavar="FILE", help="The file to write (keep it outside the database)."),
        ],
        db: DbOption = None,
    ) -> None:
        """Write a signed checkpoint of the chains (row counts, heads, time; HMAC-SHA256 with the audit key)
        that `audit verify --checkpoint` later proves the log still extends."""
        from audit.checkpoint import make_checkpoint, positions, write_checkpoint
        from audit.db import session_scope

        key = _audit_key()
        url = open_database(db)
        with session_scope(url) as session:
            at, reports = positions(session)
        if not all(r.ok for r in reports):
            for report in reports:
                typer.echo(str(report), err=not report.ok)
            typer.echo("error: no checkpoint written: a chain is broken", err=True)
            raise typer.Exit(1)
        try:
            write_checkpoint(out, make_checkpoint(at, key))
        except OSError as exc:
            raise _fail(f"--out: cannot write {out}: {exc.strerror}") from exc
        heads = ", ".join(f"{name} {p.rows} rows head {p.head}" for name, p in at.items())
        typer.echo(f"checkpoint written to {out}: {heads}")

    @groups["audit"].command("new-key")
    def new_key() -> None:
        """Print a random audit key for EMOE_AUDIT_KEY (or a key file); keep it away from the database."""
        import secrets

        typer.echo(secrets.token_urlsafe(32))

    @groups["audit"].command("redact")
    def redact(
        older_than: Annotated[
            float,
            typer.Option(
                "--older-than",
                metavar="DAYS",
                help="Redact prompts of finished jobs older than this many days.",
            ),
        ],
        db: DbOption = None,
        check: Annotated[
            bool, typer.Option("--verify/--no-verify", help="Verify the chain afterwards.")
        ] = True,
    ) -> None:
        """Replace old prompt texts (and reviewers' notes) by their hash; the chains stay valid."""
        from audit.checkpoint import verify_all
        from audit.db import session_scope
        from audit.retention import redact_notes, redact_prompts

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
                reports = verify_all(session)
            for report in reports:
                typer.echo(str(report), err=not report.ok)
            if not all(r.ok for r in reports):
                raise typer.Exit(1)
