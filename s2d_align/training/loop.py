"""The one training loop: ``train_stage`` serves every stage of every variant.

``_loss_step`` does forward + loss only; the loop owns accumulation, gradient averaging across
processes, clipping, the optimizer and schedule, logging, checkpoints and the NaN guard. The
learning rate follows one warmup + cosine curve over the whole run's step budget, so a stage
boundary never restarts the schedule: a three-stage variant and a one-stage variant see the same
learning rates at the same global step (compute matching). The optimizer state, however, starts
fresh at each stage, because each stage trains a different set of parameters.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from s2d_align.config.schema import Config, StageConfig, Trainable
from s2d_align.errors import ConfigError, S2DError
from s2d_align.training.checkpoint import Checkpoint, RunState, save_checkpoint
from s2d_align.training.collate import IGNORE_INDEX, StageContext, batch_to
from s2d_align.training.data import mix_choice
from s2d_align.training.distributed import Dist
from s2d_align.training.tracking import Tracking
from s2d_align.utils.progress import progress_bar

LOG_FILE = "train_log.jsonl"
# A multitask stage trains each part as much as its most trainable signal set asks.
_TRAINABILITY_ORDER = {"frozen": 0, "lora": 1, "full": 2}
# Parameters without weight decay: decaying a norm gain, a bias, an embedding table or the
# memory bank shrinks them towards zero instead of regularising a linear map. Matched on names
# (1-d tensors, i.e. biases, norm gains and the memory gate, are caught by ``ndim < 2``).
_NO_DECAY_NAMES = ("norm", "embed_tokens", "view_embedding", "position_embeddings", "cls_token")
_NO_DECAY_SUFFIXES = ("memory.bank",)


class TrainingError(S2DError):
    """A run cannot continue (non-finite loss or gradient); names stage, step and checkpoint."""


@dataclass(frozen=True)
class StagePlan:
    """One stage as the loop runs it: its signal sets, step budget and trainable parts."""

    index: int
    name: str
    contexts: tuple[StageContext, ...]  # one per signal set (several only in multitask mode)
    weights: tuple[float, ...]  # mixing weights of the signal sets
    steps: int
    first_step: int  # global step at which the stage starts
    trainable: Trainable
    reset_memory: bool = False

    @property
    def needs_references(self) -> bool:
        return any(c.needs_references for c in self.contexts)

    @property
    def needs_keyphrases(self) -> bool:
        return any(c.needs_keyphrases for c in self.contexts)


def _most_trainable(cfg: Config, stages: Sequence[StageConfig]) -> Trainable:
    resolved = [cfg.stage_trainable(s) for s in stages]
    parts = {}
    for part in ("vision", "projector", "memory", "llm", "keyphrase_head"):
        parts[part] = max((getattr(t, part) for t in resolved), key=_TRAINABILITY_ORDER.__getitem__)
    return Trainable(**parts)


def stage_steps(fractions: Sequence[float], total_steps: int) -> list[int]:
    """``round(fraction * total)`` per stage; the last stage takes the remainder, so the steps
    sum to ``total_steps`` exactly."""
    steps = [round(f * total_steps) for f in fractions[:-1]]
    last = total_steps - sum(steps)
    if last < 0:
        raise ConfigError(
            f"train.total_steps={total_steps} is too small for step fractions {list(fractions)}: "
            "the rounded stage budgets exceed it"
        )
    return [*steps, last]


def plan_stages(cfg: Config) -> list[StagePlan]:
    """The stages the run trains, in order (one stage holding every signal in multitask mode)."""
    if cfg.train.mode == "multitask":
        return [
            StagePlan(
                index=0,
                name="multitask",
                contexts=tuple(StageContext.from_stage(s) for s in cfg.stages),
                weights=tuple(s.step_fraction for s in cfg.stages),
                steps=cfg.train.total_steps,
                first_step=0,
                trainable=_most_trainable(cfg, cfg.stages),
                reset_memory=cfg.stages[0].reset_memory,
            )
        ]
    plans, first = [], 0
    for i, (stage, steps) in enumerate(
        zip(
            cfg.stages,
            stage_steps([s.step_fraction for s in cfg.stages], cfg.train.total_steps),
            strict=True,
        )
    ):
        plans.append(
            StagePlan(
                index=i,
                name=stage.name,
                contexts=(StageContext.from_stage(stage),),
                weights=(1.0,),
                steps=steps,
                first_step=first,
                trainable=cfg.stage_trainable(stage),
                reset_memory=stage.reset_memory,
            )
        )
        first += steps
    return plans


def lr_multiplier(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then cosine to 0 at ``total_steps`` (``step`` is the global step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, *, gate_lr: float | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only (see ``_NO_DECAY_NAMES``); the memory gate
    in a group of its own at ``gate_lr`` when given (``model.memory.gate_lr_scale``)."""
    decay, no_decay, gate = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lowered = name.lower()
        if gate_lr is not None and lowered.endswith("memory.gate"):
            gate.append(p)
            continue
        if (
            p.ndim < 2
            or any(key in lowered for key in _NO_DECAY_NAMES)
            or lowered.endswith(_NO_DECAY_SUFFIXES)
        ):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if gate:
        groups.append({"params": gate, "weight_decay": 0.0, "lr": gate_lr})
    return groups


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each optimizer step."""

    stage: str
    stage_index: int
    global_step: int
    stage_step: int
    loss: float
    # Every ``train.eval_every`` steps: val-split prediction rows generated with the model as it
    # stands (context: the richest one trained so far), for intermediate scoring and pruning.
    val_predictions: list[dict[str, Any]] | None = None


@dataclass
class LoopEnv:
    """Everything ``train_stage`` needs besides the stage: shared by all stages of a run."""

    model: Any  # S2DModel
    cfg: Config
    dist: Dist
    run_dir: Path
    make_loader: Callable[[StagePlan, int], DataLoader]  # (plan, first micro-batch) -> loader
    progress: bool = True
    callbacks: Sequence[Callable[[StepInfo], None]] = field(default_factory=tuple)
    evaluate: Callable[[StagePlan], list[dict[str, Any]]] | None = None  # val rows, see StepInfo
    tracking: Tracking | None = None  # train.report_to: mirrors every train_log.jsonl row

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.precision == "bf16" and self.dist.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def checkpoint(self, optimizer: Any, scheduler: Any, state: RunState) -> Path:
        return save_checkpoint(
            self.run_dir,
            dist=self.dist,
            config=self.cfg,
            model_state=self.model.trainable_state_dict(),
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
        )

    def log(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with (self.run_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            if self.tracking is not None:
                self.tracking.log_step(row)


def _loss_step(env: LoopEnv, batch: dict, ctx: StageContext) -> Any:
    """Forward + loss for one micro-batch (nothing else)."""
    with env.autocast():
        return env.model(batch, lambda_align=ctx.lambda_align, lambda_kp=ctx.lambda_kp)


def _fail(env: LoopEnv, plan: StagePlan, step: int, what: str, last: Path | None) -> TrainingError:
    kept = (
        f"the last good checkpoint is kept at {last}" if last else "no checkpoint was written yet"
    )
    return TrainingError(
        f"stage {plan.name!r} (stage {plan.index + 1}), optimizer step {step}: {what}; "
        f"training stopped, {kept}. Lower train.lr or raise train.grad_clip, then rerun to "
        "resume from that checkpoint"
    )


def train_stage(
    env: LoopEnv,
    plan: StagePlan,
    state: RunState,
    *,
    resume: Checkpoint | None = None,
    last_checkpoint: Path | None = None,
) -> RunState:
    """Train ``plan`` from ``state`` (its start, or mid-stage when resuming) to its end.

    Writes a checkpoint every ``train.checkpoint_every`` optimizer steps and at the stage end;
    returns the updated counters. ``resume`` carries the optimizer and scheduler states of a
    mid-stage checkpoint (the caller has already restored weights and RNG states).
    """
    params, optimizer, scheduler = _start_stage(env, plan, state, resume)
    bar = _stage_bar(env, plan, state)
    batches = iter(env.make_loader(plan, state.micro_batches))
    started = time.perf_counter()
    try:
        while state.stage_step < plan.steps:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums = _accumulate(env, plan, state, batches, last_checkpoint)
            lr, grad_norm = _apply_gradients(
                env, plan, state, params, (optimizer, scheduler), last_checkpoint
            )
            loss, rows, seconds = _record_step(env, plan, state, sums, lr, grad_norm, t0)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", sps=f"{rows / max(seconds, 1e-9):.1f}")
            at_end = state.stage_step == plan.steps
            if at_end:
                state.stage_done = True
                state.stage_seconds[plan.name] = state.stage_seconds.get(plan.name, 0.0) + (
                    time.perf_counter() - started
                )
            every = env.cfg.train.checkpoint_every
            if at_end or (every > 0 and state.global_step % every == 0):
                last_checkpoint = env.checkpoint(optimizer, scheduler, state)
            _after_step(env, plan, state, loss)
    finally:
        bar.close()
    if plan.steps == 0:  # an empty stage still leaves a checkpoint at its boundary
        state.stage_done = True
        env.checkpoint(None, None, state)
    return state


def _start_stage(
    env: LoopEnv, plan: StagePlan, state: RunState, resume: Checkpoint | None
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    """The stage's trainable parameters, a fresh optimizer and the run-wide schedule (with the
    checkpoint's states when resuming mid-stage)."""
    cfg, model = env.cfg.train, env.model
    fresh = state.stage_step == 0 and resume is None
    if fresh:
        # micro_batches is NOT reset: every stage continues one data order, so all variants see
        # the same samples at the same global steps (compute and data matching).
        state.stage_done = False
        if plan.reset_memory:
            gen = torch.Generator().manual_seed(env.cfg.seed * 1009 + plan.index)
            model.reset_memory(generator=gen)
    model.set_trainable(plan.trainable)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"stage {plan.name!r}: nothing is trainable (every part frozen)")
    gate_scale = env.cfg.model.memory.gate_lr_scale
    optimizer = torch.optim.AdamW(
        parameter_groups(
            model, cfg.weight_decay, gate_lr=cfg.lr * gate_scale if gate_scale != 1.0 else None
        ),
        lr=cfg.lr,
    )
    warmup = round(cfg.warmup_fraction * cfg.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: lr_multiplier(plan.first_step + i, cfg.total_steps, warmup),
    )
    if resume is not None and not fresh:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    return params, optimizer, scheduler


