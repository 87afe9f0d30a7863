"""Statistics of the experiments: AUROC (Mann-Whitney) and Pearson r, with percentile-bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("positive/negative: both need at least one score")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def auroc_ci(
    positive: Sequence[float],
    negative: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """AUROC and its percentile-bootstrap interval (both groups resampled)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    rng = np.random.default_rng(seed)
    boots = [auroc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return auroc(pos, neg), float(lo), float(hi)


def pearson_ci(
    x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Pearson r and its percentile-bootstrap interval (pairs resampled)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size != b.size or a.size < 3:
        raise ValueError("x/y: need the same number of values, at least 3")
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    r = float(np.corrcoef(a, b)[0, 1])
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, a.size, a.size)
        if np.std(a[idx]) > 0 and np.std(b[idx]) > 0:
            boots.append(np.corrcoef(a[idx], b[idx])[0, 1])
    if not boots:
        return r, float("nan"), float("nan")
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return r, float(lo), float(hi)


def pearson_of_means_ci(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Pearson r between the groups' mean x and mean y, with an interval from resampling the items of every
    group (paired x, y); the groups themselves are fixed (e.g. the languages of the world)."""
    pairs = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in groups]
    if len(pairs) < 3 or any(x.size != y.size or x.size == 0 for x, y in pairs):
        raise ValueError("groups: need at least 3 groups of paired, non-empty x and y")

    def r_of(means: list[tuple[float, float]]) -> float:
        a, b = np.array(means).T
        return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")

    r = r_of([(x.mean(), y.mean()) for x, y in pairs])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        means = []
        for x, y in pairs:
            idx = rng.integers(0, x.size, x.size)
            means.append((x[idx].mean(), y[idx].mean()))
        value = r_of(means)
        if not np.isnan(value):
            boots.append(value)
    if not boots:
        return r, float("nan"), float("nan")
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return r, float(lo), float(hi)


def stratified_auroc(
    positive: Sequence[float],
    positive_strata: Sequence[int],
    negative: Sequence[float],
    negative_strata: Sequence[int],
) -> tuple[float, int]:
    """AUROC over only the (positive, negative) pairs of the same stratum (e.g. the same token count), and the
    number of such pairs; ties counted half."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    ps, ns = np.asarray(positive_strata), np.asarray(negative_strata)
    wins, pairs = 0.0, 0
    for stratum in np.intersect1d(ps, ns):
        a, b = pos[ps == stratum], neg[ns == stratum]
        wins += float((a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum())
        pairs += a.size * b.size
    if pairs == 0:
        raise ValueError("strata: no stratum holds both a positive and a negative")
    return wins / pairs, pairs


def stratified_auroc_ci(
    positive: Sequence[float],
    positive_strata: Sequence[int],
    negative: Sequence[float],
    negative_strata: Sequence[int],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float, int]:
    """Stratified AUROC, its percentile-bootstrap interval (both groups resampled), and its pair count."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    ps, ns = np.asarray(positive_strata), np.asarray(negative_strata)
    value, pairs = stratified_auroc(pos, ps, neg, ns)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i, j = rng.integers(0, pos.size, pos.size), rng.integers(0, neg.size, neg.size)
        try:
            boots.append(stratified_auroc(pos[i], ps[i], neg[j], ns[j])[0])
        except ValueError:
            continue
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return value, float(lo), float(hi), pairs
