"""Grounded finding F1: extraction of located positive findings, matching, corpus scores, wiring.

Report pairs are short hand-written sentences in the habits of MIMIC / IU findings sections.
The ``score_corpus`` tests swap METEOR's Java process for a stub NLG scorer: they check the
grounded metrics' wiring (values, CIs, per-sample counts, signature, paired tests), which does not
depend on NLG; tests/test_score_cli.py covers the same call with the real Java scorer.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from s2d_align.config.schema import EvalConfig
from s2d_align.errors import DataError
from s2d_align.evaluation.grounded import (
    COUNT_FIELDS,
    GROUNDED_METRICS,
    GROUNDED_VERSION,
    Finding,
    grounded_scores,
    grounded_signature,
    grounded_statistic,
    location,
    match_findings,
    positive_findings,
    statistic_from_counts,
)
from s2d_align.evaluation.nlg import BLEU_STAT_COLUMNS, NLG_METRICS, NLGResult
from s2d_align.evaluation.score import ScoringContext, compare_corpora, score_corpus


def counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """Grounded (tp, fp, fn) of one report pair."""
    c = match_findings(positive_findings(prediction), positive_findings(reference))
    return c.tp, c.fp, c.fn


def ungrounded(prediction: str, reference: str) -> tuple[int, int, int]:
    c = match_findings(positive_findings(prediction), positive_findings(reference))
    return c.ungrounded_tp, c.ungrounded_fp, c.ungrounded_fn


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    ("anatomy", "expected"),
    [
        ("left", ("left", None)),
        ("right middle lobe", ("right", "middle")),
        ("left lower lobe", ("left", "lower")),
        ("upper lobe", (None, "upper")),
        ("right upper lung", ("right", "upper")),
        ("left mid", ("left", "middle")),
        ("right basilar", ("right", "lower")),
        ("left apical", ("left", "upper")),
        ("bilateral apical", ("bilateral", "upper")),
        ("bibasilar", ("bilateral", "lower")),
        ("lingula", ("left", "middle")),
        ("retrocardiac", ("left", "lower")),
        ("right hemithorax", ("right", None)),
        ("left perihilar", ("left", None)),
        ("left rib", ("left", None)),
        (None, (None, None)),
    ],
)
def test_analyser_anatomy_maps_to_the_canonical_side_and_zone(anatomy, expected):
    assert location(anatomy) == expected


def test_a_real_style_report_yields_its_located_positive_findings_only():
    report = (
        "INDICATION: Cough, evaluate for right sided pneumonia.\n"
        "FINDINGS: Heart size is normal. XXXX opacity in the right lower lobe. Small left apical "
        "pneumothorax. No pleural effusion. Possible retrocardiac atelectasis.\n"
        "IMPRESSION: Right lower lobe opacity."
    )
    assert positive_findings(report) == {
        Finding("Lung Opacity", "right", "lower"),
        Finding("Pneumothorax", "left", "upper"),
    }  # the indication states no finding; negated and hedged mentions are not positive


def test_repeated_and_split_mentions_merge_into_one_finding_per_place():
    assert positive_findings("There is a left pleural effusion. The effusion is small.") == {
        Finding("Pleural Effusion", "left")
    }
    assert positive_findings("Left lower lobe atelectasis. Right lower lobe atelectasis.") == {
        Finding("Atelectasis", "bilateral", "lower")
    }
    assert positive_findings("Bilateral pleural effusions. The left effusion is larger.") == {
        Finding("Pleural Effusion", "bilateral")
    }


def test_normal_reports_have_no_findings():
    for report in ("", "No acute cardiopulmonary process.", "Lungs are clear. No effusion."):
        assert positive_findings(report) == frozenset()


# ----------------------------------------------------------------------------- matching
def test_same_side_is_a_true_positive():
    assert counts("Left effusion, small.", "Small left pleural effusion.") == (1, 0, 0)


def test_wrong_side_is_one_false_positive_and_one_false_negative():
    assert counts("Small right pleural effusion.", "Small left pleural effusion.") == (0, 1, 1)
    assert ungrounded("Small right pleural effusion.", "Small left pleural effusion.") == (1, 0, 0)


def test_missing_location_counts_only_against_a_prediction():
    # the reference states no side: the observation alone matches
    assert counts("Moderate right pleural effusion.", "Moderate pleural effusion.") == (1, 0, 0)
    # the reference states a side the prediction leaves out: a mismatch
    assert counts("Moderate pleural effusion.", "Moderate right pleural effusion.") == (0, 1, 1)
    # a side alone in the reference is matched by a prediction that also names the zone
    assert counts("Opacity at the left lung base.", "Left lung opacity.") == (1, 0, 0)


def test_bilateral_and_one_side_differ():
    assert counts("Left pleural effusion.", "Bilateral pleural effusions.") == (0, 1, 1)
    assert counts("Bilateral pleural effusions.", "Right pleural effusion.") == (0, 1, 1)
    # naming both sides separately is the bilateral finding
    assert counts("Left effusion. Right effusion.", "Bilateral pleural effusions.") == (1, 0, 0)


def test_lobe_names_match_the_zone_they_lie_in():
    assert counts("Consolidation at the right lung base.", "RLL consolidation.") == (1, 0, 0)
    assert counts("Atelectasis at the left mid lung zone.", "Lingular atelectasis.") == (1, 0, 0)
    assert counts("Left basilar opacity.", "Retrocardiac opacity.") == (1, 0, 0)
    assert counts("Streaky bibasilar opacities.", "Bibasal opacities.") == (1, 0, 0)
    assert counts("RLL consolidation.", "Right middle lobe consolidation.") == (0, 1, 1)
    assert counts("Opacity in the left upper lobe.", "Left basilar opacity.") == (0, 1, 1)


def test_a_negated_finding_never_counts():
    assert counts("No left pleural effusion.", "Small left pleural effusion.") == (0, 0, 1)
    assert counts("Small left pleural effusion.", "No pleural effusion.") == (0, 1, 0)
    assert counts("No pneumothorax.", "No pneumothorax.") == (0, 0, 0)


def test_an_uncertain_finding_is_not_positive():
    assert positive_findings("Possible left lower lobe pneumonia.") == frozenset()
    hedged = "Opacity at the right base, may represent pneumonia."
    assert positive_findings(hedged) == {Finding("Lung Opacity", "right", "lower")}
    assert counts(hedged, "Right basilar opacity. Right lower lobe pneumonia.") == (1, 0, 1)


def test_findings_without_laterality_match_on_the_observation():
    assert counts("Mild cardiomegaly.", "Enlarged left heart border.") == (1, 0, 0)
    assert counts("Mild pulmonary edema.", "Moderate interstitial edema.") == (1, 0, 0)
    assert counts("Left PICC with tip in the SVC.", "Right PICC in place.") == (1, 0, 0)


def test_ungrounded_never_scores_below_grounded():
    pool = [
        "Small left pleural effusion.",
        "Right pleural effusion. Left lower lobe opacity.",
        "Bilateral pleural effusions.",
        "Right middle lobe consolidation, which may represent pneumonia.",
        "Consolidation in the left lower lobe.",
        "Streaky bibasilar opacities, likely atelectasis.",
        "Mild cardiomegaly. No effusion.",
        "Lungs are clear.",
    ]
    for pred, ref in itertools.product(pool, repeat=2):
        g, u = counts(pred, ref), ungrounded(pred, ref)
        assert u[0] >= g[0] and u[1] <= g[1] and u[2] <= g[2], (pred, ref)


# ----------------------------------------------------------------------------- corpus scores
def test_corpus_scores_pool_counts_over_studies_and_location_costs_f1():
    refs = [
        "Small left pleural effusion. Mild cardiomegaly.",
        "Right lower lobe consolidation.",
        "No acute cardiopulmonary process.",
    ]
    preds = [
        "Small right pleural effusion. The heart is enlarged.",  # wrong side, cardiomegaly right
        "Consolidation in the right lower lobe.",  # right
        "Left apical pneumothorax.",  # a finding the reference lacks
    ]
    stat = grounded_statistic(preds, refs)
    per_study = stat.features[:, :3].tolist()
    assert per_study == [[1, 1, 1], [1, 0, 0], [0, 1, 0]]
    scores = grounded_scores(preds, refs)
    tp, fp, fn = 2, 2, 1  # summed over the studies
    assert scores["grounded/p"] == pytest.approx(tp / (tp + fp))
    assert scores["grounded/r"] == pytest.approx(tp / (tp + fn))
    assert scores["grounded/f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert scores["grounded/ungrounded_f1"] > scores["grounded/f1"]
    assert list(scores) == list(GROUNDED_METRICS)


def test_a_corpus_without_findings_scores_zero_like_ce_micro():
    normal = ["Heart size is normal. Lungs are clear.", "No acute cardiopulmonary abnormality."]
    assert grounded_scores(normal, normal[::-1]) == dict.fromkeys(GROUNDED_METRICS, 0.0)
    assert grounded_scores([], []) == dict.fromkeys(GROUNDED_METRICS, 0.0)


def test_the_statistic_rebuilt_from_stored_counts_gives_the_same_values():
    preds = ["Left effusion.", "Right effusion.", "Mild cardiomegaly."]
    refs = ["Left effusion.", "Left effusion.", "No cardiomegaly."]
    stat = grounded_statistic(preds, refs)
    rebuilt = statistic_from_counts(stat.features.tolist())
    np.testing.assert_array_equal(rebuilt.value(), stat.value())
    assert stat.features.shape == (3, len(COUNT_FIELDS))


def test_bad_input_names_what_and_where():
    with pytest.raises(DataError, match="2 predictions vs 1 references"):
        grounded_statistic(["a", "b"], ["a"])
    with pytest.raises(DataError, match="prediction 1 is NoneType"):
        grounded_statistic(["Left effusion.", None], ["a", "b"])  # type: ignore[list-item]


def test_a_20k_word_report_is_scored_quickly():
    sentences = [
        "Small left pleural effusion.",
        "Right middle lobe consolidation, which may represent pneumonia.",
        "No pneumothorax.",
        "Streaky bibasilar opacities, likely atelectasis.",
        "The cardiomediastinal silhouette is within normal limits.",
        "There is mild pulmonary vascular congestion without frank edema.",
    ]
    words_per_round = sum(len(s.split()) for s in sentences)
    long_report = " ".join(sentences * (20_000 // words_per_round + 1))
    assert len(long_report.split()) >= 20_000
    start = time.perf_counter()
    found = positive_findings(long_report + " Left apical pneumothorax.")
    assert counts(long_report, long_report) == (len(found) - 1, 0, 0)
    assert time.perf_counter() - start < 5.0  # generous: about 0.2 s on one core
    assert Finding("Pneumothorax", "left", "upper") in found


def test_extraction_is_deterministic():
    report = "Left effusion. Right lower lobe opacity. Lingular atelectasis. Mild cardiomegaly."
    assert positive_findings(report) == positive_findings(report)
    first = grounded_statistic([report], ["Right effusion."]).features
    np.testing.assert_array_equal(first, grounded_statistic([report], ["Right effusion."]).features)


# ----------------------------------------------------------------------------- score_corpus
class StubNLG:
    """Stands in for NLGScorer (no METEOR process): zero NLG scores of the right shapes."""

    def score(self, references, hypothesis_sets, *, tokenize=None, on_step=None):
        ids = list(references)
        n = len(ids)
        return [
            NLGResult(
                ids,
                dict.fromkeys(NLG_METRICS, 0.0),
                {name: np.zeros(n) for name in NLG_METRICS},
                np.zeros((n, len(BLEU_STAT_COLUMNS))),
            )
            for _ in hypothesis_sets
        ]


REFS = {
    "a": "Small left pleural effusion. Mild cardiomegaly.",
    "b": "Right lower lobe consolidation.",
    "c": "Bibasilar atelectasis.",
    "d": "No acute cardiopulmonary process.",
    "e": "Right apical pneumothorax.",
}
LEFT_RIGHT_SWAPPED = {
    "a": "Small right pleural effusion. Mild cardiomegaly.",
    "b": "Left lower lobe consolidation.",
    "c": "Left basilar atelectasis.",
    "d": "No acute cardiopulmonary process.",
    "e": "Left apical pneumothorax.",
}


def test_score_corpus_returns_grounded_metrics_with_cis_counts_and_signature():
    cfg = EvalConfig(bootstrap=200)
    report = score_corpus(
        LEFT_RIGHT_SWAPPED, REFS, cfg, ScoringContext("0" * 64, nlg_scorer=StubNLG())
    )
    direct = grounded_scores(list(LEFT_RIGHT_SWAPPED.values()), list(REFS.values()))
    for name in GROUNDED_METRICS:
        m = report.metrics[name]
        assert m.value == pytest.approx(direct[name])
        assert m.ci_low is not None and m.ci_high is not None
        assert m.ci_low <= m.value + 1e-12 and m.value <= m.ci_high + 1e-12, name
    assert report.metrics["grounded/f1"].value < report.metrics["grounded/ungrounded_f1"].value
    names = list(report.metrics)  # the grounded block, in order, after every CE cell
    start = names.index(GROUNDED_METRICS[0])
    assert names[start : start + len(GROUNDED_METRICS)] == list(GROUNDED_METRICS)
    assert start > max(i for i, n in enumerate(names) if n.startswith("ce_f1/"))
    for field in COUNT_FIELDS:
        assert set(report.per_sample[f"grounded/{field}"]) == set(REFS)
    tp = sum(report.per_sample["grounded/tp"].values())
    fp = sum(report.per_sample["grounded/fp"].values())
    assert report.metrics["grounded/p"].value == pytest.approx(tp / (tp + fp))
    assert report.signature_fields["grounded"] == grounded_signature()
    assert grounded_signature().startswith(GROUNDED_VERSION)


def test_compare_corpora_tests_the_grounded_metrics_paired():
    cfg = EvalConfig(bootstrap=50)
    comparison = compare_corpora(
        REFS, LEFT_RIGHT_SWAPPED, REFS, cfg, ScoringContext("0" * 64, nlg_scorer=StubNLG()),
        trials=999,
    )  # fmt: skip
    for name in GROUNDED_METRICS:
        test = comparison.tests[name]
        delta = comparison.a.metrics[name].value - comparison.b.metrics[name].value
        assert float(test.delta[0]) == pytest.approx(delta)
    assert comparison.tests["grounded/f1"].delta[0] > 0  # the references score F1 = 1
    assert comparison.tests["grounded/ungrounded_f1"].delta[0] == pytest.approx(0.0)
    # 4 of 5 studies differ, all in A's favour: the exact two-sided p is 2 / 2**4
    assert comparison.tests["grounded/f1"].p_value[0] == pytest.approx(2 / 16, abs=0.04)
