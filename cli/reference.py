"""Reference-ensemble commands: `reference train|verify`, `eval ood|languages|quartiles|ablation`.

torch and emoe are imported inside the commands (the gateway must not import torch at import time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.params import NAMED

EnsembleOption = Annotated[
    str,
    typer.Option(
        "--ensemble",
        metavar="NAME|DIR",
        help="default (the shipped reference ensemble) or a checkpoint folder.",
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", metavar="DIR", help="Folder for the JSON results and PNG plots.")
]
QuickOption = Annotated[bool, typer.Option("--quick", help="A smaller run (fewer prompts and resamples).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object, last line.")]


MAX_EVAL_THREADS = 2
THREADS_NOTE = (
    f"Runs on at most {MAX_EVAL_THREADS} torch threads (fewer when OMP_NUM_THREADS or the cores say so), as "
    "docs/reference-results.md was measured: the reference model's kernels are too small to share among "
    "more; on a busy machine OMP_NUM_THREADS=1 is faster still."
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _load(spec: str):
    import torch

    from emoe import load_ensemble

    # At most 2 threads: docs/reference-results.md was measured with 2, and the reference ensemble's kernels
    # (1.5 M-parameter UNets at 32x32) are too small to share among more; on this 2-core box under load, 32
    # prompts scored in 0.3 s on 1 thread and 6-23 s on 2, bit-identical. OMP_NUM_THREADS=1 lowers it to 1.
    torch.set_num_threads(max(1, min(torch.get_num_threads(), MAX_EVAL_THREADS)))
    ensemble = load_ensemble(spec, device="cpu", dtype="float32")
    if ensemble.is_random:
        typer.echo(f"warning: {ensemble.description}", err=True)
    return ensemble


def _auroc(r: dict) -> str:
    return f"AUROC {r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _report(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, default=str))
    else:
        for line in lines:
            typer.echo(line)


def train(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to build every part into.")],
    smoke: Annotated[
        bool, typer.Option("--smoke", help="A seconds-long plan (tests the code, not the model).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Load the stages already finished in --out.")
    ] = False,
    ship: Annotated[
        Path | None,
        typer.Option(
            "--ship", metavar="DIR", help="Also merge and save the fp16 checkpoint + manifest here."
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=1,
            max=8,
            metavar="N",
            help="Processes (= cores) to use: sets torch's thread count to N for the single-model stages "
            "(whatever OMP_NUM_THREADS says), and fine-tunes N experts at once, one thread each.",
        ),
    ] = 1,
    expert_seed_offset: Annotated[
        int,
        typer.Option(
            "--expert-seed-offset",
            min=0,
            metavar="N",
            help="Shift every expert's seed (and so its data sample) by this much: the seed-robustness "
            "runs of docs/reference-results.md (e.g. 100; with --resume on a folder holding the base).",
        ),
    ] = 0,
) -> None:
    """Rebuild the reference ensemble from seeds: VAE, CLIP, base, 4 experts, segmoe YAML (progress bars)."""
    import dataclasses

    import torch

    from reference.training import TrainPlan, build_all

    torch.set_num_threads(jobs)
    plan = TrainPlan.smoke() if smoke else TrainPlan()
    if expert_seed_offset:
        plan = dataclasses.replace(
            plan,
            experts=tuple(dataclasses.replace(e, seed=e.seed + expert_seed_offset) for e in plan.experts),
        )
    summary = build_all(out, plan, show=True, resume=resume, jobs=jobs)
    typer.echo(
        f"built {out} in {summary.get('total_s', 0.0):.0f} s: {json.dumps(summary.get('timings_s', {}))}"
    )
    if ship is not None:
        from reference.ship import ship as ship_to

        manifest = ship_to(out, ship)
        typer.echo(f"shipped {ship} ({manifest['total_bytes']} bytes, {len(manifest['files'])} files)")


def verify(
    folder: Annotated[
        Path | None,
        typer.Argument(metavar="FOLDER", click_type=NAMED, help="Shipped folder (default: the package's)."),
    ] = None,
) -> None:
    """Check the shipped reference ensemble's files against its manifest of sha256 hashes."""
    from reference.ship import ENSEMBLE_DIR, verify_manifest

    problems = verify_manifest(folder or ENSEMBLE_DIR)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(code=1)
    typer.echo("ok: every file matches the manifest")


