"""``run_training``: the training recipe, a short sequence of named steps.

``finished_result`` / ``open_run_dir`` -> ``load_data`` -> ``build_vocabularies`` (tokenizer,
key-phrase vocabulary) -> ``build_run_model`` (cached pre-training, then the model) ->
``restore`` (the latest checkpoint) -> ``make_loop_env`` -> ``train_stages`` (building
references when a stage first needs them) -> ``tune_keyphrase_head`` -> ``finalize``. Each step
is a function of the previous steps' outputs, so a test can run one on its own.

The folder's layout is described in :mod:`s2d_align.training.run_dir`. Calling ``run_training``
again on a finished folder returns its result; on an interrupted one it resumes from the last
checkpoint and ends with the same weights an uninterrupted run would have. With several
processes (``accelerate launch``), each trains on its rows of every global batch and gradients
are averaged; the main process writes the folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from s2d_align.config import Config, config_hash, save_yaml
from s2d_align.config.schema import DataConfig
from s2d_align.data.r2gen import SPLITS, Annotation
from s2d_align.errors import DataError
from s2d_align.inference.keyphrase_prediction import predicted_keyphrases, tune_keyphrase_threshold
from s2d_align.inference.passes import generate_rows
from s2d_align.training.cache import resolve_cache_root
from s2d_align.training.checkpoint import (
    Checkpoint,
    RunState,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
)
from s2d_align.training.collate import (
    Collator,
    ContextStore,
    build_context,
    needed_signals,
    resolve_inference_context,
)
from s2d_align.training.data import (
    ResumableBatchSampler,
    StudyDataset,
    load_run_annotation,
    train_reports,
)
from s2d_align.training.distributed import Dist, torch_threads
from s2d_align.training.keyphrases import (
    build_vocab,
    extract_keyphrases,
    phrase_thresholds,
    save_vocab,
    vocab_keyphrases,
)
from s2d_align.training.loop import LOG_FILE, LoopEnv, StagePlan, StepInfo, plan_stages, train_stage
from s2d_align.training.prompts import PromptBuilder
from s2d_align.training.result import TrainResult, peak_rss_mb
from s2d_align.training.retrieval import (
    RETRIEVAL_DIR,
    build_references,
    load_references,
    reference_texts,
    save_neighbours,
)
from s2d_align.training.run_dir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    ENCODER_FILE,
    RESULT_FILE,
    check_same_run,
)
from s2d_align.training.signals import SIGNALS, SignalInputs
from s2d_align.training.tokenizer import prepare_tokenizer
from s2d_align.training.tracking import Tracking, open_tracking
from s2d_align.training.vision_init import initial_vision_state
from s2d_align.utils.io import read_json, read_jsonl, write_json, write_jsonl
from s2d_align.utils.seed import seed_everything

log = logging.getLogger(__name__)


def needs_keyphrases(plans: Sequence[StagePlan]) -> bool:
    return any(p.needs_keyphrases for p in plans)


def needs_references(cfg: Config, plans: Sequence[StagePlan]) -> bool:
    return any(p.needs_references for p in plans) or (
        "reference" in resolve_inference_context(cfg).signals
    )


@dataclass(frozen=True)
class RunSetup:
    """What one ``run_training`` call is given: the config, its folders and its processes."""

    cfg: Config
    run_dir: Path
    cache_root: Path
    dist: Dist = field(default_factory=Dist)
    progress: bool = False
    started: float = field(default_factory=time.perf_counter)  # for the timing log lines

    @property
    def show_progress(self) -> bool:
        """Progress bars: asked for, and this is the main process."""
        return self.progress and self.dist.is_main

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class RunData:
    """The data step's output: the run's annotation and its split datasets (built on first use)."""

    annotation: Annotation
    data_cfg: DataConfig
    progress: bool = False
    _datasets: dict[str, StudyDataset] = field(default_factory=dict, repr=False)

    def has(self, split: str) -> bool:
        return bool(self.annotation.split(split))

    def dataset(self, split: str) -> StudyDataset:
        if split not in self._datasets:
            self._datasets[split] = StudyDataset(
                self.annotation.split(split),
                image_size=self.data_cfg.image_size,
                max_views=self.data_cfg.max_views,
                progress=self.progress,
            )
        return self._datasets[split]


@dataclass
class Vocabularies:
    """The vocabularies step's output."""

    tokenizer: Any
    keyphrases: list[str] = field(default_factory=list)  # the key-phrase head's ([] if unused)


