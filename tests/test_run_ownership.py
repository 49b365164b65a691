"""Run ownership: one process trains a run; others skip it, take over a dead owner's claim,
never mark another's finished run failed; duplicate seeds and Ctrl-C in ``ablate``.

The multi-process tests start real ``s2d-align ablate`` processes (``main(argv)`` in a script)
with the fake model slowed down so that they overlap; every one is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.cli.main import main
from s2d_align.harness import ownership
from s2d_align.harness.ownership import LOCK_FILE, Owner
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.records import RunClaim, now
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

TESTS = Path(__file__).resolve().parent
PROCESS_TIMEOUT_S = 120

SLOW_FAKES = """
import os, time
import harness_fakes as fakes

def slow_run_fn(spec, run_dir, **kw):
    time.sleep(float(os.environ.get("SLOW_FAKE_S", "0.5")))
    return fakes.fake_run_fn(spec, run_dir, **kw)
"""

# ``s2d-align ablate`` with the fake model and scorer injected, and no reports (not tested here).
ABLATE = """
import functools, sys
import harness_fakes as fakes, slow_fakes
import s2d_align.harness.reports as reports
import s2d_align.harness.runner as runner
from s2d_align.cli.main import main

if __name__ == "__main__":  # spawned pool workers import this file again
    runner.Runner = functools.partial(runner.Runner, run_fn=slow_fakes.slow_run_fn,
                                      scorer=fakes.FakeScorer())
    reports.build_reports = lambda store, out: []
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    return path


@pytest.fixture
def ablate_script(tmp_path: Path) -> Path:
    (tmp_path / "slow_fakes.py").write_text(SLOW_FAKES)
    script = tmp_path / "ablate.py"
    script.write_text(textwrap.dedent(ABLATE))
    return script


def _env(tmp_path: Path, sleep_s: float) -> dict[str, str]:
    paths = [str(tmp_path), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "SLOW_FAKE_S": str(sleep_s), "HF_HUB_OFFLINE": "1"}  # fmt: skip


def _ablate_args(preset: Path, out: Path, seeds: str = "0,1", jobs: str = "1") -> list[str]:
    return ["ablate", "--preset", str(preset), "--variants", "sft,s2d", "--seeds", seeds,
            "--results", str(out), "--reports", str(out / "reports"), "--jobs", jobs,
            "--no-progress"]  # fmt: skip


