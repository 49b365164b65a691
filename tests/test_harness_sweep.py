"""Sweeps: the objective (FixedTrial), several workers on one SQLite file, pruning, export,
and the test-set lock (a sweep never generates nor scores the test split)."""

from __future__ import annotations

import json
from pathlib import Path

import harness_fakes as fakes
import optuna
import pytest

from s2d_align.config import config_hash
from s2d_align.errors import ConfigError
from s2d_align.harness.runner import Runner
from s2d_align.harness.space import load_space
from s2d_align.harness.store import Store, storage_url
from s2d_align.harness.sweep import (
    SweepJob,
    SweepObjective,
    best_variant,
    export_variant,
    run_sweep,
)
from s2d_align.harness.variants import load_variant

SPACE = """\
name: toy
version: 1
base_variant: s2d
seed: 0
objective: {metric: ROUGE_L, direction: maximize}
pruner: {n_startup_trials: 2, n_warmup_steps: 0}
params:
  lr: {key: train.lr, type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  align: {key: stages.1.lambda_align, type: float, low: 0.01, high: 1.0}
  slots: {key: model.memory.slots, type: categorical, choices: [8, 16]}
"""


@pytest.fixture
def setup(tmp_path: Path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 6}\n")
    space_path = tmp_path / "toy.yaml"
    space_path.write_text(SPACE)
    return preset, load_space(space_path), tmp_path / "results"


def read_calls(results: Path) -> list[dict]:
    path = results / "fake_calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_objective_with_a_fixed_trial_trains_on_val_only(setup):
    preset, space, results = setup
    store = Store.open(None, results)
    runner = Runner(
        store, results, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(), progress=False
    )
    objective = SweepObjective(runner, space, preset)
    trial = optuna.trial.FixedTrial({"lr": 0.002, "align": 0.5, "slots": 16})
    value = objective(trial)

    run_id = trial.user_attrs["run_id"]
    run = store.get_run(run_id)
    assert value == pytest.approx(store.metrics(run_id, "val")["ROUGE_L"].value)
    assert run.purpose == "sweep" and run.splits == ["val"] and run.status == "complete"
    assert run.config["train"]["lr"] == 0.002
    assert run.config["stages"][1]["lambda_align"] == 0.5
    assert run.config["model"]["memory"]["slots"] == 16
    assert [c["splits"] for c in read_calls(results)] == [["val"]]
    assert store.test_evaluations() == [] and store.predictions(run_id, "test") == {}
    # the same parameters again: the finished run is reused, nothing retrains
    assert objective(optuna.trial.FixedTrial({"lr": 0.002, "align": 0.5, "slots": 16})) == value
    assert len(read_calls(results)) == 1


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_lose_and_duplicate_no_trial(setup):
    preset, space, results = setup
    url = storage_url(None, results)
    job = SweepJob(str(preset), space, url, "toy-study", str(results),
                   run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer())  # fmt: skip
    study = run_sweep(job, trials=7, workers=2, progress=False)

    trials = optuna.load_study(study_name="toy-study", storage=url).get_trials()
    assert sorted(t.number for t in trials) == list(range(7))
    assert all(
        t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in trials
    )
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(set(run_ids)) == 7
    calls = read_calls(results)
    assert sorted(c["run_id"] for c in calls) == sorted(run_ids)  # each trial trained exactly once
    assert len({c["pid"] for c in calls}) == 2  # both workers did work
    store = Store(url)
    assert {r.id for r in store.runs(purpose="sweep")} == set(run_ids)
    assert all(c["splits"] == ["val"] for c in calls)
    assert store.test_evaluations() == []  # the test-set lock held in every worker
    # a second invocation adds to the same study (load_if_exists), numbering continues
    run_sweep(job, trials=1, workers=1, progress=False)
    assert len(study.get_trials()) == 8


def pruning_run_fn(spec, run_dir, *, splits, hooks, progress, cache_root=None):
    """Reports the learning rate as the intermediate score: high-lr trials should be pruned."""
    for step in (1, 2, 3):
        hooks.intermediate(step, {"ROUGE_L": -spec.config.train.lr * step})
    return fakes.fake_run_fn(
        spec, run_dir, splits=splits, hooks=fakes_no_hooks(), progress=progress
    )


def fakes_no_hooks():
    from s2d_align.harness.spec import NoHooks

    return NoHooks()