@dataclass
class Restored:
    """The restore step's output: where training starts (a checkpoint, or the beginning)."""

    state: RunState
    checkpoint: Checkpoint | None = None  # mid-run optimizer and scheduler states
    checkpoint_path: Path | None = None
    resumed_from: int | None = None  # the global step resumed at (None: a fresh start)


@dataclass
class Trained:
    """The stages step's output."""

    state: RunState
    seconds: float  # optimizer steps of this call only
    samples: int  # samples trained by this call (a resumed run counts only its own)


# -- the recipe's steps, in the order ``run_training`` calls them ------------------------------
def finished_result(run: RunSetup) -> TrainResult | None:
    """A finished run's result, or None; refuses a folder holding another config's progress."""
    check_same_run(run.run_dir, run.cfg)
    if (run.run_dir / RESULT_FILE).is_file():
        return TrainResult.from_dict(read_json(run.run_dir / RESULT_FILE))
    return None


def open_run_dir(run: RunSetup) -> None:
    """Create the run folder and save the resolved config in it (main process)."""
    if run.dist.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(run.cfg, run.run_dir / CONFIG_FILE)
    run.dist.barrier()


def load_data(run: RunSetup) -> RunData:
    """The data step: the run's annotation (SynthCXR is generated into the cache once)."""
    with run.dist.main_first():
        annotation = load_run_annotation(run.cfg, run.cache_root, progress=run.show_progress)
    if not annotation.split("train"):
        raise DataError(f"{annotation.path}: the train split is empty")
    log.info("data ready (%.1fs)", run.elapsed())
    return RunData(annotation, run.cfg.data, progress=run.show_progress)


def build_vocabularies(
    run: RunSetup, data: RunData, plans: Sequence[StagePlan]
) -> tuple[Vocabularies, ContextStore]:
    """The vocabularies step: the tokenizer (saved in the run folder) and, when a stage uses
    key phrases, their vocabulary; the returned store holds the train studies' values of every
    signal the stages read but the references (:func:`ensure_references`)."""
    tokenizer = prepare_tokenizer(run.cfg, data.annotation, run.run_dir, run.cache_root, run.dist)
    log.info("tokenizer ready (%.1fs)", run.elapsed())
    store = ContextStore()
    keyphrases = keyphrase_vocabulary(run, data, store) if needs_keyphrases(plans) else []
    # Other signals come from their builders; references need the model (the references step).
    needed = needed_signals(c for plan in plans for c in plan.contexts)
    built = [n for n in needed if n not in ("reference", "keyphrases")]
    train = data.annotation.split("train")
    inputs = SignalInputs(run.cfg, train, "train", run.run_dir, keyphrases)
    store.values.update(build_context(built, inputs).values)
    return Vocabularies(tokenizer, keyphrases), store


def keyphrase_vocabulary(run: RunSetup, data: RunData, store: ContextStore) -> list[str]:
    """The key-phrase head's vocabulary, from the train reports (saved in the run folder);
    fills ``store`` with every train study's phrases."""
    cfg = run.cfg
    train = data.annotation.split("train")
    train_by_id, source = {s.id: s.report for s in train}, cfg.model.keyphrase_source
    phrases = extract_keyphrases(train_by_id, source=source, progress=run.show_progress)
    vocab = build_vocab(phrases.values(), cfg.model.keyphrase_vocab)
    # The alignment text stays every analyser phrase: it describes the whole report.
    all_phrases = phrases if source == "all" else extract_keyphrases(train_by_id, source="all")
    store.align["keyphrases"] = all_phrases
    # = the signal's builder (oracle key phrases), without analysing the reports twice
    store.values["keyphrases"] = vocab_keyphrases(phrases, vocab)
    if run.dist.is_main:
        save_vocab(run.run_dir, vocab, len(train), source=source)
    return vocab


def build_run_model(run: RunSetup, data: RunData, vocabs: Vocabularies):
    """The model step: the initial LLM and vision weights (cached pre-training), then the model
    built at ``cfg.seed`` on this process's device."""
    from s2d_align.models import build_model, pretrained_tiny_llm

    cfg, dist = run.cfg, run.dist
    llm_state = None
    if cfg.model.llm.source == "tiny":
        with dist.main_first():
            reports = train_reports(data.annotation)
            llm_state = pretrained_tiny_llm(
                cfg, vocabs.tokenizer, reports, run.cache_root, progress=run.show_progress
            )
    log.info("LLM initial weights ready (%.1fs)", run.elapsed())
    with dist.main_first():
        vision_state = initial_vision_state(
            cfg,
            data.annotation,
            run.cache_root,
            train=data.dataset("train"),
            progress=run.show_progress,
        )
    seed_everything(cfg.seed)
    model = build_model(
        cfg,
        vocabs.tokenizer,
        llm_state,
        keyphrase_vocab=vocabs.keyphrases,
        llm_cache_dir=run.cache_root,
    ).to(dist.device)
    if vision_state is not None:
        model.vision.backbone.load_state_dict(vision_state, strict=True)
    return model


