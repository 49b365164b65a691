"""Clinical efficacy (CE): precision, recall and F1 of CheXpert labels, the full matrix.

A labeler turns each report into 14 labels (1 positive, 0 negative, -1 uncertain, None blank).
CE compares the labels of a generated report with those of its reference after binarising both:

- **mapping** ``u0`` (uncertain -> 0, R2Gen's ``compute_ce.py``) or ``u1`` (uncertain -> 1);
  blank -> 0 and negative -> 0 in both;
- **label set** ``14`` (all observations, No Finding included) or ``5`` (Atelectasis,
  Cardiomegaly, Consolidation, Edema, Pleural Effusion);
- **average** over the binary (report, observation) decisions:

  - ``micro``: pool TP, FP, FN over all reports and observations, then P, R, F1;
  - ``macro``: P, R, F1 per observation over all reports, then the unweighted mean over
    observations (sklearn's ``average="macro"``);
  - ``example`` (example-based): P, R, F1 per report over its observations, then the mean over
    reports (sklearn's ``average="samples"``), with this convention for empty sets: a report whose
    prediction and reference are both all-negative scores P = R = F1 = 1 (it is entirely right);
    otherwise an empty denominator gives 0 (a report that predicts nothing when its reference
    has positives gets P = R = F1 = 0; one that predicts positives for an all-negative
    reference also gets 0).

  Everywhere else a zero denominator gives 0 (sklearn's ``zero_division=0``), e.g. an observation
  absent from both predictions and references contributes F1 = 0 to the macro mean.

Every cell is named ``ce/<mapping>/<labels>/<average>/<p|r|f1>``, e.g. ``ce/u0/14/micro/f1``;
per-observation F1 (14, under the headline's mapping) is ``ce_f1/<Observation>``.

Every statistic here is a function of per-report *additive* features (TP/FP/FN counts per
observation, or per-report P/R/F1), which is what lets :mod:`.stats` bootstrap and permute them
exactly and cheaply (see :func:`ce_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import product

import numpy as np

from s2d_align.chexpert import FIVE_OBSERVATIONS, OBSERVATIONS
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.stats import AdditiveStatistic

__all__ = [
    "AVERAGES",
    "LABEL_SETS",
    "MAPPINGS",
    "STATS",
    "Labels",
    "binarize",
    "ce_cell_names",
    "ce_matrix",
    "ce_statistics",
    "parse_headline",
    "per_observation_f1",
]

Labels = Mapping[str, "int | None"]

MAPPINGS = ("u0", "u1")
LABEL_SETS: dict[str, tuple[str, ...]] = {"14": OBSERVATIONS, "5": FIVE_OBSERVATIONS}
AVERAGES = ("micro", "macro", "example")
STATS = ("p", "r", "f1")
_VALID = (1, 0, -1, None)
_INDEX = {obs: i for i, obs in enumerate(OBSERVATIONS)}


def cell_name(mapping: str, labels: str, average: str, stat: str) -> str:
    return f"ce/{mapping}/{labels}/{average}/{stat}"


def ce_cell_names() -> list[str]:
    """All 36 cell names in display order."""
    return [cell_name(*c) for c in product(MAPPINGS, LABEL_SETS, AVERAGES, STATS)]


def parse_headline(headline: str) -> tuple[str, str, str, str]:
    """``"u0/14/micro/f1"`` -> its four parts, validated (a ConfigError lists the valid ones)."""
    parts = headline.strip().split("/")
    if parts and parts[0] == "ce":
        parts = parts[1:]
    choices = (MAPPINGS, tuple(LABEL_SETS), AVERAGES, STATS)
    if len(parts) != 4 or any(p not in c for p, c in zip(parts, choices, strict=True)):
        raise ConfigError(
            f"eval.headline {headline!r} is not mapping/labels/average/metric with mapping in "
            f"{MAPPINGS}, labels in {tuple(LABEL_SETS)}, average in {AVERAGES}, metric in {STATS}"
        )
    return parts[0], parts[1], parts[2], parts[3]


def binarize(labels: Sequence[Labels], mapping: str, *, source: str = "labels") -> np.ndarray:
    """``(n, 14)`` 0/1 matrix in :data:`OBSERVATIONS` order. A missing observation counts as blank."""
    if mapping not in MAPPINGS:
        raise ConfigError(f"unknown uncertainty mapping {mapping!r} (known: {MAPPINGS})")
    uncertain = 1 if mapping == "u1" else 0
    out = np.zeros((len(labels), len(OBSERVATIONS)), dtype=np.int8)
    for row, report in enumerate(labels):
        for obs, value in report.items():
            if obs not in _INDEX:
                raise DataError(f"{source}[{row}]: unknown observation {obs!r}")
            if value not in _VALID or isinstance(value, bool):
                raise DataError(f"{source}[{row}]: {obs} = {value!r}; expected 1, 0, -1 or null")
            out[row, _INDEX[obs]] = 1 if value == 1 else (uncertain if value == -1 else 0)
    return out


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _prf(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def _example_prf(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-report ``(n, 3)`` P, R, F1 with the empty-set convention of the module docstring."""
    tp = (pred & ref).sum(1)
    fp = (pred & (1 - ref)).sum(1)
    fn = ((1 - pred) & ref).sum(1)
    p, r, f1 = _prf(tp, fp, fn)
    both_empty = (pred.sum(1) == 0) & (ref.sum(1) == 0)
    return np.stack([np.where(both_empty, 1.0, x) for x in (p, r, f1)], axis=1)