def _stage_bar(env: LoopEnv, plan: StagePlan, state: RunState):
    return progress_bar(
        total=plan.steps,
        initial=state.stage_step,
        desc=f"stage {plan.index + 1} {plan.name}",
        unit="step",
        wanted=env.progress,
        main_process=env.dist.is_main,
        leave=False,
    )


@dataclass
class _StepSums:
    """Sums over one optimizer step's micro-batches, in this process."""

    loss: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)  # each loss term
    rows: int = 0
    target_tokens: int = 0
    input_tokens: int = 0


def _accumulate(
    env: LoopEnv, plan: StagePlan, state: RunState, batches, last_checkpoint: Path | None
) -> _StepSums:
    """Forward and backward over ``train.grad_accum`` micro-batches (gradients add up)."""
    cfg, dist = env.cfg.train, env.dist
    sums = _StepSums()
    for _ in range(cfg.grad_accum):
        ctx = plan.contexts[mix_choice(plan.weights, env.cfg.seed, state.micro_batches)]
        batch = batch_to(next(batches), dist.device)
        out = _loss_step(env, batch, ctx)
        loss_value = float(out.loss.detach())
        if dist.any(not math.isfinite(loss_value)):
            what = f"non-finite loss ({loss_value})"
            raise _fail(env, plan, state.global_step + 1, what, last_checkpoint)
        (out.loss / cfg.grad_accum).backward()
        state.micro_batches += 1
        sums.loss += loss_value
        for key, value in out.losses.items():
            sums.losses[key] = sums.losses.get(key, 0.0) + float(value.detach())
        sums.rows += len(batch["ids"])
        sums.target_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        sums.input_tokens += int(batch["attention_mask"].sum())
    return sums


