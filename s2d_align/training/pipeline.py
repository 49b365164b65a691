"""``run_training``: data -> tokenizer -> tiny-LM pre-training -> model -> stages -> run folder.

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
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from s2d_align.config import Config, config_hash, save_yaml
from s2d_align.data.r2gen import SPLITS, Annotation
from s2d_align.errors import DataError
from s2d_align.training.checkpoint import RunState, latest_checkpoint, load_checkpoint, restore_rng
from s2d_align.training.collate import Collator, ContextStore, resolve_inference_context
from s2d_align.training.data import ResumableBatchSampler, StudyDataset, load_run_annotation
from s2d_align.training.distributed import Dist, torch_threads
from s2d_align.training.keyphrases import (
    build_vocab,
    extract_keyphrases,
    oracle_keyphrases,
    phrase_thresholds,
    save_vocab,
    vocab_keyphrases,
)
from s2d_align.training.loop import LOG_FILE, LoopEnv, StagePlan, StepInfo, plan_stages, train_stage
from s2d_align.training.predict import (
    generate_rows,
    predicted_keyphrases,
    tune_keyphrase_threshold,
)
from s2d_align.training.prompts import PromptBuilder
from s2d_align.training.retrieval import (
    RETRIEVAL_DIR,
    build_references,
    load_neighbours,
    save_neighbours,
)
from s2d_align.training.run_dir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    ENCODER_FILE,
    RESULT_FILE,
    TrainResult,
    check_same_run,
    default_cache_root,
    peak_rss_mb,
    prepare_tokenizer,
    shared_tokenizer,
    train_reports,
)
from s2d_align.training.tracking import Tracking, open_tracking
from s2d_align.training.vision_init import initial_vision_state
from s2d_align.utils.io import read_json, read_jsonl, write_json, write_jsonl
from s2d_align.utils.seed import seed_everything

log = logging.getLogger(__name__)


def needs_keyphrases(plans: Sequence[StagePlan]) -> bool:
    return any(p.needs_keyphrases for p in plans)


def needs_references(cfg: Config, plans: Sequence[StagePlan]) -> bool:
    return any(p.needs_references for p in plans) or resolve_inference_context(cfg).reference


class _Run:
    """State shared by the steps of one ``run_training`` call."""

    def __init__(self, cfg: Config, run_dir: Path, cache_root: Path, dist: Dist, progress: bool):
        self.cfg, self.run_dir, self.cache_root = cfg, run_dir, cache_root
        self.dist, self.progress = dist, progress
        self.datasets: dict[str, StudyDataset] = {}
        self.annotation: Annotation | None = None

    def dataset(self, split: str) -> StudyDataset:
        if split not in self.datasets:
            assert self.annotation is not None
            self.datasets[split] = StudyDataset(
                self.annotation.split(split),
                image_size=self.cfg.data.image_size,
                max_views=self.cfg.data.max_views,
                progress=self.progress and self.dist.is_main,
            )
        return self.datasets[split]


def _build_retrieval(run: _Run, model, store: ContextStore, env: LoopEnv) -> None:
    """Embed every split with the model as it stands and fill ``store.references``."""
    from safetensors.torch import save_file

    cfg = run.cfg
    datasets = {s: run.dataset(s) for s in SPLITS if run.annotation and run.annotation.split(s)}
    index, neighbours = build_references(
        model,
        datasets,
        cfg.retrieval,
        device=run.dist.device,
        encoder=cfg.retrieval.encoder,
        autocast=env.autocast,
        progress=run.progress and run.dist.is_main,
    )
    folder = run.run_dir / RETRIEVAL_DIR
    if run.dist.is_main:
        index.save(folder)
        save_neighbours(folder, neighbours)
        state = {k: v.cpu() for k, v in model.trainable_state_dict().items()}
        save_file(state, str(folder / ENCODER_FILE))
    run.dist.barrier()
    _fill_references(store, index.ids, index.reports, neighbours)


def _fill_references(store: ContextStore, ids, reports, neighbours) -> None:
    store.reference_reports = dict(zip(ids, reports, strict=True))
    store.references = {sid: hits for split in neighbours.values() for sid, hits in split.items()}


def _load_retrieval(run_dir: Path, store: ContextStore) -> None:
    folder = run_dir / RETRIEVAL_DIR
    meta = read_json(folder / "index.json")
    _fill_references(store, meta["ids"], meta["reports"], load_neighbours(folder))


class _IntermediateEval:
    """Val predictions mid-run (``train.eval_every``), with the richest context trained so far.

    Generation runs in eval mode without sampling, so it draws no random numbers: a run with
    intermediate evaluations trains exactly like one without.
    """

    def __init__(self, run: _Run, model, builder: PromptBuilder, store: ContextStore, vocab, env):
        self.run, self.model, self.builder, self.store = run, model, builder, store
        self.vocab, self.env = vocab, env
        self._oracle: dict[str, list[str]] | None = None

    def __call__(self, plan: StagePlan) -> list[dict]:
        cfg, dist = self.run.cfg, self.run.dist
        trained = cfg.stages if cfg.train.mode == "multitask" else cfg.stages[: plan.index + 1]
        ctx = resolve_inference_context(cfg, "auto", stages=trained)
        if ctx.reference and not self.store.references:
            ctx = resolve_inference_context(cfg, "image")
        val = self.run.dataset("val")
        store = ContextStore(
            references=self.store.references, reference_reports=self.store.reference_reports
        )
        if ctx.keyphrases == "predicted":
            if self._oracle is None:
                self._oracle = oracle_keyphrases(
                    {s.id: s.report for s in val.studies}, self.vocab, cfg.model.keyphrase_source
                )
            record = tune_keyphrase_threshold(
                self.model,
                val,
                self.builder,
                self._oracle,
                self.run.run_dir,
                dist=dist,
                batch_size=cfg.inference.batch_size,
                autocast=self.env.autocast,
                save=False,
            )
            store.predicted = predicted_keyphrases(
                self.model,
                val,
                self.builder,
                phrase_thresholds(record, self.vocab),
                dist=dist,
                batch_size=cfg.inference.batch_size,
                autocast=self.env.autocast,
            )
        return generate_rows(
            self.model,
            val,
            self.builder,
            store,
            ctx,
            cfg.inference,
            dist=dist,
            autocast=self.env.autocast,
        )


def _truncate_log(run_dir: Path, step: int) -> None:
    path = run_dir / LOG_FILE
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


def prepare_shared(cfg: Config, cache_root: Path, *, progress: bool = False) -> None:
    """Build the one-time parts every run of ``cfg``'s data and LLM shares, in ``cache_root``:
    the dataset (SynthCXR is generated), the tokenizer, the tiny vision tower's and the tiny LM's
    pre-training, or the de-quantised copy of a GGUF file. ``run_training`` finds them there.

    Grids call it once before starting parallel runs, so that workers do not each build the
    same cache (they would agree, since every cache is content-keyed and written atomically,
    but the work would be repeated).
    """
    cache_root = Path(cache_root)
    with torch_threads(cfg.train.num_threads):
        started = time.perf_counter()
        annotation = load_run_annotation(cfg, cache_root, progress=progress)
        tokenizer = shared_tokenizer(cfg, annotation, cache_root, Dist())
        initial_vision_state(cfg, annotation, cache_root, progress=progress)
        if cfg.model.llm.source == "tiny":
            from s2d_align.models import pretrained_tiny_llm

            pretrained_tiny_llm(
                cfg, tokenizer, train_reports(annotation), cache_root, progress=progress
            )
        else:
            from s2d_align.models.llm import build_llm, gguf_cache_folder, llm_location

            gguf_file = llm_location(cfg.model.llm)[1]
            if gguf_file and not (gguf_cache_folder(cfg.model.llm, cache_root) / "model").is_dir():
                build_llm(cfg.model.llm, tokenizer, cache_dir=cache_root)  # writes the copy
        log.info("shared data, tokenizer and LLM weights ready (%.1fs)",
                 time.perf_counter() - started)  # fmt: skip


def run_training(
    cfg: Config,
    run_dir: Path,
    *,
    progress: bool = True,
    cache_root: Path | None = None,
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
            return _run_training(
                cfg, Path(run_dir), progress, cache_root, callbacks, dist, tracking
            )


def _run_training(
    cfg: Config,
    run_dir: Path,
    progress: bool,
    cache_root: Path | None,
    callbacks: Sequence[Callable[[StepInfo], None]],
    dist: Dist | None,
    tracking: Tracking,
) -> TrainResult:
    from s2d_align.models import build_model, pretrained_tiny_llm, save_adapter

    started = time.perf_counter()
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    dist = dist or Dist()
    if (run_dir / RESULT_FILE).is_file():
        check_same_run(run_dir, cfg)
        return TrainResult.from_dict(read_json(run_dir / RESULT_FILE))
    check_same_run(run_dir, cfg)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / CONFIG_FILE)
    dist.barrier()

    run = _Run(cfg, run_dir, cache_root, dist, progress)
    with dist.main_first():
        run.annotation = load_run_annotation(cfg, cache_root, progress=progress and dist.is_main)
    if not run.annotation.split("train"):
        raise DataError(f"{run.annotation.path}: the train split is empty")
    log.info("data ready (%.1fs)", time.perf_counter() - started)
    plans = plan_stages(cfg)
    tokenizer = prepare_tokenizer(cfg, run.annotation, run_dir, cache_root, dist)
    log.info("tokenizer ready (%.1fs)", time.perf_counter() - started)
    reports = train_reports(run.annotation)

    store = ContextStore()
    vocab: list[str] = []
    if needs_keyphrases(plans):
        train = run.annotation.split("train")
        train_by_id, source = {s.id: s.report for s in train}, cfg.model.keyphrase_source
        phrases = extract_keyphrases(train_by_id, source=source, progress=progress and dist.is_main)
        vocab = build_vocab(phrases.values(), cfg.model.keyphrase_vocab)
        # The alignment text stays every analyser phrase: it describes the whole report.
        all_phrases = phrases if source == "all" else extract_keyphrases(train_by_id, source="all")
        store.all_keyphrases = all_phrases
        store.keyphrases = vocab_keyphrases(phrases, vocab)  # = oracle_keyphrases(train, vocab)
        if dist.is_main:
            save_vocab(run_dir, vocab, len(train), source=source)

    llm_state = None
    if cfg.model.llm.source == "tiny":
        with dist.main_first():
            llm_state = pretrained_tiny_llm(
                cfg, tokenizer, reports, cache_root, progress=progress and dist.is_main
            )
    log.info("LLM initial weights ready (%.1fs)", time.perf_counter() - started)
    with dist.main_first():
        vision_state = initial_vision_state(
            cfg,
            run.annotation,
            cache_root,
            train=run.dataset("train"),
            progress=progress and dist.is_main,
        )
    seed_everything(cfg.seed)
    model = build_model(
        cfg, tokenizer, llm_state, keyphrase_vocab=vocab, llm_cache_dir=cache_root
    ).to(dist.device)
    if vision_state is not None:
        model.vision.backbone.load_state_dict(vision_state, strict=True)
    del llm_state, vision_state

    ckpt_path = latest_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path, dist.rank) if ckpt_path is not None else None
    state = RunState()
    if ckpt is not None:
        model.load_trainable_state_dict(ckpt.model_state, source=str(ckpt.path))
        state = ckpt.state
        if state.retrieval_built:
            _load_retrieval(run_dir, store)
        if dist.is_main:
            _truncate_log(run_dir, state.global_step)
        restore_rng(ckpt.rng)  # everything from here on follows the uninterrupted path
    elif dist.is_main:
        (run_dir / LOG_FILE).unlink(missing_ok=True)
    resumed_from = state.global_step if ckpt is not None else None

    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.model.llm.max_length)
    train_ds = run.dataset("train")

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
        collate = Collator(builder, store, plan.contexts, vocab=vocab, seed=cfg.seed)
        # A private generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run (which creates it at another moment) would diverge.
        return DataLoader(
            train_ds,
            batch_sampler=sampler,
            collate_fn=collate,
            generator=torch.Generator(),
            num_workers=cfg.train.num_workers,
        )

    env = LoopEnv(
        model,
        cfg,
        dist,
        run_dir,
        make_loader,
        progress=progress,
        callbacks=callbacks,
        tracking=tracking,
    )
    if cfg.train.eval_every > 0 and run.annotation.split("val"):
        env.evaluate = _IntermediateEval(run, model, builder, store, vocab, env)
    wants_refs = needs_references(cfg, plans)
    if wants_refs and cfg.retrieval.encoder == "frozen" and not state.retrieval_built:
        _build_retrieval(run, model, store, env)  # the untrained encoder, before any step
        state.retrieval_built = True

    train_started = time.perf_counter()
    samples_before = state.samples
    for plan in plans:
        if plan.index < state.stage_index or (plan.index == state.stage_index and state.stage_done):
            continue
        if plan.needs_references and not state.retrieval_built:
            _build_retrieval(run, model, store, env)
            state.retrieval_built = True
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
        ckpt_path = latest_checkpoint(run_dir)
    train_time = time.perf_counter() - train_started
    log.info(
        "stages trained in %.1fs (%.1fs since start)", train_time, time.perf_counter() - started
    )

    if wants_refs and not state.retrieval_built:
        _build_retrieval(run, model, store, env)  # inference reads references it never trained on
        state.retrieval_built = True

    if any(p.lambda_kp > 0 for p in cfg.stages) and run.annotation.split("val"):
        val = run.dataset("val")
        oracle = oracle_keyphrases(
            {s.id: s.report for s in val.studies}, vocab, cfg.model.keyphrase_source
        )
        tune_keyphrase_threshold(
            model,
            val,
            builder,
            oracle,
            run_dir,
            dist=dist,
            batch_size=cfg.inference.batch_size,
            autocast=env.autocast,
        )

    if dist.is_main:
        save_adapter(model, run_dir / ADAPTER_DIR)
    log_rows = read_jsonl(run_dir / LOG_FILE) if (run_dir / LOG_FILE).is_file() else []
    samples = state.samples - samples_before
    result = TrainResult(
        run_dir=str(run_dir),
        config_hash=config_hash(cfg),
        total_steps=state.global_step,
        tokens_seen=state.target_tokens,
        input_tokens_seen=state.input_tokens,
        samples_seen=state.samples,
        wall_time_s=round(time.perf_counter() - started, 3),
        train_time_s=round(train_time, 3),
        samples_per_s=round(samples / train_time, 3) if train_time > 0 and samples else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        processes=dist.world,
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
    if state.global_step != cfg.train.total_steps:
        raise RuntimeError(
            f"run ended at step {state.global_step}, expected {cfg.train.total_steps}"
        )
    if dist.is_main:
        write_json(run_dir / RESULT_FILE, result.to_dict())
    summary = ("final_loss", "samples_per_s", "train_time_s", "wall_time_s", "tokens_seen")
    tracking.log_final(
        {k: getattr(result, k) for k in summary}, step=state.global_step, prefix="train"
    )
    dist.barrier()
    return result


__all__ = ["TrainResult", "run_training"]
