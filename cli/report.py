"""Fairness commands: `emoe-gate report` and `emoe-gate eval multilingual`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.audit import open_database
from cli.progress import quiet_libraries, spinner

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
    reference: Annotated[
        str | None,
        typer.Option(help="The group the others are compared with (default: en, else the largest group)."),
    ] = None,
    keyword: Annotated[
        list[str] | None,
        typer.Option(help="Share of prompts with this word in the lowest quartile (repeatable)."),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence level of every interval.")] = 0.95,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    min_group_size: Annotated[
        int, typer.Option(min=1, help="Groups smaller than this are marked too small to compare.")
    ] = 30,
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
            "--ensemble", help="tiny, default, a segmoe YAML or a checkpoint folder (default: EMOE_ENSEMBLE)."
        ),
    ] = None,
    per_language: Annotated[int, typer.Option(help="Parallel prompts per language.")] = 40,
    out: Annotated[Path, typer.Option(help="Folder for run.json, scores.jsonl and the report.")] = Path(
        "eval-multilingual"
    ),
    languages: Annotated[
        str | None, typer.Option(help="Comma-separated ISO 639-1 codes (default: 25 languages).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Which (template, class) pairs are drawn.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per scoring batch.")] = None,
    keyword: Annotated[list[str] | None, typer.Option(help="Keyword share in the lowest quartile.")] = None,
    quality_model: Annotated[
        Path | None,
        typer.Option(help="CLIP checkpoint folder: also generate each image and store its CLIP score."),
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
        knowledge_note,
        prompts_hash,
        records_from_results,
    )
    from audit.report import ReportOptions, render_html, render_json, report_from_records
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
    from emoe import default_score_config, generate, load_ensemble, score
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
    run = {
        "ensemble": summary["name"],
        "weights_hash": summary["weights_hash"],
        "score_config": {k: v for k, v in config.to_dict().items() if k != "batch_size"},
        "prompts_sha256": prompts_hash(items),
        "per_language": per_language,
        "languages": sorted({it.language for it in items}),
        "seed": seed,
        "quality_model": str(quality_model) if quality_model else None,
    }
    scorer = None
    if quality_model is not None:
        from emoe.quality import ClipScore

        quiet_libraries()
        try:
            with spinner("loading the CLIP"):
                scorer = ClipScore.from_pretrained(quality_model)
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

    # 3. the policy in force, if it was calibrated for this scoring configuration
    policy, policy_note = _policy_for_eval(settings)

    # 4. score what is left, appending each batch as it finishes (an interrupted run resumes here)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc="scoring", unit="prompt", disable=not progress
    )
    mismatch = False
    policy_id = getattr(policy, "id", None)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        rows = []
        if scorer is None:
            scores, quality = score([it.prompt for it in batch], config, ensemble), [None] * len(batch)
        else:  # one generation per prompt gives its score and its image
            gens = [generate(it.prompt, config, ensemble, mode="fast") for it in batch]
            scores = [g.score for g in gens]
            quality = scorer.score([g.images[0] for g in gens], [it.english for it in batch])
        for it, sc, q in zip(batch, scores, quality, strict=True):
            action, mismatch = _would_do(sc, it.language, policy, mismatch)
            rows.append({**it.__dict__, "score": sc.score, "eu": sc.eu, "fingerprint": sc.fingerprint,
                         "n_tokens": sc.n_tokens, "truncated": sc.truncated, "action": action,
                         "policy": None if mismatch else policy_id, "quality": q})  # fmt: skip
        store.append(rows)
        bar.update(len(batch))
    bar.close()

    # 5. the report, from everything stored
    results = store.load()
    rows = [results[it.id] for it in items if it.id in results]
    notes = []
    note = knowledge_note(summary, manifest)
    if note:
        notes.append(note)
    if policy_note or any(r.get("policy") is None for r in rows):
        notes.append(
            policy_note
            or "The policy in force was calibrated for another scoring configuration: halt and flag "
            "rates here are not meaningful (every prompt counts as 'continue')."
        )
    notes.append(
        "Prompts are machine translations of CLIP templates filled with ImageNet class names "
        "(clip-benchmark): parallel across languages, but translation quality varies by language."
    )
    report = report_from_records(
        records_from_results(rows),
        ReportOptions(keywords=tuple(keyword or ())),
        quality_metrics=[scorer.metric] if scorer else [],
        notes=notes,
        title="emoe-gate multilingual evaluation",
        extra={"ensemble": summary, "run": run},
    )
    (out / "report.json").write_text(render_json(report), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    typer.echo(f"report over {len(rows)} prompts -> {out / 'report.html'}, {out / 'report.json'}")
    if note:
        typer.echo(f"note: {note}")


def _policy_for_eval(settings: object) -> tuple[object | None, str | None]:
    """The policy in force, or (None, why not)."""
    from policies import PolicyError, bundled_policy_path, load_policy

    dtype = getattr(settings, "dtype", "float32")
    path = getattr(settings, "policy_path", None) or bundled_policy_path(dtype)
    try:
        return load_policy(path), None
    except (PolicyError, OSError) as exc:
        return None, f"No policy could be read ({exc}): halt and flag rates are not measured here."


def _would_do(sc: object, language: str, policy: object | None, mismatch: bool) -> tuple[str, bool]:
    """What the policy would do with this score ("continue" when there is none or it does not apply)."""
    if policy is None or mismatch:
        return "continue", mismatch
    from policies import DecisionContext, FingerprintMismatch, decide, effective_action

    try:
        d = decide(sc, DecisionContext(language=language), policy)
    except FingerprintMismatch:
        return "continue", True
    return effective_action(d), False


def eval_quality(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Local folder of a CLIP checkpoint (CLIPModel); default: the reference CLIP."
        ),
    ] = None,
    db_url: Annotated[
        str | None, typer.Option("--db", help="Database URL; default: EMOE_DATABASE_URL.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only images stored from this ISO date/datetime on.")
    ] = None,
    reference_label: Annotated[
        str, typer.Option(help="Job label holding the English text of a translated prompt.")
    ] = "reference_text",
    overwrite: Annotated[
        bool, typer.Option(help="Score images that already have a quality score too.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per CLIP batch.")] = 16,
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
    since: object = None,
    reference_label: str = "reference_text",
    overwrite: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[int, int, str]:
    """Score stored images with a CLIP (default: the reference CLIP); returns (scored, skipped, metric)."""
    from tqdm.auto import tqdm

    from emoe.ensemble import REFERENCE_DIR
    from emoe.quality import ClipScore

    # 1. the CLIP (torch loads here)
    quiet_libraries()  # transformers' weight-loading bar (loading an ensemble turns it back on)
    with spinner("loading the CLIP"):
        scorer = ClipScore.from_pretrained(model if model is not None else REFERENCE_DIR / "clip")

    # 2. score batch by batch, committing each, so an interrupted run keeps what it did
    bar = tqdm(desc="CLIP score", unit="image", disable=not progress)
    with contextlib.nullcontext() if progress else spinner(f"scoring the images with {scorer.metric}"):
        scored, skipped = _score_stored(url, scorer, bar, since, reference_label, overwrite, batch_size)
    bar.close()
    return scored, skipped, scorer.metric


def _score_stored(
    url: str, scorer: Any, bar: Any, since: Any, reference_label: str, overwrite: bool, batch_size: int
) -> tuple[int, int]:
    """The batches of `store_clip_scores`: (scored, skipped)."""
    from PIL import Image

    from audit import db
    from audit.report_queries import artifacts_to_score, set_quality

    scored = skipped = 0
    after = 0
    while True:
        with db.session_scope(url) as session:
            todo = artifacts_to_score(
                session, overwrite=overwrite, since=since, after_id=after, limit=batch_size
            )
        if not todo:
            break
        after = todo[-1]["id"]
        images, texts, ids = [], [], []
        for row in todo:
            text = row["labels"].get(reference_label) or row["prompt"]
            path = Path(row["storage_uri"].removeprefix("file://"))
            if not text or not path.is_file():
                skipped += 1
                continue
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            texts.append(text)
            ids.append(row["id"])
        if ids:
            values = scorer.score(images, texts)
            with db.session_scope(url) as session:
                set_quality(session, dict(zip(ids, values, strict=True)), scorer.metric)
        scored += len(ids)
        bar.update(len(todo))
    return scored, skipped


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("report")(report)
    groups["eval"].command("multilingual")(eval_multilingual)
    groups["eval"].command("quality")(eval_quality)
