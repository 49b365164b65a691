"""Batches in the layout ``S2DModel`` consumes (listed in ``s2d_align.models.s2d``).

Training batches are right-padded, with labels on target tokens (+ eos) only; generation batches
hold the prompt alone, left-padded so every row ends where generation starts. Which auxiliary
signals (:mod:`s2d_align.training.signals`) go into a prompt, their dropout and which one feeds
the alignment loss is decided by the stage's :class:`StageContext`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from s2d_align.config.schema import Config, StageConfig
from s2d_align.errors import ConfigError
from s2d_align.training.data import Item
from s2d_align.training.keyphrases import multi_hot
from s2d_align.training.prompts import PromptBuilder
from s2d_align.training.signals import (
    REQUIRED,
    SIGNALS,
    InferenceContext,
    SignalInputs,
    auto_context,
    get_signal,
    in_prompt_order,
    inference_contexts,
    render_parts,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class StageContext:
    """What one stage (or one signal set of a multitask stage) puts in and around the prompt."""

    signals: tuple[str, ...] = ()  # in the prompt, in prompt order (training.signals names)
    dropout: tuple[tuple[str, float], ...] = ()  # (signal, probability its part is left out)
    align_with: str = "none"  # the signal whose text the alignment loss pairs with the image
    lambda_align: float = 0.0
    lambda_kp: float = 0.0
    name: str = "pair"

    @classmethod
    def from_stage(cls, stage: StageConfig) -> StageContext:
        where = f"stages.{stage.name}"
        signals = in_prompt_order(stage.context, f"{where}.context")
        if stage.align_with != "none" and get_signal(stage.align_with, where).align is None:
            raise ConfigError(
                f"{where}.align_with: signal {stage.align_with!r} has no alignment text"
            )
        dropout = tuple(
            (name, drop(stage)) for name in signals if (drop := SIGNALS[name].dropout) is not None
        )
        return cls(
            signals=signals,
            dropout=dropout,
            align_with=stage.align_with,
            lambda_align=stage.lambda_align if stage.align_with != "none" else 0.0,
            lambda_kp=stage.lambda_kp,
            name=stage.name,
        )

    def needs(self, signal: str) -> bool:
        """Whether batches of this context read ``signal``'s values (prompt, alignment, or, for
        key phrases, the head's targets)."""
        return (
            signal in self.signals
            or self.align_with == signal
            or (signal == "keyphrases" and self.lambda_kp > 0)
        )

    @property
    def needs_references(self) -> bool:
        return self.needs("reference")

    @property
    def needs_keyphrases(self) -> bool:
        return self.needs("keyphrases")


def needed_signals(contexts: Iterable[StageContext]) -> list[str]:
    """The signals whose values batches of ``contexts`` read, in registry order."""
    contexts = list(contexts)
    return [name for name in SIGNALS if any(c.needs(name) for c in contexts)]


def stage_context(ctx: InferenceContext) -> StageContext:
    """The collate context of an inference context (no dropout, no losses)."""
    return StageContext(signals=ctx.signals, name=ctx.name)


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
        return auto_context([n for s in final for n in s.context], stages)
    contexts = inference_contexts()
    if name not in contexts:
        raise ConfigError(f"unknown inference context {name!r}; valid: auto, {', '.join(contexts)}")
    return contexts[name]


def check_signal_names(cfg: Config) -> None:
    """Fail early, naming the key, when a stage or ``inference.context`` names an unknown signal."""
    for stage in cfg.stages:
        StageContext.from_stage(stage)
    resolve_inference_context(cfg)


@dataclass
class ContextStore:
    """Auxiliary values per signal and study: ``values[signal][study id]`` is what the prompt
    renders; ``align[signal]``, when present, what the alignment loss reads instead."""

    values: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    align: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def value(self, signal: str, sid: str) -> Any:
        return self._lookup(self.values, signal, sid)

    def align_text(self, signal: str, sid: str) -> str:
        table = self.align if signal in self.align else self.values
        to_text = get_signal(signal).align
        if to_text is None:
            raise ConfigError(f"signal {signal!r} has no alignment text")
        return to_text(self._lookup(table, signal, sid))

    @staticmethod
    def _lookup(tables: Mapping[str, Mapping[str, Any]], signal: str, sid: str) -> Any:
        table = tables.get(signal, {})
        if sid in table:
            return table[sid]
        missing = get_signal(signal).missing
        if missing is REQUIRED:
            raise KeyError(f"no {signal} value for study {sid!r} (its values were not built?)")
        return missing


def build_context(
    signals: Iterable[str],
    inputs: SignalInputs,
    provided: Mapping[str, Mapping[str, Any]] | None = None,
) -> ContextStore:
    """The one context builder (training, intermediate evaluation, inference): a store with the
    values of ``signals`` for ``inputs.studies``, taken from ``provided`` (what the run itself
    produced: its retrieved references, the key-phrase head's predictions) or else built by the
    signal's builder from data."""
    provided = provided or {}
    store = ContextStore()
    for name in signals:
        store.values[name] = provided[name] if name in provided else get_signal(name).build(inputs)
    return store


def signal_dropped(seed: int, stage: str, epoch: int, sid: str, p: float, signal: str) -> bool:
    """Whether a study's ``signal`` part is dropped from its prompt: a pure function of its
    inputs, so resuming or sharding a run never changes the draw. Key phrases draw from the
    seed string they had before other signals could drop (the numbers of old runs hold)."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    key = f"{seed}:{stage}:{epoch}:{sid}" + ("" if signal == "keyphrases" else f":{signal}")
    return random.Random(key).random() < p


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

    def _prompt_values(self, item: Item, ctx: StageContext) -> dict[str, Any]:
        """``{signal: value}`` of the parts in this item's prompt (dropped ones left out)."""
        sid = item.study.id
        dropout = dict(ctx.dropout)
        values = {}
        for name in ctx.signals:
            value = self.store.value(name, sid)
            p = dropout.get(name, 0.0)
            if not self.generate and signal_dropped(self.seed, ctx.name, item.epoch, sid, p, name):
                continue
            values[name] = value
        return values

    def __call__(self, items: Sequence[Item]) -> dict:
        ctx = self.context_of(items)
        pixels, view_mask = pixel_batch(items)
        prompts = [
            self.builder.prompt_ids(render_parts(self._prompt_values(it, ctx), self.builder))
            for it in items
        ]
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
            aux = [
                self.builder.aux_ids(self.store.align_text(ctx.align_with, it.study.id))
                for it in items
            ]
            batch["aux_ids"] = _pad(aux, pad, left=False)
            batch["aux_mask"] = _mask(aux, left=False)
        if ctx.lambda_kp > 0:
            batch["kp_targets"] = torch.stack(
                [multi_hot(self.store.value("keyphrases", it.study.id), self.vocab) for it in items]
            )
        return batch


def batch_to(batch: Mapping, device: torch.device) -> dict:
    """Move the tensors of a batch to ``device`` (lists and None stay as they are)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