def _counts_aggregate(columns: np.ndarray, average: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """Aggregator over summed ``[tp(14) fp(14) fn(14)]`` features for micro or macro P/R/F1."""
    k = len(OBSERVATIONS)

    def aggregate(sums: np.ndarray, _n: int) -> np.ndarray:
        tp, fp, fn = (sums[:, j * k : (j + 1) * k][:, columns] for j in range(3))
        if average == "micro":
            p, r, f1 = _prf(tp.sum(1), fp.sum(1), fn.sum(1))
        else:
            p, r, f1 = (x.mean(1) for x in _prf(tp, fp, fn))
        return np.stack([p, r, f1], axis=1)

    return aggregate


def _mean_aggregate(sums: np.ndarray, n: int) -> np.ndarray:
    return sums / n


def ce_statistics(
    pred_labels: Sequence[Labels], ref_labels: Sequence[Labels]
) -> dict[tuple[str, str, str], AdditiveStatistic]:
    """One additive statistic per (mapping, labels, average), valued as its ``(p, r, f1)``."""
    if len(pred_labels) != len(ref_labels):
        raise DataError(
            f"CE: {len(pred_labels)} predicted label rows vs {len(ref_labels)} references"
        )
    out: dict[tuple[str, str, str], AdditiveStatistic] = {}
    for mapping in MAPPINGS:
        pred = binarize(pred_labels, mapping, source="predicted labels")
        ref = binarize(ref_labels, mapping, source="reference labels")
        counts = np.concatenate([pred & ref, pred & (1 - ref), (1 - pred) & ref], axis=1).astype(
            np.float64
        )
        for set_name, observations in LABEL_SETS.items():
            columns = np.array([_INDEX[o] for o in observations])
            for average in ("micro", "macro"):
                out[mapping, set_name, average] = AdditiveStatistic(
                    counts, _counts_aggregate(columns, average)
                )
            example = _example_prf(pred[:, columns], ref[:, columns])
            out[mapping, set_name, "example"] = AdditiveStatistic(example, _mean_aggregate)
    return out


def ce_matrix(pred_labels: Sequence[Labels], ref_labels: Sequence[Labels]) -> dict[str, float]:
    """All 36 cells ``{ce/<mapping>/<labels>/<average>/<stat>: value}``."""
    values: dict[str, float] = {}
    for (mapping, labels, average), stat in ce_statistics(pred_labels, ref_labels).items():
        for name, value in zip(STATS, stat.value(), strict=True):
            values[cell_name(mapping, labels, average, name)] = float(value)
    return {name: values[name] for name in ce_cell_names()}


def per_observation_statistic(
    pred_labels: Sequence[Labels], ref_labels: Sequence[Labels], mapping: str
) -> AdditiveStatistic:
    """Additive statistic valued as the 14 per-observation F1 scores."""
    pred = binarize(pred_labels, mapping, source="predicted labels")
    ref = binarize(ref_labels, mapping, source="reference labels")
    counts = np.concatenate([pred & ref, pred & (1 - ref), (1 - pred) & ref], axis=1).astype(
        np.float64
    )
    k = len(OBSERVATIONS)

    def aggregate(sums: np.ndarray, _n: int) -> np.ndarray:
        return _prf(sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :])[2]

    return AdditiveStatistic(counts, aggregate)


def per_observation_f1(
    pred_labels: Sequence[Labels], ref_labels: Sequence[Labels], mapping: str = "u0"
) -> dict[str, float]:
    """F1 per observation (14, :data:`OBSERVATIONS` order) under ``mapping``."""
    values = per_observation_statistic(pred_labels, ref_labels, mapping).value()
    return {obs: float(v) for obs, v in zip(OBSERVATIONS, values, strict=True)}
