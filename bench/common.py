"""Helpers the bench files share: the cache, shortened runs in a subprocess, timing, inputs.

Nothing here changes what the package computes: the benches call its public functions and only
time them (or count what they return).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from s2d_align.config import Config, load_config
from s2d_align.training.cache import resolve_cache_root

BENCH_DIR = Path(__file__).resolve().parent

#: The default run the memory, generation and padding benches share: the default preset cut to
#: 24 optimizer steps (stages of 10 / 7 / 7). Peak memory does not grow with steps (every step
#: holds the same tensors), and the data order of these steps is the full run's first 24.
DEFAULT_RUN_OVERRIDES = ("train.total_steps=24",)
#: A smollm2-cpu run for its peak memory: 3 optimizer steps (one per stage), then 16 test
#: studies. Its frozen vision tower starts random instead of from the cached label
#: pre-training (minutes of CPU to build once, and the same tensors either way).
SMOLLM2_RUN_OVERRIDES = ("train.total_steps=3", "model.vision.pretrain_steps=0")

#: One-time cache builds of this process, seconds by preset (reported, never in a ratio).
ONE_TIME: dict[str, float] = {}


def cache_root() -> Path:
    return resolve_cache_root(None)


def config(preset: str, overrides: Sequence[str] = ()) -> Config:
    return load_config(preset, list(overrides))


def prepare(preset: str, overrides: Sequence[str] = ()) -> Config:
    """Build ``preset``'s shared caches once per process (timed into ``ONE_TIME``)."""
    from s2d_align.training.cache import prepare_shared

    cfg = config(preset, overrides)
    key = " ".join([preset, *overrides])
    if key not in ONE_TIME:
        start = time.perf_counter()
        prepare_shared(cfg, cache_root())
        ONE_TIME[key] = time.perf_counter() - start
    return cfg


def measured_run(
    preset: str, out: Path, overrides: Sequence[str], *, generate: int = 64
) -> dict[str, Any]:
    """Train ``preset`` (with ``overrides``) in a fresh Python process, generate the first
    ``generate`` test studies, and return that process's report (see ``bench/rss_run.py``):
    its peak RSS is the run's, imports included, and none of the bench's own memory."""
    cmd = [sys.executable, str(BENCH_DIR / "rss_run.py"), preset, str(out), "--generate",
           str(generate), *(a for o in overrides for a in ("--override", o))]  # fmt: skip
    env = {**os.environ, "S2D_CACHE": str(cache_root())}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calling them in turn ``repeats`` times, so that a busy
    machine slows every side alike rather than whichever happened to run during the noise."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def split_inputs(run: Any, split: str, limit: int, *, context: str | None = None):
    """``(dataset, store, ctx)`` to generate the first ``limit`` studies of ``split`` with a
    loaded run, as ``generate_loaded`` prepares them for a whole split (references from the
    run's retrieval index, key phrases predicted with its tuned thresholds)."""
    from s2d_align.inference.generate import keyphrase_thresholds
    from s2d_align.inference.keyphrase_prediction import predicted_keyphrases
    from s2d_align.training.collate import build_context, resolve_inference_context
    from s2d_align.training.data import StudyDataset, load_run_annotation
    from s2d_align.training.signals import SignalInputs

    ctx = resolve_inference_context(run.cfg, context)
    studies = load_run_annotation(run.cfg, cache_root()).split(split)[:limit]
    dataset = StudyDataset(
        studies, image_size=run.cfg.data.image_size, max_views=run.cfg.data.max_views
    )
    provided = {}
    if ctx.source("keyphrases") == "run":
        provided["keyphrases"] = predicted_keyphrases(
            run.model,
            dataset,
            run.builder,
            keyphrase_thresholds(run, cache_root()),
            dist=run.dist,
            batch_size=run.cfg.inference.batch_size,
        )
    inputs = SignalInputs(run.cfg, studies, split, run.run_dir, run.vocab)
    return dataset, build_context(ctx.signals, inputs, provided), ctx


class GenerateSpy:
    """Wraps a model's ``llm.generate`` (instance attribute only) and counts, without touching
    the computation: new tokens of each row up to its first eos (``tokens``), decode steps
    (``steps``), rows x steps (``row_steps``), prompt tokens under the attention mask
    (``prompt_tokens``), and the seconds spent."""

    def __init__(self, llm: Any, eos_id: int) -> None:
        self.llm, self.eos_id = llm, eos_id
        self.inner = llm.generate
        self.reset()
        llm.generate = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.steps += int(out.shape[1])
        self.row_steps += int(out.shape[0] * out.shape[1])
        if kwargs.get("attention_mask") is not None:
            self.prompt_tokens += int(kwargs["attention_mask"].sum())
        for row in out.tolist():
            self.tokens += row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
        return out

    def reset(self) -> None:
        self.tokens = self.steps = self.row_steps = self.prompt_tokens = 0
        self.seconds = 0.0

    def remove(self) -> None:
        del self.llm.generate
