"""Reports are a pure function of the store: tables and figures rebuild after run dirs are gone."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.harness.reports import build_reports
from s2d_align.harness.reports.data import load_preset
from s2d_align.harness.reports.tables import _holm, ablation_table, to_csv, to_markdown
from s2d_align.harness.runner import Runner, plan_grid
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

VARIANTS = ["sft", "sft+mem", "s2d"]
FIGURES = ("ablation_bars", "ce_f1_heatmap", "training_curves", "report_lengths", "qualitative")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> tuple[Store, Path]:
    root = tmp_path_factory.mktemp("reports")
    preset = root / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 6}\n")
    store = Store.open(None, root / "results")
    runner = Runner(
        store, root / "results", run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(), progress=False
    )
    assert runner.run_grid(plan_grid(preset, load_variants(VARIANTS), [0, 1, 2])).ok
    return store, root


@pytest.mark.slow
def test_tables_and_figures_rebuild_from_the_store_alone(filled_store):
    store, root = filled_store
    first = build_reports(store, root / "reports_a")
    shutil.rmtree(root / "results" / "runs")  # predictions, logs, checkpoints: all gone
    second = build_reports(store, root / "reports_b")
    names = sorted(p.relative_to(root / "reports_a") for p in first)
    assert names == sorted(p.relative_to(root / "reports_b") for p in second)
    for ext in ("md", "tex", "csv"):
        a = (root / "reports_a" / "tiny" / f"ablation.{ext}").read_text()
        assert a == (root / "reports_b" / "tiny" / f"ablation.{ext}").read_text()
    for fig in FIGURES:
        path = root / "reports_b" / "tiny" / "figures" / f"{fig}.png"
        assert path.is_file() and path.stat().st_size > 5_000, fig
    index = (root / "reports_b" / "index.md").read_text()
    assert "tiny/ablation.md" in index and "qualitative.png" in index


def test_table_shows_mean_sd_best_delta_and_significance(filled_store):
    store, _ = filled_store
    results = load_preset(store, "tiny")
    table = ablation_table(store, results)
    assert list(table.rows) == ["s2d", "sft", "sft+mem"]  # reference first
    assert table.metrics[:2] == ["BLEU_4", "ROUGE_L"] and "ce/u0/14/micro/f1" in table.metrics
    rouge = {v: table.rows[v]["ROUGE_L"] for v in table.rows}
    assert all(c.n == 3 and c.sd > 0 for c in rouge.values())
    # the fake s2d drops fewest sentences: best, and sft is significantly worse
    assert rouge["s2d"].best and not rouge["sft"].best
    assert rouge["sft"].delta == pytest.approx(rouge["sft"].mean - rouge["s2d"].mean)
    assert rouge["sft"].delta < 0
    assert rouge["sft"].significant and rouge["sft"].seeds_significant.endswith("/3")
    assert rouge["s2d"].p_value is None  # no test against itself
    ce = table.rows["sft"]["ce/u0/14/micro/f1"]
    assert ce.p_value is not None  # recomputed from stored CE labels
    md = to_markdown(table)
    assert "**" in md and "†" in md and "Protocol signature: `fake-protocol|v1`" in md
    assert "| `sft` |" in md and "Difference vs `s2d`" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert {r["variant"] for r in rows} == set(VARIANTS)
    sft = next(r for r in rows if r["variant"] == "sft" and r["metric"] == "ROUGE_L")
    assert float(sft["delta_vs_s2d"]) < 0 and sft["significant"] == "1" and sft["n_seeds"] == "3"
    assert sft["steps"] == "6"


def test_holm_adjustment_is_monotone_and_capped():
    adjusted = _holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert _holm({"x": 0.8, "y": 0.9}) == pytest.approx({"x": 1.0, "y": 1.0})


@pytest.mark.slow
def test_sweep_history_and_importance_come_from_the_study_in_the_same_store(tmp_path):
    from s2d_align.harness.space import load_space
    from s2d_align.harness.store import storage_url
    from s2d_align.harness.sweep import SweepJob, run_sweep

    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    space = tmp_path / "toy.yaml"
    space.write_text(
        "name: toy\nobjective: {metric: ROUGE_L}\nparams:\n"
        "  lr: {key: train.lr, type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  slots: {key: model.memory.slots, type: int, low: 4, high: 32}\n"
    )
    url = storage_url(None, tmp_path / "results")
    job = SweepJob(str(preset), load_space(space), url, "toy-study", str(tmp_path / "results"),
                   run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer())  # fmt: skip
    run_sweep(job, trials=4, workers=1, progress=False)
    written = build_reports(Store(url), tmp_path / "rep")
    base = tmp_path / "rep" / "sweeps" / "toy-study"
    assert {base / "trials.csv", base / "history.png", base / "importance.png"} <= set(written)
    trials = (base / "trials.csv").read_text().splitlines()
    assert len(trials) == 5 and "param:lr" in trials[0] and "run_id" in trials[0]
    assert not (tmp_path / "rep" / "tiny").exists()  # sweep runs never enter the ablation table
