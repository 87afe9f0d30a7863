"""Fairness commands: `emoe-gate report` and `emoe-gate eval multilingual`."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.audit import open_database
from cli.progress import quiet_libraries, spinner

if TYPE_CHECKING:
    from audit.multilingual import PromptItem, ScoreBatch

FORMAT_HELP = (
    "html (one self-contained file with plots), json (every number, with intervals) or csv (per group)."
)


def report(
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", metavar="html|json|csv", help=FORMAT_HELP)] = "html",
    db_url: Annotated[
        str | None, typer.Option("--db", metavar="URL", help="Database URL; default: EMOE_DATABASE_URL.")
    ] = None,
    group_by: Annotated[
        str,
        typer.Option(metavar="language|LABEL", help="`language` or the name of a client label, e.g. region."),
    ] = "language",
    since: Annotated[
        str | None, typer.Option(metavar="DATE", help="Only decisions from this ISO date/datetime on (UTC).")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            metavar="GROUP",
            help="The group the others are compared with (default: en, else the largest group).",
        ),
    ] = None,
    keyword: Annotated[
        list[str] | None,
        typer.Option(
            metavar="WORD", help="Share of prompts with this word in the lowest quartile (repeatable)."
        ),
    ] = None,
    confidence: Annotated[
        float, typer.Option(metavar="LEVEL", help="Confidence level of every interval.")
    ] = 0.95,
    n_boot: Annotated[int, typer.Option(metavar="N", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the bootstrap.")] = 0,
    min_group_size: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Groups smaller than this are marked too small to compare."),
    ] = 30,
    bootstrap_max_n: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Bootstrap groups up to this size; larger ones use normal/order-statistic intervals.",
        ),
    ] = 200,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", metavar="TENANT", help="Only this tenant's decisions (default: all)."),
    ] = None,
) -> None:
    """Fairness report: per-group scores, halt and flag rates with intervals, quartiles, plots."""
    from sqlalchemy.engine import make_url

    from audit import db
    from audit.fairness import IntervalOptions
    from audit.report import FORMATS, ReportOptions, build_report, write_report
    from audit.report_queries import check_group_by, parse_since

    def bad(message: str) -> typer.BadParameter:
        return typer.BadParameter(message)

    if fmt not in FORMATS:
        raise bad(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        check_group_by(group_by)
        since_dt = parse_since(since)
        intervals = IntervalOptions(
            confidence=confidence, n_boot=n_boot, seed=seed, bootstrap_max_n=bootstrap_max_n
        )
        options = ReportOptions(
            group_by=group_by, since=since_dt, reference=reference, keywords=tuple(keyword or ()),
            intervals=intervals, min_group_size=min_group_size, tenant=tenant,
        )  # fmt: skip
    except ValueError as exc:
        raise bad(str(exc)) from exc
    url = open_database(db_url)
    try:
        with spinner("reading the decisions and computing the statistics"), db.session_scope(url) as session:
            from emoe.config import describe_scoring  # cheap: no torch

            database = make_url(url).render_as_string(hide_password=True)
            data = build_report(session, options, database=database, describe_scoring=describe_scoring)
    except ValueError as exc:
        raise bad(str(exc)) from exc
    names = [g["group"] for g in data["fairness"]["groups"]]
    if reference is not None and names and reference not in names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise bad(f"--reference: no {group_by} group {reference!r} in these decisions; groups: {shown}")
    with spinner(f"writing the {fmt} report"):
        write_report(data, fmt, out)
    groups = len(data["fairness"]["groups"])
    typer.echo(f"wrote {fmt} report: {data['n_decisions']} decisions in {groups} groups -> {out}")
    if not data["quality"]["available"]:
        typer.echo("note: no quality scores are stored; the report says so and shows no quality statistics")


def eval_multilingual(
    ensemble_spec: Annotated[
        str | None,
        typer.Option(
            "--ensemble",
            metavar="NAME|PATH",
            help="tiny, default, a segmoe YAML or a checkpoint folder (default: EMOE_ENSEMBLE).",
        ),
    ] = None,
    per_language: Annotated[int, typer.Option(metavar="N", help="Parallel prompts per language.")] = 40,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="Folder for run.json, scores.jsonl and the report.")
    ] = Path("eval-multilingual"),
    languages: Annotated[
        str | None,
        typer.Option(metavar="CODE,...", help="Comma-separated ISO 639-1 codes (default: 25 languages)."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Which (template, class) pairs are drawn.")] = 0,
    batch_size: Annotated[int | None, typer.Option(metavar="N", help="Prompts per scoring batch.")] = None,
    keyword: Annotated[
        list[str] | None, typer.Option(metavar="WORD", help="Keyword share in the lowest quartile.")
    ] = None,
    quality_model: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="CLIP checkpoint folder: also generate each image and store its CLIP score."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """The paper's sections 4.2-4.3 for any ensemble: parallel prompts in 25 languages, scored and reported.

    Prompts come offline from the clip-benchmark wheel (translated templates filled with multilingual ImageNet
    class names). Results are appended to OUT/scores.jsonl as they are scored: run the same command again to
    resume. The report (OUT/report.json and OUT/report.html) compares every language with English. With
    --quality-model, each prompt's image is generated (Fast EMoE) and scored by CLIP against the English
    prompt of its item, as in the paper, which gives the quality-per-quartile and score-quality plots.
    """
    from audit.multilingual import (
        DEFAULT_LANGUAGES,
        MIN_LANGUAGES,
        DataNotFound,
        ResultStore,
        build_prompts,
        eval_policy,
        knowledge_note,
        multilingual_report,
        run_description,
        score_pending,
    )
    from audit.report import render_html, render_json
    from settings import get_settings

    # 1. the prompt set (offline, fast) and the run it belongs to
    langs = [x.strip() for x in languages.split(",") if x.strip()] if languages else list(DEFAULT_LANGUAGES)
    try:
        items = build_prompts(langs, per_language, seed=seed)
    except DataNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    n_langs = len({it.language for it in items})
    if n_langs < MIN_LANGUAGES:
        typer.echo(
            f"note: {n_langs} languages; the paper's comparison used 25 (at least {MIN_LANGUAGES} advised)"
        )

    # 2. the ensemble and its scoring configuration (torch loads here, not at CLI start)
    from emoe import default_score_config, load_ensemble
    from emoe.ensemble import read_manifest

    settings = get_settings()
    spec = ensemble_spec or settings.ensemble
    with spinner(f"loading the ensemble {spec!r}"):
        ensemble = load_ensemble(spec, device=settings.device, dtype=settings.dtype)
    config = default_score_config(ensemble)
    if batch_size is not None:
        config = config.replace(batch_size=batch_size)
    summary = ensemble.summary()
    manifest = read_manifest(summary["source"]) if Path(str(summary["source"])).is_dir() else {}
    run = run_description(
        items,
        summary,
        config.to_dict(),
        per_language=per_language,
        seed=seed,
        quality_model=str(quality_model) if quality_model else None,
    )
    clip = None
    if quality_model is not None:
        from emoe.quality import ClipScore

        quiet_libraries()
        try:
            with spinner("loading the CLIP"):
                clip = ClipScore.from_pretrained(quality_model)
        except (ValueError, OSError) as exc:
            raise typer.BadParameter(f"--quality-model: {exc}") from exc
    store = ResultStore(out)
    try:
        done = store.open(run)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    todo = [it for it in items if it.id not in done]
    typer.echo(
        f"{len(items)} prompts in {n_langs} languages; {len(done)} already scored, {len(todo)} to score "
        f"with {summary['name']} ({summary['num_experts']} experts)"
    )

    # 3. score what is left with the policy in force, appending each batch (an interrupted run resumes here)
    from tqdm.auto import tqdm

    policy, policy_note = eval_policy(settings.policy_path, settings.dtype)
    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc="scoring", unit="prompt", disable=not progress
    )
    score_pending(
        todo, store, _gate_scorer(config, ensemble, clip), policy, batch_size=config.batch_size,
        on_batch=bar.update,
    )  # fmt: skip
    bar.close()

    # 4. the report, from everything stored
    report = multilingual_report(
        items,
        store.load(),
        summary=summary,
        manifest=manifest,
        run=run,
        keywords=keyword or (),
        quality_metrics=[clip.metric] if clip else [],
        policy_note=policy_note,
    )
    (out / "report.json").write_text(render_json(report), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    typer.echo(f"report over {report['n_decisions']} prompts -> {out / 'report.html'}, {out / 'report.json'}")
    note = knowledge_note(summary, manifest)
    if note:
        typer.echo(f"note: {note}")


def _gate_scorer(config: Any, ensemble: Any, clip: Any | None) -> ScoreBatch:
    """emoe's scores of a batch; with a CLIP, one Fast EMoE generation a prompt gives its score and image."""
    from emoe import generate, score

    def score_batch(batch: Sequence[PromptItem]) -> tuple[list[Any], list[float | None]]:
        if clip is None:
            return score([it.prompt for it in batch], config, ensemble), [None] * len(batch)
        gens = [generate(it.prompt, config, ensemble, mode="fast") for it in batch]
        return [g.score for g in gens], clip.score([g.images[0] for g in gens], [it.english for it in batch])

    return score_batch


