"""Report generation from a finished run folder: a whole split, or new images.

Contexts (``inference.context`` or ``context=``; named after the signals of
:mod:`s2d_align.training.signals`): ``image``; ``image+reference`` (the top-k train
reports retrieved when the run was trained); ``image+reference+predicted_keyphrases`` (the
key-phrase head's phrases at the per-phrase thresholds tuned on val); ``oracle_keyphrases``
(phrases from the study's own reference report: an upper bound for analysis, never a result to
report as the method's). ``auto`` is the richest context the run trained with, never the oracle.

Rows are ``{"id", "prediction", "reference_ids", "keyphrases", "context"}``; ``s2d-align score``
reads ``id`` and ``prediction``. With several processes each generates a shard and the rows are
gathered, in split order, before anything is written.

This module works on a run folder (load, choose the context, write the rows); the passes over a
split themselves are :mod:`s2d_align.inference.passes` and
:mod:`s2d_align.inference.keyphrase_prediction`, which training also calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2d_align.config import Config
from s2d_align.data.r2gen import Study, load_image
from s2d_align.errors import ConfigError, DataError
from s2d_align.inference.keyphrase_prediction import (
    load_threshold,
    predicted_keyphrases,
    tune_keyphrase_threshold,
)
from s2d_align.inference.passes import generate_rows
from s2d_align.training.cache import resolve_cache_root
from s2d_align.training.collate import (
    Collator,
    ContextStore,
    InferenceContext,
    StageContext,
    batch_to,
    build_context,
    pixel_batch,
    resolve_inference_context,
    stage_context,
)
from s2d_align.training.data import Item, StudyDataset, load_run_annotation
from s2d_align.training.distributed import Dist, torch_threads
from s2d_align.training.keyphrases import (
    THRESHOLD_FILE,
    decode_multi_hot,
    load_vocab,
    phrase_thresholds,
)
from s2d_align.training.prompts import PromptBuilder
from s2d_align.training.retrieval import RETRIEVAL_DIR, ReferenceTexts, RetrievalIndex
from s2d_align.training.run_dir import ADAPTER_DIR, ENCODER_FILE, RESULT_FILE, load_run_config
from s2d_align.training.signals import SIGNALS, SignalInputs
from s2d_align.training.tokenizer import load_run_tokenizer
from s2d_align.utils.io import write_jsonl
from s2d_align.utils.seed import seed_everything


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    tokenizer: Any
    model: Any  # S2DModel, eval mode, on the process's device
    vocab: list[str]
    builder: PromptBuilder
    dist: Dist

    def autocast(self):
        import contextlib

        if self.cfg.train.precision == "bf16" and self.dist.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def num_beams(self) -> int:
        return self.cfg.inference.num_beams if self.cfg.inference.decoding == "beam" else 1


def _build(cfg: Config, tokenizer, vocab: list[str], device: torch.device, cache_root: Path):
    from s2d_align.models import build_model

    seed_everything(cfg.seed)  # frozen parts not stored in the adapter come from this seed
    model = build_model(cfg, tokenizer, None, keyphrase_vocab=vocab, llm_cache_dir=cache_root)
    return model.to(device)


def load_run(
    run_dir: str | Path, *, dist: Dist | None = None, cache_root: Path | None = None
) -> LoadedRun:
    """Rebuild a finished run's model from its folder (config, tokenizer, adapter)."""
    from s2d_align.models import load_adapter

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not (run_dir / RESULT_FILE).is_file():
        raise DataError(
            f"{run_dir}: training has not finished (no {RESULT_FILE}); rerun `s2d-align train` "
            "with the same --run to resume it"
        )
    dist = dist or Dist()
    tokenizer = load_run_tokenizer(run_dir, cfg)
    vocab = load_vocab(run_dir)
    model = _build(cfg, tokenizer, vocab, dist.device, resolve_cache_root(cache_root))
    load_adapter(model, run_dir / ADAPTER_DIR)
    model.eval()
    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.model.llm.max_length)
    return LoadedRun(run_dir, cfg, tokenizer, model, vocab, builder, dist)


