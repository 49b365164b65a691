"""Where a default training step goes: padding share of the LLM input, and data loading share.

- ``padding-share``: every batch of a whole default run (the default preset's 300 steps of 12
  studies, through its three stages: pair, + reference report, + key phrases) is collated
  exactly as training collates it (same sampler, same seed, same prompts, references from the
  shared default run's retrieval index), and the LLM input it becomes (visual tokens + text,
  padded to the longest row) is counted: padded positions / all positions. Nothing trains.
  Beside it, what length-aware batching would give (rows sorted by length within pools of 8
  consecutive batches, the same samples per step): reported, not enabled, since it changes
  which samples meet in a step and so every trained number.
- ``data-share``: a default run cut to 20 steps trains under ``torch.profiler``; after step 2
  every optimizer step is one ``ProfilerStep``, and the DataLoader's ``__next__`` inside it
  (sampling, item lookup, collation: prompts tokenised and padded) is what data loading costs.
  The profiler slows the model's many small ops more than the Python collation, so the line
  also gives an unprofiled estimate: the mean time to collate the full run's 300 batches (all
  stages, measured while computing the padding) over the median step time of the shared
  default run's training log.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from common import cache_root, config, prepare
from padding import length_aware, padding
from targets import Target, record

POOL = 8  # batches per pool in the length-aware what-if
PROFILE_STEPS = 20
LOADER_EVENT = "enumerate(DataLoader)"


def run_batches(run_dir) -> tuple[dict[str, list[np.ndarray]], float]:
    """Per stage, each batch's LLM input lengths (visual + text tokens) over a full default
    run's step schedule, collated as training collates them; and the mean seconds to draw and
    collate one batch."""
    from s2d_align.inference.generate import load_run
    from s2d_align.training.collate import Collator, ContextStore, pixel_batch
    from s2d_align.training.data import ResumableBatchSampler, StudyDataset, load_run_annotation
    from s2d_align.training.keyphrases import extract_keyphrases, vocab_keyphrases
    from s2d_align.training.loop import plan_stages
    from s2d_align.training.retrieval import RETRIEVAL_DIR, load_references

    cfg = config("default")  # the full run's schedule, not the shortened run's
    run = load_run(run_dir, cache_root=cache_root())
    studies = load_run_annotation(cfg, cache_root()).split("train")
    train = StudyDataset(studies, image_size=cfg.data.image_size, max_views=cfg.data.max_views)
    pixels, view_mask = pixel_batch([train[0]])
    n_visual = int(run.model.encode(pixels, view_mask).mask.sum())

    reports = {s.id: s.report for s in studies}
    phrases = extract_keyphrases(reports, source=cfg.model.keyphrase_source)
    store = ContextStore(
        values={
            "reference": load_references(run.run_dir / RETRIEVAL_DIR, "train"),
            "keyphrases": vocab_keyphrases(phrases, run.vocab),
        },
        align={"keyphrases": extract_keyphrases(reports, source="all")},
    )

    sampler = ResumableBatchSampler(len(train), cfg.train.batch_size, seed=cfg.seed)
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    seconds = 0.0
    for plan in plan_stages(cfg):
        collate = Collator(run.builder, store, plan.contexts, vocab=run.vocab, seed=cfg.seed)
        for micro in range(plan.first_step, plan.first_step + plan.steps):  # grad_accum is 1
            start = time.perf_counter()
            rows, epoch = sampler.global_batch(micro)
            batch = collate([train[(int(i), epoch, 0)] for i in rows])
            seconds += time.perf_counter() - start
            out[plan.name].append(batch["attention_mask"].sum(1).numpy() + n_visual)
    return dict(out), seconds / cfg.train.total_steps


@pytest.fixture(scope="module")
def full_run_batches(default_run):
    return run_batches(default_run["run_dir"])


@pytest.mark.benchmark(group="step")
def test_padding_share(benchmark, full_run_batches):
    lengths, _ = benchmark.pedantic(lambda: full_run_batches, rounds=1)
    every = [b for stage in lengths.values() for b in stage]
    padded, total = padding(every)
    aware_padded, aware_total = padding(length_aware(every, POOL))
    per_stage = {name: round(float(np.divide(*padding(b))), 3) for name, b in lengths.items()}
    share = padded / total
    record(
        benchmark,
        Target(
            "padding-share",
            share,
            0.15,
            "<=",
            f"{padded} of {total} LLM input positions padded over {len(every)} batches "
            f"(per stage {per_stage}); length-aware pools of {POOL} batches would leave "
            f"{aware_padded / aware_total:.3f}",
            note="fixed-order batches: the sampler's order is part of every trained number",
        ),
    )
    benchmark.extra_info.update(
        per_stage=per_stage, length_aware=aware_padded / aware_total, batches=len(every)
    )
    assert 0 <= share < 1 and aware_padded <= padded


def profiled_run(out_dir) -> dict[str, float]:
    """A 20-step default run under ``torch.profiler``; seconds of steps and of data loading."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from s2d_align.training.pipeline import run_training

    cfg = config("default", [f"train.total_steps={PROFILE_STEPS}"])
    active = PROFILE_STEPS - 2
    with profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=1, warmup=1, active=active, repeat=1),
    ) as prof:
        result = run_training(
            cfg,
            out_dir,
            progress=False,
            cache_root=cache_root(),
            callbacks=[lambda _info: prof.step()],
        )
    steps = data = optimizer = 0.0
    for event in prof.key_averages():  # microseconds; ProfilerStep#k events share one key
        if event.key.startswith("ProfilerStep"):
            steps += event.cpu_time_total
        elif event.key.startswith(LOADER_EVENT):
            data += event.cpu_time_total
        elif event.key.startswith("Optimizer.step#"):
            optimizer += event.cpu_time_total
    assert result.total_steps == PROFILE_STEPS and steps > 0 and data > 0
    return {"step_s": steps / 1e6, "data_s": data / 1e6, "optimizer_s": optimizer / 1e6,
            "steps": active}  # fmt: skip


@pytest.mark.benchmark(group="step")
def test_data_loading_share(benchmark, default_run, full_run_batches, tmp_path):
    from s2d_align.utils.io import read_jsonl

    prepare("default")
    split = benchmark.pedantic(profiled_run, args=(tmp_path / "profiled",), rounds=1)
    log = read_jsonl(Path(default_run["run_dir"]) / "train_log.jsonl")
    step_s = float(np.median([r["samples"] / r["samples_per_s"] for r in log]))
    collate_s = full_run_batches[1]
    share = split["data_s"] / split["step_s"]
    record(
        benchmark,
        Target(
            "data-share",
            share,
            0.10,
            "<=",
            f"profiled: {split['data_s']:.2f} s of {split['step_s']:.2f} s over {split['steps']} "
            f"steps (optimizer {split['optimizer_s'] / split['step_s']:.0%}); unprofiled: "
            f"{collate_s * 1e3:.0f} ms to collate a batch per {step_s * 1e3:.0f} ms step "
            f"({collate_s / step_s:.0%})",
            note="profiled steps cross all three stages; the unprofiled pair is two timings",
        ),
    )
    benchmark.extra_info.update(split)
    benchmark.extra_info.update(unprofiled_step_s=step_s, unprofiled_collate_s=collate_s)
