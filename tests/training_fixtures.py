"""Tiny SynthCXR runs for the training, retrieval and inference tests.

Every test here uses the ``smoke`` preset made smaller still (32 train studies, 12 steps in
stages of 5 / 4 / 3, a checkpoint every 3 steps). The
shared cache (SynthCXR, tokenizer, pre-trained tiny LM) lives in the session's temporary folder,
and ``shared_run`` trains the full three-stage method once per session for every test that only
needs *a* finished run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s2d_align.config import Config, load_config

#: The smoke preset cut down further: small enough that a three-stage run takes seconds.
TINY = (
    "data.synth.n_train=32",
    "data.synth.n_val=8",
    "data.synth.n_test=8",
    "model.llm.pretrain_steps=8",
    "model.keyphrase_vocab=16",
    "model.lora.dropout=0.1",  # so that resuming has RNG state to restore
    "train.total_steps=12",
    "train.batch_size=4",
    "train.checkpoint_every=3",
    "inference.max_new_tokens=12",
    "inference.batch_size=8",
)

_RUNS: dict[str, Path] = {}


def tiny_config(*overrides: str, variant: str | None = None) -> Config:
    extra = []
    if variant is not None:
        from s2d_align.harness.variants import load_variant

        extra = [dict(load_variant(variant).overrides)]
    return load_config("smoke", [*TINY, *overrides], extra=extra)


def cache_root(factory: pytest.TempPathFactory) -> Path:
    path = factory.getbasetemp() / "s2d-cache"
    path.mkdir(exist_ok=True)
    return path


def shared_run(factory: pytest.TempPathFactory) -> Path:
    """A finished tiny three-stage (s2d) run, trained once per test session."""
    if "s2d" not in _RUNS:
        from s2d_align.training.pipeline import run_training

        run_dir = factory.getbasetemp() / "shared-s2d-run"
        run_training(tiny_config(), run_dir, progress=False, cache_root=cache_root(factory))
        _RUNS["s2d"] = run_dir
    return _RUNS["s2d"]


def ddp_worker(rank: int, world: int, port: int, run_dir: str, cache: str, out: str) -> None:
    """One process of the 2-process (gloo) test: train, then generate the test split."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    import torch

    torch.set_num_threads(1)
    from s2d_align.inference.generate import generate_split
    from s2d_align.training.distributed import Dist
    from s2d_align.training.pipeline import run_training

    dist = Dist(cpu=True)
    assert dist.world == world, f"expected {world} processes, accelerate sees {dist.world}"
    run_training(
        tiny_config("model.lora.dropout=0.0"),
        Path(run_dir),
        progress=False,
        cache_root=Path(cache),
        dist=dist,
    )
    generate_split(
        Path(run_dir), "test", progress=False, out=Path(out), cache_root=Path(cache), dist=dist
    )
    torch.distributed.destroy_process_group()