def _start(script: Path, args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _calls(out: Path) -> dict[str, int]:
    path = out / "fake_calls.jsonl"
    per_run: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        run_id = json.loads(line)["run_id"]
        per_run[run_id] = per_run.get(run_id, 0) + 1
    return per_run


def _runner(out: Path, **kw) -> Runner:
    return Runner(Store.open(None, out), out, run_fn=fakes.fake_run_fn,
                  scorer=fakes.FakeScorer(), progress=False, **kw)  # fmt: skip


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def _plant_claim(store: Store, run_id: str, owner: Owner, age_s: float = 0.0) -> None:
    seen = now() - timedelta(seconds=age_s)
    with store.session() as s, s.begin():
        s.add(RunClaim(run_id=run_id, owner=owner.id, host=owner.host, pid=owner.pid,
                       claimed_at=seen, heartbeat_at=seen))  # fmt: skip


# -- duplicate seeds ---------------------------------------------------------------------------
def test_duplicate_seeds_are_rejected_in_one_line(tmp_path, capsys):
    code = main(["ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0,1,0",
                 "--results", str(tmp_path), "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: seed 0 is listed twice"
    assert not (tmp_path / "runs").exists()


# -- two processes, one store ------------------------------------------------------------------
def test_two_identical_ablates_train_every_run_exactly_once(tmp_path, preset, ablate_script):
    out = tmp_path / "results"
    env = _env(tmp_path, sleep_s=1.0)
    procs = [_start(ablate_script, _ablate_args(preset, out), env) for _ in range(2)]
    results = [p.communicate(timeout=PROCESS_TIMEOUT_S) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "IntegrityError" not in stderr + stdout
        assert "0 failed" in stdout
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    assert _calls(out) == {s.run_id: 1 for s in specs}  # each run trained by one process
    store = Store.open(None, out)
    try:
        assert {r.id: r.status for r in store.runs()} == {s.run_id: "complete" for s in specs}
        assert sorted(t.run_id for t in store.test_evaluations()) == sorted(s.run_id for s in specs)
        assert all(store.claim(s.run_id) is None for s in specs)  # every claim released
    finally:
        store.close()
    assert not any(s.run_dir(out).joinpath(LOCK_FILE).exists() for s in specs)
    # each process accounts for every run: trained it, found it complete, or found it claimed
    summaries = [_summary(stdout) for stdout, _ in results]
    assert all(sum(s.values()) == len(specs) for s in summaries)
    assert sum(s["executed"] for s in summaries) == len(specs)


def _summary(stdout: str) -> dict[str, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("grid: "))
    found = re.match(
        r"grid: (\d+) run\(s\) executed, (\d+) already complete, "
        r"(?:(\d+) being trained by another process, )?(\d+) failed",
        line,
    )
    assert found, line
    executed, complete, claimed, failed = (int(g or 0) for g in found.groups())
    return {"executed": executed, "complete": complete, "claimed": claimed, "failed": failed}


def test_a_second_ablate_never_fails_the_first_ones_finished_runs(tmp_path, preset, ablate_script):
    """The issue's case: the same grid started again a little later, while the first still
    trains: before, it retrained the folders, hit the test-set lock and marked them failed."""
    out = tmp_path / "results"
    env = _env(tmp_path, sleep_s=1.5)
    first = _start(ablate_script, _ablate_args(preset, out), env)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not (out / "fake_calls.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the first process is training its first run
    second = _start(ablate_script, _ablate_args(preset, out), env)
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT_S)
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
        assert "0 failed" in stdout
    store = Store.open(None, out)
    try:
        assert {r.status for r in store.runs()} == {"complete"}
        assert all(n == 1 for n in _calls(out).values()) and len(_calls(out)) == 4
    finally:
        store.close()


# -- claims in one process ---------------------------------------------------------------------
def test_a_live_claim_is_skipped_and_reported(tmp_path, preset, capsys, monkeypatch):
    out = tmp_path / "results"
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0])
    runner = _runner(out)
    other = Owner.current()  # this very process, so certainly alive, but another claim token
    _plant_claim(runner.store, specs[0].run_id, other)
    report = runner.run_grid(specs)
    assert report.claimed == {specs[0].run_id: other.label}
    assert report.executed == [specs[1].run_id] and report.ok
    assert _calls(out) == {specs[1].run_id: 1}
    assert runner.store.get_run(specs[0].run_id) is None  # untouched: not created, not failed
    assert runner.store.claim(specs[0].run_id).owner == other.id  # and still the other's

    # ablate says so in its summary
    import s2d_align.harness.reports as reports
    import s2d_align.harness.runner as runner_mod

    def fake_runner(store, results_dir, **kw):
        return Runner(store, results_dir, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(),
                      progress=False)  # fmt: skip

    monkeypatch.setattr(runner_mod, "Runner", fake_runner)
    monkeypatch.setattr(reports, "build_reports", lambda store, out: [])
    assert main(_ablate_args(preset, out, seeds="0")) == 0
    text = capsys.readouterr().out
    assert "1 being trained by another process" in text
    assert f"{specs[0].run_id}: being trained by {other.label}" in text


def test_a_dead_owners_claim_and_lock_file_are_taken_over(tmp_path, preset):
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    runner = _runner(out)
    dead = Owner(socket.gethostname(), _dead_pid(), "gone")
    _plant_claim(runner.store, spec.run_id, dead)
    run_dir = spec.run_dir(out)
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"owner": dead.id, "host": dead.host,
                                                 "pid": dead.pid}))  # fmt: skip
    report = runner.run_grid([spec])
    assert report.executed == [spec.run_id] and not report.claimed
    assert runner.store.get_run(spec.run_id).status == "complete"
    assert runner.store.claim(spec.run_id) is None and not (run_dir / LOCK_FILE).exists()


def test_another_hosts_claim_is_taken_over_only_after_the_timeout(tmp_path, preset):
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    runner = _runner(out, claim_timeout_s=60)
    far = Owner("another-host.example", 4242, "far")
    _plant_claim(runner.store, spec.run_id, far, age_s=30)  # recent heartbeat: alive
    assert runner.run_grid([spec]).claimed == {spec.run_id: far.label}
    with runner.store.session() as s, s.begin():  # no heartbeat for longer than the timeout
        s.get(RunClaim, spec.run_id).heartbeat_at = now() - timedelta(seconds=120)
    report = _runner(out, claim_timeout_s=60).run_grid([spec])
    assert report.executed == [spec.run_id] and _calls(out) == {spec.run_id: 1}


def _sleepy_run_fn(spec, run_dir, **kw):
    time.sleep(1.5)
    return fakes.fake_run_fn(spec, run_dir, **kw)