def _check_context(run: LoadedRun, ctx: InferenceContext) -> None:
    if "reference" in ctx.signals and not (run.run_dir / RETRIEVAL_DIR / "index.json").is_file():
        raise ConfigError(
            f"context {ctx.name!r} needs reference reports but {run.run_dir} has no retrieval "
            "index (the run never used references)"
        )
    if "keyphrases" in ctx.signals and not run.vocab:
        raise ConfigError(
            f"context {ctx.name!r} needs key phrases but the run has no key-phrase vocabulary"
        )
    if ctx.source("keyphrases") == "run" and not any(s.lambda_kp > 0 for s in run.cfg.stages):
        raise ConfigError(
            f"context {ctx.name!r} needs a trained key-phrase head (no stage has lambda_kp > 0)"
        )


def keyphrase_thresholds(
    run: LoadedRun, cache_root: Path | None = None, progress: bool = False
) -> np.ndarray:
    """The run's per-phrase thresholds ``[K]`` (vocabulary order), tuned on val when the run
    folder has none yet (an old single-threshold file gives every phrase its value)."""
    record = load_threshold(run.run_dir)
    if record is None:  # tuned on val, never on the split being generated
        ann = load_run_annotation(run.cfg, resolve_cache_root(cache_root))
        val = StudyDataset(
            ann.split("val"), image_size=run.cfg.data.image_size, max_views=run.cfg.data.max_views
        )
        oracle = SIGNALS["keyphrases"].build(
            SignalInputs(run.cfg, val.studies, "val", run.run_dir, run.vocab)
        )
        record = tune_keyphrase_threshold(
            run.model,
            val,
            run.builder,
            oracle,
            run.run_dir,
            dist=run.dist,
            batch_size=run.cfg.inference.batch_size,
            autocast=run.autocast,
            progress=progress,
        )
    return phrase_thresholds(record, run.vocab, where=str(run.run_dir / THRESHOLD_FILE))


def generate_split(
    run_dir: str | Path,
    split: str,
    *,
    context: str | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    cache_root: Path | None = None,
    dist: Dist | None = None,
    permute_images: bool = False,
) -> list[dict[str, Any]]:
    """Generate a report for every study of ``split``; rows in split order (written to ``out``
    as JSONL by the main process, when given).

    ``permute_images``: every study is shown another study's pixels (a fixed derangement, see
    :func:`s2d_align.inference.diagnostics.permute_images`) while its prompt, references and
    key phrases stay its own; rows then name the donor study in ``image_id``.
    """
    cfg = load_run_config(Path(run_dir))
    with torch_threads(cfg.train.num_threads):
        run = load_run(run_dir, dist=dist, cache_root=cache_root)
        return generate_loaded(
            run,
            split,
            context=context,
            progress=progress,
            out=out,
            cache_root=cache_root,
            permute_images=permute_images,
        )


def generate_loaded(
    run: LoadedRun,
    split: str,
    *,
    context: str | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    cache_root: Path | None = None,
    permute_images: bool = False,
) -> list[dict[str, Any]]:
    """:func:`generate_split` with a run already loaded (several passes share one model)."""
    ctx = resolve_inference_context(run.cfg, context)
    _check_context(run, ctx)
    ann = load_run_annotation(run.cfg, resolve_cache_root(cache_root))
    studies = ann.split(split)
    if not studies:
        raise DataError(f"{ann.path}: split {split!r} is empty")
    dataset = StudyDataset(
        studies,
        image_size=run.cfg.data.image_size,
        max_views=run.cfg.data.max_views,
        progress=progress and run.dist.is_main,
    )
    store = _split_store(run, ctx, split, dataset, cache_root=cache_root, progress=progress)
    shown = dataset
    if permute_images:  # after the key phrases: those were predicted from the study's own image
        from s2d_align.inference.diagnostics import permute_images as permuted

        shown = permuted(dataset)
    rows = generate_rows(
        run.model,
        shown,
        run.builder,
        store,
        ctx,
        run.cfg.inference,
        dist=run.dist,
        autocast=run.autocast,
        progress=progress,
    )
    if permute_images:
        for row, donor in zip(rows, shown.image_ids, strict=True):
            row["image_id"] = donor
    if out is not None and run.dist.is_main:
        write_jsonl(out, rows)
    run.dist.barrier()
    return rows


