"""Grounded finding F1: a positive finding counts only where the reference puts it.

Each report (prediction and reference) becomes a set of positive **findings**
``(observation, side, zone)`` read from the clinical text analyser's mentions:

- only mentions that count towards the 14 labels and are *positive*; negated and uncertain
  mentions are never findings (uncertain -> not positive: the ``u0`` rule of the headline CE
  cell). "No Finding" is not a finding;
- **location vocabulary**: side in {left, right, bilateral, None}, zone in {upper, middle,
  lower, None}, from the mention's anatomy: lobes map to side + zone ("right middle lobe" ->
  right/middle, "LLL" -> left/lower), "lingula" -> left/middle, "retrocardiac" -> left/lower
  (the left lower lobe sits behind the heart), "bibasilar"/"bibasal" -> bilateral/lower,
  apical/apex -> upper, mid -> middle, base/basilar -> lower; other places (perihilar, rib,
  hemithorax...) give a side only;
- Cardiomegaly, Enlarged Cardiomediastinum and Support Devices never carry a location: side
  words near them name a heart border or a line's course ("left PICC"), not where a lung or
  pleural finding is;
- within one report, findings of one observation are merged: a left and a right one in the same
  zone are one bilateral finding, and a finding that a more specific one already states is
  dropped ("Left effusion. The effusion is small." is one left effusion; "bilateral effusions"
  and a later "left effusion" are one bilateral effusion).

A finding named only in an interpretive clause ("left lower lobe opacity, compatible with
pneumonia") gets no location from the analyser, so it is matched on its observation alone.

**Matching** (per report and observation, a maximum one-to-one matching): a predicted finding
matches a reference finding of the same observation when every location part the *reference*
states (side, zone) is stated identically by the prediction. A reference without a location is
matched by the observation alone; a reference location the prediction omits or contradicts is a
mismatch (one FP and one FN); "bilateral" and a single side differ. Unmatched predictions are
FP, unmatched references FN.

**Scores**: micro P, R, F1 over all (study, finding) pairs of the corpus; a zero denominator
gives 0 (as CE micro: a corpus without a positive finding on either side scores 0). The
**ungrounded** F1 matches the same findings on the observation alone, so it is never below the
grounded F1 and the gap is what location costs.

Every score is a function of per-study counts ``[tp fp fn ungrounded_tp ungrounded_fp
ungrounded_fn]`` (:data:`COUNT_FIELDS`), so bootstrap and paired tests resample studies exactly
(:func:`statistic_from_counts`). Linear in report length: the analyser is, and a report has at
most 16 distinct locations per observation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from s2d_align.errors import DataError
from s2d_align.evaluation.analyser import ANALYSER_VERSION, analyse
from s2d_align.evaluation.stats import AdditiveStatistic

__all__ = [
    "COUNT_FIELDS",
    "GROUNDED_METRICS",
    "GROUNDED_VERSION",
    "Finding",
    "GroundedCounts",
    "grounded_scores",
    "grounded_signature",
    "grounded_statistic",
    "location",
    "match_findings",
    "per_sample_counts",
    "positive_findings",
    "statistic_from_counts",
]

#: Bump when extraction, location vocabulary or matching can change a number.
GROUNDED_VERSION = "grounded-v1"
#: Metric names, in the order of :func:`statistic_from_counts`'s values.
GROUNDED_METRICS = ("grounded/p", "grounded/r", "grounded/f1", "grounded/ungrounded_f1")
#: Per-study count columns (stored per sample as ``grounded/<field>``).
COUNT_FIELDS = ("tp", "fp", "fn", "ungrounded_tp", "ungrounded_fp", "ungrounded_fn")

_UNLOCATED = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum", "Support Devices"})
_SIDES = {"left": "left", "right": "right", "bilateral": "bilateral"}
_ZONES = {
    "upper": "upper",
    "apical": "upper",
    "apex": "upper",
    "middle": "middle",
    "mid": "middle",
    "lower": "lower",
    "basilar": "lower",
    "basal": "lower",
    "base": "lower",
}
# Places that fix both side and zone (the analyser writes "bibasilar" and "lingula" as is).
_PLACES = {
    "bibasilar": ("bilateral", "lower"),
    "bibasal": ("bilateral", "lower"),
    "lingula": ("left", "middle"),
    "lingular": ("left", "middle"),
    "retrocardiac": ("left", "lower"),
}


@dataclass(frozen=True)
class Finding:
    """One positive finding: a CheXpert observation and where it is (None: not stated)."""

    observation: str
    side: str | None = None
    zone: str | None = None

    def fits(self, reference: Finding) -> bool:
        """True when this (predicted) finding states every location part ``reference`` states."""
        return (
            self.observation == reference.observation
            and reference.side in (None, self.side)
            and reference.zone in (None, self.zone)
        )


@dataclass(frozen=True)
class GroundedCounts:
    """One study's counts; ``as_row()`` is its feature vector in :data:`COUNT_FIELDS` order."""

    tp: int
    fp: int
    fn: int
    ungrounded_tp: int
    ungrounded_fp: int
    ungrounded_fn: int

    def as_row(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in COUNT_FIELDS)