def test_a_live_owner_keeps_its_claim_fresh_past_the_timeout(tmp_path, preset):
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    owner = Runner(Store.open(None, out), out, run_fn=_sleepy_run_fn, scorer=fakes.FakeScorer(),
                   progress=False, claim_timeout_s=0.5)  # fmt: skip
    training = threading.Thread(target=owner.run_grid, args=([spec],))
    training.start()
    try:
        deadline = time.monotonic() + 30
        while owner.store.claim(spec.run_id) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.8)  # longer than the timeout: only the heartbeat keeps the claim alive
        late = _runner(out, claim_timeout_s=0.5)
        assert late.run_grid([spec]).claimed == {spec.run_id: owner.owner.label}
    finally:
        training.join(timeout=60)
    assert _calls(out) == {spec.run_id: 1}
    assert owner.store.get_run(spec.run_id).status == "complete"


def test_claim_timeout_must_be_a_positive_duration(tmp_path, capsys):
    code = main(["ablate", "--preset", "smoke", "--claim-timeout", "soon", "--results", str(tmp_path),
                 "--dry-run"])  # fmt: skip
    assert code == 2
    assert "--claim-timeout must be a positive duration" in capsys.readouterr().err


def test_a_foreign_lock_file_guards_a_folder_shared_by_two_stores(tmp_path, preset):
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    run_dir = spec.run_dir(out)
    run_dir.mkdir(parents=True)
    other = Owner.current()
    (run_dir / LOCK_FILE).write_text(json.dumps({"owner": other.id, "host": other.host,
                                                 "pid": other.pid}))  # fmt: skip
    runner = Runner(Store(f"sqlite:///{tmp_path / 'other.db'}"), out, run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    report = runner.run_grid([spec])
    assert report.claimed == {spec.run_id: other.label} and _calls(out) == {}
    assert runner.store.claim(spec.run_id) is None  # its store claim was given back


def test_a_finished_run_is_not_retrained_or_failed_by_a_process_that_saw_it_unfinished(
    tmp_path, preset
):
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    late = _runner(out)  # looks at the grid while the run is still being trained ...
    assert late.state(spec) == "pending"
    assert _runner(out).run_grid([spec]).executed == [spec.run_id]  # ... which then finishes
    seen = iter(["pending"])  # what ``late`` saw before claiming; then it looks again
    real_state = late.state
    late.state = lambda s: next(seen, None) or real_state(s)
    report = late.run_grid([spec])
    assert report.skipped == [spec.run_id] and report.ok and not report.executed
    assert late.store.get_run(spec.run_id).status == "complete"
    assert _calls(out) == {spec.run_id: 1} and len(late.store.test_evaluations()) == 1
    # and a process without the claim cannot write the run's status
    assert not late.store.update_owned_run(spec.run_id, late.owner, status="failed")
    assert late.store.get_run(spec.run_id).status == "complete"


# -- Ctrl-C ------------------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_ctrl_c_in_ablate_is_one_line_exit_130_and_resumes(tmp_path, preset, ablate_script, jobs):
    out = tmp_path / "results"
    env = _env(tmp_path, sleep_s=2.0)
    proc = _start(ablate_script, _ablate_args(preset, out, jobs=jobs), env, start_new_session=True)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    store = Store.open(None, out)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r.status == "complete" for r in store.runs()):
                break  # one run finished, others in progress
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT_S)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
        problems = [x for x in stderr.splitlines() if x.strip() and not x.startswith("INFO ")]
        assert problems == [
            "interrupted: finished runs are kept in the store; run the same command again to resume"
        ]
        finished = {r.id for r in store.runs(status="complete")}
        assert finished and len(finished) < 4
        assert all(store.claim(r.id) is None for r in store.runs())  # nothing left claimed
    finally:
        store.close()
    before = _calls(out)
    resumed = _start(ablate_script, _ablate_args(preset, out, jobs=jobs), _env(tmp_path, 0.0))
    stdout, stderr = resumed.communicate(timeout=PROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, stderr
    assert f"{len(finished)} already complete" in stdout
    after = _calls(out)
    assert all(after[r] == before[r] for r in finished)  # nothing finished was redone
    assert len(after) == 4


# -- machines that share a hostname ------------------------------------------------------------
def _plant_lock(run_dir: Path, owner: Owner, age_s: float = 0.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"owner": owner.id, "host": owner.host, "pid": owner.pid,
                                "machine": owner.machine}))  # fmt: skip
    seen = time.time() - age_s
    os.utime(path, (seen, seen))