def restore(run: RunSetup, model) -> Restored:
    """The restore step: the latest checkpoint's weights, counters and RNG states, so that
    everything from here on follows the uninterrupted path (a fresh start drops an old log)."""
    path = latest_checkpoint(run.run_dir)
    if path is None:
        if run.dist.is_main:
            (run.run_dir / LOG_FILE).unlink(missing_ok=True)
        return Restored(RunState())
    ckpt = load_checkpoint(path, run.dist.rank)
    model.load_trainable_state_dict(ckpt.model_state, source=str(ckpt.path))
    if run.dist.is_main:
        _truncate_log(run.run_dir, ckpt.state.global_step)
    restore_rng(ckpt.rng)
    return Restored(ckpt.state, ckpt, path, resumed_from=ckpt.state.global_step)


def make_loop_env(
    run: RunSetup,
    data: RunData,
    model,
    builder: PromptBuilder,
    store: ContextStore,
    keyphrases: list[str],
    *,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    tracking: Tracking | None = None,
) -> LoopEnv:
    """What every stage's loop shares: the model, the train loader and intermediate eval."""
    cfg = run.cfg
    loader = _loader_factory(run, data.dataset("train"), builder, store, keyphrases)
    env = LoopEnv(
        model,
        cfg,
        run.dist,
        run.run_dir,
        loader,
        progress=run.progress,
        callbacks=callbacks,
        tracking=tracking,
    )
    if cfg.train.eval_every > 0 and data.has("val"):
        env.evaluate = _IntermediateEval(run, data, model, builder, store, keyphrases, env.autocast)
    return env


def _loader_factory(
    run: RunSetup,
    train_ds: StudyDataset,
    builder: PromptBuilder,
    store: ContextStore,
    keyphrases: list[str],
) -> Callable[[StagePlan, int], DataLoader]:
    cfg, dist = run.cfg, run.dist

    def make_loader(plan: StagePlan, start: int) -> DataLoader:
        sampler = ResumableBatchSampler(
            len(train_ds),
            cfg.train.batch_size,
            seed=cfg.seed,
            rank=dist.rank,
            world=dist.world,
            start=start,
            mix_weights=plan.weights,
        )
        collate = Collator(builder, store, plan.contexts, vocab=keyphrases, seed=cfg.seed)
        # A private generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run (which creates it at another moment) would diverge.
        return DataLoader(
            train_ds,
            batch_sampler=sampler,
            collate_fn=collate,
            generator=torch.Generator(),
            num_workers=cfg.train.num_workers,
        )

    return make_loader


def ensure_references(
    run: RunSetup, data: RunData, model, store: ContextStore, state: RunState, *, autocast
) -> None:
    """The references step: embed every split with the model as it stands and fill
    ``store.values["reference"]``, once per run (``state.retrieval_built`` remembers it)."""
    if state.retrieval_built:
        return
    from safetensors.torch import save_file

    cfg = run.cfg
    datasets = {s: data.dataset(s) for s in SPLITS if data.has(s)}
    index, neighbours = build_references(
        model,
        datasets,
        cfg.retrieval,
        device=run.dist.device,
        encoder=cfg.retrieval.encoder,
        autocast=autocast,
        progress=run.show_progress,
    )
    folder = run.run_dir / RETRIEVAL_DIR
    if run.dist.is_main:
        index.save(folder)
        save_neighbours(folder, neighbours)
        state_dict = {k: v.cpu() for k, v in model.trainable_state_dict().items()}
        save_file(state_dict, str(folder / ENCODER_FILE))
    run.dist.barrier()
    store.values["reference"] = reference_texts(index, neighbours)
    state.retrieval_built = True


