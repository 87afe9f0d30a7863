"""CLI commands of the EMoE core: `score` and `generate` (torch and emoe are imported inside the commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.params import NAMED
from cli.progress import quiet_libraries, spinner

#: `generate` exits with this when the gate halts (no image); 0 when it rendered, 2 on bad input
EXIT_HALTED = 1

EnsembleOption = Annotated[
    str | None,
    typer.Option(
        "--ensemble",
        metavar="NAME|PATH",
        help="tiny, default, a segmoe YAML or a checkpoint folder (default: EMOE_ENSEMBLE).",
    ),
]
SeedOption = Annotated[int, typer.Option(metavar="N", help="Seed of the first-step noise.")]
StepsOption = Annotated[
    int | None, typer.Option(metavar="N", help="Sampler steps (sets the first timestep).")
]

SCORE_HELP = (
    "Score prompts with the EMoE gate (epistemic uncertainty at the first denoising step).\n\n"
    "Prints one row per prompt (score, EU, experts, language, the policy's decision, fingerprint) under a "
    "line naming the scoring configuration. The default is the configuration the ensemble records: for the "
    "shipped reference ensemble, whole expert paths and the noise-prediction variance, not the paper's split "
    "(which gives AUROC 0.50 on it; see docs/reference-results.md). --paper scores with the paper's "
    "configuration (split at the first cross-attention, latent m_post).\n\n"
    "The decision comes from --policy, else the policy in force (EMOE_POLICY_PATH or the bundled one), when "
    "it was calibrated for this scoring configuration."
)


def _load(ensemble: str | None):
    from settings import get_settings

    settings = get_settings()
    spec = ensemble or settings.ensemble
    with spinner(f"loading the ensemble {spec!r}"):
        from emoe import load_ensemble

        quiet_libraries()
        return load_ensemble(spec, device=settings.device, dtype=settings.dtype)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _policy(path: Path | None) -> tuple[Any, bool]:
    """The policy to decide with, and whether the user named it (else: the one in force)."""
    from policies.policy import PolicyError, bundled_policy_path, load_policy
    from settings import get_settings

    settings = get_settings()
    chosen = path or settings.policy_path or bundled_policy_path(settings.dtype)
    try:
        return load_policy(chosen), path is not None
    except (OSError, PolicyError) as exc:
        where = "--policy" if path else ("EMOE_POLICY_PATH" if settings.policy_path else "bundled policy")
        _fail(f"{where}: {exc}")
        raise AssertionError("unreachable") from exc


def score_command(
    prompts: Annotated[
        list[str], typer.Argument(metavar="PROMPT...", click_type=NAMED, help="One or more prompts.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of score objects (with their decision).")
    ] = False,
    ensemble: EnsembleOption = None,
    seed: SeedOption = 0,
    steps: StepsOption = None,
    latent: Annotated[
        str | None, typer.Option(metavar="m_post|m_pre|z_prev|eps", help="The latent whose variance is read.")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            metavar="attn2|attn1|all|LAYER,...",
            help="Where the expert paths are forced apart: attn2, attn1, all, or MoE layer names.",
        ),
    ] = None,
    paper: Annotated[
        bool, typer.Option("--paper", help="The paper's scoring: split attn2, latent m_post.")
    ] = False,
    policy_path: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            metavar="FILE",
            help="Decide with this policy YAML (default: EMOE_POLICY_PATH or the bundled policy).",
        ),
    ] = None,
) -> None:
    from emoe import default_score_config, score
    from emoe.config import describe_scoring, paper_score_config

    if paper and (latent is not None or split is not None):
        _fail("--paper: sets the split and latent itself; drop --latent/--split")
    policy, named = _policy(policy_path)
    try:
        model = _load(ensemble)
        changes: dict[str, object] = {"seed": seed}
        if steps is not None:
            changes["steps"] = steps
        if latent is not None:
            changes["latent"] = latent
        if split is not None:
            changes["split"] = split if split in ("attn2", "attn1", "all") else tuple(split.split(","))
        config = default_score_config(model).replace(**changes)
        if paper:
            config = paper_score_config(config)
        with spinner(f"scoring {len(prompts)} prompt(s)"):
            scores = score(prompts, config, model)
    except ValueError as exc:
        _fail(str(exc))
        return
    decisions, why_none = _decide(scores, policy, named)
    described = describe_scoring(config)
    if model.is_random:
        typer.echo(f"NOTICE: ensemble {model.name!r} has random weights: the scores mean nothing.", err=True)
    if as_json:
        rows = [
            {**s.to_dict(), "scoring_description": described, "decision": d}
            for s, d in zip(scores, decisions, strict=True)
        ]
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    typer.echo(f"ensemble: {model.name} ({model.description})")
    typer.echo(described)
    if why_none:
        typer.echo(f"policy: {why_none}")
    else:
        typer.echo(f"policy: {policy.id} (flag above {policy.flag_at:.6g}, halt above {policy.halt_at:.6g})")
    typer.echo(
        f"{'score':>12}  {'eu':>10}  {'M':>2}  {'lang':<4}  {'decision':<8}  {'fingerprint':<12}  prompt"
    )
    for s, d in zip(scores, decisions, strict=True):
        trunc = " [truncated]" if s.truncated else ""
        action = d["action"] if d else "-"
        language = (d or {}).get("language") or "-"
        typer.echo(
            f"{s.score:12.6f}  {s.eu:10.4g}  {s.num_experts:>2}  {language:<4}  {action:<8}  "
            f"{s.fingerprint[:12]:<12}  {s.prompt!r}{trunc}"
        )


score_command.__doc__ = SCORE_HELP


def _decide(scores: list[Any], policy: Any, named: bool) -> tuple[list[dict[str, Any] | None], str | None]:
    """Each score's decision under `policy` (with the prompt's language), or why there is none."""
    from audit.language import detect_language
    from policies.decision import DecisionContext, decide

    if scores and scores[0].fingerprint != policy.fingerprint:
        why = (
            f"{policy.id} is calibrated for scoring configuration {policy.fingerprint[:12]}, these scores "
            f"are {scores[0].fingerprint[:12]}: no decision (calibrate a policy with `emoe-gate calibrate`)"
        )
        if named:
            _fail(f"--policy: {why}")
        return [None] * len(scores), why
    out: list[dict[str, Any] | None] = []
    for s in scores:
        language = detect_language(s.prompt)
        decision = decide(s, DecisionContext(language=language), policy)
        out.append({"action": decision.action, "reason": decision.reason, "language": language})
    return out, None


def generate_command(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", click_type=NAMED, help="The prompt.")],
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder to write the image(s) and score.json into.")
    ],
    ensemble: EnsembleOption = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed.")] = 0,
    steps: Annotated[int | None, typer.Option(metavar="N", help="Sampler steps.")] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Full EMoE (Algorithm 1): one image per path, disentangled at the first step only."
        ),
    ] = False,
    rollout: Annotated[
        str,
        typer.Option(
            metavar="moe|experts",
            help="With --full: moe (the paper: later steps through the ordinary MoE) or experts (each path "
            "stays forced to its expert at every step: each expert's own picture, not the paper).",
        ),
    ] = "moe",
    halt_above: Annotated[
        float | None,
        typer.Option(
            metavar="SCORE",
            help=f"Halt (no image, exit {EXIT_HALTED}) when the score is above this (stand-in for a policy).",
        ),
    ] = None,
) -> None:
    """Generate an image with Fast EMoE (or --full: M images); the score is written next to it.

    Exit status: 0 when it rendered, 1 when --halt-above halted it (no image), 2 on bad input.
    """
    from emoe import default_score_config, generate
    from emoe.config import describe_scoring

    try:
        model = _load(ensemble)
        config = default_score_config(model).replace(seed=seed, **({"steps": steps} if steps else {}))
        decide = None if halt_above is None else (lambda s: s.score <= halt_above)
        mode = "full" if full else "fast"
        with spinner(f"{'full' if full else 'Fast'} EMoE: gating and rendering"):
            result = generate(prompt, config, model, mode=mode, decide=decide, rollout=rollout)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc))
        return
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(result.images):
        path = out / (f"image_{i}.png" if full else "image.png")
        image.save(path)
        paths.append(str(path))
    described = describe_scoring(config)
    record = {
        "ensemble": model.summary(),
        "halted": result.halted,
        "images": paths,
        "timings_ms": result.timings_ms,
        "scoring_description": described,
        **result.score.to_dict(),
    }
    (out / "score.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if model.is_random:
        typer.echo(
            f"NOTICE: ensemble {model.name!r} has random weights: image and score mean nothing.", err=True
        )
    typer.echo(described)
    if result.halted:
        typer.echo(
            f"score {result.score.score:.6f} > --halt-above {halt_above:g}: halted (no image)  -> {out}"
        )
        sys.stdout.flush()
        raise typer.Exit(code=EXIT_HALTED)
    typer.echo(f"score {result.score.score:.6f}  {len(paths)} image(s)  -> {out}")
    sys.stdout.flush()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("score", help=SCORE_HELP)(score_command)
    app.command("generate")(generate_command)
