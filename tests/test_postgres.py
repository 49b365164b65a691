"""Shared stores on a real PostgreSQL server: the results store, run claims raced by separate
processes, four ``ablate`` workers on one store (SQLite and PostgreSQL), and a two-worker Optuna
sweep of the smoke preset that loses and duplicates no trial.

The server comes from ``pg_fixtures`` (Debian's binaries, a throwaway cluster); without it the
PostgreSQL tests skip and say why, and the SQLite cases still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import harness_fakes as fakes
import optuna
import pytest
from pg_fixtures import postgres_url

from s2d_align.errors import ConfigError
from s2d_align.harness.ownership import Owner
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

TESTS = Path(__file__).resolve().parent
PROCESS_TIMEOUT_S = 180
#: The ``s2d-align`` console script, run by this interpreter.
S2D_ALIGN = [sys.executable, "-c", "from s2d_align.cli.main import entrypoint; entrypoint()"]


@pytest.fixture
def pg_url(request) -> str:
    return postgres_url(request)


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    paths = [str(tmp_path), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "HF_HUB_OFFLINE": "1", **extra}  # fmt: skip


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _fake_grid(store: Store, results: Path, preset: Path) -> list[str]:
    runner = Runner(store, results, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(),
                    progress=False, references=False)  # fmt: skip
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    assert runner.run_grid(specs).ok
    return [s.run_id for s in specs]


def _contents(store: Store, run_ids: list[str]) -> dict:
    """What reports and exports read from a store, without paths and timings."""
    rows = sorted(store.metric_rows(), key=lambda r: (r["run_id"], r["split"], r["metric"]))
    per_run = {}
    for rid in run_ids:
        run = store.get_run(rid)
        per_run[rid] = {
            "status": run.status, "config": run.config, "steps": run.steps,
            "tokens_seen": run.tokens_seen, "splits": run.splits,
            "train_log": [{k: v for k, v in r.items() if "wall" not in k and "per_s" not in k}
                          for r in store.train_log(rid)],
            "predictions": {s: store.predictions(rid, s) for s in ("val", "test")},
            "rouge_per_sample": {s: store.sample_scores(rid, s, "ROUGE_L") for s in ("val", "test")},
        }  # fmt: skip
    tests = sorted(t.run_id for t in store.test_evaluations())
    return {"metrics": rows, "runs": per_run, "test_evaluations": tests}


# -- the results store ------------------------------------------------------------------------
def test_a_grid_stored_in_postgresql_reads_back_as_it_does_from_sqlite(tmp_path, preset, pg_url):
    on_sqlite = Store.open(None, tmp_path / "sqlite")
    on_postgres = Store.open(pg_url, tmp_path / "pg")
    try:
        run_ids = _fake_grid(on_sqlite, tmp_path / "sqlite", preset)
        assert _fake_grid(on_postgres, tmp_path / "pg", preset) == run_ids
        expected = _contents(on_sqlite, run_ids)
        assert expected["metrics"] and expected["test_evaluations"] == sorted(run_ids)
        assert _contents(on_postgres, run_ids) == expected
    finally:
        on_sqlite.close()
        on_postgres.close()
    # a reader in another connection, opened read-only, sees every run finished
    reader = Store.open_readonly(pg_url, tmp_path / "unused")
    try:
        assert {r.id: r.status for r in reader.runs()} == dict.fromkeys(run_ids, "complete")
    finally:
        reader.close()
    assert not (tmp_path / "unused").exists()


def test_an_empty_postgresql_database_is_not_a_results_store_for_readers(tmp_path, pg_url):
    with pytest.raises(ConfigError, match=r"not an s2d-align results store \(no s2d_runs table\)"):
        Store.open_readonly(pg_url, tmp_path)


# -- run claims across processes --------------------------------------------------------------
CLAIMER = """
import json, sys, time
from pathlib import Path
from s2d_align.harness.ownership import Owner
from s2d_align.harness.store import Store

url, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = Store(url)
owner = Owner.current()
while not go.exists():  # start the race together
    time.sleep(0.01)
won = [f"run{i:03d}" for i in range(n)
       if store.claim_run(f"run{i:03d}", owner, timeout_s=3600) is None]
store.close()
print(json.dumps({"owner": owner.id, "won": won}))
"""


def test_two_processes_racing_for_claims_each_win_a_disjoint_share(tmp_path, pg_url):
    n_runs = 40
    Store(pg_url).close()  # the tables exist before the race, as ablate and sweep ensure
    script, go = tmp_path / "claimer.py", tmp_path / "go"
    script.write_text(CLAIMER)
    procs = [_start([str(script), pg_url, str(go), str(n_runs)], _env(tmp_path)) for _ in range(2)]
    time.sleep(1.0)  # both connected and waiting
    go.touch()
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT_S)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    first, second = (set(r["won"]) for r in results)
    assert not first & second  # never two owners of one run
    assert first | second == {f"run{i:03d}" for i in range(n_runs)}  # every run claimed
    store = Store(pg_url)
    try:
        for result in results:
            assert all(store.claim(rid).owner == result["owner"] for rid in result["won"])
        # both claimers have exited: a new process on this host takes every claim over
        me = Owner.current()
        assert all(store.claim_run(f"run{i:03d}", me, timeout_s=3600) is None
                   for i in range(n_runs))  # fmt: skip
        assert {store.claim(f"run{i:03d}").owner for i in range(n_runs)} == {me.id}
    finally:
        store.close()


# -- four ablate workers on one store ---------------------------------------------------------
# ``s2d-align ablate`` with a slowed fake model (so that the workers overlap) and no reports.
ABLATE = """
import functools, os, sys, time
import harness_fakes as fakes
import s2d_align.harness.reports as reports
import s2d_align.harness.runner as runner
from s2d_align.cli.main import main

