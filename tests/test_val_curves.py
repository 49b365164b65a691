"""Val metrics scored during training (``train.eval_every``) are kept per step in the store and
drawn by the report; a resumed run replaces a step's scores; older stores still report."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.harness.plan import plan_grid
from s2d_align.harness.reports import build_reports
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

VARIANTS = ["sft", "s2d"]
NOT_DRAWN = "Validation metric vs step: not drawn"


class Seen:
    """Hooks that keep what the runner passed on (what pruning and trackers see)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}

    def intermediate(self, step, metrics) -> None:
        self.steps[step] = dict(metrics)


def _curve_by_step(store: Store, run_id: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for row in store.val_curve(run_id):
        out.setdefault(row["step"], {})[row["metric"]] = row["value"]
    return out


def _preset(tmp_path: Path, eval_every: int) -> Path:
    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"name: tiny\ntrain: {{total_steps: 6, eval_every: {eval_every}}}\n")
    return preset


@pytest.fixture(scope="module")
def scored_grid(tmp_path_factory) -> tuple[Path, Store, list[str]]:
    """A fake grid (sft, s2d x seeds 0, 1) that scored val during training."""
    root = tmp_path_factory.mktemp("val_curves")
    store = Store.open(None, root / "results")
    runner = Runner(store, root / "results", run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    specs = plan_grid(_preset(root, 2), load_variants(VARIANTS), [0, 1])
    assert runner.run_grid(specs).ok
    return root, store, [s.run_id for s in specs]


def test_each_scored_step_is_stored_as_the_runner_passed_it_on(tmp_path):
    store = Store.open(None, tmp_path / "results")
    runner = Runner(store, tmp_path / "results", run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    (spec,) = plan_grid(_preset(tmp_path, 2), load_variants(["s2d"]), [0])
    seen = Seen()
    runner.run_one(spec, hooks=seen)
    assert len(seen.steps) == len(spec.config.stages) > 1  # the fake scores val at stage ends
    assert _curve_by_step(store, spec.run_id) == seen.steps
    rows = store.val_curve(spec.run_id)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def test_a_rerun_replaces_the_scores_of_a_step_it_scores_again(tmp_path, monkeypatch):
    store = Store.open(None, tmp_path / "results")
    (spec,) = plan_grid(_preset(tmp_path, 2), load_variants(["s2d"]), [0])

    def crash_after_training(*args, **kwargs):
        fakes.fake_run_fn(*args, **kwargs)
        raise RuntimeError("killed after training")

    monkeypatch.setenv(fakes.WORSEN_ENV, "0.3")  # the first attempt predicts worse
    first = Seen()
    crashing = Runner(store, tmp_path / "results", run_fn=crash_after_training,
                      scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="killed after training"):
        crashing.run_one(spec, hooks=first)
    assert _curve_by_step(store, spec.run_id) == first.steps

    monkeypatch.delenv(fakes.WORSEN_ENV)
    second = Seen()
    Runner(store, tmp_path / "results", run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(),
           progress=False).run_one(spec, hooks=second)  # fmt: skip
    assert second.steps.keys() == first.steps.keys() and second.steps != first.steps
    rows = store.val_curve(spec.run_id)
    keys = [(r["step"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)) == sum(len(m) for m in second.steps.values())
    assert _curve_by_step(store, spec.run_id) == second.steps


def test_recording_a_step_again_keeps_the_other_steps(tmp_path):
    run_id = fakes.small_results_store(tmp_path)[1][0]
    store = Store.open(None, tmp_path / "results")
    store.record_val_scores(run_id, 2, {"BLEU_4": 0.1, "ROUGE_L": 0.2})
    store.record_val_scores(run_id, 4, {"BLEU_4": 0.3, "ROUGE_L": 0.4})
    store.record_val_scores(run_id, 2, {"BLEU_4": 0.5})
    assert _curve_by_step(store, run_id) == {2: {"BLEU_4": 0.5}, 4: {"BLEU_4": 0.3, "ROUGE_L": 0.4}}
    store.delete_run(run_id)
    assert store.val_curve(run_id) == []


@pytest.mark.slow
def test_the_report_draws_val_curves_for_an_ablation_that_scored_val(scored_grid):
    root, store, run_ids = scored_grid
    assert all(store.val_curve(r) for r in run_ids)
    written = build_reports(store, root / "reports")
    figure = root / "reports" / "tiny" / "figures" / "val_curves.png"
    assert figure in written and figure.with_suffix(".pdf") in written
    assert figure.stat().st_size > 5_000
    index = (root / "reports" / "index.md").read_text()
    assert "tiny/figures/val_curves.png" in index
    assert NOT_DRAWN not in index


@pytest.mark.slow
def test_a_store_from_before_val_scores_opens_read_only_and_says_why_no_curves(scored_grid):
    root, _, run_ids = scored_grid
    old = root / "old"
    old.mkdir()
    db = old / "s2d.db"
    with sqlite3.connect(root / "results" / "s2d.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE s2d_val_scores")  # what a store written before them looks like
    store = Store.open_readonly(None, old)
    assert store.val_curve(run_ids[0]) == []
    written = build_reports(store, root / "reports_old")
    store.close()
    assert not any(p.name.startswith("val_curves") for p in written)
    index = (root / "reports_old" / "index.md").read_text()
    assert f"{NOT_DRAWN}, runs of this preset scored val during training" in index
    with sqlite3.connect(db) as con:  # reading created nothing
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "s2d_val_scores" not in tables and "s2d_runs" in tables


@pytest.mark.slow
def test_without_eval_every_the_index_says_no_val_was_scored_during_training(tmp_path):
    results, run_ids = fakes.small_results_store(tmp_path)  # train.eval_every = 0 (default)
    store = Store.open_readonly(None, results)
    assert store.val_curve(run_ids[0]) == []
    written = build_reports(store, tmp_path / "reports")
    store.close()
    assert not any(p.name.startswith("val_curves") for p in written)
    index = (tmp_path / "reports" / "index.md").read_text()
    assert f"{NOT_DRAWN}, no run of this preset scored val during training" in index
