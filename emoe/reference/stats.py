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
