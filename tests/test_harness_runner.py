"""Runner and store with a fake model: idempotency, resume, the test-set lock, provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.errors import ConfigError
from s2d_align.harness.grid import auto_jobs
from s2d_align.harness.plan import DEFAULT_SECONDS_PER_STEP, estimate, plan_grid
from s2d_align.harness.runner import Runner, TestSetLockError
from s2d_align.harness.spec import RunSpec
from s2d_align.harness.store import Store, storage_url
from s2d_align.harness.variants import load_variant, load_variants


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 10}\n")
    return path


def make_runner(tmp_path: Path, scorer=None) -> Runner:
    store = Store.open(None, tmp_path / "results")
    return Runner(
        store,
        tmp_path / "results",
        run_fn=fakes.fake_run_fn,
        scorer=scorer or fakes.FakeScorer(tmp_path / "score_calls.jsonl"),
        progress=False,
    )


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "results" / "fake_calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def score_calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "score_calls.jsonl"
    return [json.loads(x)["split"] for x in path.read_text().splitlines()] if path.exists() else []


def test_grid_records_runs_metrics_predictions_and_provenance(tmp_path, preset):
    runner = make_runner(tmp_path)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    report = runner.run_grid(specs)
    assert report.ok and len(report.executed) == 4 and not report.skipped
    store = runner.store
    for spec in specs:
        run = store.get_run(spec.run_id)
        assert run.status == "complete"
        assert run.preset == "tiny" and run.variant == spec.variant.name and run.seed == spec.seed
        assert run.config["train"]["total_steps"] == 10 and run.config_hash == spec.config_hash
        assert run.steps == 10 and run.tokens_seen > 0 and run.finished_at is not None
        assert run.git_sha and "python" in run.environment and "torch" in run.environment
        for split in ("val", "test"):
            assert store.metrics(run.id, split)["ROUGE_L"].ci_low is not None
            jsonl = Path(run.run_dir) / "predictions" / f"{split}.jsonl"
            assert (
                len(jsonl.read_text().splitlines()) == len(store.predictions(run.id, split)) == 24
            )
        assert store.train_log(run.id)[-1]["step"] == 10
    # the test-set lock's log: one test evaluation per run, none for val
    assert sorted(t.run_id for t in store.test_evaluations()) == sorted(s.run_id for s in specs)


def test_finished_grid_is_skipped_entirely(tmp_path, preset):
    runner = make_runner(tmp_path)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0])
    runner.run_grid(specs)
    before = len(calls(tmp_path))
    again = runner.run_grid(specs)
    assert again.executed == [] and sorted(again.skipped) == sorted(s.run_id for s in specs)
    assert len(calls(tmp_path)) == before == 2
    assert len(runner.store.test_evaluations()) == 2


def test_interrupted_grid_resumes_without_recomputing_finished_runs(tmp_path, preset, monkeypatch):
    specs = plan_grid(preset, load_variants(["sft", "sft+mem", "s2d"]), [0, 1])
    victim = specs[3].run_id
    monkeypatch.setenv(fakes.INTERRUPT_ENV, victim)
    runner = make_runner(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(specs)
    states = [runner.state(s) for s in specs]
    assert states == ["complete"] * 3 + ["partial", "pending", "pending"]

    resumed = make_runner(tmp_path).run_grid(specs)  # a fresh process would do the same
    assert resumed.skipped == [s.run_id for s in specs[:3]]
    assert resumed.executed == [s.run_id for s in specs[3:]]
    per_run = {}
    for c in calls(tmp_path):
        per_run[c["run_id"]] = per_run.get(c["run_id"], 0) + 1
    assert per_run == {s.run_id: (2 if s.run_id == victim else 1) for s in specs}


class FailOnceOnTest(fakes.FakeScorer):
    def __init__(self, log_path, flag: Path):
        super().__init__(log_path)
        self.flag = flag

    def score(self, cfg, split, predictions, refs):
        if split == "test" and not self.flag.exists():
            self.flag.write_text("x")
            raise RuntimeError("scorer crashed")
        return super().score(cfg, split, predictions, refs)


def test_a_scored_split_is_never_rescored_and_test_is_scored_once(tmp_path, preset):
    scorer = FailOnceOnTest(tmp_path / "score_calls.jsonl", tmp_path / "flag")
    runner = make_runner(tmp_path, scorer)
    spec = plan_grid(preset, [load_variant("s2d")], [0])[0]
    report = runner.run_grid([spec])
    assert spec.run_id in report.failed and "scorer crashed" in report.failed[spec.run_id]
    assert runner.store.get_run(spec.run_id).status == "failed"
    assert runner.state(spec) == "partial"
    runner.run_grid([spec])
    assert runner.state(spec) == "complete"
    assert [c["splits"] for c in calls(tmp_path)] == [["val", "test"], ["test"]]
    assert score_calls(tmp_path) == ["val", "test"]  # val scored once, test once (successfully)
    assert len(runner.store.test_evaluations(spec.run_id)) == 1
    with pytest.raises(TestSetLockError, match="already scored once"):
        runner._score_split(spec, tmp_path, "test", [])


def test_sweep_runs_may_not_touch_the_test_split(tmp_path, preset):
    runner = make_runner(tmp_path)
    variant = load_variant("s2d")
    spec = RunSpec(
        "tiny", variant, 0, variant.config(preset, 0), purpose="sweep", splits=("val", "test")
    )
    with pytest.raises(TestSetLockError, match="val only"):
        runner.run_one(spec)
    assert calls(tmp_path) == [] and runner.store.test_evaluations() == []


def test_a_changed_config_is_a_new_run(tmp_path, preset):
    runner = make_runner(tmp_path)
    variant = load_variant("sft")
    a = plan_grid(preset, [variant], [0])[0]
    b = plan_grid(preset, [variant], [0], overrides=["train.lr=0.0001"])[0]
    assert a.run_id != b.run_id and a.run_dir(tmp_path) != b.run_dir(tmp_path)
    runner.run_grid([a])
    assert runner.state(a) == "complete" and runner.state(b) == "pending"


def test_dry_run_estimate_uses_store_timings_once_there_are_some(tmp_path, preset):
    runner = make_runner(tmp_path)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0])
    rows, source = estimate(runner.store, specs)
    assert "constant" in source
    assert all(r["state"] == "pending" and r["steps"] == 10 for r in rows)
    assert rows[0]["est_s"] >= 10 * DEFAULT_SECONDS_PER_STEP
    runner.run_grid(specs[:1])
    rows, source = estimate(runner.store, specs)
    assert "previous tiny runs" in source
    assert rows[0]["state"] == "complete" and rows[0]["est_s"] == 0
    assert 0 < rows[1]["est_s"] < 10 * DEFAULT_SECONDS_PER_STEP  # fakes are fast


def test_storage_must_be_a_url(tmp_path):
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path / 's2d.db'}"
    with pytest.raises(ConfigError, match="not a database URL"):
        storage_url("results/s2d.db", tmp_path)


def _store_contents(runner: Runner, specs) -> dict:
    out = {}
    for spec in specs:
        run = runner.store.get_run(spec.run_id)
        out[spec.run_id] = {"status": run.status, "steps": run.steps, "tokens": run.tokens_seen}
        for split in ("val", "test"):
            metrics = runner.store.metrics(spec.run_id, split)
            out[spec.run_id][split] = (
                {k: (m.value, m.ci_low, m.ci_high) for k, m in metrics.items()},
                runner.store.predictions(spec.run_id, split),
            )
    return out


def test_parallel_grid_records_what_the_sequential_grid_records(tmp_path, preset):
    specs = plan_grid(preset, load_variants(["sft", "sft+mem", "s2d"]), [0, 1])
    seq = make_runner(tmp_path / "seq")
    assert seq.run_grid(specs).ok
    par = make_runner(tmp_path / "par")
    report = par.run_grid(specs, jobs=2)
    assert report.ok and sorted(report.executed) == sorted(s.run_id for s in specs)
    pids = {c["pid"] for c in calls(tmp_path / "par")}
    assert pids and os.getpid() not in pids and len(pids) <= 2  # ran in worker processes only
    assert _store_contents(par, specs) == _store_contents(seq, specs)
    assert sorted(t.run_id for t in par.store.test_evaluations()) == sorted(s.run_id for s in specs)
    again = par.run_grid(specs, jobs=2)  # idempotent in parallel too: nothing is redone
    assert again.executed == [] and len(again.skipped) == len(specs)
    assert len(calls(tmp_path / "par")) == len(specs)


def test_a_failing_parallel_run_is_recorded_and_the_others_finish(tmp_path, preset, monkeypatch):
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    victim = specs[1].run_id
    monkeypatch.setenv(fakes.FAIL_ENV, victim)
    runner = make_runner(tmp_path)
    report = runner.run_grid(specs, jobs=2)
    assert list(report.failed) == [victim] and "fake training failed" in report.failed[victim]
    assert sorted(report.executed) == sorted(s.run_id for s in specs if s.run_id != victim)
    assert runner.store.get_run(victim).status == "failed"
    assert [runner.state(s) for s in specs].count("complete") == 3


def test_jobs_must_be_positive(tmp_path, preset):
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        make_runner(tmp_path).run_grid(plan_grid(preset, [load_variant("sft")], [0]), jobs=0)


def test_auto_jobs_is_one_per_gpu_else_cores_over_threads(preset, monkeypatch):
    import torch

    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1, 2])  # 6 runs
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert auto_jobs(specs) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert auto_jobs(specs) == 2 and auto_jobs(specs[:1]) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_jobs(specs) == 4  # 8 cores / 1 thread, capped at 4
    assert auto_jobs(specs[:3]) == 3  # never more than there are runs
    assert auto_jobs(specs, limit=16) == 6
    two_threads = plan_grid(preset, load_variants(["sft"]), [0, 1, 2, 3, 4],
                            overrides=["train.num_threads=2"])  # fmt: skip
    assert auto_jobs(two_threads) == 4 and auto_jobs(two_threads, limit=16) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert auto_jobs(specs) == 1


def test_parallel_workers_are_pinned_to_one_visible_gpu_each(tmp_path, preset, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # in this process only:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # the fake workers never use CUDA
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    runner = make_runner(tmp_path)
    assert runner.run_grid(specs, jobs=2).ok
    by_pid: dict[int, set] = {}
    for call in calls(tmp_path):
        by_pid.setdefault(call["pid"], set()).add(call["gpus"])
    assert all(len(gpus) == 1 for gpus in by_pid.values())  # a worker keeps its one device
    pinned = [next(iter(g)) for g in by_pid.values()]
    assert set(pinned) <= {"5", "7"} and len(set(pinned)) == len(pinned)  # distinct devices


def test_each_run_folder_records_where_every_config_value_came_from(tmp_path, preset):
    runner = make_runner(tmp_path)
    specs = plan_grid(preset, load_variants(["s2d-no-align"]), [3], overrides=["train.lr=0.01"])
    runner.run_grid(specs)
    sources = json.loads((specs[0].run_dir(runner.results_dir) / "config_sources.json").read_text())
    assert sources["train.total_steps"] == "preset"  # tiny.yaml sets it
    assert sources["train.lr"] == "override" and sources["seed"] == "override"
    assert sources["stages.1.lambda_align"] == "variant:s2d-no-align"
    assert sources["model.memory.enabled"].startswith("variant:")  # s2d, which it extends
    assert sources["train.batch_size"] == "default"
    assert set(sources) >= {"model.trainable.vision", "stages.2.lambda_kp"}


def test_plan_grid_names_the_variant_of_an_unknown_signal(tmp_path, preset):
    # Signal names are strings checked against the registry: a typo in a variant's stage
    # context must fail when the grid is planned, before anything trains, naming the variant.
    path = tmp_path / "typo.yaml"
    path.write_text(
        "name: typo\nversion: 1\nextends: s2d\ndescription: a context typo\n"
        "overrides:\n  stages:\n    reference: {context: [referenc]}\n"
    )
    with pytest.raises(ConfigError, match=r"variant 'typo'.*referenc"):
        plan_grid(preset, [load_variant(path)], [0])