def _split_store(
    run: LoadedRun,
    ctx: InferenceContext,
    split: str,
    dataset: StudyDataset,
    *,
    cache_root: Path | None,
    progress: bool,
) -> ContextStore:
    """What ``ctx`` puts in the prompts of ``split``'s studies: the key-phrase head's phrases,
    and every other signal from its builder (the references retrieved when the run was trained,
    oracle key phrases)."""
    provided = {}
    if ctx.source("keyphrases") == "run":
        threshold = keyphrase_thresholds(run, cache_root, progress)
        provided["keyphrases"] = predicted_keyphrases(
            run.model,
            dataset,
            run.builder,
            threshold,
            dist=run.dist,
            batch_size=run.cfg.inference.batch_size,
            autocast=run.autocast,
            progress=progress,
        )
    inputs = SignalInputs(run.cfg, dataset.studies, split, run.run_dir, run.vocab)
    return build_context(ctx.signals, inputs, provided)


def _image_item(paths: Sequence[str | Path], cfg: Config) -> Item:
    if not paths:
        raise DataError("give at least one image")
    size, views = cfg.data.image_size, cfg.data.max_views
    if len(paths) > views:
        raise DataError(f"the run takes at most {views} view(s) per study, got {len(paths)} images")
    pixels = np.zeros((views, size, size), dtype=np.uint8)
    for v, path in enumerate(paths):
        pixels[v] = np.round(load_image(path, size) * 255.0).astype(np.uint8)
    study = Study(
        id="input",
        report="",
        image_paths=tuple(str(Path(p).resolve()) for p in paths),
        split="input",
    )
    return Item(0, study, pixels, len(paths))


def generate_for_images(
    run_dir: str | Path,
    image_paths: Sequence[str | Path],
    *,
    context: str | None = None,
    cache_root: Path | None = None,
) -> str:
    """A report for the views of one new study (e.g. frontal + lateral PNGs)."""
    cfg = load_run_config(Path(run_dir))
    with torch_threads(cfg.train.num_threads):
        return _generate_for_images(run_dir, image_paths, context, cache_root)


def _generate_for_images(run_dir, image_paths, context, cache_root) -> str:
    from safetensors.torch import load_file

    run = load_run(run_dir, cache_root=cache_root)
    ctx = resolve_inference_context(run.cfg, context)
    if ctx.oracle:
        raise ConfigError(
            f"context {ctx.name!r} builds {', '.join(ctx.oracle)} from the study's own report; "
            "new images have none"
        )
    _check_context(run, ctx)
    item = _image_item(image_paths, run.cfg)
    batch_items = [item]
    provided: dict[str, dict] = {}
    device = run.dist.device
    if "reference" in ctx.signals:
        folder = run.run_dir / RETRIEVAL_DIR
        index = RetrievalIndex.load(folder)
        # Embed with the encoder state that built the index (the final one may have moved on).
        encoder = _build(run.cfg, run.tokenizer, run.vocab, device, resolve_cache_root(cache_root))
        encoder.load_trainable_state_dict(
            load_file(str(folder / ENCODER_FILE)), source=str(folder / ENCODER_FILE)
        )
        encoder.eval()
        with torch.no_grad():
            pixels, view_mask = pixel_batch(batch_items)
            _, pooled = encoder.encode_images(pixels.to(device), view_mask.to(device))
        del encoder
        reports = dict(zip(index.ids, index.reports, strict=True))
        hits = {item.study.id: index.query(pooled.cpu(), run.cfg.retrieval.k)[0]}
        provided["reference"] = ReferenceTexts(hits, reports)
    if "keyphrases" in ctx.signals:
        threshold = keyphrase_thresholds(run, cache_root, progress=False)
        probe = Collator(run.builder, ContextStore(), [StageContext()], generate=True)
        with torch.no_grad(), run.autocast():
            probs = run.model.predict_keyphrases(batch_to(probe(batch_items), device))[0]
        chosen = probs.float().cpu().numpy() >= threshold
        provided["keyphrases"] = {item.study.id: decode_multi_hot(chosen, run.vocab)}
    inputs = SignalInputs(run.cfg, [item.study], "input", run.run_dir, run.vocab)
    store = build_context(ctx.signals, inputs, provided)
    collate = Collator(run.builder, store, [stage_context(ctx)], vocab=run.vocab, generate=True)
    batch = batch_to(collate(batch_items), device)
    with run.autocast():
        text = run.model.generate(
            batch, max_new_tokens=run.cfg.inference.max_new_tokens, num_beams=run.num_beams
        )
    return text[0]
