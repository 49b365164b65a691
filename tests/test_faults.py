"""Faults that really happen: a grid killed with SIGKILL at random moments, and a run with no
network at all. Real pipeline on a tiny SynthCXR preset; every process is bounded in time."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_fixtures import TINY, cache_root, tiny_config

GRID_TIMEOUT_S = 600
# The tiny preset of the training tests, run as a grid of two variants on one seed.
GRID = ["--preset", "smoke", "--variants", "sft,s2d", "--seeds", "0", "--jobs", "1", *TINY]


def _ablate(out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-c", "import sys; from s2d_align.cli.main import main; "
        "sys.exit(main(sys.argv[1:]))", "ablate", *GRID,
        "--out", str(out), "--cache-root", str(cache), "--no-progress",
    ]  # fmt: skip


def _results_only(out: Path) -> str:
    """The ablation CSV without its wall-time column, the one that measures the machine."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO((out / "reports" / "smoke" / "ablation.csv").read_text())))
    drop = [i for i, name in enumerate(rows[0]) if name.endswith("_wall_s")]
    assert drop, "the CSV layout changed: update this test"
    return "\n".join(",".join(c for i, c in enumerate(r) if i not in drop) for r in rows)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.java
def test_a_grid_killed_several_times_ends_with_the_uninterrupted_table(tmp_path_factory, tmp_path):
    cache = cache_root(tmp_path_factory)
    clean = subprocess.run(
        _ablate(tmp_path / "clean", cache), env=_env(), capture_output=True, text=True,
        timeout=GRID_TIMEOUT_S,
    )  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-2000:]
    expected = _results_only(tmp_path / "clean")

    killed = tmp_path / "killed"
    rng = random.Random(7)  # seeded: the same kill moments on every run of this test
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            _ablate(killed, cache), env=_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(2.0, 14.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2  # the grid really was cut short
    final = subprocess.run(
        _ablate(killed, cache), env=_env(), capture_output=True, text=True,
        timeout=GRID_TIMEOUT_S,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr[-2000:]
    assert _results_only(killed) == expected

    from s2d_align.harness.store import Store

    store = Store.open_readonly(None, killed)
    runs = store.runs(preset="smoke", purpose="ablate")
    assert sorted((r.variant, r.seed, r.status) for r in runs) == [
        ("s2d", 0, "complete"),
        ("sft", 0, "complete"),
    ]
    for run in runs:  # no duplicated records
        for split in ("val", "test"):
            preds = store.predictions(run.id, split)
            assert len(preds) == len(set(preds)) > 0
    tested = [t.run_id for t in store.test_evaluations() if t.run_id in {r.id for r in runs}]
    assert sorted(tested) == sorted(r.id for r in runs)  # each run scored on test exactly once


@pytest.mark.slow
@pytest.mark.java
def test_the_smoke_pipeline_needs_no_network(tmp_path_factory, tmp_path, monkeypatch):
    """Data, training, generation and scoring with every socket connection refused."""
    from s2d_align.evaluation.score import ScoringContext, score_corpus
    from s2d_align.inference.generate import generate_split
    from s2d_align.training.data import load_run_annotation
    from s2d_align.training.pipeline import run_training

    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    cache = tmp_path / "fresh-cache"  # nothing cached: SynthCXR, tokenizer, pre-trainings too
    cfg = tiny_config(variant="s2d")
    run_dir = tmp_path / "run"
    run_training(cfg, run_dir, progress=False, cache_root=cache)
    rows = generate_split(run_dir, "test", progress=False, cache_root=cache)
    ann = load_run_annotation(cfg, cache)
    refs = {s.id: s.report for s in ann.split("test")}
    report = score_corpus(
        {r["id"]: r["prediction"] for r in rows}, refs, cfg.eval, ScoringContext("0" * 64)
    )
    assert 0.0 <= report.metrics["BLEU_1"].value <= 1.0
    assert report.metrics["ce/u0/14/micro/f1"].value >= 0.0
    assert not attempts, f"the pipeline tried to connect to {attempts}"
