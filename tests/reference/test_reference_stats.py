"""AUROC and correlation with bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference.stats import auroc, auroc_ci, pearson_ci, pearson_of_means_ci


def test_auroc_extremes_ties_and_known_value() -> None:
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    # pairs: (2>1) (2<3) (4>1) (4>3) -> 3 of 4
    assert auroc([2, 4], [1, 3]) == 0.75


def test_auroc_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 80)
    a, lo, hi = auroc_ci(pos, neg, n_boot=400)
    assert lo < a < hi
    assert 0.6 < a < 0.9
    assert auroc_ci(pos, neg, n_boot=400) == (a, lo, hi)  # seeded


def test_pearson_interval_and_degenerate_input() -> None:
    x = np.arange(10.0)
    r, lo, hi = pearson_ci(x, -2 * x + np.sin(x), n_boot=300)
    assert r < -0.95 and lo <= r <= hi
    r, lo, hi = pearson_ci(x, np.ones(10))
    assert math.isnan(r)
    with pytest.raises(ValueError, match="x/y"):
        pearson_ci([1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive/negative"):
        auroc([], [1.0])


def test_pearson_of_means_resamples_within_groups() -> None:
    rng = np.random.default_rng(1)
    # five groups whose mean y falls as mean x rises, with noisy items
    groups = [(rng.normal(m, 0.1, 40), rng.normal(-2 * m, 0.1, 40)) for m in range(5)]
    r, lo, hi = pearson_of_means_ci(groups, n_boot=300)
    assert r < -0.99 and lo <= r <= hi and hi < -0.95
    # items of pure noise around equal means: the interval spans both signs
    noise = [(rng.normal(0, 1, 30), rng.normal(0, 1, 30)) for _ in range(5)]
    _, lo, hi = pearson_of_means_ci(noise, n_boot=300)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="groups"):
        pearson_of_means_ci(groups[:2])


def test_stratified_auroc_compares_only_within_a_stratum() -> None:
    from reference.stats import stratified_auroc, stratified_auroc_ci

    # pooled, the positives win only because they sit in the high-score stratum; within a stratum they lose
    pos, pos_strata = [10.0, 11.0, 1.0], [2, 2, 1]
    neg, neg_strata = [12.0, 2.0, 0.5], [2, 1, 3]
    assert auroc(pos, neg) > 0.5
    value, pairs = stratified_auroc(pos, pos_strata, neg, neg_strata)
    assert pairs == 3 and value == 0.0
    with pytest.raises(ValueError, match="strata"):
        stratified_auroc([1.0], [5], [0.0], [6])
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 3, 200)
    value, lo, hi, pairs = stratified_auroc_ci(
        rng.normal(1, 1, 200), strata, rng.normal(0, 1, 200), strata, n_boot=200
    )
    assert lo < value < hi and 0.6 < value < 0.9 and pairs > 0