def location(anatomy: str | None) -> tuple[str | None, str | None]:
    """The analyser's anatomy text -> ``(side, zone)`` in the canonical vocabulary."""
    if not anatomy:
        return None, None
    words = anatomy.lower().replace("-", " ").split()
    side = next((_SIDES[w] for w in words if w in _SIDES), None)
    for w in words:
        if w in _PLACES:
            place_side, zone = _PLACES[w]
            # a stated side wins ("right retrocardiac" is rare but says right)
            return (side if w == "retrocardiac" and side else place_side), zone
    zone = next((_ZONES[w] for w in words if w in _ZONES), None)
    return side, zone


def _states(g: Finding, f: Finding) -> bool:
    """Within one report: finding ``g`` says all that ``f`` says (bilateral says either side)."""
    side = f.side in (None, g.side) or (g.side == "bilateral" and f.side in ("left", "right"))
    return side and f.zone in (None, g.zone)


def _merged(found: set[Finding]) -> frozenset[Finding]:
    """One report's findings with sides merged and less specific duplicates dropped."""
    by_obs: dict[str, set[Finding]] = defaultdict(set)
    for f in found:
        by_obs[f.observation].add(f)
    kept: set[Finding] = set()
    for obs, group in by_obs.items():  # at most 16 locations per observation: constant work
        for zone in {f.zone for f in group}:
            sides = {Finding(obs, "left", zone), Finding(obs, "right", zone)}
            if sides <= group:
                group = (group - sides) | {Finding(obs, "bilateral", zone)}
        kept.update(f for f in group if not any(g != f and _states(g, f) for g in group))
    return frozenset(kept)


def positive_findings(report: str) -> frozenset[Finding]:
    """The positive findings of one report with their canonical locations."""
    if not isinstance(report, str):
        raise DataError(f"grounded findings need report text, got {type(report).__name__}")
    found: set[Finding] = set()
    for m in analyse(report).mentions:
        if m.kind != "label" or m.status != 1:
            continue
        side, zone = location(m.anatomy)
        for obs in m.observations:
            if obs == "No Finding":
                continue
            found.add(Finding(obs) if obs in _UNLOCATED else Finding(obs, side, zone))
    return _merged(found)


def _sort_key(f: Finding) -> tuple[str, str, str]:
    return f.observation, f.side or "", f.zone or ""


