"""CLI commands of the EMoE core: `score` and `generate` (torch and emoe are imported inside the commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

EnsembleOption = Annotated[
    str | None,
    typer.Option(
        "--ensemble", help="tiny, default, a segmoe YAML or a checkpoint folder (default: EMOE_ENSEMBLE)"
    ),
]


def _load(ensemble: str | None):
    from emoe import load_ensemble
    from settings import get_settings

    settings = get_settings()
    return load_ensemble(ensemble or settings.ensemble, device=settings.device, dtype=settings.dtype)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def score_command(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of score objects.")] = False,
    ensemble: EnsembleOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the first-step noise.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (sets the first timestep).")] = None,
    latent: Annotated[str | None, typer.Option(help="m_post, m_pre, z_prev or eps.")] = None,
    split: Annotated[
        str | None, typer.Option(help="attn2, attn1, all, or MoE layer names (comma-separated).")
    ] = None,
) -> None:
    """Score prompts with the EMoE gate (epistemic uncertainty at the first denoising step)."""
    from emoe import default_score_config, score

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
        scores = score(prompts, config, model)
    except ValueError as exc:
        _fail(str(exc))
        return
    if model.is_random:
        typer.echo(f"NOTICE: ensemble {model.name!r} has random weights: the scores mean nothing.", err=True)
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in scores]))
        return
    typer.echo(f"ensemble: {model.name} ({model.description})")
    for s in scores:
        trunc = " [truncated]" if s.truncated else ""
        line = f"{s.score:12.6f}  eu={s.eu:.6g}  M={s.num_experts}  {s.fingerprint[:12]}  {s.prompt!r}{trunc}"
        typer.echo(line)


def generate_command(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the image(s) and score.json into.")],
    ensemble: EnsembleOption = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampler steps.")] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Full EMoE (Algorithm 1): one image per path, disentangled at the first step only."
        ),
    ] = False,
    rollout: Annotated[
        str,
        typer.Option(
            help="With --full: moe (the paper: later steps through the ordinary MoE) or experts (each path "
            "stays forced to its expert at every step: each expert's own picture, not the paper)."
        ),
    ] = "moe",
    halt_above: Annotated[
        float | None,
        typer.Option(help="Halt (no image) when the score is above this (stand-in for a policy)."),
    ] = None,
) -> None:
    """Generate an image with Fast EMoE (or --full: M images); the score is written next to it."""
    from emoe import default_score_config, generate

    try:
        model = _load(ensemble)
        config = default_score_config(model).replace(seed=seed, **({"steps": steps} if steps else {}))
        decide = None if halt_above is None else (lambda s: s.score <= halt_above)
        mode = "full" if full else "fast"
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
    record = {
        "ensemble": model.summary(),
        "halted": result.halted,
        "images": paths,
        "timings_ms": result.timings_ms,
        **result.score.to_dict(),
    }
    (out / "score.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if model.is_random:
        typer.echo(
            f"NOTICE: ensemble {model.name!r} has random weights: image and score mean nothing.", err=True
        )
    status = "halted (no image)" if result.halted else f"{len(paths)} image(s)"
    typer.echo(f"score {result.score.score:.6f}  {status}  -> {out}")
    sys.stdout.flush()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("score")(score_command)
    app.command("generate")(generate_command)
