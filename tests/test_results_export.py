"""``results export`` round trips, ``results list/show --json``, and the README's pandas recipes."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import harness_fakes as fakes
import pandas as pd
import pytest

from s2d_align.cli.main import main
from s2d_align.harness.export import METRIC_COLUMNS, SAMPLE_COLUMNS, sample_frame
from s2d_align.harness.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, list[str]]:
    return fakes.small_results_store(tmp_path)


def store_metrics(out: Path, run_ids=None) -> pd.DataFrame:
    store = Store.open_readonly(None, out)
    try:
        rows = store.metric_rows(run_ids)
    finally:
        store.close()
    frame = pd.DataFrame(rows)[METRIC_COLUMNS]
    return frame.sort_values(["run_id", "split", "metric"], ignore_index=True)


def store_samples(out: Path) -> pd.DataFrame:
    store = Store.open_readonly(None, out)
    try:
        return sample_frame(store)
    finally:
        store.close()


def read_back(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, dtype={"sample_id": str})
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype={"sample_id": str})


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_round_trips_the_store_metric_rows(results, tmp_path, fmt):
    out, _ = results
    path = tmp_path / f"metrics.{fmt}"
    assert (
        main(["results", "export", "--results", str(out), "--format", fmt, "--out", str(path)]) == 0
    )
    got = read_back(path, fmt)
    want = store_metrics(out)
    assert list(got.columns) == METRIC_COLUMNS
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_per_sample_round_trips(results, tmp_path, fmt):
    out, _ = results
    path = tmp_path / f"samples.{fmt}"
    argv = ["results", "export", "--results", str(out), "--per-sample"]
    assert main([*argv, "--format", fmt, "--out", str(path)]) == 0
    got = read_back(path, fmt)
    want = store_samples(out)
    assert list(got.columns) == SAMPLE_COLUMNS
    # the fake grid scores 24 samples per split, each with several metrics
    assert len(want) > 24 and set(want["sample_id"]) == set(got["sample_id"])
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_export_run_selects_runs(results, tmp_path):
    out, (sft, s2d) = results
    path = tmp_path / "one.csv"
    argv = ["results", "export", "--results", str(out), "--format", "csv", "--out", str(path)]
    assert main([*argv, "--run", s2d]) == 0
    got = pd.read_csv(path)
    assert set(got["run_id"]) == {s2d}
    pd.testing.assert_frame_equal(got, store_metrics(out, [s2d]), check_dtype=False)
    assert main([*argv, "--run", s2d, "--run", sft]) == 0
    assert set(pd.read_csv(path)["run_id"]) == {sft, s2d}


def test_export_unknown_run_is_a_user_error(results, tmp_path, capsys):
    out, _ = results
    path = tmp_path / "x.csv"
    argv = ["results", "export", "--results", str(out), "--format", "csv", "--out", str(path)]
    assert main([*argv, "--run", "nope"]) == 2
    assert "nope" in capsys.readouterr().err and not path.exists()


def test_export_refuses_to_overwrite_the_store(results, capsys):
    out, _ = results
    db = out / "s2d.db"
    before = db.read_bytes()
    argv = ["results", "export", "--results", str(out), "--format", "csv", "--out", str(db)]
    assert main(argv) == 2
    assert "would destroy" in capsys.readouterr().err
    assert db.read_bytes() == before


def test_parquet_without_pyarrow_names_the_extra(results, tmp_path, monkeypatch, capsys):
    out, _ = results
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "m.parquet"
    argv = ["results", "export", "--results", str(out), "--format", "parquet", "--out", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 's2d-align[parquet]'" in err
    assert not path.exists()


def test_list_and_show_json(results, capsys):
    out, (sft, s2d) = results
    assert main(["results", "list", "--results", str(out), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert sorted(r["run_id"] for r in runs) == sorted([sft, s2d])
    assert all(r["status"] == "complete" and r["steps"] == 4 for r in runs)

    assert main(["results", "show", s2d, "--results", str(out), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["run_id"] == s2d and run["config"]["train"]["total_steps"] == 4
    want = store_metrics(out, [s2d])
    shown = {
        (ev["split"], name): m["value"]
        for ev in run["evaluations"]
        for name, m in ev["metrics"].items()
    }
    stored = {
        (r.split, r.metric): r.value for r in want.itertuples() if not r.metric.startswith("ce_f1/")
    }
    assert shown == stored


def readme_recipes() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Recipes", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_recipes_run_against_a_store(results, monkeypatch):
    out, (sft, s2d) = results
    blocks = readme_recipes()
    assert len(blocks) == 3
    monkeypatch.chdir(out.parent)  # the recipes read results/s2d.db
    ns: dict = {}
    try:
        for code in blocks:
            exec(compile(code, str(README), "exec"), ns)
    finally:
        if "engine" in ns:
            ns["engine"].dispose()

    metrics = ns["metrics"].sort_values(["run_id", "split", "metric"], ignore_index=True)
    want = store_metrics(out)
    pd.testing.assert_frame_equal(
        metrics[["run_id", "split", "metric", "value"]],
        want[["run_id", "split", "metric", "value"]],
    )
    assert set(ns["val"].index) == {"sft", "s2d"}

    configs = ns["configs"]
    assert sorted(configs.index) == sorted([sft, s2d])
    assert (configs["train.total_steps"] == 4).all()

    samples = ns["samples"].sort_values(SAMPLE_COLUMNS[:4], ignore_index=True)
    pd.testing.assert_frame_equal(samples, store_samples(out), check_dtype=False)