def _apply_gradients(
    env: LoopEnv,
    plan: StagePlan,
    state: RunState,
    params: list[torch.nn.Parameter],
    stepping: tuple[torch.optim.Optimizer, Any],
    last_checkpoint: Path | None,
) -> tuple[float, float]:
    """Average gradients across processes, clip them, then step the optimizer and schedule;
    returns the step's learning rate and gradient norm."""
    cfg = env.cfg.train
    env.dist.average_gradients(params)
    limit = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    if not math.isfinite(grad_norm):
        what = f"non-finite gradient norm ({grad_norm})"
        raise _fail(env, plan, state.global_step + 1, what, last_checkpoint)
    optimizer, scheduler = stepping
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return lr, grad_norm


def _record_step(
    env: LoopEnv,
    plan: StagePlan,
    state: RunState,
    sums: _StepSums,
    lr: float,
    grad_norm: float,
    t0: float,
) -> tuple[float, int, float]:
    """Count the step in ``state`` and log it; ``(mean loss, rows over all processes,
    seconds since t0)``."""
    grad_accum, dist = env.cfg.train.grad_accum, env.dist
    rows, target_tokens, input_tokens = dist.sum_ints(
        [sums.rows, sums.target_tokens, sums.input_tokens]
    )
    state.stage_step += 1
    state.global_step += 1
    state.samples += rows
    state.target_tokens += target_tokens
    state.input_tokens += input_tokens
    seconds = time.perf_counter() - t0
    loss = sums.loss / grad_accum
    env.log(
        {
            "stage": plan.name,
            "stage_index": plan.index,
            "step": state.global_step,
            "stage_step": state.stage_step,
            "loss": loss,
            "losses": {k: v / grad_accum for k, v in sums.losses.items()},
            "lr": lr,
            "grad_norm": grad_norm,
            "gate": env.model.gate_value(),
            "samples": rows,
            "target_tokens": target_tokens,
            "tokens_seen": state.target_tokens,
            "input_tokens_seen": state.input_tokens,
            "samples_per_s": rows / seconds if seconds > 0 else None,
        }
    )
    return loss, rows, seconds


def _after_step(env: LoopEnv, plan: StagePlan, state: RunState, loss: float) -> None:
    """Intermediate val predictions when due, then every callback."""
    every = env.cfg.train.eval_every
    val_rows = None
    if env.evaluate is not None and every > 0 and state.global_step % every == 0:
        val_rows = env.evaluate(plan)
    info = StepInfo(plan.name, plan.index, state.global_step, state.stage_step, loss, val_rows)
    for callback in env.callbacks:
        callback(info)