def slow_run_fn(spec, run_dir, **kw):
    time.sleep(float(os.environ["SLOW_FAKE_S"]))
    return fakes.fake_run_fn(spec, run_dir, **kw)

if __name__ == "__main__":
    runner.Runner = functools.partial(runner.Runner, run_fn=slow_run_fn,
                                      scorer=fakes.FakeScorer())
    reports.build_reports = lambda store, out: []
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_ablate_workers_on_one_store_train_every_run_exactly_once(
    tmp_path, preset, backend, request
):
    out = tmp_path / "results"
    storage = ["--storage", request.getfixturevalue("pg_url")] if backend == "postgresql" else []
    script = tmp_path / "ablate.py"
    script.write_text(textwrap.dedent(ABLATE))
    args = ["ablate", "--preset", str(preset), "--variants", "sft,s2d", "--seeds", "0,1,2",
            "--results", str(out), *storage, "--reports", str(out / "reports"), "--jobs", "1",
            "--no-references", "--no-progress"]  # fmt: skip
    env = _env(tmp_path, SLOW_FAKE_S="1.0")
    procs = [_start([str(script), *args], env) for _ in range(4)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=PROCESS_TIMEOUT_S)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "IntegrityError" not in stderr, stderr
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1, 2])
    rows = [json.loads(x) for x in (out / "fake_calls.jsonl").read_text().splitlines()]
    calls = [r["run_id"] for r in rows]
    assert sorted(calls) == sorted(s.run_id for s in specs)  # each run trained by one worker
    assert len({r["pid"] for r in rows}) >= 2  # the workers did overlap
    store = Store.open(storage[1] if storage else None, out)
    try:
        assert {r.id: r.status for r in store.runs()} == {s.run_id: "complete" for s in specs}
        assert sorted(t.run_id for t in store.test_evaluations()) == sorted(calls)
        assert all(store.claim(s.run_id) is None for s in specs)  # every claim released
        for spec in specs:  # one uninterrupted training log per run (no interleaved steps)
            assert [r["step"] for r in store.train_log(spec.run_id)] == [1, 2, 3, 4]
    finally:
        store.close()


# -- a two-worker sweep of the smoke preset ---------------------------------------------------
SPACE = """\
name: pgtiny
version: 1
base_variant: s2d
seed: 0
objective: {metric: ce/u0/14/micro/f1, direction: maximize}
pruner: {n_startup_trials: 10, n_warmup_steps: 0}
eval_every: 0
params:
  lambda_align_ref: {key: stages.1.lambda_align, type: float, low: 0.01, high: 1.0, log: true}
"""
# The smoke preset cut down further: the test is about the shared storage, not the model.
TINY_SMOKE = ["train.total_steps=6", "model.vision.pretrain_steps=4",
              "model.llm.pretrain_steps=4", "data.synth.n_val=8",
              "inference.max_new_tokens=16", "eval.bootstrap=50"]  # fmt: skip


@pytest.mark.slow
def test_a_two_worker_smoke_sweep_on_postgresql_loses_and_duplicates_no_trial(tmp_path, pg_url):
    trials = 4
    space = tmp_path / "pgtiny.yaml"
    space.write_text(SPACE)
    out = tmp_path / "results"
    proc = subprocess.run(
        [*S2D_ALIGN, "sweep", "--preset", "smoke",
         "--space", str(space), "--trials", str(trials), "--jobs", "2", "--results", str(out),
         "--storage", pg_url, "--no-progress", *TINY_SMOKE],
        env=_env(tmp_path), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S * 2,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    storage = optuna.storages.RDBStorage(pg_url)
    try:
        found = optuna.load_study(study_name="smoke.pgtiny.v1", storage=storage).get_trials()
    finally:
        storage.engine.dispose()
    assert sorted(t.number for t in found) == list(range(trials))  # none lost, none twice
    assert {t.state for t in found} <= {optuna.trial.TrialState.COMPLETE,
                                       optuna.trial.TrialState.PRUNED}  # fmt: skip
    run_ids = [t.user_attrs["run_id"] for t in found]
    assert len(set(run_ids)) == trials
    store = Store.open_readonly(pg_url, out)
    try:
        sweep_runs = store.runs(purpose="sweep")
        assert sorted(r.id for r in sweep_runs) == sorted(run_ids)  # one record per trial
        for trial in found:
            run = store.require_run(trial.user_attrs["run_id"])
            assert run.splits == ["val"] and run.steps == 6
            assert [r["step"] for r in store.train_log(run.id)] == list(range(1, 7))
            if trial.state == optuna.trial.TrialState.COMPLETE:
                metric = store.metrics(run.id, "val")["ce/u0/14/micro/f1"].value
                assert trial.value == pytest.approx(metric)
        assert store.test_evaluations() == []  # a sweep never touches test
    finally:
        store.close()
    assert len(list((out / "runs" / "smoke" / "s2d").iterdir())) == trials
