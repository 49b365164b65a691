"""The ``rules`` labeler against SynthCXR ground truth (labels written with the reports).

SynthCXR's grammar and this analyser were written independently; the floors below catch a
regression in either (a phrasing the analyser stops reading, or labels that stop matching text).
Known convention difference: "normal cardiomediastinal silhouette" gives Cardiomegaly 0 here
(CheXbert-style) but blank in SynthCXR, so only the recall of negatives is checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import EvalConfig
from s2d_align.data.synth import generate as synth
from s2d_align.evaluation.labelers import get_labeler
from s2d_align.evaluation.labelers.rules import RulesLabeler
from s2d_align.training.keyphrases import report_keyphrases
from s2d_align.utils.io import read_json

MIN_SUPPORT = 5
#: Rules labels and key phrases of the draw below, frozen: the committed ablation table and the
#: regression baseline were computed with them. Rewrite it only for a change meant to alter them
#: (``python tests/test_rules_synthcxr.py --write``) and say so.
FROZEN = Path(__file__).parent / "data" / "synthcxr_rules_frozen.jsonl"
_CODE = {None: ".", 1: "+", 0: "0", -1: "?"}


def _draw(out: Path) -> tuple[dict, dict[str, str]]:
    """Ground truth and ``{id: report}`` of a small SynthCXR draw written into ``out``."""
    synth.generate_synthcxr(
        out, n_train=240, n_val=0, n_test=120, size=32, views=1, seed=3, progress=False
    )
    ann = read_json(out / "annotation.json")
    reports = {e["id"]: e["report"] for split in ann.values() for e in split}
    return read_json(out / "ground_truth.json"), reports


@pytest.fixture(scope="module")
def synthcxr(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, str]]:
    return _draw(tmp_path_factory.mktemp("synthcxr"))


@pytest.fixture(scope="module")
def labelled(synthcxr):
    truth, reports = synthcxr
    ids = sorted(reports)
    assert set(ids) == set(truth)
    predicted = get_labeler(EvalConfig()).label([reports[i] for i in ids])
    return [truth[i]["labels"] for i in ids], predicted


def _f1(gold: list, pred: list, value: int) -> tuple[float, int]:
    tp = sum(g == value and p == value for g, p in zip(gold, pred, strict=True))
    fp = sum(g != value and p == value for g, p in zip(gold, pred, strict=True))
    fn = sum(g == value and p != value for g, p in zip(gold, pred, strict=True))
    support = tp + fn
    return (2 * tp / (2 * tp + fp + fn) if support else float("nan")), support


def test_positive_f1_per_observation(labelled) -> None:
    truth, predicted = labelled
    checked = 0
    for obs in OBSERVATIONS:
        gold = [t[obs] for t in truth]
        pred = [p[obs] for p in predicted]
        f1, support = _f1(gold, pred, 1)
        if support >= MIN_SUPPORT:
            checked += 1
            assert f1 >= 0.9, f"{obs}: positive F1 {f1:.3f} on {support} positives"
    assert checked >= 10  # the benchmark has enough positives for most observations


def test_uncertain_and_negative_labels(labelled) -> None:
    truth, predicted = labelled
    for obs in OBSERVATIONS:
        gold = [t[obs] for t in truth]
        pred = [p[obs] for p in predicted]
        f1, support = _f1(gold, pred, -1)
        if support >= MIN_SUPPORT:
            assert f1 >= 0.8, f"{obs}: uncertain F1 {f1:.3f} on {support}"
        negatives = [p for g, p in zip(gold, pred, strict=True) if g == 0]
        if len(negatives) >= MIN_SUPPORT:
            recall = sum(p == 0 for p in negatives) / len(negatives)
            assert recall >= 0.9, f"{obs}: only {recall:.2f} of negated mentions read as negative"


def _frozen_rows(reports: dict[str, str]) -> list[dict]:
    """Per report: the 14 labels as one string (+ 0 ? .) and the key phrases of two sources."""
    labels = RulesLabeler().label([reports[i] for i in sorted(reports)])
    return [
        {
            "id": i,
            "labels": "".join(_CODE[v] for v in lab.values()),
            "all": report_keyphrases(reports[i], source="all"),
            "positive": report_keyphrases(reports[i], source="positive"),
        }
        for i, lab in zip(sorted(reports), labels, strict=True)
    ]


def test_labels_and_keyphrases_are_frozen(synthcxr) -> None:
    """Real-report handling (sections, line breaks, hedges) must not move a SynthCXR label."""
    _, reports = synthcxr
    frozen = [json.loads(line) for line in FROZEN.read_text(encoding="utf-8").splitlines()]
    now = _frozen_rows(reports)
    assert [r["id"] for r in now] == [r["id"] for r in frozen]
    changed = [(old, new) for old, new in zip(frozen, now, strict=True) if old != new]
    assert not changed, f"{len(changed)} SynthCXR reports changed, e.g. {changed[0]}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = _frozen_rows(_draw(Path(tmp))[1])
    FROZEN.parent.mkdir(exist_ok=True)
    FROZEN.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {FROZEN}")
