"""Fairness statistics over gate decision records: pure functions (no SQL, no torch).

Every estimate comes with an interval (`Estimate.ci_low`/`ci_high`) and the name of the method that made it:

- means: percentile bootstrap (seeded, `n_boot` resamples) for groups of at most `bootstrap_max_n` (200)
  records, where skew matters; above that, the normal interval with the bootstrap's own standard error
  (population sd / √n), which the bootstrap converges to, at no cost (a 100,000-decision report would
  otherwise spend seconds resampling);
- medians: percentile bootstrap up to `bootstrap_max_n`; above it the distribution-free order-statistic
  interval;
- rates (halt, flag, keyword shares): Wilson score intervals; their differences: Newcombe's hybrid score
  interval; their ratios: the Katz log interval (0.5 added to every cell when a count is zero);
- differences and ratios of mean scores: percentiles of the two groups' independent bootstrap (or normal)
  draws;
- the correlation of group means: Pearson's r with a Fisher z interval (needs at least 4 groups).

A percentile interval that misses its own estimate (possible with heavy skew and few records) is widened to
include it, so every interval contains its estimate. Groups of one get no interval for a mean or median (one
value says nothing about spread); groups smaller than `min_group_size` carry a warning. The settings of every
interval (`confidence`, `n_boot`, `seed`, `bootstrap_max_n`) travel together as one `IntervalOptions`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Any

import numpy as np

from policies import ACTIONS

DEFAULT_REFERENCE = "en"
DEFAULT_MIN_GROUP_SIZE = 30
DEFAULT_N_BOOT = 1000
DEFAULT_BOOTSTRAP_MAX_N = 200
UNKNOWN_GROUP = "unknown"


# ------------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Records:
    """Decision records as columns (one row per decision); build with `Records.from_rows`."""

    score: np.ndarray  # float64
    action: np.ndarray  # str: continue | flag | halt
    group: np.ndarray  # str: the language or a label's value; "unknown" when missing
    chars: np.ndarray  # int64
    words: np.ndarray  # int64
    quality: np.ndarray  # float64, NaN where no quality score exists
    prompt: np.ndarray  # object: str, or None once redacted
    created_at: np.ndarray  # object: datetime or None
    quality_metric: str | None = None

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], *, quality_metric: str | None = None) -> Records:
        """Build from mappings: score, action, group and optionally chars, words, quality, prompt, created_at.

        A missing `chars`/`words` is computed from `prompt` when the prompt is there.
        """
        rows = list(rows)
        n = len(rows)
        score = np.empty(n, dtype=np.float64)
        action = np.empty(n, dtype=object)
        group = np.empty(n, dtype=object)
        chars = np.zeros(n, dtype=np.int64)
        words = np.zeros(n, dtype=np.int64)
        quality = np.full(n, np.nan)
        prompt = np.empty(n, dtype=object)
        created = np.empty(n, dtype=object)
        for i, row in enumerate(rows):
            try:
                score[i] = float(row["score"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"record {i}: field 'score' must be a number, got {row.get('score')!r}"
                ) from exc
            act = row.get("action")
            if act not in ACTIONS:
                raise ValueError(f"record {i}: field 'action' must be one of {ACTIONS}, got {act!r}")
            action[i] = act
            grp = row.get("group")
            group[i] = str(grp) if grp not in (None, "") else UNKNOWN_GROUP
            text = row.get("prompt")
            prompt[i] = text
            chars[i] = row["chars"] if row.get("chars") is not None else (len(text) if text else 0)
            words[i] = row["words"] if row.get("words") is not None else (len(text.split()) if text else 0)
            q = row.get("quality")
            quality[i] = np.nan if q is None else float(q)
            created[i] = row.get("created_at")
        return cls.from_columns(
            score=score,
            action=action,
            group=group,
            chars=chars,
            words=words,
            quality=quality,
            prompt=prompt,
            created_at=created,
            quality_metric=quality_metric,
        )

    @classmethod
    def from_columns(
        cls,
        *,
        score: Sequence[float] | np.ndarray,
        action: Sequence[str] | np.ndarray,
        group: Sequence[str | None] | np.ndarray,
        chars: Sequence[int] | np.ndarray | None = None,
        words: Sequence[int] | np.ndarray | None = None,
        quality: Sequence[float | None] | np.ndarray | None = None,
        prompt: Sequence[str | None] | np.ndarray | None = None,
        created_at: Sequence[datetime | None] | np.ndarray | None = None,
        quality_metric: str | None = None,
    ) -> Records:
        """Build from equal-length columns, validating them (the fast path the report's query uses)."""
        s = np.asarray(score, dtype=np.float64)
        n = s.shape[0]

        def column(name: str, values: Any, dtype: Any, fill: Any) -> np.ndarray:
            if values is None:
                return np.full(n, fill, dtype=dtype)
            arr = np.asarray(values, dtype=dtype)
            if arr.shape != (n,):
                raise ValueError(
                    f"field {name!r} has {arr.shape[0] if arr.ndim else 0} values, 'score' has {n}"
                )
            return arr

        a = column("action", action, object, "continue")
        g = column("group", group, object, UNKNOWN_GROUP)
        g[(g == None) | (g == "")] = UNKNOWN_GROUP  # noqa: E711 (elementwise comparison)
        q = column(
            "quality",
            [np.nan if v is None else v for v in quality] if quality is not None else None,
            np.float64,
            np.nan,
        )
        rec = cls(
            score=s,
            action=a,
            group=g,
            chars=column("chars", chars, np.int64, 0),
            words=column("words", words, np.int64, 0),
            quality=q,
            prompt=column("prompt", prompt, object, None),
            created_at=column("created_at", created_at, object, None),
            quality_metric=quality_metric,
        )
        if not np.all(np.isfinite(s)):
            bad = int(np.flatnonzero(~np.isfinite(s))[0])
            raise ValueError(f"record {bad}: field 'score' must be finite, got {s[bad]!r}")
        bad_actions = ~np.isin(a, ACTIONS)
        if bad_actions.any():
            bad = int(np.flatnonzero(bad_actions)[0])
            raise ValueError(f"record {bad}: field 'action' must be one of {ACTIONS}, got {a[bad]!r}")
        return rec

    def subset(self, mask: np.ndarray) -> Records:
        """The records where `mask` is true (a boolean array or an index array)."""
        return Records(
            score=self.score[mask],
            action=self.action[mask],
            group=self.group[mask],
            chars=self.chars[mask],
            words=self.words[mask],
            quality=self.quality[mask],
            prompt=self.prompt[mask],
            created_at=self.created_at[mask],
            quality_metric=self.quality_metric,
        )

    def groups(self) -> list[str]:
        """Distinct groups, sorted."""
        return list(self.group_indices())

    def group_indices(self) -> dict[str, np.ndarray]:
        """Row indices of each group, groups sorted by name (computed once per Records, then cached)."""
        cached = self.__dict__.get("_group_indices")
        if cached is not None:
            return cached
        codes: dict[str, int] = {}
        inverse = np.fromiter(
            (codes.setdefault(g, len(codes)) for g in self.group.tolist()), np.int64, len(self)
        )
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(codes) + 1))
        by_code = {code: order[bounds[code] : bounds[code + 1]] for code in range(len(codes))}
        result = {name: by_code[codes[name]] for name in sorted(codes)}
        object.__setattr__(self, "_group_indices", result)  # frozen dataclass: a cache, not a field
        return result


