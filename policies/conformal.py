"""Thresholds from reviewed jobs, with a guarantee on the errors a user names.

Two errors matter once reviewers have judged jobs:

- a *missed reject*: a prompt reviewers reject that the policy lets continue unreviewed (score <= flag_at);
- a *halted approval*: a prompt reviewers approve that the policy halts (score > halt_at).

For a target rate alpha of one of them, with n reviewed jobs of the class concerned (rejected for the first,
approved for the second) and k(lambda) of them on the wrong side of a threshold lambda:

- `clopper-pearson` (a risk-controlling threshold, Bates et al. 2021 with an exact binomial bound): the
  least strict lambda whose one-sided Clopper-Pearson upper bound U(k(lambda), n) at `confidence` is at most
  alpha. The error rate is monotone in lambda, so testing lambdas from the strictest on needs no correction
  for multiplicity (fixed-sequence testing): with probability at least `confidence` over the reviewed jobs,
  the error rate on new prompts exchangeable with them is at most alpha.
- `crc` (conformal risk control, Angelopoulos et al. 2022): lambda-hat = inf{lambda : (n/(n+1)) R_n(lambda)
  + B/(n+1) <= alpha} with the 0/1 loss (B = 1), i.e. the least strict lambda with (k + 1)/(n + 1) <= alpha.
  The guarantee is in expectation: E[error rate] <= alpha over the draw of the reviewed jobs and a new one.

Scores are compared as `decide()` does (a threshold fires strictly above it), and ties are honoured: the
chosen flag_at lies strictly below the first rejected score that must be flagged, the chosen halt_at at an
approved score that may be halted no more than allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from policies.calibration import CalibrationError
from policies.policy import Policy, parse_policy

METHODS = ("clopper-pearson", "crc")
VERDICT_CLASSES = ("approved", "rejected")
DEFAULT_INTERVAL_CONFIDENCE = 0.9


@dataclass(frozen=True)
class ReviewedScore:
    """A reviewed job: its gate score and the reviewers' final verdict (approved or rejected)."""

    score: float
    verdict: str
    language: str | None = None


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen for one error, and the numbers behind it."""

    threshold: float
    error: str  # "missed_rejects" or "halted_approvals"
    method: str
    target: float
    confidence: float | None  # the guarantee's confidence (clopper-pearson only)
    n: int  # reviewed jobs of the class the error is about
    errors: int  # of them on the wrong side of `threshold`
    bound: float  # what was checked against `target`: U(errors, n), or (errors + 1) / (n + 1)
    interval: tuple[float, float]  # two-sided Clopper-Pearson interval of the error rate
    interval_confidence: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interval"] = list(self.interval)
        return data


def _probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise CalibrationError(f"{name}: must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """The one-sided exact upper bound p with P(Bin(n, p) <= k) = 1 - confidence (1 when k = n)."""
    from scipy.stats import beta

    _check_counts(k, n)
    if k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The two-sided exact (Clopper-Pearson) interval of a proportion k/n."""
    from scipy.stats import beta

    _check_counts(k, n)
    tail = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def _check_counts(k: int, n: int) -> None:
    if n < 1 or not 0 <= k <= n:
        raise CalibrationError(f"counts: need 0 <= k <= n and n >= 1, got k={k}, n={n}")


def allowed_errors(n: int, target: float, method: str, confidence: float | None = None) -> int:
    """The most calibration errors k (of n) a threshold may make and still meet the target; -1 if even 0
    errors cannot show it (too few reviewed jobs)."""
    alpha = _probability(target, "target")
    if method == "crc":
        # (k + 1) / (n + 1) <= alpha, exactly (Fraction: 0.05 * 20 is not 0.99999...)
        return math.floor(Fraction(repr(alpha)) * (n + 1) - 1)
    if method != "clopper-pearson":
        raise CalibrationError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if confidence is None:
        raise CalibrationError("confidence: the clopper-pearson method needs a confidence (e.g. 0.9)")
    conf = _probability(confidence, "confidence")
    lo, hi = -1, n  # U(k) rises with k: the largest k with U(k) <= alpha, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if clopper_pearson_upper(mid, n, conf) <= alpha:
            lo = mid
        else:
            hi = mid - 1
    return lo


