"""Batches in the layout ``S2DModel`` consumes (listed in ``s2d_align.models.s2d``).

Training batches are right-padded, with labels on target tokens (+ eos) only; generation batches
hold the prompt alone, left-padded so every row ends where generation starts. What goes into a
prompt (reference report, key phrases, their dropout) and which auxiliary text feeds the
alignment loss is decided by the stage's :class:`StageContext`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from s2d_align.config.schema import Config, StageConfig
from s2d_align.errors import ConfigError
from s2d_align.training.data import Item
from s2d_align.training.keyphrases import multi_hot
from s2d_align.training.prompts import KEYPHRASE_SEPARATOR, REFERENCE_SEPARATOR, PromptBuilder

IGNORE_INDEX = -100
KeyphraseSource = Literal["none", "oracle", "predicted"]


@dataclass(frozen=True)
class StageContext:
    """What one stage (or one signal set of a multitask stage) puts in and around the prompt."""

    reference: bool = False
    keyphrases: KeyphraseSource = "none"
    keyphrase_dropout: float = 0.0
    align_with: Literal["none", "reference", "keyphrases"] = "none"
    lambda_align: float = 0.0
    lambda_kp: float = 0.0
    name: str = "pair"

    @classmethod
    def from_stage(cls, stage: StageConfig) -> StageContext:
        return cls(
            reference="reference" in stage.context,
            keyphrases="oracle" if "keyphrases" in stage.context else "none",
            keyphrase_dropout=stage.keyphrase_dropout,
            align_with=stage.align_with,
            lambda_align=stage.lambda_align if stage.align_with != "none" else 0.0,
            lambda_kp=stage.lambda_kp,
            name=stage.name,
        )

    @property
    def needs_references(self) -> bool:
        return self.reference or self.align_with == "reference"

    @property
    def needs_keyphrases(self) -> bool:
        return self.keyphrases != "none" or self.align_with == "keyphrases" or self.lambda_kp > 0


#: Inference contexts: (reference report in the prompt, key-phrase source).
INFERENCE_CONTEXTS: dict[str, tuple[bool, KeyphraseSource]] = {
    "image": (False, "none"),
    "image+reference": (True, "none"),
    "image+reference+predicted_keyphrases": (True, "predicted"),
    "oracle_keyphrases": (True, "oracle"),  # upper bound for analysis, never a headline number
}


@dataclass(frozen=True)
class InferenceContext:
    name: str
    reference: bool
    keyphrases: KeyphraseSource

    @property
    def stage_context(self) -> StageContext:
        return StageContext(reference=self.reference, keyphrases=self.keyphrases, name=self.name)


def resolve_inference_context(
    cfg: Config, requested: str | None = None, *, stages: Sequence[StageConfig] | None = None
) -> InferenceContext:
    """The context to generate with. ``auto`` is the one the final weights were trained for:
    the last of the stages' context (all of ``cfg``'s, or ``stages``; in multitask mode, the
    richest of them), with predicted (never oracle) key phrases, and only when a key-phrase head
    was trained. A reversed curriculum whose last stage is image-only is tested image-only."""
    name = requested or cfg.inference.context
    stages = cfg.stages if stages is None else stages
    if name == "auto":
        final = list(stages) if cfg.train.mode == "multitask" else list(stages)[-1:]
        with_ref = any("reference" in s.context for s in final)
        with_kp = any("keyphrases" in s.context for s in final)
        head = any(s.lambda_kp > 0 for s in stages)
        if with_kp and head:
            name = "image+reference+predicted_keyphrases"
        elif with_ref:
            name = "image+reference"
        else:
            name = "image"
    if name not in INFERENCE_CONTEXTS:
        raise ConfigError(
            f"unknown inference context {name!r}; valid: auto, {', '.join(INFERENCE_CONTEXTS)}"
        )
    reference, keyphrases = INFERENCE_CONTEXTS[name]
    return InferenceContext(name, reference, keyphrases)


@dataclass
class ContextStore:
    """Auxiliary text per study id: retrieved references and key phrases."""

    references: dict[str, list[str]] = field(default_factory=dict)  # id -> train ids
    reference_reports: dict[str, str] = field(default_factory=dict)  # train id -> report
    keyphrases: dict[str, list[str]] = field(default_factory=dict)  # oracle, vocabulary order
    all_keyphrases: dict[str, list[str]] = field(default_factory=dict)  # oracle, unrestricted
    predicted: dict[str, list[str]] = field(default_factory=dict)  # from the key-phrase head

    def reference_ids(self, sid: str) -> list[str]:
        if sid not in self.references:
            raise KeyError(f"no retrieved reference for study {sid!r} (retrieval index not built?)")
        return self.references[sid]

    def reference_text(self, sid: str) -> str:
        return REFERENCE_SEPARATOR.join(
            self.reference_reports[r].strip() for r in self.reference_ids(sid)
        )


def keyphrase_dropped(seed: int, stage: str, epoch: int, sid: str, p: float) -> bool:
    """Whether a study's key phrases are dropped from its prompt: a pure function of its inputs,
    so resuming or sharding a run never changes the draw."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return random.Random(f"{seed}:{stage}:{epoch}:{sid}").random() < p


