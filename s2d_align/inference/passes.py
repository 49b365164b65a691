"""Batched passes over a split, sharded across processes and gathered in the split's order.

Every process takes every ``world``-th study and the results are gathered before anything is
written or scored (corpus metrics are never averaged over shards). :func:`generate_rows` is the
one generation loop: ``s2d-align generate`` (:mod:`s2d_align.inference.generate`), diagnostics
and the intermediate evaluation during training all call it.

Layering: this module and :mod:`s2d_align.inference.keyphrase_prediction` are inference
primitives. They import only training's data primitives (dataset, collate, prompts, processes,
key-phrase vocabulary), never the training recipe (:mod:`s2d_align.training.pipeline`), so the
recipe may import them for its evaluation during training without an import cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from s2d_align.config.schema import InferenceConfig
from s2d_align.training.collate import (
    Collator,
    ContextStore,
    InferenceContext,
    batch_to,
    stage_context,
)
from s2d_align.training.data import StudyDataset
from s2d_align.training.distributed import Dist
from s2d_align.training.prompts import PromptBuilder
from s2d_align.utils.progress import progress_bar


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
    bar = progress_bar(
        loader,
        desc=desc,
        unit="batch",
        wanted=progress,
        main_process=dist.is_main,
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
        builder, store, [stage_context(ctx)], vocab=list(model.keyphrase_vocab), generate=True
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
        with_kp, with_ref = "keyphrases" in ctx.signals, "reference" in ctx.signals
        rows.append(
            {
                "id": sid,
                "prediction": text,
                "reference_ids": list(store.values["reference"].ids(sid)) if with_ref else [],
                "keyphrases": list(store.value("keyphrases", sid)) if with_kp else [],
                "context": ctx.name,
            }
        )
    return rows