def test_a_twin_machines_claim_is_judged_by_heartbeat_not_by_our_pids(tmp_path, preset):
    """Two machines (or containers) with one hostname share a store: the other's pid does not
    exist here, yet its claim is live while it beats, and taken over only after the timeout."""
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    run_dir = spec.run_dir(out)
    me = Owner.current()
    twin = Owner(me.host, _dead_pid(), "twin", machine="0123456789abcdef")
    assert twin.machine != me.machine and twin.id.endswith("@0123456789abcdef")
    runner = _runner(out, claim_timeout_s=60)
    _plant_claim(runner.store, spec.run_id, twin, age_s=30)  # a recent heartbeat: alive
    _plant_lock(run_dir, twin, age_s=30)
    assert runner.run_grid([spec]).claimed == {spec.run_id: twin.label}
    assert _calls(out) == {} and runner.store.claim(spec.run_id).owner == twin.id

    # the lock file alone (a second store on the shared folder) is judged the same way
    other = Runner(Store(f"sqlite:///{tmp_path / 'other.db'}"), out, run_fn=fakes.fake_run_fn,
                   scorer=fakes.FakeScorer(), progress=False, claim_timeout_s=60)  # fmt: skip
    assert other.run_grid([spec]).claimed == {spec.run_id: twin.label} and _calls(out) == {}

    with runner.store.session() as s, s.begin():  # the twin went silent for over the timeout
        s.get(RunClaim, spec.run_id).heartbeat_at = now() - timedelta(seconds=120)
    _plant_lock(run_dir, twin, age_s=120)
    report = _runner(out, claim_timeout_s=60).run_grid([spec])
    assert report.executed == [spec.run_id] and _calls(out) == {spec.run_id: 1}
    assert runner.store.get_run(spec.run_id).status == "complete"
    assert runner.store.claim(spec.run_id) is None and not (run_dir / LOCK_FILE).exists()


def test_a_dead_process_of_this_machine_is_taken_over_at_once(tmp_path, preset):
    """Our own machine identity and a dead pid: no waiting for the (6 h) timeout."""
    out = tmp_path / "results"
    spec = plan_grid(preset, load_variants(["s2d"]), [0])[0]
    me = Owner.current()
    gone = Owner(me.host, _dead_pid(), "gone", machine=me.machine)
    runner = _runner(out)
    _plant_claim(runner.store, spec.run_id, gone)  # heartbeat just now
    _plant_lock(spec.run_dir(out), gone)
    report = runner.run_grid([spec])
    assert report.executed == [spec.run_id] and not report.claimed
    assert runner.store.get_run(spec.run_id).status == "complete"
    assert runner.store.claim(spec.run_id) is None


def _identity(monkeypatch, files: dict[str, str], pid_ns: str | None) -> str:
    """``machine_identity`` computed as on a machine with these files and pid namespace."""
    monkeypatch.setattr(ownership, "_first_line", lambda path: files.get(path, ""))

    def readlink(path):
        if pid_ns is None:
            raise FileNotFoundError(path)
        return pid_ns

    monkeypatch.setattr(ownership.os, "readlink", readlink)
    return ownership.machine_identity.__wrapped__()


def test_machine_identity_tells_containers_apart_and_keeps_a_host_across_reboots(monkeypatch):
    host_ns, ctr_a, ctr_b = "pid:[4026531836]", "pid:[4026532201]", "pid:[4026532305]"
    mid, boot1, boot2 = "/etc/machine-id", "/proc/sys/kernel/random/boot_id", "b" * 32
    host = {mid: "a" * 32, boot1: "1" * 32}
    rebooted = {**host, boot1: boot2}
    baked = {mid: "c" * 32, boot1: "1" * 32}  # one image's machine-id in two containers
    other_kernel = {**baked, boot1: boot2}
    ids = {
        "host": _identity(monkeypatch, host, host_ns),
        "host after reboot": _identity(monkeypatch, rebooted, host_ns),
        "container a": _identity(monkeypatch, baked, ctr_a),
        "container b, same kernel": _identity(monkeypatch, baked, ctr_b),
        "container a's twin, other kernel": _identity(monkeypatch, other_kernel, ctr_a),
        "container without machine-id": _identity(monkeypatch, {boot1: "1" * 32}, ctr_a),
    }
    assert ids["host"] == ids["host after reboot"]  # pids of an earlier boot are dead: judge them
    others = [v for k, v in ids.items() if k != "host after reboot"]
    assert len(set(others)) == len(others)  # every other pair must not judge each other's pids
    assert _identity(monkeypatch, baked, ctr_a) == ids["container a"]  # stable
    assert all(len(v) == 16 and ":" not in v for v in ids.values())


def test_owner_ids_carry_the_machine_and_older_ids_parse_as_unknown():
    me = Owner.current()
    assert ownership.machine_of(me.id) == me.machine == ownership.machine_identity()
    assert ownership.machine_of("vm:123:abc") is None  # written before identities existed
    assert ownership.machine_of("odd@host:123:abc") is None
