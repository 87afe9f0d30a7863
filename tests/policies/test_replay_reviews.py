"""`calibrate --from-reviews` and `replay` over reviewed jobs in a real (SQLite) audit log: the thresholds
meet the named target on the reviewed jobs, and replay counts exactly what the new policy lets through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from audit import db
from audit.db import session_scope
from audit.reviews import record_verdict
from cli.main import app
from policies import dump_policy, load_policy
from tests.gateway.test_reviews import HOLD, gated


@pytest.fixture
def reviewed_log(tmp_path: Path) -> tuple[str, Path, list[tuple[float, str]]]:
    """A log of 150 jobs scored 1.0-3.0 under HOLD (flag above 1, halt above 2, halts reviewed), each
    decided by a 'reviewer' who rejects every prompt scored 1.8 or more."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    db.upgrade(url)
    rng = np.random.default_rng(5)
    truth = []
    for score in np.round(rng.uniform(1.01, 3.0, 150), 4):
        job_id = gated(url, tmp_path, "acme", float(score))
        verdict = "reject" if score >= 1.8 else "approve"
        with session_scope(url) as session:
            record_verdict(session, job_id, "acme", verdict=verdict, reviewer="emg_sim")
        truth.append((float(score), verdict))
    gated(url, tmp_path, "acme", 0.5)  # continued: no verdict
    base = tmp_path / "base.yaml"
    base.write_text(dump_policy(HOLD), encoding="utf-8")
    return url, base, truth


def test_calibrate_from_reviews_then_replay(reviewed_log, tmp_path: Path) -> None:
    url, base, truth = reviewed_log
    out = tmp_path / "learned.yaml"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "calibrate", "--from-reviews", "--db", url, "--policy", str(base), "--out", str(out),
            "--max-unreviewed-rejects", "0.1", "--max-halted-approvals", "0.2", "--confidence", "0.9",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "150 reviewed jobs" in result.output and "1 decisions without a verdict" in result.output
    policy = load_policy(out)
    record = policy.calibration
    rejected = [s for s, v in truth if v == "reject"]
    approved = [s for s, v in truth if v == "approve"]
    assert (record["n_rejected"], record["n_approved"]) == (len(rejected), len(approved))
    missed = sum(s <= policy.flag_at for s in rejected)
    assert record["flag_at"]["errors"] == missed and record["flag_at"]["bound"] <= 0.1
    assert 1.7 < policy.flag_at < 1.9  # just below the rejected scores, allowing a few misses
    assert record["method"] == "clopper-pearson" and record["provenance"]["unreviewed_decisions"] == 1
    assert (policy.fingerprint, policy.on_flag, policy.on_halt) == (HOLD.fingerprint, "hold", "review")
    assert (policy.name, policy.version) == (HOLD.name, f"{HOLD.version}-reviewed")

    replayed = runner.invoke(app, ["replay", "--db", url, "--policy", str(out), "--json", "--no-store"])
    assert replayed.exit_code == 0, replayed.output
    reviewed = json.loads(replayed.output)["reviewed"]
    assert reviewed == {
        "rejected": len(rejected),
        "rejected_let_through": missed,
        "approved": len(approved),
        "approved_stopped": sum(s > policy.halt_at for s in approved),
        "approved_held": sum(policy.flag_at < s <= policy.halt_at for s in approved),
    }
    text = runner.invoke(app, ["replay", "--db", url, "--policy", str(base), "--no-store"]).output
    # the base policy flags everything above 1: no rejected prompt continues, halts above 2 stop none of
    # the approved (all below 1.8)
    assert f"0 of {len(rejected)} rejected would be let through" in text
    assert f"0 of {len(approved)} approved would be stopped" in text


def test_calibrate_from_reviews_refuses_what_it_cannot_show(reviewed_log, tmp_path: Path) -> None:
    url, base, _ = reviewed_log
    runner = CliRunner()
    common = ["calibrate", "--from-reviews", "--db", url, "--policy", str(base), "--out", str(tmp_path / "p")]
    for extra, message in (
        (["--max-unreviewed-rejects", "0.001", "--confidence", "0.9"], "needs at least 2302 rejected"),
        (["--max-unreviewed-rejects", "0.1"], "--confidence"),
        ([], "--max-unreviewed-rejects"),
        (["--max-unreviewed-rejects", "0.1", "--method", "magic"], "--method"),
        (["--max-unreviewed-rejects", "0.1", "--confidence", "0.9", "--prompts", "x.txt"], "--prompts"),
    ):
        result = runner.invoke(app, common + extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    assert not (tmp_path / "p").exists()
