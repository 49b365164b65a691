"""Paired approximate randomisation between two variants, from what the store keeps.

Pairs are (seed, study): the variant's seed-s run is paired with the reference variant's seed-s
run on the same test studies; ``pooled`` stacks the pairs of every common seed into one test,
``per_seed`` runs one test per seed. The statistics come from ``s2d_align.evaluation``:

- CE cells (``ce/MAPPING/LABELS/AVERAGE/STAT``) and per-observation F1 (``ce_f1/OBS``) are
  recomputed exactly from the stored CE labels (TP/FP/FN per report), so a swap changes the
  corpus-level micro/macro value exactly as a rescoring would;
- every other metric uses the mean of its stored per-sample scores: exact for ROUGE-L, CIDEr and
  example-based CE, a sentence-level proxy for corpus BLEU and METEOR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation import ce
from s2d_align.evaluation.stats import AdditiveStatistic, mean_statistic, paired_randomization
from s2d_align.harness.store import Store

TRIALS = 10_000


@dataclass
class RunPair:
    seed: int
    run_a: str
    run_b: str


@dataclass
class _Stat:
    a: AdditiveStatistic
    b: AdditiveStatistic
    index: int  # which output of the statistic is the metric


class PairedTests:
    """Builds statistics for (variant run, reference run) pairs and runs the tests."""

    def __init__(self, store: Store, split: str, manifests: Sequence[str], ce_mapping: str = "u0"):
        self.store = store
        self.split = split
        self.ce_mapping = ce_mapping
        self._ref_labels: dict[str, dict] = {}
        for manifest in manifests:
            self._ref_labels.update(store.reference_labels(manifest, split))

    def _ce_rows(self, pairs: Sequence[RunPair]):
        """Stacked (pred_a, pred_b, ref) label rows over the common ids of every pair."""
        pa, pb, ref = [], [], []
        for pair in pairs:
            la = self.store.prediction_labels(pair.run_a, self.split)
            lb = self.store.prediction_labels(pair.run_b, self.split)
            common = sorted(set(la) & set(lb) & set(self._ref_labels))
            pa += [la[i] for i in common]
            pb += [lb[i] for i in common]
            ref += [self._ref_labels[i] for i in common]
        return pa, pb, ref

    def _stat(self, metric: str, pairs: Sequence[RunPair], ce_cache: dict) -> _Stat | None:
        if metric.startswith("ce/") or metric.startswith("ce_f1/"):
            if "rows" not in ce_cache:
                ce_cache["rows"] = self._ce_rows(pairs)
            pa, pb, ref = ce_cache["rows"]
            if not ref:
                return None
            if metric.startswith("ce_f1/"):
                obs = metric[len("ce_f1/") :]
                return _Stat(
                    ce.per_observation_statistic(pa, ref, self.ce_mapping),
                    ce.per_observation_statistic(pb, ref, self.ce_mapping),
                    OBSERVATIONS.index(obs),
                )
            _, mapping, labels, average, stat = metric.split("/")
            if "cells" not in ce_cache:
                ce_cache["cells"] = (ce.ce_statistics(pa, ref), ce.ce_statistics(pb, ref))
            cells_a, cells_b = ce_cache["cells"]
            key = (mapping, labels, average)
            return _Stat(cells_a[key], cells_b[key], ce.STATS.index(stat))
        xs, ys = [], []
        for pair in pairs:
            a = self.store.sample_scores(pair.run_a, self.split, metric)
            b = self.store.sample_scores(pair.run_b, self.split, metric)
            common = sorted(set(a) & set(b))
            xs += [a[i] for i in common]
            ys += [b[i] for i in common]
        if not xs:
            return None
        return _Stat(mean_statistic(np.array(xs)), mean_statistic(np.array(ys)), 0)

    def p_values(
        self,
        metrics: Sequence[str],
        pairs: Sequence[RunPair],
        *,
        trials: int = TRIALS,
        seed: int = 0,
    ) -> dict[str, float]:
        """Two-sided p-value per metric (metrics without data are left out)."""
        cache: dict = {}
        stats = {}
        for metric in metrics:
            stat = self._stat(metric, pairs, cache)
            if stat is not None:
                stats[metric] = stat
        out: dict[str, float] = {}
        for n in sorted({s.a.n for s in stats.values()}):  # one test batch per sample count
            group = {m: s for m, s in stats.items() if s.a.n == n}
            results = paired_randomization(
                {m: (s.a, s.b) for m, s in group.items()}, trials=trials, seed=seed
            )
            out.update({m: float(results[m].p_value[s.index]) for m, s in group.items()})
        return out