def train_stages(
    env: LoopEnv,
    plans: Sequence[StagePlan],
    restored: Restored,
    *,
    before_stage: Callable[[StagePlan, RunState], None] | None = None,
) -> Trained:
    """The stages step: every stage not finished yet, from the restored state (mid-stage with
    its optimizer and scheduler when the checkpoint was taken inside a stage)."""
    state, ckpt, ckpt_path = restored.state, restored.checkpoint, restored.checkpoint_path
    started, samples_before = time.perf_counter(), state.samples
    for plan in plans:
        if plan.index < state.stage_index or (plan.index == state.stage_index and state.stage_done):
            continue
        if before_stage is not None:
            before_stage(plan, state)
        mid_stage = ckpt is not None and plan.index == state.stage_index and state.stage_step > 0
        if not mid_stage:
            state.stage_index, state.stage_step, state.stage_done = plan.index, 0, False
        state = train_stage(
            env,
            plan,
            state,
            resume=ckpt if mid_stage else None,
            last_checkpoint=ckpt_path,
        )
        ckpt = None
        ckpt_path = latest_checkpoint(env.run_dir)
    return Trained(state, time.perf_counter() - started, state.samples - samples_before)


def tune_keyphrase_head(
    run: RunSetup, data: RunData, model, builder: PromptBuilder, keyphrases: list[str], *, autocast
) -> None:
    """The threshold step: the key-phrase head's per-phrase thresholds, tuned on val and saved
    in the run folder (nothing when no stage trains the head or val is empty)."""
    cfg = run.cfg
    if not any(p.lambda_kp > 0 for p in cfg.stages) or not data.has("val"):
        return
    val = data.dataset("val")
    oracle = SIGNALS["keyphrases"].build(SignalInputs(cfg, val.studies, "val", vocab=keyphrases))
    tune_keyphrase_threshold(
        model,
        val,
        builder,
        oracle,
        run.run_dir,
        dist=run.dist,
        batch_size=cfg.inference.batch_size,
        autocast=autocast,
    )


def finalize(
    run: RunSetup,
    model,
    plans: Sequence[StagePlan],
    trained: Trained,
    *,
    resumed_from: int | None = None,
    tracking: Tracking | None = None,
) -> TrainResult:
    """The finalize step: the adapter and ``train_result.json`` (which marks the run finished)
    in the run folder, the summary to the trackers; refuses a run that stopped short."""
    from s2d_align.models import save_adapter

    state, dist = trained.state, run.dist
    if dist.is_main:
        save_adapter(model, run.run_dir / ADAPTER_DIR)
    result = _train_result(run, plans, trained, resumed_from)
    if state.global_step != run.cfg.train.total_steps:
        raise RuntimeError(
            f"run ended at step {state.global_step}, expected {run.cfg.train.total_steps}"
        )
    if dist.is_main:
        write_json(run.run_dir / RESULT_FILE, result.to_dict())
    if tracking is not None:
        summary = ("final_loss", "samples_per_s", "train_time_s", "wall_time_s", "tokens_seen")
        tracking.log_final(
            {k: getattr(result, k) for k in summary}, step=state.global_step, prefix="train"
        )
    dist.barrier()
    return result


def _train_result(
    run: RunSetup, plans: Sequence[StagePlan], trained: Trained, resumed_from: int | None
) -> TrainResult:
    state, seconds = trained.state, trained.seconds
    log_path = run.run_dir / LOG_FILE
    log_rows = read_jsonl(log_path) if log_path.is_file() else []
    return TrainResult(
        run_dir=str(run.run_dir),
        config_hash=config_hash(run.cfg),
        total_steps=state.global_step,
        tokens_seen=state.target_tokens,
        input_tokens_seen=state.input_tokens,
        samples_seen=state.samples,
        wall_time_s=round(run.elapsed(), 3),
        train_time_s=round(seconds, 3),
        samples_per_s=round(trained.samples / seconds, 3)
        if seconds > 0 and trained.samples
        else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        processes=run.dist.world,
        stages=[
            {
                "name": p.name,
                "steps": p.steps,
                "first_step": p.first_step,
                "seconds": round(state.stage_seconds.get(p.name, 0.0), 3),
            }
            for p in plans
        ],
        final_loss=log_rows[-1]["loss"] if log_rows else None,
        resumed_from_step=resumed_from,
    )


