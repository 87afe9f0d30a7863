"""Thresholds from reviewed jobs: the bounds against scipy, and the guarantee on synthetic verdicts whose
score distributions are known, so the realised error rate of each chosen threshold is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from policies import parse_policy
from policies.calibration import CalibrationError
from policies.conformal import (
    ReviewedScore,
    allowed_errors,
    calibrate_from_reviews,
    choose_flag_at,
    choose_halt_at,
    clopper_pearson_interval,
    clopper_pearson_upper,
    min_reviewed,
)

BASE = parse_policy(
    {
        "name": "base",
        "version": "1",
        "fingerprint": "a" * 64,
        "flag_at": 0.5,
        "halt_at": 2.0,
        "on_flag": "hold",
    }
)


def test_clopper_pearson_bounds_are_the_exact_ones() -> None:
    assert clopper_pearson_upper(0, 10, 0.95) == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-12)
    assert clopper_pearson_upper(10, 10, 0.9) == 1.0
    # P(Bin(n, U) <= k) = 1 - confidence at the bound
    u = clopper_pearson_upper(3, 40, 0.9)
    assert sum(math.comb(40, i) * u**i * (1 - u) ** (40 - i) for i in range(4)) == pytest.approx(0.1)
    lo, hi = clopper_pearson_interval(3, 40, 0.9)
    ci = binomtest(3, 40).proportion_ci(confidence_level=0.9, method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_allowed_errors_and_the_fewest_reviewed_jobs() -> None:
    # crc: (k + 1) / (n + 1) <= alpha exactly
    assert allowed_errors(19, 0.05, "crc") == 0 and allowed_errors(18, 0.05, "crc") == -1
    assert allowed_errors(99, 0.1, "crc") == 9
    assert min_reviewed(0.05, "crc") == 19
    # clopper-pearson: 0 errors in n show a 5 % rate at 90 % once 1 - 0.1^(1/n) <= 0.05, n >= 45
    assert min_reviewed(0.05, "clopper-pearson", 0.9) == 45
    assert allowed_errors(44, 0.05, "clopper-pearson", 0.9) == -1
    k = allowed_errors(500, 0.05, "clopper-pearson", 0.9)
    assert beta.ppf(0.9, k + 1, 500 - k) <= 0.05 < beta.ppf(0.9, k + 2, 500 - k - 1)


def test_the_chosen_thresholds_sit_on_the_right_side_of_ties() -> None:
    rejected = [1.0, 1.0, 1.0, 2.0, 3.0] * 20  # 100 rejected, many tied
    choice = choose_flag_at(rejected, 0.5, method="crc")
    # allowed: k <= 0.5 * 101 - 1 = 49 misses; the 50th smallest is a 1.0 tied with 59 others, so none of
    # the tie can continue: flag_at lies strictly below 1.0
    assert choice.threshold < 1.0 and choice.errors == 0
    assert choose_flag_at(rejected, 0.7, method="crc").threshold == math.nextafter(2.0, -math.inf)
    approved = [0.1, 0.2, 0.2, 0.2, 0.9] * 20
    halt = choose_halt_at(approved, 0.3, method="crc")  # k <= 29: 0.9 (20 of them) may be halted, 0.2 not
    assert halt.threshold == 0.2 and halt.errors == 20


def _violations(choose, draw, risk, *, reps: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.array([risk(choose(draw(rng, n)).threshold) for _ in range(reps)])


@pytest.mark.parametrize("discrete", [False, True])
def test_clopper_pearson_keeps_the_miss_rate_below_the_target_at_the_stated_confidence(discrete) -> None:
    """Rejected scores ~ U(0, 1) (or on a grid of 20 values, with ties): the miss rate of a threshold t is
    exactly P(score <= t). Over many draws of the reviewed jobs it may exceed alpha in at most 1 - confidence
    of them (checked with a one-sided binomial test at 0.1 %)."""
    alpha, confidence, n, reps = 0.1, 0.9, 150, 1500
    rng = np.random.default_rng(7)
    if discrete:

        def draw(r, size):
            return (r.integers(0, 20, size) + 1) / 20

        def risk(t):
            return min(1.0, math.floor(t * 20 + 1e-9) / 20)
    else:

        def draw(r, size):
            return r.random(size)

        def risk(t):
            return min(1.0, max(0.0, t))

    risks = _violations(
        lambda s: choose_flag_at(s, alpha, method="clopper-pearson", confidence=confidence),
        draw,
        risk,
        reps=reps,
        n=n,
        rng=rng,
    )
    bad = int(np.sum(risks > alpha))
    assert binomtest(bad, reps, 1 - confidence, alternative="greater").pvalue > 0.001, bad
    assert np.mean(risks) > alpha / 3  # and it is not vacuous (a threshold of -inf would pass)

    # the test can fail: the plain empirical quantile (k = floor(alpha n), no bound) breaks it often
    def naive(s):
        s = np.sort(s)
        return type("C", (), {"threshold": math.nextafter(s[math.floor(alpha * n)], -math.inf)})

    naive_bad = int(np.sum(_violations(naive, draw, risk, reps=300, n=n, rng=rng) > alpha))
    assert naive_bad / 300 > 0.3


def test_crc_keeps_the_expected_miss_rate_below_the_target() -> None:
    alpha, n, reps = 0.1, 49, 4000
    rng = np.random.default_rng(11)
    risks = _violations(
        lambda s: choose_flag_at(s, alpha, method="crc"),
        lambda r, size: r.random(size),
        lambda t: min(1.0, max(0.0, t)),
        reps=reps,
        n=n,
        rng=rng,
    )
    se = float(np.std(risks)) / math.sqrt(reps)
    assert np.mean(risks) <= alpha + 4 * se
    assert np.mean(risks) > alpha - 6 * se  # tight: E = 5/50 exactly for this n


def test_clopper_pearson_keeps_the_halted_approval_rate_below_the_target() -> None:
    """Approved scores ~ U(0, 1): the halted share of a halt_at t is exactly 1 - t."""
    alpha, confidence, n, reps = 0.05, 0.8, 200, 1500
    rng = np.random.default_rng(3)
    risks = _violations(
        lambda s: choose_halt_at(s, alpha, method="clopper-pearson", confidence=confidence),
        lambda r, size: r.random(size),
        lambda t: 1 - min(1.0, max(0.0, t)),
        reps=reps,
        n=n,
        rng=rng,
    )
    bad = int(np.sum(risks > alpha))
    assert binomtest(bad, reps, 1 - confidence, alternative="greater").pvalue > 0.001, bad


def test_calibrate_from_reviews_writes_the_method_counts_and_intervals() -> None:
    rng = np.random.default_rng(0)
    reviewed = [ReviewedScore(float(s), "rejected") for s in rng.normal(2.0, 0.5, 300)]
    reviewed += [ReviewedScore(float(s), "approved") for s in rng.normal(1.0, 0.3, 300)]
    policy = calibrate_from_reviews(
        reviewed,
        BASE,
        max_unreviewed_rejects=0.05,
        max_halted_approvals=0.02,
        confidence=0.9,
        version="2",
        provenance={"database": "sqlite:///x.db"},
    )
    record = policy.calibration
    assert (record["method"], record["n_rejected"], record["n_approved"]) == ("clopper-pearson", 300, 300)
    flag = record["flag_at"]
    assert flag["threshold"] == policy.flag_at and flag["n"] == 300
    assert flag["errors"] == sum(r.score <= policy.flag_at for r in reviewed if r.verdict == "rejected")
    assert flag["bound"] <= 0.05 and flag["interval"][0] <= flag["errors"] / 300 <= flag["interval"][1]
    assert record["halt_at"]["errors"] == sum(
        r.score > policy.halt_at for r in reviewed if r.verdict == "approved"
    )
    assert policy.halt_at >= policy.flag_at and policy.on_flag == "hold" and policy.version == "2"
    assert "300 rejected" in policy.notes and "exchangeable" in policy.notes
    assert parse_policy(policy.to_dict()) == policy

    # too few rejected jobs for the target: the error says how many are needed
    with pytest.raises(CalibrationError, match="at least 45 rejected"):
        calibrate_from_reviews(reviewed[:30], BASE, max_unreviewed_rejects=0.05, confidence=0.9)
    with pytest.raises(CalibrationError, match="confidence"):
        calibrate_from_reviews(reviewed, BASE, max_unreviewed_rejects=0.05)
    with pytest.raises(CalibrationError, match="target"):
        calibrate_from_reviews(reviewed, BASE, confidence=0.9)
    with pytest.raises(CalibrationError, match="method"):
        calibrate_from_reviews(reviewed, BASE, max_unreviewed_rejects=0.05, method="magic", confidence=0.9)
