"""The stage-3 key phrases: a vocabulary of positive findings, per-phrase val thresholds, the old
threshold file, and the head's test metrics (AUROC checked against scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from training_fixtures import cache_root, shared_run, tiny_config

from s2d_align.errors import DataError
from s2d_align.evaluation.analyser import KeyPhrase
from s2d_align.evaluation.stats import auroc
from s2d_align.inference.keyphrase_eval import keyphrase_head_metrics
from s2d_align.inference.keyphrase_prediction import load_threshold
from s2d_align.training.keyphrases import (
    THRESHOLD_FILE,
    THRESHOLD_GRID,
    VOCAB_FILE,
    build_vocab,
    canonical_phrase,
    extract_keyphrases,
    load_vocab,
    load_vocab_source,
    micro_f1,
    oracle_keyphrases,
    phrase_thresholds,
    report_keyphrases,
    save_vocab,
    tune_phrase_thresholds,
)
from s2d_align.utils.io import read_json, write_json

REPORTS = {
    "a": "Small left pleural effusion. No pneumothorax.",
    "b": "Moderate right pleural effusion. No pneumothorax. Heart size is normal.",
    "c": "Possible pneumonia. No pneumothorax.",
    "d": "Mild cardiomegaly. No pneumothorax.",
    "e": "Heart size is normal. Lungs are clear. No pneumothorax.",
    "f": "Moderate to large left pleural effusion. No pneumothorax.",
}


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_holds_positive_findings_only_with_their_side():
    phrases = extract_keyphrases(REPORTS, source="positive")
    vocab = build_vocab(phrases.values(), 10)
    # "no pneumothorax" is in every report, yet never enters; the side splits the effusions.
    assert vocab == ["left pleural effusion", "cardiomegaly", "right pleural effusion"]
    oracle = oracle_keyphrases(REPORTS, vocab, "positive")
    assert oracle["a"] == oracle["f"] == ["left pleural effusion"]
    assert oracle["e"] == [] and oracle["c"] == []  # a normal study and a hedge: no phrase


def test_uncertain_findings_join_only_when_asked_and_all_keeps_the_old_vocabulary():
    hedged = build_vocab(extract_keyphrases(REPORTS, source="positive+uncertain").values(), 10)
    assert "possible pneumonia" in hedged and "pneumonia" not in hedged
    old = build_vocab(extract_keyphrases(REPORTS, source="all").values(), 3)
    assert old[0] == "no pneumothorax"
    assert "small left pleural effusion" in report_keyphrases(REPORTS["a"], source="all")
    with pytest.raises(ValueError, match="keyphrase_source"):
        report_keyphrases(REPORTS["a"], source="negative")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kp", "expected"),
    [
        (KeyPhrase("small left pleural effusion", "x", "left", "positive", "small"),
         "left pleural effusion"),
        (KeyPhrase("moderate-to-large bilateral pleural effusion", "x", "bilateral", "positive",
                   "moderate-to-large"), "bilateral pleural effusion"),
        (KeyPhrase("small left apical pneumothorax", "x", "left apical", "positive", "small"),
         "left apical pneumothorax"),
        (KeyPhrase("possible small left pleural effusion", "x", "left", "uncertain", "small"),
         "possible left pleural effusion"),
        # An uncertain statement keeps a severity its text does not show: nothing to drop.
        (KeyPhrase("possible cardiomegaly", "x", None, "uncertain", "mild"),
         "possible cardiomegaly"),
        (KeyPhrase("right central central venous catheter", None, "right central", "positive"),
         "right central venous catheter"),
        (KeyPhrase("Right lower lobe consolidation.", "x", "right lower lobe", "positive"),
         "right lower lobe consolidation"),
    ],
)  # fmt: skip
def test_canonical_phrase_drops_severity_and_keeps_anatomy(kp, expected):
    assert canonical_phrase(kp) == expected


def test_saved_vocabulary_records_its_source_and_old_files_read_as_all(tmp_path):
    save_vocab(tmp_path, ["cardiomegaly"], 6, source="positive")
    assert load_vocab(tmp_path) == ["cardiomegaly"]
    assert load_vocab_source(tmp_path) == "positive"
    write_json(tmp_path / VOCAB_FILE, {"vocab": ["no pneumothorax"], "source": "analyser"})
    assert load_vocab_source(tmp_path) == "all"


# ----------------------------------------------------------------------------- thresholds
def _best_f1_threshold(scores, labels):
    """Brute force: the smallest grid value with the best F1 of one phrase."""

    def f1(t):
        pred = scores >= t
        tp = int((pred & labels).sum())
        wrong = int((pred != labels).sum())
        return 2 * tp / (2 * tp + wrong) if tp + wrong else 1.0

    best = max(f1(t) for t in THRESHOLD_GRID)
    return min(t for t in THRESHOLD_GRID if f1(t) == best)


def test_each_phrase_gets_its_own_threshold_and_untunable_ones_fall_back():
    targets = np.array(
        [[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
        dtype=bool,
    )
    probs = np.array(
        [
            [0.90, 0.10, 0.30, 0.02],
            [0.80, 0.30, 0.20, 0.40],
            [0.20, 0.25, 0.60, 0.30],
            [0.60, 0.10, 0.10, 0.10],
            [0.50, 0.15, 0.40, 0.20],
            [0.85, 0.05, 0.05, 0.60],
        ]
    )
    tuned = tune_phrase_thresholds(probs, targets)
    # A frequent phrase with high scores and a rare one with low scores want different cuts.
    assert tuned.thresholds[0] == _best_f1_threshold(probs[:, 0], targets[:, 0]) == 0.65
    assert tuned.thresholds[1] == _best_f1_threshold(probs[:, 1], targets[:, 1]) == 0.2
    # Phrase 2 has no val positive; phrase 3's only positive sits below the whole grid.
    assert tuned.fallback.tolist() == [False, False, True, True]
    assert tuned.thresholds[2] == tuned.thresholds[3] == tuned.fallback_threshold
    assert tuned.fallback_threshold == max(THRESHOLD_GRID)  # predicted only when all but sure
    assert tuned.val_f1 == pytest.approx(micro_f1(probs >= tuned.thresholds, targets))
    assert tuned.val_f1 > tuned.global_val_f1  # no single cut serves phrases 0 and 1 both


def test_threshold_record_round_trips_and_the_old_single_threshold_file_still_loads(tmp_path):
    vocab = ["cardiomegaly", "left pleural effusion"]
    probs = np.array([[0.9, 0.1], [0.2, 0.7], [0.3, 0.2]])
    targets = np.array([[1, 0], [0, 1], [0, 0]], dtype=bool)
    tuned = tune_phrase_thresholds(probs, targets)
    write_json(tmp_path / THRESHOLD_FILE, {**tuned.record(vocab), "split": "val", "n": 3})
    record = load_threshold(tmp_path)
    assert set(record) >= {"thresholds", "global", "val_f1"}
    np.testing.assert_array_equal(phrase_thresholds(record, vocab), tuned.thresholds)
    # Runs written before per-phrase thresholds: one value for every phrase.
    write_json(tmp_path / THRESHOLD_FILE, {"threshold": 0.35, "val_micro_f1": 0.5, "split": "val"})
    old = phrase_thresholds(load_threshold(tmp_path), vocab)
    assert old.tolist() == [0.35, 0.35]
    with pytest.raises(DataError, match="every vocabulary phrase"):
        phrase_thresholds(tuned.record(vocab), [*vocab, "pneumonia"])
    with pytest.raises(DataError, match="expected 'thresholds'"):
        phrase_thresholds({"global": 0.5}, vocab)


# ----------------------------------------------------------------------------- head metrics
def test_auroc_matches_scikit_learn_on_tied_scores():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(2, 60))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        scores = rng.integers(0, 5, n) / 4.0  # few distinct values: many ties
        assert auroc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))
    assert auroc(np.array([0.2, 0.2]), np.array([True, False])) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(np.array([0.1, 0.9]), np.array([True, True]))


def test_head_metrics_average_over_phrases_with_both_classes():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    probs = rng.random((40, 5)).round(1)
    targets = rng.random((40, 5)) < 0.3
    targets[:, 3] = False  # never present: no AUROC
    targets[:, 4] = True  # always present: no AUROC
    thresholds = np.array([0.3, 0.5, 0.7, 0.5, 0.5])
    metrics = keyphrase_head_metrics(probs, targets, thresholds)
    expected = [sklearn_metrics.roc_auc_score(targets[:, j], probs[:, j]) for j in range(3)]
    assert metrics["phrases_evaluated"] == 3 and metrics["phrases"] == 5
    assert metrics["macro_auroc"] == pytest.approx(np.mean(expected))
    assert metrics["phrase_auroc"][3] is None and metrics["phrase_auroc"][4] is None
    assert metrics["micro_f1"] == pytest.approx(micro_f1(probs >= thresholds, targets))
    with pytest.raises(ValueError, match="one per phrase"):
        keyphrase_head_metrics(probs, targets, thresholds[:4])


# ----------------------------------------------------------------------------- a trained run
@pytest.mark.slow
def test_a_tiny_run_trains_a_head_on_positive_findings(tmp_path_factory):
    from s2d_align.inference.generate import load_run
    from s2d_align.inference.keyphrase_eval import evaluate_keyphrase_head

    run_dir = shared_run(tmp_path_factory)
    assert tiny_config().model.keyphrase_source == "positive"
    vocab = load_vocab(run_dir)
    assert vocab and load_vocab_source(run_dir) == "positive"
    assert not any(p.startswith(("no ", "normal ", "possible ")) for p in vocab)
    record = read_json(run_dir / THRESHOLD_FILE)
    assert list(record["thresholds"]) == vocab and record["split"] == "val"
    assert all(t in THRESHOLD_GRID for t in record["thresholds"].values())
    cache = cache_root(tmp_path_factory)
    metrics = evaluate_keyphrase_head(load_run(run_dir, cache_root=cache), "test", cache_root=cache)
    assert metrics["split"] == "test" and metrics["vocab"] == vocab
    assert metrics["studies"] == tiny_config().data.synth.n_test
    assert 0 <= metrics["phrases_evaluated"] <= len(vocab)
    assert 0.0 <= metrics["micro_f1"] <= 1.0
    if metrics["phrases_evaluated"]:
        assert 0.0 <= metrics["macro_auroc"] <= 1.0