def min_reviewed(target: float, method: str, confidence: float | None = None) -> int:
    """The fewest reviewed jobs of the class for which a threshold can meet the target at all."""
    alpha = _probability(target, "target")
    if method == "crc":
        return max(1, math.ceil(1 / Fraction(repr(alpha)) - 1))
    conf = _probability(confidence, "confidence") if confidence is not None else None
    if conf is None:
        raise CalibrationError("confidence: the clopper-pearson method needs a confidence (e.g. 0.9)")
    # U(0, n) = 1 - (1 - conf)^(1/n) <= alpha  <=>  n >= log(1 - conf) / log(1 - alpha)
    n = max(1, math.ceil(math.log(1 - conf) / math.log(1 - alpha)))
    while allowed_errors(n, alpha, "clopper-pearson", conf) < 0:  # rounding at the boundary
        n += 1
    return n


def _finite(values: Iterable[float], name: str) -> list[float]:
    out = sorted(float(v) for v in values)
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise CalibrationError(f"{name}: {len(bad)} non-finite score(s)")
    return out


def _choice(
    threshold: float,
    errors: int,
    n: int,
    *,
    error: str,
    method: str,
    target: float,
    confidence: float | None,
) -> ThresholdChoice:
    level = confidence if confidence is not None else DEFAULT_INTERVAL_CONFIDENCE
    bound = clopper_pearson_upper(errors, n, level) if method == "clopper-pearson" else (errors + 1) / (n + 1)
    return ThresholdChoice(
        threshold=threshold,
        error=error,
        method=method,
        target=target,
        confidence=confidence if method == "clopper-pearson" else None,
        n=n,
        errors=errors,
        bound=bound,
        interval=clopper_pearson_interval(errors, n, level),
        interval_confidence=level,
    )


def _too_few(n: int, target: float, method: str, confidence: float | None, what: str, option: str) -> str:
    need = min_reviewed(target, method, confidence)
    how = f"at confidence {confidence}" if method == "clopper-pearson" else "in expectation (crc)"
    return f"{option}: {target} {how} needs at least {need} {what} reviewed jobs, there are {n}"


def choose_flag_at(
    rejected_scores: Sequence[float],
    max_missed: float,
    *,
    method: str = "clopper-pearson",
    confidence: float | None = None,
) -> ThresholdChoice:
    """The highest flag_at (fewest flags) at which at most `max_missed` of rejected prompts continue
    unreviewed (score <= flag_at), with the method's guarantee."""
    scores = _finite(rejected_scores, "rejected scores")
    n = len(scores)
    k_max = allowed_errors(n, max_missed, method, confidence) if n else -1
    if k_max < 0:
        raise CalibrationError(
            _too_few(n, max_missed, method, confidence, "rejected", "max_unreviewed_rejects")
        )
    # strictly below the (k_max + 1)-th smallest rejected score: it and all above it are flagged (if every
    # rejected prompt may continue, none need be flagged)
    threshold = scores[-1] if k_max >= n else math.nextafter(scores[k_max], -math.inf)
    errors = sum(s <= threshold for s in scores)
    return _choice(
        threshold, errors, n, error="missed_rejects", method=method, target=max_missed, confidence=confidence
    )


def choose_halt_at(
    approved_scores: Sequence[float],
    max_halted: float,
    *,
    method: str = "clopper-pearson",
    confidence: float | None = None,
) -> ThresholdChoice:
    """The lowest halt_at (most halts) at which at most `max_halted` of approved prompts are halted (score >
    halt_at), with the method's guarantee."""
    scores = _finite(approved_scores, "approved scores")
    n = len(scores)
    k_max = allowed_errors(n, max_halted, method, confidence) if n else -1
    if k_max < 0:
        raise CalibrationError(
            _too_few(n, max_halted, method, confidence, "approved", "max_halted_approvals")
        )
    # at most k_max approved scores lie strictly above it (if every approved prompt may be halted, all are)
    threshold = math.nextafter(scores[0], -math.inf) if k_max >= n else scores[n - 1 - k_max]
    errors = sum(s > threshold for s in scores)
    return _choice(
        threshold,
        errors,
        n,
        error="halted_approvals",
        method=method,
        target=max_halted,
        confidence=confidence,
    )