def eval_quality(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            metavar="DIR",
            help="Local folder of a CLIP checkpoint (CLIPModel); default: the reference CLIP.",
        ),
    ] = None,
    db_url: Annotated[
        str | None, typer.Option("--db", metavar="URL", help="Database URL; default: EMOE_DATABASE_URL.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(metavar="DATE", help="Only images stored from this ISO date/datetime on.")
    ] = None,
    reference_label: Annotated[
        str, typer.Option(metavar="LABEL", help="Job label holding the English text of a translated prompt.")
    ] = "reference_text",
    overwrite: Annotated[
        bool, typer.Option(help="Score images that already have a quality score too.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1024, metavar="N", help="Images per CLIP batch.")
    ] = 16,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Store the CLIP score of every stored image (the report's quality), from a CLIP in a local folder.

    Each image is scored against its job's English text: the label REFERENCE_LABEL when the client sent one
    (the paper scores translated prompts against their English version), else the prompt itself. Images whose
    prompt was redacted, or whose file is gone, are skipped and counted. Without --model, the CLIP trained on
    the reference ensemble's world is used: it only knows that world.
    """
    from audit.report_queries import parse_since

    try:
        since_dt = parse_since(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    url = open_database(db_url)
    try:
        scored, skipped, metric = store_clip_scores(
            url,
            model,
            since=since_dt,
            reference_label=reference_label,
            overwrite=overwrite,
            batch_size=batch_size,
            progress=progress,
        )
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(f"--model: {exc}") from exc
    typer.echo(f"stored {metric} for {scored} images; skipped {skipped} (prompt redacted or file missing)")


def store_clip_scores(
    url: str,
    model: Path | None = None,
    *,
    since: datetime | None = None,
    reference_label: str = "reference_text",
    overwrite: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[int, int, str]:
    """Score stored images with a CLIP (default: the reference CLIP); returns (scored, skipped, metric)."""
    from tqdm.auto import tqdm

    from audit.quality import store_quality_scores
    from emoe.ensemble import REFERENCE_DIR
    from emoe.quality import ClipScore

    # 1. the CLIP (torch loads here)
    quiet_libraries()  # transformers' weight-loading bar (loading an ensemble turns it back on)
    with spinner("loading the CLIP"):
        scorer = ClipScore.from_pretrained(model if model is not None else REFERENCE_DIR / "clip")

    # 2. score batch by batch (audit commits each, so an interrupted run keeps what it did)
    bar = tqdm(desc="CLIP score", unit="image", disable=not progress)
    with contextlib.nullcontext() if progress else spinner(f"scoring the images with {scorer.metric}"):
        scored, skipped = store_quality_scores(
            url, scorer, since=since, reference_label=reference_label, overwrite=overwrite,
            batch_size=batch_size, on_batch=bar.update,
        )  # fmt: skip
    bar.close()
    return scored, skipped, scorer.metric


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("report")(report)
    groups["eval"].command("multilingual")(eval_multilingual)
    groups["eval"].command("quality")(eval_quality)
