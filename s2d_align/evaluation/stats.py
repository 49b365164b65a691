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

Across training seeds (:func:`hierarchical_bootstrap`, :func:`seed_paired_test`) the seed is the
unit: intervals resample seeds, then reports within each seed; tests combine per-seed paired
corpus-level differences and ask for them to hold against seed-to-seed variation.
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
    "SeedPairedResult",
    "bootstrap_intervals",
    "hierarchical_bootstrap",
    "mean_sd",
    "mean_statistic",
    "paired_randomization",
    "seed_paired_test",
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


# -- seed-level statistics: the training seed is the unit ---------------------------------------
#: One entry per training seed: a statistic, or a pair ``(a, b)`` of two systems on the same
#: reports (seed s of system A paired with seed s of system B).
SeedEntry = AdditiveStatistic | tuple[AdditiveStatistic, AdditiveStatistic]


def _entry_n(key: Hashable, entry: SeedEntry) -> int:
    if isinstance(entry, AdditiveStatistic):
        return entry.n
    a, b = entry
    if a.n != b.n or a.features.shape != b.features.shape:
        raise ValueError(f"{key!r}: the two systems of a seed must cover the same reports")
    return a.n


def _shape_groups(
    entries: Mapping[K, Sequence[SeedEntry]],
) -> dict[tuple[int, ...], list[K]]:
    """Keys grouped by their per-seed report counts (keys of a group share every resample)."""
    groups: dict[tuple[int, ...], list[K]] = {}
    for key, seeds in entries.items():
        if len(seeds) == 0:
            raise ValueError(f"{key!r}: no seeds")
        shape = tuple(_entry_n(key, e) for e in seeds)
        if 0 in shape:
            raise ValueError(f"{key!r}: a seed without reports (counts {list(shape)})")
        groups.setdefault(shape, []).append(key)
    return groups


def _group_rng(seed: int, stream: int, shape: tuple[int, ...]) -> np.random.Generator:
    """The same resamples for every call with the same seed and shape, whatever else is tested:
    every variant of a table is resampled on the same seeds and studies."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, len(shape), *shape]))


def _entry_value(entry: SeedEntry, weights: np.ndarray) -> np.ndarray:
    if isinstance(entry, AdditiveStatistic):
        return entry.evaluate(weights @ entry.features)
    a, b = entry
    return a.evaluate(weights @ a.features) - b.evaluate(weights @ b.features)


def hierarchical_bootstrap(
    entries: Mapping[K, Sequence[SeedEntry]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[K, tuple[np.ndarray, np.ndarray]]:
    """Percentile intervals ``{key: (low(k,), high(k,))}`` of the mean over training seeds.

    Each resample draws the seeds with replacement, then the reports with replacement within
    every drawn seed, recomputes each seed's statistic (exact corpus value for BLEU and micro CE)
    and averages over the drawn seeds. So the interval holds seed-to-seed variance as well as
    test-set sampling. For a pair ``(a, b)`` both systems are resampled on the same reports and
    the interval is that of the mean over seeds of ``a - b``. One seed: a plain bootstrap.
    """
    if n_boot < 1:
        return {}
    alpha = (1.0 - confidence) / 2
    out: dict[K, tuple[np.ndarray, np.ndarray]] = {}
    for shape, keys in _shape_groups(entries).items():
        rng = _group_rng(seed, 0, shape)
        n_seeds = len(shape)
        draws: dict[K, list[np.ndarray]] = {k: [] for k in keys}
        for rows in _chunks(n_boot, n_seeds * max(shape)):
            picked = rng.integers(0, n_seeds, size=(rows, n_seeds))  # drawn seed per slot
            totals: dict[K, np.ndarray | None] = dict.fromkeys(keys)
            for slot in range(n_seeds):
                for s, n in enumerate(shape):
                    where = np.flatnonzero(picked[:, slot] == s)
                    if where.size == 0:
                        continue
                    weights = _resample_weights(rng, where.size, n)
                    for key in keys:
                        value = _entry_value(entries[key][s], weights)
                        if totals[key] is None:
                            totals[key] = np.zeros((rows, value.shape[1]))
                        totals[key][where] += value
            for key in keys:
                draws[key].append(totals[key] / n_seeds)
        for key in keys:
            values = np.concatenate(draws[key], axis=0)
            low, high = np.quantile(values, [alpha, 1 - alpha], axis=0)
            out[key] = (low, high)
    return out


def _seed_t_test(deltas: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test of per-seed differences ``(S, k)`` against 0 (df S - 1).

    NaN for one seed (no seed-to-seed variance to test against). Identical non-zero differences
    (sd 0) give 0, identical zeros give 1.
    """
    from scipy import stats as scipy_stats  # scipy's import is slow; only tests need it

    n_seeds = deltas.shape[0]
    if n_seeds < 2:
        return np.full(deltas.shape[1], np.nan)
    mean = deltas.mean(0)
    sd = deltas.std(0, ddof=1)
    scale = np.maximum(1.0, np.abs(deltas).max(0))
    flat = sd <= 1e-12 * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(flat, 0.0, mean / (sd / math.sqrt(n_seeds)))
    p = 2 * scipy_stats.t.sf(np.abs(t), df=n_seeds - 1)
    zero = np.abs(mean) <= 1e-12 * scale
    return np.where(flat, np.where(zero, 1.0, 0.0), p)


