"""Paired tests and intervals between variants, rebuilt from what the store keeps.

Each metric is rebuilt per run as an additive statistic over the run's test studies
(``s2d_align.evaluation.stats``), so resampling or swapping studies recomputes it exactly; its
metric registry entry says which (its family) and whether that is the reported value itself
(``statistic``):

- BLEU-1..4: corpus BLEU from the per-study n-gram statistics (``bleu_stat/*``); runs scored
  before those were stored fall back to the mean sentence BLEU (a proxy, labelled as such);
- METEOR (``SENTENCE_MEAN`` in the registry): the mean sentence METEOR, a proxy: pycocoevalcap
  pools METEOR's alignment statistics inside Java, so its corpus score has no per-study
  decomposition;
- CE cells (``ce/MAPPING/LABELS/AVERAGE/STAT``) and per-observation F1 (``ce_f1/OBS``):
  recomputed from the stored CE labels (TP/FP/FN per study); ``grounded/*`` from stored counts;
- every other metric: the mean of its stored per-sample scores (the corpus value of ROUGE-L,
  CIDEr with its IDF fixed, and example-based CE).

Two ways to combine runs of several seeds:

- :meth:`PairedTests.seed_tests` / :meth:`PairedTests.seed_intervals` (the ablation table): the
  training seed is the unit. Seed s of a variant is paired with seed s of the reference variant
  (same data order, same studies); see :func:`~s2d_align.evaluation.stats.seed_paired_test`.
- :meth:`PairedTests.p_values`: one approximate randomisation over (seed, study) pairs pooled
  over seeds (``s2d-align results compare`` of two runs; it ignores seed-to-seed variance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation import ce, grounded
from s2d_align.evaluation.metrics import (
    CE,
    CE_F1,
    CE_F1_PREFIX,
    CORPUS,
    GROUNDED,
    SENTENCE_MEAN,
    find_spec,
)
from s2d_align.evaluation.nlg import (
    BLEU_STAT_COLUMNS,
    BLEU_STAT_PREFIX,
    NLG_METRICS,
    bleu_from_stats,
)
from s2d_align.evaluation.stats import (
    AdditiveStatistic,
    hierarchical_bootstrap,
    mean_statistic,
    paired_randomization,
    seed_paired_test,
)
from s2d_align.harness.store import Store

TRIALS = 10_000  # pooled test (results compare)
SEED_TRIALS = 5_000  # seed-level randomisation per table cell
N_BOOT = 2_000  # hierarchical bootstrap resamples
ALPHA = 0.05

#: BLEU-1..n: one statistic, rebuilt from the stored per-study n-gram statistics.
BLEU_METRICS = tuple(n for n in NLG_METRICS if n.startswith("BLEU_"))
#: Why a metric whose registry entry is SENTENCE_MEAN is tested on its mean sentence score.
PROXY_REASONS = {
    "METEOR": "pycocoevalcap pools METEOR's alignment statistics inside Java, so the corpus "
    "METEOR has no per-study decomposition",
}
#: Why BLEU is, for runs scored before its per-study statistics were stored.
STALE_BLEU_REASON = "these runs were scored before per-study BLEU statistics were stored"


def proxy_reason(metric: str) -> str:
    """Why a column whose basis is SENTENCE_MEAN (a proxy) is tested on the mean sentence score."""
    if metric in BLEU_METRICS:
        return STALE_BLEU_REASON
    spec = find_spec(metric)
    label = metric if spec is None else spec.label
    return PROXY_REASONS.get(metric, f"the corpus {label} has no per-study decomposition")


@dataclass
class RunPair:
    seed: int
    run_a: str
    run_b: str


@dataclass(frozen=True)
class _RunStat:
    """One run's statistic over its studies (``ids`` in row order)."""

    ids: tuple[str, ...]
    stat: AdditiveStatistic

    def restrict(self, ids: Sequence[str]) -> AdditiveStatistic:
        row = {sid: i for i, sid in enumerate(self.ids)}
        return AdditiveStatistic(self.stat.features[[row[i] for i in ids]], self.stat.aggregate)


@dataclass(frozen=True)
class _Plan:
    family: tuple  # runs sharing a family share one statistic (BLEU_1..4, CE p/r/f1)
    index: int  # which output of the statistic is the metric
    basis: str


@dataclass(frozen=True)
class MetricTest:
    """A variant against the reference variant on one metric, seed as the unit."""

    delta: float  # mean over seeds of the per-seed differences of the statistic
    low: float  # hierarchical bootstrap interval of delta
    high: float
    p_value: float | None  # max(p_seeds, p_studies); None with one seed
    p_seeds: float | None  # t-test of the per-seed differences over seeds
    p_studies: float  # randomisation of studies within each seed
    seeds_significant: int  # seeds whose own paired test is significant at ALPHA
    n_seeds: int
    basis: str