def _pad(rows: Sequence[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _mask(rows: Sequence[list[int]], left: bool) -> torch.Tensor:
    return _pad([[1] * len(r) for r in rows], 0, left)


def pixel_batch(items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values [B, V, 1, H, W]`` in [0, 1] and ``view_mask [B, V]``."""
    pixels = torch.from_numpy(np.stack([it.pixels for it in items])).float().div_(255.0)
    views = pixels.shape[1]
    mask = torch.tensor([[v < it.n_views for v in range(views)] for it in items], dtype=torch.bool)
    return pixels.unsqueeze(2), mask


class Collator:
    """Turns :class:`Item` lists into model batches for one or more stage contexts.

    ``contexts`` has one entry per signal set (one for a curriculum stage, several for a
    multitask stage); each item's ``mix`` picks its entry, and all items of a batch share it.
    """

    def __init__(
        self,
        builder: PromptBuilder,
        store: ContextStore,
        contexts: Sequence[StageContext],
        *,
        vocab: Sequence[str] = (),
        seed: int = 0,
        generate: bool = False,
    ) -> None:
        self.builder = builder
        self.store = store
        self.contexts = list(contexts)
        self.vocab = list(vocab)
        self.seed = seed
        self.generate = generate

    def context_of(self, items: Sequence[Item]) -> StageContext:
        mixes = {it.mix for it in items}
        if len(mixes) != 1:
            raise ValueError(f"a batch mixes signal sets {sorted(mixes)}")
        return self.contexts[mixes.pop()]

    def _prompt_parts(self, item: Item, ctx: StageContext) -> tuple[str | None, list[str] | None]:
        sid = item.study.id
        reference = self.store.reference_text(sid) if ctx.reference else None
        # None: no key-phrase part at all; [] renders as "Key phrases: none" (a normal study).
        phrases: list[str] | None
        if ctx.keyphrases == "none":
            phrases = None
        elif ctx.keyphrases == "predicted":
            phrases = self.store.predicted.get(sid, [])
        else:
            phrases = self.store.keyphrases.get(sid, [])
            if not self.generate and keyphrase_dropped(
                self.seed, ctx.name, item.epoch, sid, ctx.keyphrase_dropout
            ):
                phrases = None
        return reference, phrases

    def _aux_text(self, item: Item, ctx: StageContext) -> str:
        sid = item.study.id
        if ctx.align_with == "reference":
            return self.store.reference_text(sid)
        return KEYPHRASE_SEPARATOR.join(self.store.all_keyphrases.get(sid, []))

    def __call__(self, items: Sequence[Item]) -> dict:
        ctx = self.context_of(items)
        pixels, view_mask = pixel_batch(items)
        prompts = [self.builder.prompt_ids(*self._prompt_parts(it, ctx)) for it in items]
        pad = self.builder.tokenizer.pad_token_id
        batch: dict = {
            "ids": [it.study.id for it in items],
            "pixel_values": pixels,
            "view_mask": view_mask,
        }
        if self.generate:
            batch["input_ids"] = _pad(prompts, pad, left=True)
            batch["attention_mask"] = _mask(prompts, left=True)
            return batch
        targets = [
            self.builder.target_ids(it.study.report, len(p))
            for it, p in zip(items, prompts, strict=True)
        ]
        full = [p + t for p, t in zip(prompts, targets, strict=True)]
        labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        batch["input_ids"] = _pad(full, pad, left=False)
        batch["attention_mask"] = _mask(full, left=False)
        batch["labels"] = _pad(labels, IGNORE_INDEX, left=False)
        batch["aux_ids"] = batch["aux_mask"] = batch["kp_targets"] = None
        if ctx.align_with != "none" and ctx.lambda_align > 0:
            aux = [self.builder.aux_ids(self._aux_text(it, ctx)) for it in items]
            batch["aux_ids"] = _pad(aux, pad, left=False)
            batch["aux_mask"] = _mask(aux, left=False)
        if ctx.lambda_kp > 0:
            batch["kp_targets"] = torch.stack(
                [multi_hot(self.store.keyphrases.get(it.study.id, []), self.vocab) for it in items]
            )
        return batch


def batch_to(batch: Mapping, device: torch.device) -> dict:
    """Move the tensors of a batch to ``device`` (lists and None stay as they are)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