def _max_matching(preds: list[Finding], refs: list[Finding]) -> int:
    """Size of a maximum one-to-one matching of ``preds`` onto ``refs`` (augmenting paths)."""
    owner = [-1] * len(refs)  # reference j -> index of the prediction matched to it

    def augment(p: int, seen: set[int]) -> bool:
        for j, ref in enumerate(refs):
            if j in seen or not preds[p].fits(ref):
                continue
            seen.add(j)
            if owner[j] < 0 or augment(owner[j], seen):
                owner[j] = p
                return True
        return False

    return sum(augment(p, set()) for p in range(len(preds)))


def match_findings(
    predicted: Collection[Finding], reference: Collection[Finding]
) -> GroundedCounts:
    """Grounded and ungrounded TP/FP/FN of one study (module docstring: the matching rule)."""
    pred_by: dict[str, list[Finding]] = defaultdict(list)
    ref_by: dict[str, list[Finding]] = defaultdict(list)
    for f in sorted(predicted, key=_sort_key):
        pred_by[f.observation].append(f)
    for f in sorted(reference, key=_sort_key):
        ref_by[f.observation].append(f)
    tp = ungrounded_tp = 0
    for obs, preds in pred_by.items():
        refs = ref_by.get(obs, [])
        tp += _max_matching(preds, refs)
        ungrounded_tp += min(len(preds), len(refs))
    n_pred, n_ref = len(predicted), len(reference)
    return GroundedCounts(
        tp, n_pred - tp, n_ref - tp, ungrounded_tp, n_pred - ungrounded_tp, n_ref - ungrounded_tp
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _aggregate(sums: np.ndarray, _n: int) -> np.ndarray:
    tp, fp, fn, utp, ufp, ufn = (sums[:, k] for k in range(len(COUNT_FIELDS)))
    return np.stack(
        [
            _ratio(tp, tp + fp),
            _ratio(tp, tp + fn),
            _ratio(2 * tp, 2 * tp + fp + fn),
            _ratio(2 * utp, 2 * utp + ufp + ufn),
        ],
        axis=1,
    )


def statistic_from_counts(counts: np.ndarray | Sequence[Sequence[float]]) -> AdditiveStatistic:
    """``(n, 6)`` per-study counts -> statistic valued as the :data:`GROUNDED_METRICS`.

    Also rebuilds the statistic from stored per-sample counts (``grounded/tp`` ...)."""
    features = np.asarray(counts, dtype=np.float64).reshape(-1, len(COUNT_FIELDS))
    return AdditiveStatistic(features, _aggregate)


def grounded_statistic(predictions: Sequence[str], references: Sequence[str]) -> AdditiveStatistic:
    """Per-study counts of paired prediction and reference texts, as an additive statistic."""
    if len(predictions) != len(references):
        raise DataError(
            f"grounded F1: {len(predictions)} predictions vs {len(references)} references"
        )
    rows = []
    for k, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        for what, text in (("prediction", pred), ("reference", ref)):
            if not isinstance(text, str):
                raise DataError(f"grounded F1: {what} {k} is {type(text).__name__}, not text")
        rows.append(match_findings(positive_findings(pred), positive_findings(ref)).as_row())
    return statistic_from_counts(np.asarray(rows, dtype=np.float64).reshape(-1, len(COUNT_FIELDS)))


def grounded_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{metric name: value}`` for the corpus (no intervals; ``score_corpus`` adds those)."""
    values = grounded_statistic(predictions, references).value()
    return {name: float(v) for name, v in zip(GROUNDED_METRICS, values, strict=True)}


def per_sample_counts(ids: Sequence[str], stat: AdditiveStatistic) -> dict[str, dict[str, float]]:
    """``{grounded/<count field>: {id: count}}`` from a statistic of :func:`grounded_statistic`."""
    return {
        f"grounded/{name}": dict(zip(ids, map(float, stat.features[:, k]), strict=True))
        for k, name in enumerate(COUNT_FIELDS)
    }


def grounded_signature() -> str:
    """Signature value: metric version and the analyser version whose mentions it reads."""
    return f"{GROUNDED_VERSION}+rules-{ANALYSER_VERSION}"
