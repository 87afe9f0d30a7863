"""`emoe-gate calibrate` (thresholds from reference prompts) and `emoe-gate replay` (policy over the log)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.audit import DbOption, open_database


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with `#` are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise _fail(f"--prompts: cannot read {path} ({exc.strerror or exc})") from exc
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise _fail(f"--prompts: {path} holds no prompts (one per line, '#' starts a comment)")
    return prompts


def parse_since(value: str | None) -> datetime | None:
    """An ISO date or date-time; naive values are UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(f"--since: {value!r} is not an ISO date such as 2026-11-01 or 2026-11-01T12:00") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @app.command("calibrate")
    def calibrate(
        prompts: Annotated[Path, typer.Option("--prompts", help="Reference prompts, one per line.")],
        out: Annotated[Path, typer.Option("--out", help="Where to write the policy YAML.")],
        flag_quantile: Annotated[float, typer.Option(help="Flag above this conformal quantile.")] = 0.75,
        halt_quantile: Annotated[float, typer.Option(help="Halt above this conformal quantile.")] = 0.95,
        name: Annotated[str, typer.Option(help="Policy name.")] = "default",
        version: Annotated[str, typer.Option(help="Policy version.")] = "1",
        mode: Annotated[str, typer.Option(help="enforce or shadow.")] = "enforce",
        ensemble: Annotated[
            str | None, typer.Option(help="Ensemble spec (default: EMOE_ENSEMBLE, i.e. 'default').")
        ] = None,
        resamples: Annotated[
            int, typer.Option(help="Bootstrap resamples for the threshold intervals.")
        ] = 2000,
        seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
        on_flag: Annotated[
            str, typer.Option(help="release (flagged jobs complete) or hold (their images await review).")
        ] = "release",
        on_halt: Annotated[
            str, typer.Option(help="final (a halt stands) or review (a reviewer may approve a halted job).")
        ] = "final",
    ) -> None:
        """Score reference prompts and write a policy whose thresholds are their split-conformal quantiles."""
        from policies import PolicyError, dump_policy
        from policies.calibration import CalibrationError, calibrate_policy, min_reference_size
        from policies.policy import ON_FLAG, ON_HALT
        from settings import get_settings

        settings = get_settings()
        # 1. the reference prompts, enough of them for finite thresholds (checked before any scoring)
        for option, value, allowed in (("--on-flag", on_flag, ON_FLAG), ("--on-halt", on_halt, ON_HALT)):
            if value not in allowed:
                raise _fail(f"{option}: must be one of {', '.join(allowed)}, got {value!r}")
        texts = read_prompts(prompts)
        for option, q in (("--flag-quantile", flag_quantile), ("--halt-quantile", halt_quantile)):
            try:
                needed = min_reference_size(q, option)
            except CalibrationError as exc:
                raise _fail(str(exc)) from exc
            if len(texts) < needed:
                raise _fail(
                    f"{option}: {q} needs at least {needed} reference prompts, --prompts has {len(texts)}"
                )

        # 2. score them with the ensemble's default scoring configuration (what policies are calibrated for)
        import emoe

        spec = ensemble or settings.ensemble
        model = emoe.load_ensemble(spec, device=settings.device, dtype=settings.dtype)
        config = emoe.default_score_config(model)
        scores = emoe.score(texts, config, model)
        fingerprints = {s.fingerprint for s in scores}
        if len(fingerprints) != 1:
            raise _fail(f"scoring gave {len(fingerprints)} different fingerprints for one configuration")

        # 3. thresholds from the quantiles, with provenance
        provenance = {
            "prompts_file": prompts.name,
            "prompts_sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(),
            "ensemble": model.name,
            "ensemble_is_random": bool(model.is_random),
            "weights_hash": model.weights_hash,
            "scoring": scores[0].scoring,
        }
        try:
            policy = calibrate_policy(
                [s.score for s in scores],
                fingerprint=scores[0].fingerprint,
                flag_quantile=flag_quantile,
                halt_quantile=halt_quantile,
                name=name,
                version=version,
                mode=mode,
                resamples=resamples,
                seed=seed,
                provenance=provenance,
            )
            policy = dataclasses.replace(policy, on_flag=on_flag, on_halt=on_halt)
        except (CalibrationError, PolicyError) as exc:
            raise _fail(str(exc)) from exc

        # 4. write it, with the command that regenerates it
        command = (
            f"emoe-gate calibrate --prompts {shlex.quote(str(prompts))} --flag-quantile {flag_quantile} "
            f"--halt-quantile {halt_quantile} --name {shlex.quote(name)} --version {shlex.quote(version)} "
            f"--ensemble {shlex.quote(spec)} --out {shlex.quote(str(out))}"
        )
        command += f" --on-flag {on_flag}" if on_flag != ON_FLAG[0] else ""
        command += f" --on-halt {on_halt}" if on_halt != ON_HALT[0] else ""
        header = f"# Generated by: {command}\n# Policy id: {policy.id}\n"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + dump_policy(policy), encoding="utf-8")
        typer.echo(
            f"{policy.id}: flag_at {policy.flag_at:.6g}, halt_at {policy.halt_at:.6g} "
            f"from {len(scores)} prompts on ensemble {model.name!r} -> {out}"
        )
        if model.is_random:
            typer.echo(
                f"note: ensemble {model.name!r} has random weights; its thresholds mean nothing", err=True
            )

    @app.command("replay")
    def replay(
        policy: Annotated[Path, typer.Option("--policy", help="Policy YAML to replay.")],
        since: Annotated[
            str | None, typer.Option(help="Only decisions from this ISO date or time on.")
        ] = None,
        db: DbOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        store: Annotated[bool, typer.Option("--store/--no-store", help="Record the replay run.")] = True,
    ) -> None:
        """Apply a policy to the stored scores: what would change (per action, from→to, per language)."""
        from audit.db import session_scope
        from audit.replay import decision_records, store_replay_run
        from policies import PolicyError, load_policy
        from policies.replay import format_summary
        from policies.replay import replay as run_replay

        try:
            loaded = load_policy(policy)
        except PolicyError as exc:
            raise _fail(f"--policy: {exc}") from exc
        start = parse_since(since)
        url = open_database(db)
        with session_scope(url) as session:
            summary = run_replay(decision_records(session, start), loaded)
            run_id = store_replay_run(session, loaded, summary, start).id if store else None
        if as_json:
            typer.echo(json.dumps({**summary.to_dict(), "replay_run_id": run_id}))
        else:
            typer.echo(format_summary(summary))
            if run_id is not None:
                typer.echo(f"\nstored as replay run {run_id}")
