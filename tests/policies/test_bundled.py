"""The bundled default policy matches the default ensemble's default scoring (recalibrate when either
changes), and `emoe-gate calibrate` writes policies from reference prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies import DecisionContext, bundled_policy_path, decide, load_policy

RECALIBRATE = (
    "emoe-gate calibrate --prompts policies/bundled/calibration_prompts.txt --flag-quantile 0.75 "
    "--halt-quantile 0.95 --name default --version {version} --ensemble default "
    "--out policies/bundled/default.yaml --on-flag hold"
)
CALIBRATION_PROMPTS = Path(__file__).resolve().parents[2] / "policies" / "bundled" / "calibration_prompts.txt"


@pytest.fixture(scope="module")
def default_ensemble():
    import emoe

    return emoe.load_ensemble("default")


def test_bundled_policy_is_valid() -> None:
    policy = load_policy(bundled_policy_path())
    assert policy.name == "default" and policy.mode == "enforce"
    assert policy.on_flag == "hold" and load_policy(bundled_policy_path("float16")).on_flag == "hold"
    assert policy.flag_at <= policy.halt_at
    lines = CALIBRATION_PROMPTS.read_text().splitlines()
    prompts = [line for line in lines if line.strip() and not line.startswith("#")]
    assert policy.calibration["n"] == len(prompts)
    # the header says how to regenerate it
    assert RECALIBRATE.format(version=policy.version) in bundled_policy_path().read_text()


@pytest.mark.slow
def test_bundled_policy_fingerprint_is_the_default_scoring_fingerprint(default_ensemble) -> None:
    import emoe

    policy = load_policy(bundled_policy_path())
    [score] = emoe.score(
        ["a small red circle"], emoe.default_score_config(default_ensemble), default_ensemble
    )
    assert score.fingerprint == policy.fingerprint, (
        "the default scoring configuration or the default ensemble changed: recalibrate the bundled policy "
        f"with `{RECALIBRATE}`"
    )
    assert decide(score, DecisionContext(language="en"), policy).action in {"continue", "flag", "halt"}


@pytest.mark.slow
def test_the_float16_bundled_policy_matches_float16_scoring() -> None:
    """The worker image runs float16 (docker/worker.Dockerfile): its bundled policy must match that scoring,
    and its thresholds the float32 ones closely (float16 moves the scores by under 1 %)."""
    import emoe

    ensemble = emoe.load_ensemble("default", dtype="float16")
    policy = load_policy(bundled_policy_path("float16"))
    assert bundled_policy_path("float16").name == "default-float16.yaml"
    [score] = emoe.score(["a small red circle"], emoe.default_score_config(ensemble), ensemble)
    assert score.fingerprint == policy.fingerprint, (
        "recalibrate the float16 bundled policy: "
        f"`EMOE_DTYPE=float16 {RECALIBRATE.replace('default.yaml', 'default-float16.yaml')}`"
    )
    float32 = load_policy(bundled_policy_path())
    assert policy.fingerprint != float32.fingerprint
    assert policy.flag_at == pytest.approx(float32.flag_at, rel=0.02)
    assert policy.halt_at == pytest.approx(float32.halt_at, rel=0.02)
    assert bundled_policy_path("bfloat16") == bundled_policy_path()  # none bundled: the worker refuses it


@pytest.mark.slow
def test_calibrate_command_on_the_tiny_ensemble(tmp_path: Path) -> None:
    from cli.main import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# shapes\na red circle\n\na blue square\na green triangle\na yellow star\na black ring\n"
    )
    out = tmp_path / "policy.yaml"
    args = ["calibrate", "--prompts", str(prompts), "--flag-quantile", "0.5", "--halt-quantile", "0.8"]
    result = CliRunner().invoke(app, [*args, "--ensemble", "tiny", "--out", str(out), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    policy = load_policy(out)
    cal = policy.calibration
    # n = 5: ceil(6 * 0.5) = 3rd and ceil(6 * 0.8) = 5th smallest of the five scores
    assert (cal["n"], cal["flag_rank"], cal["halt_rank"]) == (5, 3, 5)
    assert cal["score_min"] <= policy.flag_at <= policy.halt_at == cal["score_max"]
    assert cal["provenance"]["ensemble_is_random"] is True


def test_calibrate_refuses_too_few_prompts_before_scoring(tmp_path: Path) -> None:
    from cli.main import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\n")
    args = [
        "calibrate",
        "--prompts",
        str(prompts),
        "--halt-quantile",
        "0.95",
        "--out",
        str(tmp_path / "p.yaml"),
    ]
    result = CliRunner().invoke(app, [*args, "--ensemble", "no-such-ensemble"])
    assert result.exit_code == 2
    assert "--halt-quantile: 0.95 needs at least 19 reference prompts, --prompts has 3" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    result = CliRunner().invoke(
        app, ["calibrate", "--prompts", str(empty), "--out", str(tmp_path / "p.yaml")]
    )
    assert result.exit_code == 2 and "holds no prompts" in result.output


def test_calibrate_refuses_an_unknown_on_flag_before_scoring(tmp_path: Path) -> None:
    from cli.main import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n" * 30)
    args = ["calibrate", "--prompts", str(prompts), "--out", str(tmp_path / "p.yaml"), "--on-flag", "block"]
    result = CliRunner().invoke(app, [*args, "--ensemble", "no-such-ensemble"])
    assert result.exit_code == 2 and "--on-flag: must be one of release, hold" in result.output