def ood(
    quick: QuickOption = False,
    as_json: JsonOption = False,
    ensemble: EnsembleOption = "default",
    out: OutOption = Path("results/reference"),
) -> None:
    """AUROC (bootstrap 95 % CI): prompts in languages 1-2 experts saw against dominant-language prompts."""
    from reference.experiments import eval_ood

    result = eval_ood(_load(ensemble), quick=quick, out_dir=out)
    scored = [(name, result[name]) for name in ("default", "paper")]
    lines = [
        f"{name}: {_auroc(r)}  split={r['scoring']['config']['split']}"
        f" latent={r['scoring']['config']['latent']}"
        for name, r in scored
    ]
    lines += [
        f"{name}, same token count only, against {r['token_stratified']['negatives']}: "
        f"{_auroc(r['token_stratified'])}"
        for name, r in scored
    ]
    lines += [
        f"{name} on {result['scenes']['choice_scenes']}: {_auroc(r['choice_scenes'])}; "
        f"on {result['scenes']['all_scenes']}: {_auroc(r['all_scenes'])}"
        for name, r in scored
    ]
    head = f"on {result['scenes']['headline']}:"
    _report(result, as_json, [head, *lines, f"written to {out}/ood.json and ood.png"])


def languages(
    quick: QuickOption = False,
    as_json: JsonOption = False,
    ensemble: EnsembleOption = "default",
    out: OutOption = Path("results/reference"),
) -> None:
    """Per-language mean score against quality (CLIP score, rule accuracy) and their correlation."""
    from reference.experiments import eval_languages

    result = eval_languages(_load(ensemble), quick=quick, out_dir=out)
    lines = [
        f"{k}: r = {v['r']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}] (prompts resampled; languages"
        f" resampled: [{v['ci_languages_resampled'][0]:.3f}, {v['ci_languages_resampled'][1]:.3f}])"
        for k, v in result["correlation"].items()
    ]
    _report(result, as_json, [*lines, f"written to {out}/languages.json and languages.png"])


def quartiles(
    quick: QuickOption = False,
    as_json: JsonOption = False,
    ensemble: EnsembleOption = "default",
    out: OutOption = Path("results/reference"),
) -> None:
    """Quality, prompt length and keyword share per score quartile (figure 4, tables 1, 3 and 4)."""
    from reference.experiments import eval_quartiles

    result = eval_quartiles(_load(ensemble), quick=quick, out_dir=out)
    lines = [
        f"Q{q['quartile']}: clip {q['clip_score']:.2f} rule {q['rule_accuracy']:.3f} ssim {q['ssim']:.3f}"
        f" chars {q['chars']:.1f}"
        for q in result["quartiles"]
    ]
    _report(result, as_json, [*lines, f"written to {out}/quartiles.json and quartiles.png"])


def ablation(
    quick: QuickOption = False,
    as_json: JsonOption = False,
    ensemble: EnsembleOption = "default",
    out: OutOption = Path("results/reference"),
) -> None:
    """Ensemble size, latent, split depth, output-space variance, first vs later steps: AUROC and cost."""
    from reference.experiments import eval_ablation

    result = eval_ablation(_load(ensemble), quick=quick, out_dir=out)
    lines = [f"{r['name']}: {_auroc(r)} gate {r['gate_ms']:.1f} ms" for r in result["rows"]]
    _report(result, as_json, [*lines, f"written to {out}/ablation.json and ablation.png"])


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    groups["reference"].command("train")(train)
    groups["reference"].command("verify")(verify)
    groups["eval"].command("ood", epilog=THREADS_NOTE)(ood)
    groups["eval"].command("languages", epilog=THREADS_NOTE)(languages)
    groups["eval"].command("quartiles", epilog=THREADS_NOTE)(quartiles)
    groups["eval"].command("ablation", epilog=THREADS_NOTE)(ablation)