def test_median_pruning_stops_bad_trials_and_records_them(setup):
    preset, space, results = setup
    url = storage_url(None, results)
    job = SweepJob(str(preset), space, url, "prune", str(results), run_fn=pruning_run_fn,
                   scorer=fakes.FakeScorer())  # fmt: skip
    study = run_sweep(job, trials=5, workers=1, progress=False)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was pruned although intermediate scores differ"
    store = Store(url)
    for t in pruned:
        run = store.get_run(t.user_attrs["run_id"])
        assert run.status == "pruned" and store.metrics(run.id, "val") == {}


def test_best_parameters_export_as_a_loadable_variant_with_the_same_config(setup, tmp_path):
    preset, space, results = setup
    url = storage_url(None, results)
    job = SweepJob(str(preset), space, url, "export", str(results), run_fn=fakes.fake_run_fn,
                   scorer=fakes.FakeScorer())  # fmt: skip
    study = run_sweep(job, trials=3, workers=1, progress=False)
    path = export_variant(best_variant(study, space), tmp_path / "exported")
    variant = load_variant(path)
    assert variant.name == "s2d-toy-best" and "export" in variant.description
    best_run = Store(url).get_run(study.best_trial.user_attrs["run_id"])
    assert config_hash(variant.config(preset, space.seed)) == best_run.config_hash


class RecordingTrial:
    def __init__(self, prune_after: int | None = None):
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_after is not None and len(self.reports) >= self.prune_after


def test_pruning_hooks_prefer_the_val_metric_and_sign_a_training_loss():
    from s2d_align.harness.sweep import PruningHooks

    trial = RecordingTrial()
    hooks = PruningHooks(trial, "ce/u0/14/micro/f1", "maximize")
    hooks.intermediate(10, {"ce/u0/14/micro/f1": 0.4, "train_loss": 2.0})
    hooks.intermediate(20, {"train_loss": 1.5})  # lower loss must look better when maximizing
    hooks.intermediate(30, {"something_else": 1.0})  # nothing to report
    assert trial.reports == [(0.4, 10), (-1.5, 20)]
    minimizing = RecordingTrial()
    PruningHooks(minimizing, "loss", "minimize").intermediate(5, {"train_loss": 1.5})
    assert minimizing.reports == [(1.5, 5)]
    with pytest.raises(optuna.TrialPruned):
        PruningHooks(RecordingTrial(prune_after=1), "m").intermediate(1, {"m": 0.1})


def test_real_pipeline_reports_each_stage_end_once_with_its_mean_loss():
    from types import SimpleNamespace

    from s2d_align.harness.real_run import _IntermediateReporter

    cfg = load_variant("s2d").config("smoke", 0, ["train.total_steps=10"])  # stages 4/3/3 steps
    seen = []
    hooks = SimpleNamespace(intermediate=lambda step, m: seen.append((step, m["train_loss"])))
    reporter = _IntermediateReporter(cfg, hooks)
    step = 0
    for stage_index, n in enumerate([4, 3, 3]):
        for k in range(1, n + 1):
            step += 1
            reporter(
                SimpleNamespace(
                    stage_index=stage_index, stage_step=k, global_step=step, loss=float(stage_index)
                )
            )
    assert seen == [(4, 0.0), (7, 1.0), (10, 2.0)]


def test_with_eval_every_the_pipeline_hands_over_val_predictions_and_no_training_loss():
    from types import SimpleNamespace

    from s2d_align.harness.real_run import _IntermediateReporter

    cfg = load_variant("s2d").config("smoke", 0, ["train.total_steps=10", "train.eval_every=5"])
    seen: list = []
    hooks = SimpleNamespace(
        intermediate=lambda step, m: seen.append(("metrics", step)),
        intermediate_predictions=lambda step, rows: seen.append(("rows", step, len(rows))),
    )
    reporter = _IntermediateReporter(cfg, hooks)
    for step in range(1, 11):
        rows = [{"id": "v1", "prediction": "x"}] if step % 5 == 0 else None
        stage = 0 if step <= 4 else 1 if step <= 7 else 2
        reporter(SimpleNamespace(stage_index=stage, stage_step=1, global_step=step, loss=1.0,
                                 val_predictions=rows))  # fmt: skip
    assert seen == [("rows", 5, 1), ("rows", 10, 1)]


