"""Statistics for scores: bootstrap CIs, paired approximate randomisation, mean and sd over seeds.

Every corpus statistic the suite reports is written as an :class:`AdditiveStatistic`: a function
of the *sum over reports* of per-report feature vectors. Resampling reports (bootstrap) or swapping
two systems' outputs per report (approximate randomisation) then only re-weights those sums, so a
whole bootstrap is one matrix product per chunk of resamples instead of re-running the scorers:

- mean-of-samples metrics (ROUGE-L, CIDEr, example-based CE): features = the per-report score;
- corpus BLEU: features = pycocoevalcap's per-report sufficient statistics (test and closest
  reference length, n-gram guesses and matches), so every resample's BLEU is the exact corpus
  BLEU of that resample;
- micro / macro CE: features = per-report TP, FP, FN per observation, so the cell is recomputed
  from the resampled label rows.

Documented approximations (a full rescoring per resample would cost minutes of Java):

- CIDEr keeps the IDF of the whole evaluated reference set in every resample (resampled
  duplicates would otherwise inflate document frequencies); in a paired test both systems share
  the references, so the IDF is the same for both and the test is exact.
- METEOR's corpus score pools its alignment statistics inside Java, so it is not the mean of the
  per-report scores. Its interval is the percentile interval of the mean per-report METEOR,
  shifted by (corpus value - mean per-report value); its paired test permutes per-report scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = [
    "AdditiveStatistic",
    "MeanSD",
    "PairedResult",
    "bootstrap_intervals",
    "mean_sd",
    "mean_statistic",
    "paired_randomization",
]

K = TypeVar("K", bound=Hashable)
#: Max float64 cells of a weight matrix held at once (about 32 MB).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class AdditiveStatistic:
    """A statistic ``aggregate(sum_i w_i * features_i, n)`` over ``n`` reports.

    ``aggregate`` maps ``(B, d)`` summed features to ``(B,)`` or ``(B, k)`` values.
    """

    features: np.ndarray  # (n, d)
    aggregate: Callable[[np.ndarray, int], np.ndarray]

    def __post_init__(self) -> None:
        feats = np.asarray(self.features, dtype=np.float64)
        if feats.ndim == 1:
            feats = feats[:, None]
        object.__setattr__(self, "features", feats)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def evaluate(self, sums: np.ndarray) -> np.ndarray:
        """``(B, d)`` summed features -> ``(B, k)`` values."""
        out = np.asarray(self.aggregate(sums, self.n), dtype=np.float64)
        return out.reshape(sums.shape[0], -1)

    def value(self) -> np.ndarray:
        """The statistic on the full sample, shape ``(k,)``."""
        return self.evaluate(self.features.sum(0, keepdims=True))[0]


def mean_statistic(values: Sequence[float] | np.ndarray) -> AdditiveStatistic:
    """The mean of per-report scores."""
    return AdditiveStatistic(np.asarray(values, dtype=np.float64), lambda sums, n: sums / max(n, 1))


def _chunks(total: int, n: int) -> Iterator[int]:
    size = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < total:
        step = min(size, total - done)
        yield step
        done += step


def _resample_weights(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``(rows, n)`` counts: how often each report is drawn when resampling ``n`` ids with replacement."""
    draws = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_intervals(
    stats: Mapping[K, AdditiveStatistic],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[K, tuple[np.ndarray, np.ndarray]]:
    """Percentile bootstrap intervals ``{key: (low(k,), high(k,))}``.

    Every statistic is evaluated on the same resamples of report ids (seeded), so intervals of
    different metrics come from one coherent set of resampled test sets.
    """
    if not stats:
        return {}
    sizes = {s.n for s in stats.values()}
    if len(sizes) != 1:
        raise ValueError(f"bootstrap: statistics over different report counts {sorted(sizes)}")
    n = sizes.pop()
    if n == 0 or n_boot < 1:
        return {}  # no resamples, no interval (callers report None)
    rng = np.random.default_rng(seed)
    draws: dict[K, list[np.ndarray]] = {k: [] for k in stats}
    for rows in _chunks(n_boot, n):
        weights = _resample_weights(rng, rows, n)
        for key, stat in stats.items():
            draws[key].append(stat.evaluate(weights @ stat.features))
    alpha = (1.0 - confidence) / 2
    out = {}
    for key, parts in draws.items():
        values = np.concatenate(parts, axis=0)
        low, high = np.quantile(values, [alpha, 1 - alpha], axis=0)
        out[key] = (low, high)
    return out


@dataclass(frozen=True)
class PairedResult:
    """System A minus system B, and the two-sided approximate-randomisation p-value."""

    delta: np.ndarray  # (k,)
    p_value: np.ndarray  # (k,)
    trials: int


def paired_randomization(
    pairs: Mapping[K, tuple[AdditiveStatistic, AdditiveStatistic]],
    *,
    trials: int = 10_000,
    seed: int = 0,
) -> dict[K, PairedResult]:
    """Paired approximate randomisation (Noreen 1989) for each ``key: (stat_a, stat_b)``.

    Each trial swaps the two systems' outputs for a random half of the reports (a fair coin per
    report) and recomputes both statistics; the p-value is ``(1 + #{|delta_t| >= |delta|}) /
    (trials + 1)``. The same swap masks serve every key (seeded).
    """
    if not pairs:
        return {}
    n = next(iter(pairs.values()))[0].n
    for key, (a, b) in pairs.items():
        if a.n != n or b.n != n or a.features.shape != b.features.shape:
            raise ValueError(f"paired test {key!r}: the two systems must cover the same reports")
    rng = np.random.default_rng(seed)
    observed = {k: a.value() - b.value() for k, (a, b) in pairs.items()}
    hits = {k: np.zeros_like(v) for k, v in observed.items()}
    sums = {
        k: (a.features.sum(0), b.features.sum(0), b.features - a.features)
        for k, (a, b) in pairs.items()
    }
    for rows in _chunks(trials, n):
        swap = rng.integers(0, 2, size=(rows, n)).astype(np.float64)
        for key, (a, b) in pairs.items():
            sum_a, sum_b, diff = sums[key]
            moved = swap @ diff  # what swapping adds to A's sums and takes from B's
            delta = a.evaluate(sum_a + moved) - b.evaluate(sum_b - moved)
            tolerance = 1e-12 * max(1.0, float(np.max(np.abs(observed[key]))))
            hits[key] += (np.abs(delta) >= np.abs(observed[key]) - tolerance).sum(0)
    return {k: PairedResult(observed[k], (1 + hits[k]) / (trials + 1), trials) for k in pairs}


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (ddof 1) over seeds; ``sd`` is None for one seed."""

    mean: float
    sd: float | None
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.sd is None else f"{self.mean:.4f} ± {self.sd:.4f}"


def mean_sd(values: Sequence[float]) -> MeanSD:
    """Mean and sd of one metric over seeds (NaN values are an error, not skipped)."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_sd: no values")
    if any(math.isnan(v) for v in data):
        raise ValueError("mean_sd: NaN among the values")
    mean = sum(data) / len(data)
    if len(data) < 2:
        return MeanSD(mean, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in data) / (len(data) - 1))
    return MeanSD(mean, sd, len(data))


def auroc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula, ties sharing their mean
    rank. NaN when ``positive`` holds only one class (the AUROC is undefined there)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"auroc needs two 1-d arrays of one length, got {s.shape}, {y.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties: each run of equal scores gets the mean of its 1-based ranks.
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(s)]))
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