SCOPE = (
    "The guarantee holds for new prompts exchangeable with the reviewed ones: prompts like those the base "
    "policy sent to review. Jobs that continued without review carry no verdict and are not in the sample; "
    "a threshold below the base policy's flag_at is not checked by them."
)


def calibrate_from_reviews(
    reviewed: Iterable[ReviewedScore],
    base: Policy,
    *,
    max_unreviewed_rejects: float | None = None,
    max_halted_approvals: float | None = None,
    method: str = "clopper-pearson",
    confidence: float | None = None,
    name: str | None = None,
    version: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Policy:
    """`base` with flag_at (and/or halt_at) chosen from reviewed jobs for the named targets; the method,
    the counts and the intervals go into its calibration record. Per-language overrides are dropped (the
    thresholds hold for all reviewed prompts together)."""
    if method not in METHODS:
        raise CalibrationError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if max_unreviewed_rejects is None and max_halted_approvals is None:
        raise CalibrationError("target: name --max-unreviewed-rejects and/or --max-halted-approvals")
    if method == "clopper-pearson" and confidence is None:
        raise CalibrationError("confidence: the clopper-pearson method needs a confidence (e.g. 0.9)")
    if confidence is not None:
        _probability(confidence, "confidence")
    records = list(reviewed)
    unknown = sorted({r.verdict for r in records} - set(VERDICT_CLASSES))
    if unknown:
        raise CalibrationError(f"verdict: {unknown[0]!r} is neither approved nor rejected")
    rejected = [r.score for r in records if r.verdict == "rejected"]
    approved = [r.score for r in records if r.verdict == "approved"]

    flag = halt = None
    flag_at, halt_at = base.flag_at, base.halt_at
    if max_unreviewed_rejects is not None:
        flag = choose_flag_at(rejected, max_unreviewed_rejects, method=method, confidence=confidence)
        flag_at = flag.threshold
    if max_halted_approvals is not None:
        halt = choose_halt_at(approved, max_halted_approvals, method=method, confidence=confidence)
        halt_at = halt.threshold
    notes = []
    if halt_at < flag_at:
        # halting less than the halt target allows keeps its guarantee (fewer approved prompts halted)
        notes.append(f"halt_at {halt_at:.6g} was below flag_at; raised to flag_at {flag_at:.6g}")
        halt_at = flag_at

    how = (
        f"with probability >= {confidence} (one-sided Clopper-Pearson bound, fixed-sequence testing)"
        if method == "clopper-pearson"
        else "in expectation (conformal risk control)"
    )
    lines = [
        f"Calibrated on {len(records)} reviewed jobs ({len(rejected)} rejected, {len(approved)} approved)."
    ]
    for choice, what, key in (
        (flag, "rejected prompts continue unreviewed", "flag_at"),
        (halt, "approved prompts are halted", "halt_at"),
    ):
        if choice is not None:
            lo, hi = choice.interval
            lines.append(
                f"{key} = {choice.threshold:.6g}: at most {choice.target:.4g} of {what}, {how}; "
                f"{choice.errors} of {choice.n} in the reviewed jobs "
                f"({choice.interval_confidence:.0%} interval {lo:.4g} to {hi:.4g})."
            )
    lines += [*notes, SCOPE]
    calibration: dict[str, Any] = {
        "method": method,
        "source": "reviews",
        "n_reviewed": len(records),
        "n_rejected": len(rejected),
        "n_approved": len(approved),
        "confidence": confidence,
        "targets": {
            "max_unreviewed_rejects": max_unreviewed_rejects,
            "max_halted_approvals": max_halted_approvals,
        },
        "flag_at": flag.to_dict() if flag else {"kept_from": base.id, "threshold": base.flag_at},
        "halt_at": halt.to_dict() if halt else {"kept_from": base.id, "threshold": base.halt_at},
        "base_policy": base.id,
        "scope": SCOPE,
    }
    if notes:
        calibration["notes"] = notes
    if provenance:
        calibration["provenance"] = dict(provenance)
    document = {
        **base.to_dict(),
        "name": name or base.name,
        "version": version or base.version,
        "flag_at": flag_at,
        "halt_at": halt_at,
        "calibration": calibration,
        "notes": " ".join(lines),
    }
    document.pop("languages", None)
    return parse_policy(document)