class _IntermediateEval:
    """Val predictions mid-run (``train.eval_every``), with the richest context trained so far.

    Generation runs in eval mode without sampling, so it draws no random numbers: a run with
    intermediate evaluations trains exactly like one without.
    """

    def __init__(self, run: RunSetup, data: RunData, model, builder, store, vocab, autocast):
        self.run, self.data, self.model, self.builder = run, data, model, builder
        self.store, self.vocab, self.autocast = store, vocab, autocast
        self._oracle: dict[str, list[str]] | None = None

    def __call__(self, plan: StagePlan) -> list[dict]:
        cfg, dist = self.run.cfg, self.run.dist
        trained = cfg.stages if cfg.train.mode == "multitask" else cfg.stages[: plan.index + 1]
        ctx = resolve_inference_context(cfg, "auto", stages=trained)
        if "reference" in ctx.signals and not self.store.values.get("reference"):
            ctx = resolve_inference_context(cfg, "image")
        val = self.data.dataset("val")
        provided = {}
        if "reference" in ctx.signals:  # retrieved for every split when the run built them
            provided["reference"] = self.store.values["reference"]
        if ctx.source("keyphrases") == "run":
            provided["keyphrases"] = self._predicted_keyphrases(val)
        store = build_context(ctx.signals, self._inputs(val), provided)
        return generate_rows(
            self.model,
            val,
            self.builder,
            store,
            ctx,
            cfg.inference,
            dist=dist,
            autocast=self.autocast,
        )

    def _inputs(self, val: StudyDataset) -> SignalInputs:
        return SignalInputs(self.run.cfg, val.studies, "val", vocab=self.vocab)

    def _predicted_keyphrases(self, val: StudyDataset) -> dict[str, list[str]]:
        cfg, dist = self.run.cfg, self.run.dist
        if self._oracle is None:
            self._oracle = SIGNALS["keyphrases"].build(self._inputs(val))
        record = tune_keyphrase_threshold(
            self.model,
            val,
            self.builder,
            self._oracle,
            self.run.run_dir,
            dist=dist,
            batch_size=cfg.inference.batch_size,
            autocast=self.autocast,
            save=False,
        )
        return predicted_keyphrases(
            self.model,
            val,
            self.builder,
            phrase_thresholds(record, self.vocab),
            dist=dist,
            batch_size=cfg.inference.batch_size,
            autocast=self.autocast,
        )


def _truncate_log(run_dir: Path, step: int) -> None:
    path = run_dir / LOG_FILE
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


def run_training(
    cfg: Config,
    run_dir: Path,
    *,
    progress: bool = True,
    cache_root: Path | str | None = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    dist: Dist | None = None,
) -> TrainResult:
    """Train every stage of ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint).

    ``callbacks`` are called after every optimizer step (after any checkpoint of that step) with
    a :class:`StepInfo`; an exception from one stops the run, which resumes on the next call.
    ``cfg.train.report_to`` trackers get every log row and the final training metrics.
    """
    with torch_threads(cfg.train.num_threads):
        dist = dist or Dist()
        with open_tracking(cfg, run_dir, enabled=dist.is_main) as tracking:
            run = RunSetup(cfg, Path(run_dir), resolve_cache_root(cache_root), dist, progress)
            return _run_recipe(run, callbacks, tracking)


def _run_recipe(
    run: RunSetup, callbacks: Sequence[Callable[[StepInfo], None]], tracking: Tracking
) -> TrainResult:
    """The steps in order; each is a function of its own above."""
    finished = finished_result(run)
    if finished is not None:
        return finished
    open_run_dir(run)
    data = load_data(run)
    plans = plan_stages(run.cfg)
    vocabs, store = build_vocabularies(run, data, plans)
    model = build_run_model(run, data, vocabs)
    restored = restore(run, model)
    if restored.state.retrieval_built:  # the references it built before its checkpoint
        store.values["reference"] = load_references(run.run_dir / RETRIEVAL_DIR)
    builder = PromptBuilder(vocabs.tokenizer, run.cfg.prompt, run.cfg.model.llm.max_length)
    env = make_loop_env(
        run, data, model, builder, store, vocabs.keyphrases, callbacks=callbacks, tracking=tracking
    )

    def references(state: RunState) -> None:
        ensure_references(run, data, model, store, state, autocast=env.autocast)

    wants_references = needs_references(run.cfg, plans)
    if wants_references and run.cfg.retrieval.encoder == "frozen":
        references(restored.state)  # the untrained encoder, before any step
    trained = train_stages(
        env,
        plans,
        restored,
        before_stage=lambda plan, state: references(state) if plan.needs_references else None,
    )
    log.info("stages trained in %.1fs (%.1fs since start)", trained.seconds, run.elapsed())
    if wants_references:
        references(trained.state)  # inference reads references it never trained on
    tune_keyphrase_head(run, data, model, builder, vocabs.keyphrases, autocast=env.autocast)
    return finalize(
        run, model, plans, trained, resumed_from=restored.resumed_from, tracking=tracking
    )


__all__ = ["run_training"]