@dataclass(frozen=True)
class SeedPairedResult:
    """System A minus system B with the training seed as the unit (arrays over the k outputs).

    ``delta``: mean over seeds of the per-seed differences ``seed_delta`` (S, k), each the
    difference of two corpus-level values on the same reports. ``seed_p`` (S, k): each seed's own
    paired randomisation test (reports swapped within the seed). ``p_value`` is the
    intersection-union test of "the difference holds in every seed": the largest ``seed_p`` when
    every seed's difference has the sign of ``delta``, else 1; NaN for one seed (nothing says
    the difference survives another seed). A difference carried by one seed of three is never
    significant, and one that every seed shows is, without the t-test's need for many seeds.
    ``p_seeds`` (t-test of the per-seed differences over seeds, df S - 1) and ``p_studies``
    (randomisation of the mean over seeds) are kept for reference. ``low``/``high``:
    hierarchical bootstrap interval of ``delta`` (seeds, then reports).
    """

    delta: np.ndarray
    seed_delta: np.ndarray
    p_value: np.ndarray
    p_seeds: np.ndarray
    p_studies: np.ndarray
    seed_p: np.ndarray
    low: np.ndarray
    high: np.ndarray
    trials: int
    n_boot: int

    @property
    def n_seeds(self) -> int:
        return int(self.seed_delta.shape[0])

    def seeds_significant(self, alpha: float = 0.05) -> np.ndarray:
        """How many seeds' own tests are significant at ``alpha`` (unadjusted), per output."""
        return (self.seed_p < alpha).sum(0)


def seed_paired_test(
    pairs: Mapping[K, Sequence[tuple[AdditiveStatistic, AdditiveStatistic]]],
    *,
    trials: int = 5000,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[K, SeedPairedResult]:
    """Seed-level paired comparison of two systems for each ``key: [(a_s, b_s) per seed]``.

    The randomisation swaps the two systems' outputs per (seed, report) with a fair coin,
    independently within each seed, and recomputes every seed's corpus-level difference; its
    statistic is the mean over seeds (``p_studies``), and per seed it gives ``seed_p``, whose
    largest value (when the seeds agree in sign) is the p-value: see :class:`SeedPairedResult`.
    The same swap masks and resamples serve every key of one shape (seeded), so the cells of a
    table are tested on one set of randomisations.
    """
    if not pairs:
        return {}
    if trials < 1:
        raise ValueError(f"seed_paired_test: trials must be >= 1, got {trials}")
    intervals = hierarchical_bootstrap(pairs, n_boot=n_boot, seed=seed, confidence=confidence)
    out: dict[K, SeedPairedResult] = {}
    for shape, keys in _shape_groups(pairs).items():
        rng = _group_rng(seed, 1, shape)
        observed = {
            k: np.stack([a.value() - b.value() for a, b in pairs[k]]) for k in keys
        }  # (S, k) each
        tolerance = {k: 1e-12 * max(1.0, float(np.max(np.abs(v)))) for k, v in observed.items()}
        seed_hits = {k: np.zeros_like(v) for k, v in observed.items()}
        mean_hits = {k: np.zeros(v.shape[1]) for k, v in observed.items()}
        prepared = {
            k: [
                (a.features.sum(0), b.features.sum(0), b.features - a.features) for a, b in pairs[k]
            ]
            for k in keys
        }
        for rows in _chunks(trials, max(shape)):
            swaps = [rng.integers(0, 2, size=(rows, n)).astype(np.float64) for n in shape]
            for key in keys:
                total = np.zeros((rows, observed[key].shape[1]))
                for s, ((a, b), (sum_a, sum_b, diff)) in enumerate(
                    zip(pairs[key], prepared[key], strict=True)
                ):
                    moved = swaps[s] @ diff  # what swapping adds to A's sums and takes from B's
                    delta = a.evaluate(sum_a + moved) - b.evaluate(sum_b - moved)
                    seed_hits[key][s] += (
                        np.abs(delta) >= np.abs(observed[key][s]) - tolerance[key]
                    ).sum(0)
                    total += delta
                mean = np.abs(observed[key].mean(0))
                mean_hits[key] += (np.abs(total / len(shape)) >= mean - tolerance[key]).sum(0)
        for key in keys:
            deltas = observed[key]
            p_studies = (1 + mean_hits[key]) / (trials + 1)
            p_seeds = _seed_t_test(deltas)
            low, high = intervals.get(key, (np.full(deltas.shape[1], np.nan),) * 2)
            seed_p = (1 + seed_hits[key]) / (trials + 1)
            same_sign = np.all(np.sign(deltas) == np.sign(deltas.mean(0)), axis=0) & (
                np.abs(deltas.mean(0)) > tolerance[key]
            )
            p_all_seeds = np.where(same_sign, seed_p.max(0), 1.0)
            if deltas.shape[0] < 2:
                p_all_seeds = np.full(deltas.shape[1], np.nan)
            out[key] = SeedPairedResult(
                delta=deltas.mean(0),
                seed_delta=deltas,
                p_value=p_all_seeds,
                p_seeds=p_seeds,
                p_studies=p_studies,
                seed_p=seed_p,
                low=low,
                high=high,
                trials=trials,
                n_boot=n_boot,
            )
    return out


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


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if n else np.array([], int)
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula: the probability that a
    random positive outscores a random negative, ties counting one half. Both classes must be
    present (the AUROC is undefined otherwise) and every score finite."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape}: expected equal 1-D shapes")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives (got {n_pos} and {n_neg})")
    u = average_ranks(s)[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
