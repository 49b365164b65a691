"""The bench dashboard: targets recorded by a bench, saved as pytest-benchmark JSON, read back
and printed one line each beside the previous run (bench/targets.py, bench/summary.py)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench/ is a folder of scripts, not a package
    return importlib.import_module("targets"), importlib.import_module("summary")


class FakeBenchmark:
    def __init__(self) -> None:
        self.extra_info: dict = {}


def _saved_run(targets, folder: Path, name: str, *found) -> Path:
    bench = FakeBenchmark()
    for target in found:
        targets.record(bench, target)
    path = folder / "Linux-CPython-3.11-64bit" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmarks": [{"name": "test_x", "extra_info": bench.extra_info}],
              "commit_info": {"id": "abc123"}, "machine_info": {"cpu": {"brand_raw": "cpu"}}}  # fmt: skip
    path.write_text(json.dumps(report))
    return path


def test_target_met_follows_its_direction(bench_modules):
    targets, _ = bench_modules
    assert targets.Target("generation-batch", 6.0, 5.0, ">=", "x").met
    assert not targets.Target("generation-batch", 4.9, 5.0, ">=", "x").met
    assert targets.Target("padding-share", 0.15, 0.15, "<=", "x").met
    assert not targets.Target("padding-share", float("nan"), 0.15, "<=", "x").met
    line = targets.Target("padding-share", 0.2, 0.15, "<=", "20 of 100").line()
    assert "NOT MET" in line and "<= 0.15" in line and "20 of 100" in line


def test_unknown_target_or_direction_is_an_error(bench_modules):
    targets, _ = bench_modules
    with pytest.raises(ValueError, match="unknown target 'speed'"):
        targets.Target("speed", 1.0, 1.0, ">=", "x")
    with pytest.raises(ValueError, match="op must be"):
        targets.Target("padding-share", 1.0, 1.0, "<", "x")


def test_summary_prints_every_target_against_the_previous_run(bench_modules, tmp_path, capsys):
    targets, summary = bench_modules
    T = targets.Target
    old = _saved_run(
        targets, tmp_path, "0001_abc_old.json", T("padding-share", 0.30, 0.15, "<=", "old")
    )
    new = _saved_run(targets, tmp_path, "0002_abc_new.json",
                     T("padding-share", 0.25, 0.15, "<=", "200 of 800 padded"),
                     T("generation-batch", 8.0, 5.0, ">=", "800 vs 100 tokens/s"))  # fmt: skip
    old_time = new.stat().st_mtime - 10  # autosave numbering and file times agree on the order
    os.utime(old, (old_time, old_time))
    capsys.readouterr()  # what record() printed
    assert summary.main(["--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    assert "NOT MET" in lines["padding-share"] and "previous run 0.3" in lines["padding-share"]
    assert " met " in lines["generation-batch"] and "previous" not in lines["generation-batch"]
    assert "not measured in this run" in lines["grid-overhead"]
    assert "nox -s ablate" in lines["main-job"]
    assert str(new) in out and str(old) in out
    assert summary.main(["--storage", str(tmp_path), "--strict"]) == 1  # padding is not met


def test_summary_without_saved_runs_says_so(bench_modules, tmp_path, capsys):
    _, summary = bench_modules
    assert summary.main(["--storage", str(tmp_path / "none")]) == 1
    assert "no saved run" in capsys.readouterr().out


def test_summary_names_an_unreadable_run(bench_modules, tmp_path, capsys):
    _, summary = bench_modules
    bad = tmp_path / "m" / "0001_bad.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert summary.main(["--storage", str(tmp_path)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_length_aware_what_if_keeps_the_samples_and_never_pads_more(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    pad = importlib.import_module("padding")
    rng = np.random.default_rng(0)
    batches = [rng.integers(70, 160, size=12) for _ in range(20)]
    aware = pad.length_aware(batches, 8)
    assert [len(b) for b in aware] == [12] * 20
    assert sorted(np.concatenate(aware)) == sorted(np.concatenate(batches))
    padded, total = pad.padding(batches)
    assert padded == sum(int(b.max() * 12 - b.sum()) for b in batches) and total > padded
    assert pad.padding(aware)[0] < padded
