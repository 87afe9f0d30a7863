"""Thresholds from reference scores: split-conformal quantiles with a bootstrap interval.

With n reference scores s_1..s_n and a target quantile Q, the threshold is the k-th smallest score with
k = ceil((n + 1) Q). If a new prompt's score is exchangeable with the reference scores, then
P(new score > threshold) <= 1 - k / (n + 1) <= 1 - Q, for any n and any score distribution (ties included);
`decide()` fires only strictly above a threshold, so the flag (and halt) rate on such prompts is at most
1 - Q.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from policies.policy import Policy, parse_policy


class CalibrationError(ValueError):
    """The reference scores cannot support the requested quantile (or the inputs are invalid)."""


def _check_quantile(q: float, name: str) -> Fraction:
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q < 1:
        raise CalibrationError(f"{name}: must be a number strictly between 0 and 1, got {q!r}")
    return Fraction(repr(float(q)))  # exact decimal, so (n + 1) * 0.95 is not 37.99999...


def conformal_rank(n: int, q: float, name: str = "quantile") -> int:
    """k = ceil((n + 1) q), the 1-based rank of the threshold among n sorted scores."""
    return math.ceil((n + 1) * _check_quantile(q, name))


def min_reference_size(q: float, name: str = "quantile") -> int:
    """The fewest reference scores for which the conformal rank is at most n (a finite threshold)."""
    exact = _check_quantile(q, name)
    return max(1, math.ceil(exact / (1 - exact)))  # (n + 1) q <= n  <=>  n >= q / (1 - q)


def conformal_threshold(scores: Sequence[float], q: float, name: str = "quantile") -> float:
    """The ceil((n + 1) q)-th smallest score."""
    values = _finite_scores(scores)
    k = conformal_rank(len(values), q, name)
    if k > len(values):
        raise CalibrationError(
            f"{name}: {q} needs at least {min_reference_size(q, name)} reference scores for a finite "
            "threshold "
            f"(rank ceil((n+1)q) = {k} > n = {len(values)})"
        )
    return sorted(values)[k - 1]


def bootstrap_interval(
    scores: Sequence[float], q: float, *, resamples: int = 2000, level: float = 0.9, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of `conformal_threshold(scores, q)` over resampled reference scores."""
    values = _finite_scores(scores)
    if not 0 < level < 1:
        raise CalibrationError(f"level: must be strictly between 0 and 1, got {level!r}")
    if resamples < 1:
        raise CalibrationError(f"resamples: must be at least 1, got {resamples!r}")
    n = len(values)
    k = conformal_rank(n, q)
    if k > n:
        conformal_threshold(values, q)  # raises the explanatory error
    rng = random.Random(seed)
    estimates = sorted(sorted(rng.choices(values, k=n))[k - 1] for _ in range(resamples))
    lo_index = math.floor((1 - level) / 2 * (resamples - 1))
    hi_index = math.ceil((1 + level) / 2 * (resamples - 1))
    return estimates[lo_index], estimates[hi_index]


def _finite_scores(scores: Sequence[float]) -> list[float]:
    values = [float(s) for s in scores]
    if not values:
        raise CalibrationError("scores: no reference scores")
    bad = [s for s in values if not math.isfinite(s)]
    if bad:
        raise CalibrationError(f"scores: {len(bad)} non-finite score(s), e.g. {bad[0]!r}")
    return values


def calibrate_policy(
    scores: Sequence[float],
    *,
    fingerprint: str,
    flag_quantile: float = 0.75,
    halt_quantile: float = 0.95,
    name: str = "calibrated",
    version: str = "1",
    mode: str = "enforce",
    resamples: int = 2000,
    level: float = 0.9,
    seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
) -> Policy:
    """A policy whose flag/halt thresholds are the split-conformal quantiles of `scores`."""
    # 1. check the inputs
    flag_q, halt_q = (
        _check_quantile(flag_quantile, "flag_quantile"),
        _check_quantile(halt_quantile, "halt_quantile"),
    )
    if halt_q < flag_q:
        raise CalibrationError(f"halt_quantile: {halt_quantile} is below flag_quantile {flag_quantile}")
    values = _finite_scores(scores)
    n = len(values)

    # 2. thresholds and their bootstrap intervals
    flag_at = conformal_threshold(values, flag_quantile, "flag_quantile")
    halt_at = conformal_threshold(values, halt_quantile, "halt_quantile")
    flag_ci = bootstrap_interval(values, flag_quantile, resamples=resamples, level=level, seed=seed)
    halt_ci = bootstrap_interval(values, halt_quantile, resamples=resamples, level=level, seed=seed + 1)

    # 3. the policy, with a machine-readable record and a readable note
    calibration: dict[str, Any] = {
        "method": "split-conformal",
        "n": n,
        "flag_quantile": float(flag_quantile),
        "halt_quantile": float(halt_quantile),
        "flag_rank": conformal_rank(n, flag_quantile),
        "halt_rank": conformal_rank(n, halt_quantile),
        "flag_at_interval": list(flag_ci),
        "halt_at_interval": list(halt_ci),
        "bootstrap": {"resamples": resamples, "level": level, "seed": seed},
        "score_min": min(values),
        "score_median": sorted(values)[(n - 1) // 2],
        "score_max": max(values),
    }
    if provenance:
        calibration["provenance"] = dict(provenance)
    pct = f"{level:.0%}"
    notes = (
        f"Calibrated on {n} reference prompts (split-conformal: the ceil((n+1)Q)-th smallest score). "
        f"On new prompts exchangeable with the reference set, P(flag or halt) <= {1 - flag_quantile:.4g} "
        f"and P(halt) <= {1 - halt_quantile:.4g}. "
        f"flag_at = {flag_at:.6g} (Q = {flag_quantile}; {pct} bootstrap interval "
        f"{flag_ci[0]:.6g} to {flag_ci[1]:.6g}); "
        f"halt_at = {halt_at:.6g} (Q = {halt_quantile}; {pct} bootstrap interval "
        f"{halt_ci[0]:.6g} to {halt_ci[1]:.6g}; "
        f"{resamples} resamples, seed {seed})."
    )
    return parse_policy(
        {
            "name": name,
            "version": version,
            "fingerprint": fingerprint,
            "mode": mode,
            "flag_at": flag_at,
            "halt_at": halt_at,
            "calibration": calibration,
            "notes": notes,
        }
    )
