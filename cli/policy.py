"""`emoe-gate calibrate` (thresholds from reference prompts, or `--from-reviews` from reviewers' verdicts) and
`emoe-gate replay` (policy over the log)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.audit import DbOption, open_database
from cli.progress import spinner


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


def _since(value: str | None) -> datetime | None:
    """`--since` through the one `parse_since`, or a one-line error."""
    from audit.report_queries import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise _fail(f"--{exc}") from exc


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""

    @app.command("calibrate")
    def calibrate(
        out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Where to write the policy YAML.")],
        prompts: Annotated[
            Path | None, typer.Option("--prompts", metavar="FILE", help="Reference prompts, one per line.")
        ] = None,
        flag_quantile: Annotated[
            float, typer.Option(metavar="Q", help="Flag above this conformal quantile.")
        ] = 0.75,
        halt_quantile: Annotated[
            float, typer.Option(metavar="Q", help="Halt above this conformal quantile.")
        ] = 0.95,
        name: Annotated[str, typer.Option("--name", metavar="NAME", help="Policy name.")] = "default",
        version: Annotated[
            str,
            typer.Option(
                "--version",
                metavar="VERSION",
                help='Policy version (--from-reviews: default the base version + "-reviewed").',
            ),
        ] = "1",
        mode: Annotated[str, typer.Option(metavar="enforce|shadow", help="enforce or shadow.")] = "enforce",
        ensemble: Annotated[
            str | None,
            typer.Option(metavar="NAME|PATH", help="Ensemble spec (default: EMOE_ENSEMBLE, i.e. 'default')."),
        ] = None,
        resamples: Annotated[
            int, typer.Option(metavar="N", help="Bootstrap resamples for the threshold intervals.")
        ] = 2000,
        seed: Annotated[int, typer.Option(metavar="N", help="Bootstrap seed.")] = 0,
        on_flag: Annotated[
            str,
            typer.Option(
                metavar="release|hold",
                help="release (flagged jobs complete) or hold (their images await review).",
            ),
        ] = "release",
        on_halt: Annotated[
            str,
            typer.Option(
                metavar="final|review",
                help="final (a halt stands) or review (a reviewer may approve a halted job).",
            ),
        ] = "final",
        from_reviews: Annotated[
            bool,
            typer.Option(
                "--from-reviews", help="Choose the thresholds from reviewed jobs in the audit log instead."
            ),
        ] = False,
        max_unreviewed_rejects: Annotated[
            float | None,
            typer.Option(
                metavar="SHARE",
                help="--from-reviews: at most this share of rejected prompts continue unreviewed.",
            ),
        ] = None,
        max_halted_approvals: Annotated[
            float | None,
            typer.Option(
                metavar="SHARE", help="--from-reviews: at most this share of approved prompts halt."
            ),
        ] = None,
        confidence: Annotated[
            float | None,
            typer.Option(
                metavar="LEVEL",
                help="--from-reviews: the targets hold with this probability (clopper-pearson).",
            ),
        ] = None,
        method: Annotated[
            str,
            typer.Option(
                metavar="clopper-pearson|crc",
                help="--from-reviews: clopper-pearson (with --confidence) or crc (in expectation).",
            ),
        ] = "clopper-pearson",
        base: Annotated[
            Path | None,
            typer.Option(
                "--policy",
                metavar="FILE",
                help="--from-reviews: the policy to start from (default: the one in force).",
            ),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(
                metavar="DATE", help="--from-reviews: only decisions from this ISO date or time on."
            ),
        ] = None,
        tenant: Annotated[
            str | None,
            typer.Option("--tenant", metavar="TENANT", help="--from-reviews: only this tenant's jobs."),
        ] = None,
        db: DbOption = None,
    ) -> None:
        """Write a policy: thresholds at the split-conformal quantiles of reference prompts' scores, or with
        --from-reviews chosen from reviewers' verdicts for a named target."""
        from policies import PolicyError, dump_policy
        from policies.calibration import CalibrationError, calibrate_policy, min_reference_size
        from policies.policy import ON_FLAG, ON_HALT
        from settings import get_settings

        settings = get_settings()
        if from_reviews:
            if prompts is not None:
                raise _fail("--prompts: not with --from-reviews (the scores come from the audit log)")
            _calibrate_from_reviews(
                out=out,
                base=base,
                name=name,
                version=version,
                max_unreviewed_rejects=max_unreviewed_rejects,
                max_halted_approvals=max_halted_approvals,
                confidence=confidence,
                method=method,
                since=since,
                tenant=tenant,
                db=db,
            )
            return
        if prompts is None:
            raise _fail("--prompts: give the reference prompts file (or --from-reviews)")
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
        with spinner(f"loading the ensemble {spec!r}"):
            model = emoe.load_ensemble(spec, device=settings.device, dtype=settings.dtype)
        config = emoe.default_score_config(model)
        with spinner(f"scoring {len(texts)} reference prompts"):
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

    def _calibrate_from_reviews(
        *,
        out: Path,
        base: Path | None,
        name: str,
        version: str,
        max_unreviewed_rejects: float | None,
        max_halted_approvals: float | None,
        confidence: float | None,
        method: str,
        since: str | None,
        tenant: str | None,
        db: str | None,
    ) -> None:
        from audit.db import session_scope
        from audit.replay import reviewed_scores
        from policies import PolicyError, bundled_policy_path, dump_policy, load_policy
        from policies.calibration import CalibrationError
        from policies.conformal import METHODS, calibrate_from_reviews
        from settings import get_settings

        if method not in METHODS:
            raise _fail(f"--method: must be one of {', '.join(METHODS)}, got {method!r}")
        if max_unreviewed_rejects is None and max_halted_approvals is None:
            raise _fail("--max-unreviewed-rejects: name a target (and/or --max-halted-approvals)")
        if method == "clopper-pearson" and confidence is None:
            raise _fail("--confidence: the clopper-pearson method needs one (e.g. 0.9), or use --method crc")
        settings = get_settings()
        try:
            start_policy = load_policy(base or settings.policy_path or bundled_policy_path(settings.dtype))
        except PolicyError as exc:
            raise _fail(f"--policy: {exc}") from exc
        start = _since(since)
        url = open_database(db)
        with session_scope(url) as session:
            reviewed, unreviewed = reviewed_scores(
                session, start_policy.fingerprint, since=start, tenant=tenant
            )
        provenance = {
            "database": url.split("@")[-1],
            "since": start.isoformat() if start else None,
            "tenant": tenant,
            "unreviewed_decisions": unreviewed,
        }
        try:
            policy = calibrate_from_reviews(
                reviewed,
                start_policy,
                max_unreviewed_rejects=max_unreviewed_rejects,
                max_halted_approvals=max_halted_approvals,
                method=method,
                confidence=confidence,
                name=name if name != "default" else None,
                version=version if version != "1" else f"{start_policy.version}-reviewed",
                provenance=provenance,
            )
        except (CalibrationError, PolicyError) as exc:
            raise _fail(str(exc)) from exc
        command = f"emoe-gate calibrate --from-reviews --method {method}"
        for option, value in (
            ("--max-unreviewed-rejects", max_unreviewed_rejects),
            ("--max-halted-approvals", max_halted_approvals),
            ("--confidence", confidence),
            ("--policy", base),
            ("--since", since),
            ("--tenant", tenant),
        ):
            command += f" {option} {shlex.quote(str(value))}" if value is not None else ""
        command += f" --out {shlex.quote(str(out))}"
        out.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Generated by: {command}\n# Policy id: {policy.id}\n"
        out.write_text(header + dump_policy(policy), encoding="utf-8")
        record = policy.calibration
        typer.echo(
            f"{policy.id}: flag_at {policy.flag_at:.6g}, halt_at {policy.halt_at:.6g} from "
            f"{record['n_reviewed']} reviewed jobs ({record['n_rejected']} rejected, "
            f"{record['n_approved']} approved; {unreviewed} decisions without a verdict) -> {out}"
        )
        for key in ("flag_at", "halt_at"):
            choice = record[key]
            if "errors" in choice:
                lo, hi = choice["interval"]
                typer.echo(
                    f"  {key}: {choice['errors']} of {choice['n']} reviewed on the wrong side "
                    f"(target {choice['target']}, bound {choice['bound']:.4g}, "
                    f"{choice['interval_confidence']:.0%} interval {lo:.4g}-{hi:.4g})"
                )
        typer.echo(f"  {record['scope']}")

    @app.command("replay")
    def replay(
        policy: Annotated[Path, typer.Option("--policy", metavar="FILE", help="Policy YAML to replay.")],
        since: Annotated[
            str | None, typer.Option(metavar="DATE", help="Only decisions from this ISO date or time on.")
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
        start = _since(since)
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


def simulated_review(url: str, tenant: str, scenes: Mapping[uuid.UUID, str], policy: Any, out: Path) -> str:
    """The demo's simulated reviewer: each held job of `tenant` is approved if the reference world's rule
    (`reference.rule_reader`) reads its image as the scene its prompt describes, else rejected; then a
    policy is calibrated from these verdicts into `out`. Returns what to tell the user."""
    from collections import Counter

    import numpy as np
    from PIL import Image

    from audit.db import session_scope
    from audit.replay import reviewed_scores
    from audit.review_stats import SIMULATED_REVIEWER
    from audit.reviews import record_verdict, review_queue
    from policies import dump_policy
    from policies.calibration import CalibrationError
    from policies.conformal import calibrate_from_reviews
    from reference.rule_reader import ATTRIBUTES, read
    from reference.world import all_scenes

    by_key = {s.key: s for s in all_scenes()}
    counts: Counter[str] = Counter()
    with session_scope(url) as session:
        for job in review_queue(session, tenant, limit=500).jobs:
            scene = by_key.get(scenes.get(job.id, ""))
            if scene is None or not job.artifacts:  # a halted job has no picture to judge: it stays queued
                counts["left"] += 1
                continue
            with Image.open(job.artifacts[0].storage_uri.removeprefix("file://")) as image:
                marks = read(np.asarray(image.convert("RGB"))).accuracy(scene)
            wrong = [a for a in ATTRIBUTES if marks[a] < 1.0]
            verdict = "reject" if wrong else "approve"
            note = (
                f"simulated: the rule reads {', '.join(wrong)} wrong" if wrong else "simulated: reads right"
            )
            record_verdict(session, job.id, tenant, verdict=verdict, reviewer=SIMULATED_REVIEWER, note=note)
            counts[verdict] += 1
    message = (
        f"simulated review (not a person: the reference world's rule judged each held image): "
        f"{counts['approve']} approved, {counts['reject']} rejected, {counts['left']} left in the queue"
    )
    with session_scope(url) as session:
        reviewed, unreviewed = reviewed_scores(session, policy.fingerprint, tenant=tenant)
    try:
        learned = calibrate_from_reviews(
            reviewed,
            policy,
            max_unreviewed_rejects=0.25,
            method="crc",
            version=f"{policy.version}-reviewed",
            provenance={"source": "the demo's simulated review", "unreviewed_decisions": unreviewed},
        )
    except CalibrationError as exc:
        return f"{message}\nno calibrated policy from these verdicts: {exc}"
    path = out / "calibrated-policy.yaml"
    header = "# Calibrated by `emoe-gate demo` from SIMULATED verdicts (conformal risk control)\n"
    path.write_text(header + f"# Policy id: {learned.id}\n" + dump_policy(learned), encoding="utf-8")
    return (
        f"{message}\ncalibrated from these verdicts (at most 25 % of rejected prompts unreviewed, in "
        f"expectation): flag_at {learned.flag_at:.4g} -> {path}"
    )
