"""Fairness commands: `emoe-gate report` and `emoe-gate eval multilingual`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FORMAT_HELP = (
    "html (one self-contained file with plots), json (every number, with intervals) or csv (per group)."
)


def report(
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "html",
    db_url: Annotated[
        str | None, typer.Option("--db", help="Database URL; default: EMOE_DATABASE_URL.")
    ] = None,
    group_by: Annotated[
        str, typer.Option(help="`language` or the name of a client label, e.g. region.")
    ] = "language",
    since: Annotated[
        str | None, typer.Option(help="Only decisions from this ISO date/datetime on (UTC).")
    ] = None,
    reference: Annotated[str, typer.Option(help="The group the others are compared with.")] = "en",
    keyword: Annotated[
        list[str] | None,
        typer.Option(help="Share of prompts with this word in the lowest quartile (repeatable)."),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence level of every interval.")] = 0.95,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    min_group_size: Annotated[int, typer.Option(help="Groups smaller than this are marked too small.")] = 30,
    bootstrap_max_n: Annotated[
        int,
        typer.Option(
            help="Bootstrap groups up to this size; larger ones use normal/order-statistic intervals."
        ),
    ] = 200,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's decisions (default: all).")] = None,
) -> None:
    """Fairness report: per-group scores, halt and flag rates with intervals, quartiles, plots."""
    from sqlalchemy.engine import make_url

    from audit import db
    from audit.report import FORMATS, ReportOptions, build_report, write_report
    from audit.report_queries import check_group_by, parse_since

    def bad(message: str) -> typer.BadParameter:
        return typer.BadParameter(message)

    if fmt not in FORMATS:
        raise bad(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        check_group_by(group_by)
        since_dt = parse_since(since)
        options = ReportOptions(
            group_by=group_by, since=since_dt, reference=reference, keywords=tuple(keyword or ()),
            confidence=confidence, n_boot=n_boot, seed=seed, min_group_size=min_group_size,
            bootstrap_max_n=bootstrap_max_n, tenant=tenant,
        )  # fmt: skip
    except ValueError as exc:
        raise bad(str(exc)) from exc
    url = db.resolve_url(db_url)
    try:
        db.ensure_schema(url)
    except db.SchemaNotReady as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        with db.session_scope(url) as session:
            data = build_report(session, options, database=make_url(url).render_as_string(hide_password=True))
    except ValueError as exc:
        raise bad(str(exc)) from exc
    write_report(data, fmt, out)
    groups = len(data["fairness"]["groups"])
    typer.echo(f"wrote {fmt} report: {data['n_decisions']} decisions in {groups} groups -> {out}")
    if not data["quality"]["available"]:
        typer.echo("note: no quality scores are stored; the report says so and shows no quality statistics")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("report")(report)
