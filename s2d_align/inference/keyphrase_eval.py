"""How well the stage-3 key-phrase head finds a study's phrases, on a held-out split.

Two numbers: macro AUROC over the phrases that the split has both with and without (threshold
free: does the head rank studies with the phrase above those without?) and micro F1 at the
thresholds tuned on val (what the prompts at inference actually get). AUROC uses the rank
formula (Mann-Whitney U, tied scores share their average rank), so scikit-learn is not needed
at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.stats import auroc
from s2d_align.training.keyphrases import micro_f1
from s2d_align.training.signals import SIGNALS, SignalInputs


def keyphrase_head_metrics(
    probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray
) -> dict[str, Any]:
    """Head quality from probabilities ``[N, K]``, boolean targets ``[N, K]`` and thresholds
    ``[K]`` (one per phrase, vocabulary order; a single number applies to all).

    ``macro_auroc`` averages over the phrases with at least one positive and one negative study
    (None when there is none; ``phrase_auroc`` holds each, None where undefined); ``micro_f1``
    counts every (study, phrase) decision at the thresholds.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape}: expected equal [N, K]")
    n, k = probs.shape
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim > 1 or (thresholds.ndim == 1 and thresholds.shape[0] != k):
        raise ValueError(f"thresholds {thresholds.shape}: expected one per phrase ({k})")
    positives = targets.sum(axis=0)
    per_phrase: list[float | None] = [
        auroc(probs[:, j], targets[:, j]) if 0 < positives[j] < n else None for j in range(k)
    ]
    scored = [a for a in per_phrase if a is not None]
    return {
        "macro_auroc": float(np.mean(scored)) if scored else None,
        "micro_f1": micro_f1(probs >= thresholds, targets),
        "phrases_evaluated": len(scored),
        "phrases": k,
        "studies": n,
        "phrase_auroc": per_phrase,
    }


def evaluate_keyphrase_head(
    run: Any,
    split: str = "test",
    *,
    cache_root: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`keyphrase_head_metrics` of a loaded run (:func:`~s2d_align.inference.generate.
    load_run`) on ``split``, against the oracle phrases of the split's reports and at the run's
    val-tuned thresholds (tuned and saved first if the folder has none). Adds ``split`` and
    ``vocab`` (phrase names, the order of ``phrase_auroc``)."""
    from s2d_align.inference.generate import keyphrase_thresholds
    from s2d_align.inference.keyphrase_prediction import keyphrase_probs, keyphrase_targets
    from s2d_align.training.cache import resolve_cache_root
    from s2d_align.training.data import StudyDataset, load_run_annotation

    if not run.vocab or not any(s.lambda_kp > 0 for s in run.cfg.stages):
        raise ConfigError(f"{run.run_dir}: the run has no trained key-phrase head")
    ann = load_run_annotation(run.cfg, resolve_cache_root(cache_root))
    studies = ann.split(split)
    if not studies:
        raise DataError(f"{ann.path}: split {split!r} is empty")
    dataset = StudyDataset(
        studies, image_size=run.cfg.data.image_size, max_views=run.cfg.data.max_views
    )
    thresholds = keyphrase_thresholds(run, cache_root, progress)
    oracle = SIGNALS["keyphrases"].build(
        SignalInputs(run.cfg, studies, split, run.run_dir, run.vocab)
    )
    probs = keyphrase_probs(
        run.model,
        dataset,
        run.builder,
        dist=run.dist,
        batch_size=run.cfg.inference.batch_size,
        autocast=run.autocast,
        progress=progress,
    )
    metrics = keyphrase_head_metrics(
        probs, keyphrase_targets(dataset, oracle, run.vocab), thresholds
    )
    return {"split": split, **metrics, "vocab": list(run.vocab)}