@dataclass(frozen=True)
class Interval:
    """Mean over seeds of a statistic and its hierarchical bootstrap interval."""

    value: float
    low: float
    high: float
    basis: str


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


class PairedTests:
    """Builds per-run statistics from the store (cached) and runs the tests and intervals."""

    def __init__(self, store: Store, split: str, manifests: Sequence[str], ce_mapping: str = "u0"):
        self.store = store
        self.split = split
        self.ce_mapping = ce_mapping
        self._ref_labels: dict[str, dict] = {}
        for manifest in manifests:
            self._ref_labels.update(store.reference_labels(manifest, split))
        self._stats: dict[tuple[str, tuple], _RunStat | None] = {}
        self._has_bleu: dict[str, bool] = {}
        self._ce_loaded: set[str] = set()

    # -- statistics per run --------------------------------------------------------------------
    def _bleu_stored(self, run_id: str) -> bool:
        if run_id not in self._has_bleu:
            first = BLEU_STAT_PREFIX + BLEU_STAT_COLUMNS[0]
            self._has_bleu[run_id] = bool(self.store.sample_scores(run_id, self.split, first))
        return self._has_bleu[run_id]

    def plan(self, metric: str, run_ids: Iterable[str]) -> _Plan:
        """Which statistic tests ``metric`` for these runs: its registry entry's family and
        ``statistic`` (BLEU is exact only if all runs stored its n-gram statistics); a metric
        without an entry is the mean of its per-study scores."""
        spec = find_spec(metric)
        family = None if spec is None else spec.family
        basis = SENTENCE_MEAN if spec is not None and spec.statistic == SENTENCE_MEAN else CORPUS
        if metric in BLEU_METRICS:
            if all(self._bleu_stored(r) for r in run_ids):
                return _Plan(("bleu",), BLEU_METRICS.index(metric), basis)
            return _Plan(("mean", metric), 0, SENTENCE_MEAN)
        if family == CE_F1:
            return _Plan(("ce_f1",), OBSERVATIONS.index(metric[len(CE_F1_PREFIX) :]), basis)
        if family == CE:
            _, mapping, labels, average, stat = metric.split("/")
            return _Plan(("ce", mapping, labels, average), ce.STATS.index(stat), basis)
        if family == GROUNDED:
            return _Plan(("grounded",), grounded.GROUNDED_METRICS.index(metric), basis)
        return _Plan(("mean", metric), 0, basis)

    def _run_stat(self, run_id: str, family: tuple) -> _RunStat | None:
        key = (run_id, family)
        if family[0] in ("ce", "ce_f1"):
            if run_id not in self._ce_loaded:
                self._ce_stats(run_id)
                self._ce_loaded.add(run_id)
        elif key not in self._stats:
            self._stats[key] = self._sample_stat(run_id, family)
        return self._stats.get(key)

    def _columns(self, run_id: str, names: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
        cols = [self.store.sample_scores(run_id, self.split, n) for n in names]
        ids = tuple(sorted(set.intersection(*(set(c) for c in cols)))) if cols else ()
        return ids, np.array([[c[i] for c in cols] for i in ids], dtype=np.float64)

    def _sample_stat(self, run_id: str, family: tuple) -> _RunStat | None:
        if family[0] == "bleu":
            ids, rows = self._columns(run_id, [BLEU_STAT_PREFIX + c for c in BLEU_STAT_COLUMNS])
            stat = AdditiveStatistic(
                rows.reshape(len(ids), -1), lambda sums, _n: bleu_from_stats(sums)
            )
        elif family[0] == "grounded":
            ids, rows = self._columns(run_id, [f"grounded/{f}" for f in grounded.COUNT_FIELDS])
            stat = grounded.statistic_from_counts(rows)
        else:
            ids, rows = self._columns(run_id, [family[1]])
            stat = mean_statistic(rows.reshape(-1))
        return _RunStat(ids, stat) if ids else None

    def _ce_stats(self, run_id: str) -> None:
        labels = self.store.prediction_labels(run_id, self.split)
        ids = tuple(sorted(set(labels) & set(self._ref_labels)))
        if not ids:
            return
        pred = [labels[i] for i in ids]
        ref = [self._ref_labels[i] for i in ids]
        for (mapping, label_set, average), stat in ce.ce_statistics(pred, ref).items():
            self._stats[(run_id, ("ce", mapping, label_set, average))] = _RunStat(ids, stat)
        obs = ce.per_observation_statistic(pred, ref, self.ce_mapping)
        self._stats[(run_id, ("ce_f1",))] = _RunStat(ids, obs)

    def _paired(self, family: tuple, pair: RunPair):
        """``(a, b)`` restricted to the studies both runs have, or None."""
        a, b = self._run_stat(pair.run_a, family), self._run_stat(pair.run_b, family)
        if a is None or b is None:
            return None
        common = sorted(set(a.ids) & set(b.ids))
        return (a.restrict(common), b.restrict(common)) if common else None

    def _plans(self, metrics: Sequence[str], run_ids: Sequence[str]) -> dict[str, _Plan]:
        return {m: self.plan(m, run_ids) for m in metrics}

    # -- seed level ----------------------------------------------------------------------------
    def seed_tests(
        self,
        metrics: Sequence[str],
        pairs: Sequence[RunPair],
        *,
        trials: int = SEED_TRIALS,
        n_boot: int = N_BOOT,
        seed: int = 0,
        alpha: float = ALPHA,
    ) -> dict[str, MetricTest]:
        """Seed-level test of A (``run_a``) minus B per metric; one pair per seed. A seed
        without data for a metric is left out of that metric; metrics without data are absent."""
        plans = self._plans(metrics, [r for p in pairs for r in (p.run_a, p.run_b)])
        entries = {}
        for family in dict.fromkeys(p.family for p in plans.values()):
            seeds = [x for x in (self._paired(family, pair) for pair in pairs) if x is not None]
            if seeds:
                entries[family] = seeds
        results = seed_paired_test(entries, trials=trials, n_boot=n_boot, seed=seed)
        out = {}
        for metric, plan in plans.items():
            res = results.get(plan.family)
            if res is None:
                continue
            i = plan.index
            out[metric] = MetricTest(
                delta=float(res.delta[i]),
                low=float(res.low[i]),
                high=float(res.high[i]),
                p_value=_nan_to_none(res.p_value[i]),
                p_seeds=_nan_to_none(res.p_seeds[i]),
                p_studies=float(res.p_studies[i]),
                seeds_significant=int(res.seeds_significant(alpha)[i]),
                n_seeds=res.n_seeds,
                basis=plan.basis,
            )
        return out

    def seed_intervals(
        self,
        metrics: Sequence[str],
        runs: Mapping[int, str],
        *,
        n_boot: int = N_BOOT,
        seed: int = 0,
    ) -> dict[str, Interval]:
        """Mean over seeds of each metric's statistic for one variant (``runs``: seed -> run id)
        and its hierarchical bootstrap interval."""
        run_ids = [runs[s] for s in sorted(runs)]
        plans = self._plans(metrics, run_ids)
        entries = {}
        for family in dict.fromkeys(p.family for p in plans.values()):
            stats = [self._run_stat(r, family) for r in run_ids]
            stats = [s.stat for s in stats if s is not None]
            if stats:
                entries[family] = stats
        intervals = hierarchical_bootstrap(entries, n_boot=n_boot, seed=seed)
        out = {}
        for metric, plan in plans.items():
            if plan.family not in intervals:
                continue
            low, high = intervals[plan.family]
            value = np.mean([s.value()[plan.index] for s in entries[plan.family]])
            out[metric] = Interval(
                float(value), float(low[plan.index]), float(high[plan.index]), plan.basis
            )
        return out

    # -- pooled (seed, study) pairs ------------------------------------------------------------
    def p_values(
        self,
        metrics: Sequence[str],
        pairs: Sequence[RunPair],
        *,
        trials: int = TRIALS,
        seed: int = 0,
    ) -> dict[str, float]:
        """Two-sided p-value per metric, pairs pooled over seeds (metrics without data are
        left out)."""
        plans = self._plans(metrics, [r for p in pairs for r in (p.run_a, p.run_b)])
        pooled: dict[tuple, tuple[AdditiveStatistic, AdditiveStatistic]] = {}
        for family in dict.fromkeys(p.family for p in plans.values()):
            parts = [x for x in (self._paired(family, pair) for pair in pairs) if x is not None]
            if parts:
                aggregate = parts[0][0].aggregate
                pooled[family] = tuple(
                    AdditiveStatistic(np.vstack([p[k].features for p in parts]), aggregate)
                    for k in (0, 1)
                )
        out: dict[str, float] = {}
        for n in sorted({a.n for a, _ in pooled.values()}):  # one test batch per sample count
            group = {f: ab for f, ab in pooled.items() if ab[0].n == n}
            results = paired_randomization(group, trials=trials, seed=seed)
            for metric, plan in plans.items():
                if plan.family in results:
                    out[metric] = float(results[plan.family].p_value[plan.index])
        return out
