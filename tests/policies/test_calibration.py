"""Split-conformal calibration on fixed score lists: exact ranks, sample-size limits, bootstrap intervals."""

from __future__ import annotations

import random

import pytest

from policies import DecisionContext, decide
from policies.calibration import (
    CalibrationError,
    bootstrap_interval,
    calibrate_policy,
    conformal_rank,
    conformal_threshold,
    min_reference_size,
)

FP = "0f" * 32
SCORES = [round(0.1 * i, 1) for i in range(1, 40)]  # 0.1 .. 3.9, n = 39
SHUFFLED = random.Random(7).sample(SCORES, len(SCORES))


def test_threshold_is_the_conformal_order_statistic() -> None:
    # n = 39: ceil(40 * 0.75) = 30 -> 3.0; ceil(40 * 0.95) = 38 -> 3.8; ceil(40 * 0.5) = 20 -> 2.0
    assert conformal_threshold(SHUFFLED, 0.75) == 3.0
    assert conformal_threshold(SHUFFLED, 0.95) == 3.8
    assert conformal_threshold(SHUFFLED, 0.5) == 2.0
    # ceil((n + 1) q) with q = 0.76: ceil(30.4) = 31 -> 3.1 (one rank above the plain 75th percentile)
    assert conformal_threshold(SHUFFLED, 0.76) == 3.1


def test_rank_uses_exact_decimal_arithmetic() -> None:
    assert 100 * 0.07 > 7  # binary floating point: 7.000000000000001
    assert conformal_rank(99, 0.07) == 7
    assert conformal_rank(19, 0.95) == 19


def test_too_few_reference_scores_is_an_error_that_says_how_many() -> None:
    assert min_reference_size(0.75) == 3 and min_reference_size(0.95) == 19
    assert conformal_threshold([3.0, 1.0, 2.0], 0.75) == 3.0  # ceil(4 * 0.75) = 3 <= 3
    with pytest.raises(CalibrationError, match=r"halt_quantile: 0.95 needs at least 19 reference scores"):
        conformal_threshold(SCORES[:18], 0.95, "halt_quantile")


@pytest.mark.parametrize("q", [0, 1, -0.1, 1.5, True])
def test_quantile_must_be_inside_the_unit_interval(q: float) -> None:
    with pytest.raises(CalibrationError, match="flag_quantile: must be a number strictly between 0 and 1"):
        conformal_threshold(SCORES, q, "flag_quantile")


def test_non_finite_or_empty_scores_are_refused() -> None:
    with pytest.raises(CalibrationError, match="non-finite"):
        conformal_threshold([1.0, float("nan")], 0.5)
    with pytest.raises(CalibrationError, match="no reference scores"):
        conformal_threshold([], 0.5)


def test_bootstrap_interval_is_reproducible_and_inside_the_data() -> None:
    lo, hi = bootstrap_interval(SHUFFLED, 0.75, resamples=500, seed=3)
    assert (lo, hi) == bootstrap_interval(SHUFFLED, 0.75, resamples=500, seed=3)
    assert min(SCORES) <= lo <= 3.0 <= hi <= max(SCORES)
    wide = bootstrap_interval(SHUFFLED, 0.75, resamples=500, seed=3, level=0.99)
    assert wide[0] <= lo and wide[1] >= hi


def test_calibrated_policy() -> None:
    policy = calibrate_policy(SHUFFLED, fingerprint=FP, flag_quantile=0.75, halt_quantile=0.95, name="ref")
    assert (policy.flag_at, policy.halt_at, policy.fingerprint) == (3.0, 3.8, FP)
    cal = policy.calibration
    assert (cal["n"], cal["flag_rank"], cal["halt_rank"]) == (39, 30, 38)
    assert cal["flag_at_interval"][0] <= 3.0 <= cal["flag_at_interval"][1]
    assert "bootstrap interval" in policy.notes and "P(flag or halt) <= 0.25" in policy.notes
    # on the reference set itself the flag-or-halt rate is (n - k) / n <= 1 - Q
    acted = [decide(_S(s), DecisionContext(), policy).action != "continue" for s in SCORES]
    assert sum(acted) == 39 - 30


def test_halt_quantile_below_flag_quantile_is_refused() -> None:
    with pytest.raises(CalibrationError, match=r"halt_quantile: 0\.5 is below flag_quantile 0\.75"):
        calibrate_policy(SCORES, fingerprint=FP, flag_quantile=0.75, halt_quantile=0.5)


class _S:
    fingerprint = FP

    def __init__(self, score: float) -> None:
        self.score = score
