"""The key-phrase head at inference: probabilities over a split, thresholds tuned on val, and
the phrases each study is predicted to have.

Used for threshold tuning (at the end of training, and by inference when a run folder has no
thresholds yet), for the predicted key phrases a prompt gets, and by
:mod:`s2d_align.inference.keyphrase_eval`. An inference primitive: see
:mod:`s2d_align.inference.passes` for the layering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2d_align.inference.passes import sharded_map
from s2d_align.training.collate import Collator, ContextStore, StageContext
from s2d_align.training.data import StudyDataset
from s2d_align.training.distributed import Dist
from s2d_align.training.keyphrases import (
    THRESHOLD_FILE,
    decode_multi_hot,
    multi_hot,
    tune_phrase_thresholds,
)
from s2d_align.training.prompts import PromptBuilder
from s2d_align.utils.io import read_json, write_json


@torch.no_grad()
def keyphrase_probs(
    model: Any,
    dataset: StudyDataset,
    builder: PromptBuilder,
    *,
    dist: Dist,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> np.ndarray:
    """Key-phrase head probabilities ``[N, K]`` for every study of ``dataset``."""
    collate = Collator(builder, ContextStore(), [StageContext()], generate=True)

    def fn(batch: dict) -> list[np.ndarray]:
        with autocast():
            probs = model.predict_keyphrases(batch)
        return list(probs.float().cpu().numpy())

    rows = sharded_map(
        dataset,
        collate,
        fn,
        dist=dist,
        batch_size=batch_size,
        progress=progress,
        desc="key phrases",
    )
    k = len(model.keyphrase_vocab)
    return np.stack(rows) if rows else np.zeros((0, k), dtype=np.float32)


def tune_keyphrase_threshold(
    model: Any,
    val: StudyDataset,
    builder: PromptBuilder,
    oracle: Mapping[str, list[str]],
    run_dir: Path,
    *,
    dist: Dist,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
    save: bool = True,
) -> dict[str, Any]:
    """Choose the head's thresholds on VAL, one per phrase (best F1 of that phrase against the
    oracle key phrases of the val reports; see :func:`tune_phrase_thresholds`), and store them as
    ``run_dir/keyphrase_threshold.json`` (when ``save``):
    ``{"thresholds": {phrase: t}, "global": t, "val_f1": micro F1, ...}``."""
    vocab = list(model.keyphrase_vocab)
    probs = keyphrase_probs(
        model, val, builder, dist=dist, batch_size=batch_size, autocast=autocast, progress=progress
    )
    targets = keyphrase_targets(val, oracle, vocab)
    tuned = tune_phrase_thresholds(probs, targets)
    record = {**tuned.record(vocab), "split": "val", "n": len(val)}
    if save and dist.is_main:
        write_json(run_dir / THRESHOLD_FILE, record)
    dist.barrier()
    return record


def keyphrase_targets(
    dataset: StudyDataset, oracle: Mapping[str, list[str]], vocab: list[str]
) -> np.ndarray:
    """Boolean ``[N, K]`` oracle targets of ``dataset``'s studies, in split order."""
    if not dataset.studies:
        return np.zeros((0, len(vocab)), dtype=bool)
    rows = [multi_hot(oracle.get(s.id, []), vocab).numpy() for s in dataset.studies]
    return np.stack(rows).astype(bool)


def load_threshold(run_dir: Path) -> dict[str, Any] | None:
    """The saved threshold record (either format; :func:`phrase_thresholds` reads both)."""
    path = run_dir / THRESHOLD_FILE
    return read_json(path) if path.is_file() else None


def predicted_keyphrases(
    model: Any,
    dataset: StudyDataset,
    builder: PromptBuilder,
    threshold: float | np.ndarray,
    *,
    dist: Dist,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> dict[str, list[str]]:
    """``{id: phrases}``: vocabulary entries whose head probability reaches their threshold
    (``threshold``: one per phrase, ``[K]`` in vocabulary order, or one for all)."""
    k = len(model.keyphrase_vocab)
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != k):
        raise ValueError(
            f"threshold: expected a number or {k} per-phrase values, got {threshold.shape}"
        )
    probs = keyphrase_probs(
        model,
        dataset,
        builder,
        dist=dist,
        batch_size=batch_size,
        autocast=autocast,
        progress=progress,
    )
    vocab = list(model.keyphrase_vocab)
    return {
        s.id: decode_multi_hot(row >= threshold, vocab)
        for s, row in zip(dataset.studies, probs, strict=True)
    }