def test_space_eval_every_makes_trials_prune_on_scored_val_predictions(setup, tmp_path):
    preset, _, results = setup
    path = tmp_path / "toy.yaml"
    path.write_text(SPACE + "eval_every: 2\n")
    space = load_space(path)
    assert space.eval_every == 2
    runner = Runner(Store.open(None, results), results, run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(tmp_path / "scores.jsonl"), progress=False)  # fmt: skip
    trial = RecordingTrial()
    objective = SweepObjective(runner, space, preset)
    spec = objective.spec_for({"lr": 1e-3, "align": 0.1, "slots": 8})
    assert spec.config.train.eval_every == 2
    from s2d_align.harness.sweep import PruningHooks

    runner.run_one(spec, hooks=PruningHooks(trial, "ROUGE_L", "maximize"))
    # one report per stage end of the fake, each the FakeScorer's val ROUGE_L of those rows
    assert len(trial.reports) == 3 and all(0 < value <= 1 for value, _ in trial.reports)
    final = runner.store.metrics(spec.run_id, "val")["ROUGE_L"].value
    assert trial.reports[-1][0] == pytest.approx(final)  # same rows, same scorer
    splits = [json.loads(x)["split"] for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert splits == ["val"] * 4  # three intermediate scorings and the final one; never test
    assert runner.store.test_evaluations() == [] and len(runner.store.evaluations()) == 1


def test_bad_eval_every_in_a_space_is_an_error(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(SPACE + "eval_every: -3\n")
    with pytest.raises(ConfigError, match="eval_every"):
        load_space(path)


@pytest.mark.slow
@pytest.mark.java
def test_real_pipeline_val_scores_mid_run_reach_the_hooks(tmp_path):
    """train.eval_every on the real pipeline: val predictions every N steps, scored by the
    runner's CorpusScorer with the final protocol; test is never generated."""
    from s2d_align.harness.spec import RunSpec

    overrides = ["train.total_steps=10", "train.eval_every=5", "model.llm.pretrain_steps=10",
                 "inference.max_new_tokens=24", "eval.bootstrap=50"]  # fmt: skip
    variant = load_variant("s2d")
    spec = RunSpec("smoke", variant, 0, variant.config("smoke", 0, overrides), purpose="sweep",
                   splits=("val",), overrides=tuple(overrides))  # fmt: skip
    results = tmp_path / "results"
    runner = Runner(Store.open(None, results), results, progress=False)
    seen: list[tuple[int, dict]] = []

    class Hooks:
        def intermediate(self, step, metrics):
            seen.append((step, dict(metrics)))

    try:
        runner.run_one(spec, hooks=Hooks())
    finally:
        runner.close()
    assert [step for step, _ in seen] == [5, 10]
    for _, metrics in seen:
        assert "train_loss" not in metrics
        assert 0 <= metrics["ce/u0/14/micro/f1"] <= 1 and 0 <= metrics["BLEU_4"] <= 1
    final = runner.store.metrics(spec.run_id, "val")
    assert seen[-1][1]["BLEU_1"] == pytest.approx(final["BLEU_1"].value)  # same model, same rows
    assert runner.store.test_evaluations() == []
    assert not (spec.run_dir(results) / "predictions" / "test.jsonl").exists()


def test_a_real_sweep_prepares_the_base_configs_caches_where_its_runners_look(setup, monkeypatch):
    from s2d_align.harness.sweep import prepare_caches
    from s2d_align.training import cache as shared_cache

    preset, space, results = setup
    seen = []
    monkeypatch.setattr(shared_cache, "prepare_shared",
                        lambda cfg, cache, progress=False: seen.append((cfg, cache)))  # fmt: skip
    job = SweepJob(preset=str(preset), space=space, storage_url=storage_url(None, results),
                   study_name="t", results_dir=str(results), overrides=("train.lr=0.002",))  # fmt: skip
    prepare_caches(job)
    ((cfg, cache),) = seen
    assert cache == Path(results) / "cache"  # Runner's default cache_root for results_dir
    assert Runner(Store.open(None, results), results, run_fn=fakes.fake_run_fn,
                  scorer=fakes.FakeScorer(), progress=False).cache_root == cache  # fmt: skip
    base = space.base_variant.config(str(preset), space.seed, ("train.lr=0.002",))
    assert cfg == base and cfg.train.lr == 0.002  # the base variant with the job's overrides