# ------------------------------------------------------------------------------------------------------
# estimates and intervals
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalOptions:
    """How every interval is made: its confidence level and the seeded bootstrap's size and cut-over."""

    confidence: float = 0.95
    n_boot: int = DEFAULT_N_BOOT  # bootstrap resamples
    seed: int = 0
    bootstrap_max_n: int = DEFAULT_BOOTSTRAP_MAX_N  # larger groups get normal/order-statistic intervals

    def __post_init__(self) -> None:
        _z(self.confidence)
        if self.n_boot < 10:
            raise ValueError(f"field 'n_boot' must be at least 10, got {self.n_boot}")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval; `None` where it cannot be computed (then `method` says why)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _clean(self.value),
            "ci_low": _clean(self.ci_low),
            "ci_high": _clean(self.ci_high),
            "method": self.method,
        }

    @property
    def contains_value(self) -> bool:
        """True when the interval exists and contains the estimate."""
        if None in (self.value, self.ci_low, self.ci_high):
            return False
        return self.ci_low <= self.value <= self.ci_high  # type: ignore[operator]


def _clean(x: float | None) -> float | None:
    """JSON-safe float: NaN and ±inf become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"field 'confidence' must be between 0 and 1 (exclusive), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, keys): a group's intervals do not depend on which other groups exist."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (n > 0)."""
    if n <= 0:
        raise ValueError(f"field 'n' must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"field 'k' must be between 0 and n={n}, got {k}")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp rounding noise so that 0/n gives exactly 0 and n/n exactly 1
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def rate_estimate(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson interval."""
    if n == 0:
        return Estimate(None, None, None, "undefined: no records")
    lo, hi = wilson_interval(k, n, confidence)
    return Estimate(k / n, lo, hi, "wilson")


def rate_difference(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> Estimate:
    """p1 − p2 with Newcombe's hybrid score interval (method 10, from the two Wilson intervals)."""
    if n1 == 0 or n2 == 0:
        return Estimate(None, None, None, "undefined: a group has no records")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Estimate(d, max(-1.0, lo), min(1.0, hi), "newcombe")


def rate_ratio(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> Estimate:
    """p1 / p2 with the Katz log interval; 0.5 is added to every cell when a count is zero."""
    if n1 == 0 or n2 == 0:
        return Estimate(None, None, None, "undefined: a group has no records")
    if k2 == 0:
        return Estimate(None, None, None, "undefined: the reference rate is 0")
    value = (k1 / n1) / (k2 / n2)
    a, b, c, d = k1, n1, k2, n2
    method = "katz-log"
    if k1 == 0 or k1 == n1 or k2 == n2:
        a, b, c, d = k1 + 0.5, n1 + 0.5, k2 + 0.5, n2 + 0.5  # Haldane-style correction
        method = "katz-log (0.5 correction)"
    log_r = math.log((a / b) / (c / d))
    se = math.sqrt(max(0.0, 1 / a - 1 / b + 1 / c - 1 / d))
    z = _z(confidence)
    lo, hi = math.exp(log_r - z * se), math.exp(log_r + z * se)
    return Estimate(value, min(lo, value), max(hi, value), method)


def _mean_draws(x: np.ndarray, rng: np.random.Generator, n_boot: int, max_n: int) -> tuple[np.ndarray, str]:
    """B draws from the sampling distribution of the mean: bootstrap resamples, or normal for large n."""
    n = x.shape[0]
    if n <= max_n:
        draws = np.empty(n_boot)
        chunk = max(1, 2_000_000 // max(n, 1))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            draws[start:stop] = x[rng.integers(0, n, size=(stop - start, n), dtype=np.int32)].mean(axis=1)
        return draws, "bootstrap"
    se = float(x.std()) / math.sqrt(n)  # the bootstrap's standard error (population sd)
    return float(x.mean()) + se * rng.standard_normal(n_boot), "normal"


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_estimate(
    x: Sequence[float] | np.ndarray, *, intervals: IntervalOptions = IntervalOptions(), key: str = ""
) -> Estimate:
    """The mean with a percentile-bootstrap interval (normal above `bootstrap_max_n`); none for n < 2."""
    est, _ = _mean_with_draws(np.asarray(x, dtype=np.float64), intervals, key)
    return est


def _mean_with_draws(
    x: np.ndarray, intervals: IntervalOptions, key: str
) -> tuple[Estimate, np.ndarray | None]:
    x = np.sort(x)  # resamples depend only on the values, not on the records' order
    n = x.shape[0]
    if n == 0:
        return Estimate(None, None, None, "undefined: no records"), None
    value = float(x.mean())
    if n < 2:
        return Estimate(value, None, None, "none: an interval needs at least 2 records"), None
    rng = _rng(intervals.seed, "mean", key)
    draws, method = _mean_draws(x, rng, intervals.n_boot, intervals.bootstrap_max_n)
    lo, hi = _percentile_interval(draws, intervals.confidence)
    # the percentile interval of a skewed bootstrap can miss the estimate by rounding only; keep it honest
    return Estimate(value, min(lo, value), max(hi, value), method), draws


def median_estimate(
    x: Sequence[float] | np.ndarray, *, intervals: IntervalOptions = IntervalOptions(), key: str = ""
) -> Estimate:
    """The median with a percentile-bootstrap interval (order-statistic interval above `bootstrap_max_n`)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.shape[0]
    if n == 0:
        return Estimate(None, None, None, "undefined: no records")
    value = float(np.median(x))
    if n < 2:
        return Estimate(value, None, None, "none: an interval needs at least 2 records")
    n_boot, confidence = intervals.n_boot, intervals.confidence
    if n <= intervals.bootstrap_max_n:
        rng = _rng(intervals.seed, "median", key)
        draws = np.empty(n_boot)
        chunk = max(1, 2_000_000 // n)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            draws[start:stop] = np.median(
                x[rng.integers(0, n, size=(stop - start, n), dtype=np.int32)], axis=1
            )
        lo, hi = _percentile_interval(draws, confidence)
        method = "bootstrap"
    else:
        # distribution-free: ranks n/2 ± z·√n/2 of the sorted sample (1-based)
        z = _z(confidence)
        xs = x
        j = max(1, math.floor(n / 2 - z * math.sqrt(n) / 2))
        k = min(n, math.ceil(1 + n / 2 + z * math.sqrt(n) / 2))
        lo, hi = float(xs[j - 1]), float(xs[k - 1])
        method = "order-statistic"
    return Estimate(value, min(lo, value), max(hi, value), method)


# ------------------------------------------------------------------------------------------------------
# per-group table
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disparity:
    """A group against the reference group: differences (group − reference) and ratios (group / reference)."""

    mean_score_difference: Estimate
    mean_score_ratio: Estimate
    halt_rate_difference: Estimate
    halt_rate_ratio: Estimate
    flag_rate_difference: Estimate
    flag_rate_ratio: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class GroupStats:
    """The fairness row of one group."""

    group: str
    n: int
    halts: int
    flags: int
    mean_score: Estimate
    median_score: Estimate
    halt_rate: Estimate
    flag_rate: Estimate
    quality_n: int
    mean_quality: Estimate
    is_reference: bool
    disparity: Disparity | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "n": self.n,
            "halts": self.halts,
            "flags": self.flags,
            "mean_score": self.mean_score.to_dict(),
            "median_score": self.median_score.to_dict(),
            "halt_rate": self.halt_rate.to_dict(),
            "flag_rate": self.flag_rate.to_dict(),
            "quality_n": self.quality_n,
            "mean_quality": self.mean_quality.to_dict(),
            "is_reference": self.is_reference,
            "disparity": None if self.disparity is None else self.disparity.to_dict(),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class FairnessTable:
    """Per-group statistics and the settings that produced them."""

    groups: list[GroupStats]
    reference: str
    reference_present: bool
    intervals: IntervalOptions
    min_group_size: int
    notes: list[str] = field(default_factory=list)
    parity: dict[str, ParitySummary] = field(default_factory=dict)

    def group(self, name: str) -> GroupStats:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {[g.group for g in self.groups]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "reference_present": self.reference_present,
            "confidence": self.intervals.confidence,
            "n_boot": self.intervals.n_boot,
            "seed": self.intervals.seed,
            "min_group_size": self.min_group_size,
            "notes": list(self.notes),
            "groups": [g.to_dict() for g in self.groups],
            "parity": {k: v.to_dict() for k, v in self.parity.items()},
        }


def _draw_estimate(value: float | None, draws: np.ndarray | None, confidence: float, method: str) -> Estimate:
    if value is None or not math.isfinite(value):
        return Estimate(None, None, None, method)
    if draws is None:
        return Estimate(value, None, None, method)
    finite = draws[np.isfinite(draws)]
    if finite.shape[0] < draws.shape[0]:
        return Estimate(value, None, None, "none: some resamples divide by 0")
    lo, hi = _percentile_interval(finite, confidence)
    return Estimate(value, min(lo, value), max(hi, value), method)


def group_stats(
    records: Records,
    *,
    reference: str = DEFAULT_REFERENCE,
    intervals: IntervalOptions = IntervalOptions(),
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> FairnessTable:
    """Per group: counts, mean/median score, halt/flag rates, mean quality, disparity against `reference`."""
    if min_group_size < 1:
        raise ValueError(f"field 'min_group_size' must be at least 1, got {min_group_size}")
    confidence = intervals.confidence
    # 1. the per-group estimates, keeping each group's mean draws for the disparities
    rows: dict[str, dict[str, Any]] = {}
    for name, idx in records.group_indices().items():
        scores = records.score[idx]
        actions = records.action[idx]
        quality = records.quality[idx]
        quality = quality[~np.isnan(quality)]
        n = int(scores.shape[0])
        halts, flags = int(np.sum(actions == "halt")), int(np.sum(actions == "flag"))
        mean, draws = _mean_with_draws(scores, intervals, name)
        warnings = []
        if n < min_group_size:
            warnings.append(
                f"only {n} decision{'s' if n != 1 else ''} (fewer than {min_group_size}): "
                "too few to say anything about this group; do not compare it"
            )
        if n < 2:
            warnings.append("no interval for the mean or median score: it needs at least 2 decisions")
        rows[name] = {
            "n": n,
            "halts": halts,
            "flags": flags,
            "mean": mean,
            "draws": draws,
            "median": median_estimate(scores, intervals=intervals, key=name),
            "quality_n": int(quality.shape[0]),
            "quality": mean_estimate(quality, intervals=intervals, key="q:" + name),
            "warnings": warnings,
        }

    # 2. each group against the reference
    notes = []
    ref = rows.get(reference)
    if ref is None:
        notes.append(f"reference group {reference!r} has no decisions: no differences or ratios")
    out = []
    for name, r in rows.items():
        disparity = None
        if ref is not None and name != reference:
            m, m_ref = r["mean"].value, ref["mean"].value
            have = r["draws"] is not None and ref["draws"] is not None
            diff_draws = r["draws"] - ref["draws"] if have else None
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio_draws = r["draws"] / ref["draws"] if have else None
            method = (
                "bootstrap" if have and "normal" not in (r["mean"].method, ref["mean"].method) else "normal"
            )
            if not have:
                method = "none: a group has fewer than 2 decisions"
            if m_ref == 0:
                ratio = Estimate(None, None, None, "undefined: the reference mean score is 0")
            else:
                ratio = _draw_estimate(m / m_ref, ratio_draws, confidence, method)
            disparity = Disparity(
                mean_score_difference=_draw_estimate(m - m_ref, diff_draws, confidence, method),
                mean_score_ratio=ratio,
                halt_rate_difference=rate_difference(r["halts"], r["n"], ref["halts"], ref["n"], confidence),
                halt_rate_ratio=rate_ratio(r["halts"], r["n"], ref["halts"], ref["n"], confidence),
                flag_rate_difference=rate_difference(r["flags"], r["n"], ref["flags"], ref["n"], confidence),
                flag_rate_ratio=rate_ratio(r["flags"], r["n"], ref["flags"], ref["n"], confidence),
            )
        out.append(
            GroupStats(
                group=name,
                n=r["n"],
                halts=r["halts"],
                flags=r["flags"],
                mean_score=r["mean"],
                median_score=r["median"],
                halt_rate=rate_estimate(r["halts"], r["n"], confidence),
                flag_rate=rate_estimate(r["flags"], r["n"], confidence),
                quality_n=r["quality_n"],
                mean_quality=r["quality"],
                is_reference=name == reference,
                disparity=disparity,
                warnings=r["warnings"],
            )
        )
    counts = {name: (r["halts"], r["n"]) for name, r in rows.items()}
    parity_kw = {"confidence": confidence}
    return FairnessTable(
        groups=out,
        reference=reference,
        reference_present=ref is not None,
        intervals=intervals,
        min_group_size=min_group_size,
        notes=notes,
        parity={
            "halt": demographic_parity(counts, outcome="halt", **parity_kw),
            "acceptance": demographic_parity(
                {name: (n - k, n) for name, (k, n) in counts.items()}, outcome="acceptance", **parity_kw
            ),
        },
    )


# ------------------------------------------------------------------------------------------------------
# disparity summaries over all groups, and the choice of the reference group
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParitySummary:
    """Demographic parity of one outcome: the highest group rate minus the lowest (`difference`) and the
    lowest over the highest (`ratio`), as fairlearn's `demographic_parity_difference`/`_ratio` define them."""

    outcome: str  # "halt" (halted) or "acceptance" (continued or flagged: not halted)
    difference: Estimate
    ratio: Estimate
    highest: str | None
    lowest: str | None
    n_groups: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "difference": self.difference.to_dict(),
            "ratio": self.ratio.to_dict(),
            "highest": self.highest,
            "lowest": self.lowest,
            "n_groups": self.n_groups,
        }


def demographic_parity(
    counts: Mapping[str, tuple[int, int]],
    *,
    outcome: str,
    confidence: float = 0.95,
) -> ParitySummary:
    """Max − min and min / max of the groups' rates k/n (`counts`: group → (k, n)), with intervals.

    The intervals come from simultaneous Wilson intervals, one per group at confidence 1 − α/G (Bonferroni):
    with probability at least `confidence` every group's true rate lies in its interval, and then the true
    highest rate lies in [max lower, max upper] and the lowest in [min lower, min upper]. So the difference
    lies in [max(0, max lower − min upper), max upper − min lower] and the ratio in [min lower / max upper,
    min(1, min upper / max lower)]: conservative, never collapsed for groups at 0 % or 100 %, and not pushed
    above 0 the way resampling the maximum minus the minimum is.
    """
    names = sorted(name for name, (_, n) in counts.items() if n > 0)
    if len(names) < 2:
        why = "undefined: fewer than 2 groups to compare"
        none = Estimate(None, None, None, why)
        return ParitySummary(outcome, none, none, None, None, len(names))
    _z(confidence)
    each = 1 - (1 - confidence) / len(names)
    k = np.array([counts[name][0] for name in names], dtype=np.int64)
    n = np.array([counts[name][1] for name in names], dtype=np.int64)
    rates = k / n
    bounds = np.array([wilson_interval(int(a), int(b), each) for a, b in zip(k, n, strict=True)])
    lo, hi = bounds[:, 0], bounds[:, 1]
    hi_i, lo_i = int(np.argmax(rates)), int(np.argmin(rates))
    method = f"simultaneous wilson (bonferroni over {len(names)} groups)"
    d = float(rates[hi_i] - rates[lo_i])
    difference = Estimate(
        d, min(d, max(0.0, float(lo.max() - hi.min()))), max(d, float(hi.max() - lo.min())), method
    )
    if rates[hi_i] == 0:
        ratio = Estimate(None, None, None, f"undefined: every group's {outcome} rate is 0")
    else:
        r = float(rates[lo_i] / rates[hi_i])
        r_hi = 1.0 if lo.max() == 0 else min(1.0, float(hi.min() / lo.max()))
        ratio = Estimate(r, min(r, float(lo.min() / hi.max())), max(r, r_hi), method)
    return ParitySummary(outcome, difference, ratio, names[hi_i], names[lo_i], len(names))


def choose_reference(
    sizes: Mapping[str, int], requested: str | None = None, default: str = DEFAULT_REFERENCE
) -> tuple[str, str | None]:
    """The reference group and, when it is not the one asked for, a note saying why.

    `requested` is used when it is a group; otherwise `default` when it is one, else the largest group
    ("unknown" only when nothing else exists). With no groups at all the request stands (nothing to compare).
    """
    wanted = requested or default
    if wanted in sizes or not sizes:
        return wanted, None
    if requested is None and default in sizes:
        return default, None
    ranked = sorted(sizes, key=lambda g: (g == UNKNOWN_GROUP, -sizes[g], g))
    chosen = ranked[0]
    return chosen, f"{wanted!r} is not one of these groups: compared with {chosen!r}, the largest group"


# ------------------------------------------------------------------------------------------------------
# the paper's analyses: quartiles (tables 1 and 3, figure 4), keyword shares (table 4), correlation (figure 7)
# ------------------------------------------------------------------------------------------------------


def score_quartiles(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Quartile 1..4 of each score (1 = lowest uncertainty), by rank.

    A score's quartile is ⌊4·r/n⌋ + 1 where r is its 0-based rank with ties given their lowest rank
    (pandas' `rank(method="min")`): tied scores always share a quartile, the lower one, so the result does
    not depend on the order of the records, and quartiles can be unequal (even empty) when many scores tie.
    """
    x = np.asarray(scores, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # first index of each value's run in sorted order = its "min" rank
    first = np.searchsorted(xs, xs, side="left")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = first
    return (4 * ranks) // n + 1


@dataclass(frozen=True)
class QuartileRow:
    """One uncertainty quartile: its size, score range, prompt lengths (tables 1/3) and quality (figure 4)."""

    quartile: int
    n: int
    score_min: float | None
    score_max: float | None
    mean_chars: Estimate
    sd_chars: float | None
    mean_words: Estimate
    sd_words: float | None
    quality_n: int
    mean_quality: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "quartile": self.quartile,
            "n": self.n,
            "score_min": _clean(self.score_min),
            "score_max": _clean(self.score_max),
            "mean_chars": self.mean_chars.to_dict(),
            "sd_chars": _clean(self.sd_chars),
            "mean_words": self.mean_words.to_dict(),
            "sd_words": _clean(self.sd_words),
            "quality_n": self.quality_n,
            "mean_quality": self.mean_quality.to_dict(),
        }


def quartile_table(
    records: Records, *, intervals: IntervalOptions = IntervalOptions(), key: str = ""
) -> list[QuartileRow]:
    """Quartiles of `records` by score: mean ± sd character and word counts and mean quality per quartile."""
    q = score_quartiles(records.score)
    rows = []
    for quartile in range(1, 5):
        mask = q == quartile
        n = int(mask.sum())
        chars = records.chars[mask].astype(np.float64)
        words = records.words[mask].astype(np.float64)
        quality = records.quality[mask]
        quality = quality[~np.isnan(quality)]
        rows.append(
            QuartileRow(
                quartile=quartile,
                n=n,
                score_min=float(records.score[mask].min()) if n else None,
                score_max=float(records.score[mask].max()) if n else None,
                mean_chars=mean_estimate(chars, intervals=intervals, key=f"{key}:q{quartile}:chars"),
                sd_chars=float(chars.std(ddof=1)) if n > 1 else None,
                mean_words=mean_estimate(words, intervals=intervals, key=f"{key}:q{quartile}:words"),
                sd_words=float(words.std(ddof=1)) if n > 1 else None,
                quality_n=int(quality.shape[0]),
                mean_quality=mean_estimate(quality, intervals=intervals, key=f"{key}:q{quartile}:quality"),
            )
        )
    return rows


@dataclass(frozen=True)
class KeywordShare:
    """Of a group's prompts containing the keyword, the share in that group's lowest-uncertainty quartile."""

    group: str
    keyword: str
    n_group: int
    n_keyword: int
    n_keyword_q1: int
    share_q1: Estimate
    n_redacted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "keyword": self.keyword,
            "n_group": self.n_group,
            "n_keyword": self.n_keyword,
            "n_keyword_q1": self.n_keyword_q1,
            "share_q1": self.share_q1.to_dict(),
            "n_redacted": self.n_redacted,
        }


def keyword_lowest_quartile_share(
    records: Records, keyword: str, *, confidence: float = 0.95
) -> list[KeywordShare]:
    """Table 4: per group, the share of keyword prompts whose score falls in the group's own quartile 1.

    Quartiles are computed within each group over all its scored prompts (redacted ones included: their
    scores are still there). The keyword matches case-insensitively anywhere in the prompt, so inflected
    forms ("pizzaa") count; redacted prompts cannot be searched and are counted in `n_redacted`.
    """
    if not keyword or not keyword.strip():
        raise ValueError("field 'keyword' must be a non-empty string")
    needle = keyword.strip().casefold()
    out = []
    for name, idx in records.group_indices().items():
        sub = records.subset(idx)
        q = score_quartiles(sub.score)
        has = np.array([p is not None and needle in p.casefold() for p in sub.prompt], dtype=bool)
        redacted = int(sum(p is None for p in sub.prompt))
        k_total = int(has.sum())
        k_q1 = int((has & (q == 1)).sum())
        out.append(
            KeywordShare(
                name, keyword, len(sub), k_total, k_q1, rate_estimate(k_q1, k_total, confidence), redacted
            )
        )
    return out


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation between groups' mean score and mean quality (figure 7)."""

    r: Estimate
    n_groups: int
    points: list[dict[str, Any]]
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r.to_dict(), "n_groups": self.n_groups, "points": self.points, "note": self.note}


def score_quality_correlation(table: FairnessTable, *, confidence: float = 0.95) -> Correlation:
    """Pearson r over the groups that have quality scores, with a Fisher z interval (at least 4 groups)."""
    pts = [g for g in table.groups if g.quality_n > 0 and g.mean_score.value is not None]
    points = [
        {
            "group": g.group,
            "n": g.n,
            "quality_n": g.quality_n,
            "mean_score": g.mean_score.value,
            "mean_quality": g.mean_quality.value,
        }
        for g in pts
    ]
    k = len(pts)
    if k < 3:
        note = f"only {k} group{'s' if k != 1 else ''} with quality scores: a correlation needs at least 3"
        return Correlation(Estimate(None, None, None, "undefined: fewer than 3 groups"), k, points, note)
    x = np.array([p["mean_score"] for p in points])
    y = np.array([p["mean_quality"] for p in points])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(
            Estimate(None, None, None, "undefined: a variable is constant"),
            k,
            points,
            "the groups' mean scores or mean qualities are all equal",
        )
    r = float(np.corrcoef(x, y)[0, 1])
    r = max(-1.0, min(1.0, r))
    if k < 4 or abs(r) == 1.0:
        why = "fewer than 4 groups" if k < 4 else "|r| = 1"
        return Correlation(
            Estimate(r, None, None, f"pearson; no interval: {why}"),
            k,
            points,
            f"{k} groups: no interval ({why})",
        )
    z = _z(confidence)
    zr = math.atanh(r)
    half = z / math.sqrt(k - 3)
    return Correlation(
        Estimate(r, math.tanh(zr - half), math.tanh(zr + half), "pearson, fisher-z"), k, points, None
    )
