"""Batched passes over a split, sharded across processes and gathered in the split's order.

Used for key-phrase probabilities (threshold tuning on val, predicted key phrases at inference)
and by the inference layer for generation: every process takes every ``world``-th study, and
the results are gathered before anything is written or scored (corpus metrics are never
averaged over shards).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from s2d_align.config.schema import InferenceConfig
from s2d_align.training.collate import (
    Collator,
    ContextStore,
    InferenceContext,
    StageContext,
    batch_to,
)
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


def sharded_map(
    dataset: StudyDataset,
    collate: Collator,
    fn: Callable[[dict], Sequence[Any]],
    *,
    dist: Dist,
    batch_size: int,
    progress: bool = False,
    desc: str = "",
) -> list[Any]:
    """``fn(batch)`` (one result per row) over this process's share; gathered, in split order."""
    indices = list(range(dist.rank, len(dataset), dist.world))
    # A private generator: building the iterator must not draw from the global torch RNG (an
    # evaluation in the middle of training would otherwise change the rest of the run).
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        collate_fn=collate,
        generator=torch.Generator(),
    )
    bar = tqdm(
        loader,
        desc=desc,
        unit="batch",
        disable=not (progress and dist.is_main and sys.stderr.isatty()),
    )
    mine: list[tuple[int, Any]] = []
    offset = 0
    for batch in bar:
        results = list(fn(batch_to(batch, dist.device)))
        n = len(batch["ids"])
        if len(results) != n:
            raise RuntimeError(f"{desc}: {len(results)} results for a batch of {n}")
        mine.extend(zip(indices[offset : offset + n], results, strict=True))
        offset += n
    gathered = dist.gather(mine)
    by_index = dict(gathered)
    if len(by_index) != len(dataset):
        raise RuntimeError(f"{desc}: gathered {len(by_index)} results for {len(dataset)} studies")
    return [by_index[i] for i in range(len(dataset))]


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


def generate_rows(
    model: Any,
    dataset: StudyDataset,
    builder: PromptBuilder,
    store: ContextStore,
    ctx: InferenceContext,
    inference: InferenceConfig,
    *,
    dist: Dist,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Prediction rows ``{id, prediction, reference_ids, keyphrases, context}`` in split order."""
    num_beams = inference.num_beams if inference.decoding == "beam" else 1
    collate = Collator(
        builder, store, [ctx.stage_context], vocab=list(model.keyphrase_vocab), generate=True
    )

    def fn(batch: dict) -> list[str]:
        with autocast():
            return model.generate(
                batch, max_new_tokens=inference.max_new_tokens, num_beams=num_beams
            )

    texts = sharded_map(
        dataset,
        collate,
        fn,
        dist=dist,
        batch_size=inference.batch_size,
        progress=progress,
        desc="generating",
    )
    rows = []
    for study, text in zip(dataset.studies, texts, strict=True):
        sid = study.id
        if ctx.keyphrases == "predicted":
            phrases = store.predicted.get(sid, [])
        elif ctx.keyphrases == "oracle":
            phrases = store.keyphrases.get(sid, [])
        else:
            phrases = []
        rows.append(
            {
                "id": sid,
                "prediction": text,
                "reference_ids": list(store.references.get(sid, [])) if ctx.reference else [],
                "keyphrases": phrases,
                "context": ctx.name,
            }
        )
    return rows
