"""Reliability and security: a crafted checkpoint never runs code, outputs never replace inputs
or a user's folder, files respect the umask, and bad files give one line, not a traceback.

Every refusal is checked twice: the one-line error names the file, and the files involved are
byte-for-byte what they were (checksums)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import TINY, cache_root, shared_run, tiny_config

from s2d_align.cli.main import main
from s2d_align.config import save_yaml
from s2d_align.errors import DataError
from s2d_align.harness.ownership import LOCK_FILE
from s2d_align.harness.store import Store
from s2d_align.training.checkpoint import (
    RunState,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from s2d_align.training.distributed import Dist
from s2d_align.training.run_dir import RESULT_FILE, check_run_folder
from s2d_align.utils.io import iter_jsonl, read_jsonl, sha256_file, write_json, write_jsonl


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (or of ``root`` itself)."""
    if root.is_file():
        return {root.name: sha256_file(root)}
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class _Payload:
    """Unpickling this runs ``exec``, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _plant(path: Path, marker: Path, how: str) -> None:
    if how == "torch.save":
        torch.save({"optimizer": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))


def _tiny_checkpoint(run_dir: Path) -> Path:
    """A real checkpoint of a 2-layer model after one AdamW step (no training pipeline)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return save_checkpoint(
        run_dir,
        dist=Dist(cpu=True),
        config=tiny_config(),
        model_state=model.state_dict(),
        optimizer=optimizer,
        scheduler=scheduler,
        state=RunState(global_step=1, stage_step=1),
    )


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_restores_every_rng_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    path = _tiny_checkpoint(tmp_path / "run")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    restore_rng(ckpt.rng)
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert ckpt.path == path and got == expected
    assert ckpt.state.global_step == 1 and ckpt.optimizer["state"]  # AdamW moments came back


def test_rng_file_of_the_earlier_format_still_resumes(tmp_path):
    path = _tiny_checkpoint(tmp_path / "run")
    np.random.seed(5)
    legacy = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save(legacy, path / "rng-rank0.pt")  # numpy's state tuple with its uint32 array
    expected = np.random.standard_normal(2).tolist()
    np.random.seed(0)
    restore_rng(load_checkpoint(path).rng)
    assert np.random.standard_normal(2).tolist() == expected


@pytest.mark.parametrize("name", ["trainer_state.pt", "rng-rank0.pt"])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_file_is_refused_and_runs_nothing(tmp_path, name, how):
    run = tmp_path / "run"
    path = _tiny_checkpoint(run)
    marker = tmp_path / "marker"
    _plant(path / name, marker, how)
    before = checksums(run)
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path / name) in message and "refused to load" in message
    assert ("exec" if how == "torch.save" else "pickle code") in message
    assert "\n" not in message
    assert not marker.exists()
    assert checksums(run) == before


@pytest.mark.parametrize("name", ["trainer_state.pt", "rng-rank0.pt", "model.safetensors"])
def test_a_truncated_checkpoint_file_is_one_clear_error(tmp_path, name):
    run = tmp_path / "run"
    path = _tiny_checkpoint(run)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    before = checksums(run)
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path / name) in message and "truncated or corrupt" in message
    assert f"delete {run} to restart" in message and "\n" not in message
    assert checksums(run) == before


def test_a_pointer_outside_the_checkpoints_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    _tiny_checkpoint(run)
    write_json(run / "checkpoints" / "latest.json", {"checkpoint": "../../elsewhere", "step": 1})
    with pytest.raises(DataError, match=r"latest\.json: 'checkpoint' must name a step-N folder"):
        latest_checkpoint(run)


def _resumable_copy(tmp_path_factory, tmp_path) -> Path:
    """A copy of the shared finished run that looks killed after its last checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory), run)
    (run / RESULT_FILE).unlink()
    return run


def _train_cli(run: Path, cache: Path) -> int:
    args = ["train", "--preset", "smoke", "--run", str(run), "--cache", str(cache)]
    return main([*args, "--no-progress", *TINY])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["crafted", "truncated"])
def test_cli_resume_from_a_bad_checkpoint_is_one_line_and_loses_nothing(
    tmp_path_factory, tmp_path, capsys, damage
):
    run = _resumable_copy(tmp_path_factory, tmp_path)
    state = latest_checkpoint(run) / "trainer_state.pt"
    marker = tmp_path / "marker"
    if damage == "crafted":
        _plant(state, marker, "torch.save")
    else:
        state.write_bytes(state.read_bytes()[:100])
    before = checksums(run)
    capsys.readouterr()
    assert _train_cli(run, cache_root(tmp_path_factory)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(state) in line
    assert ("refused" if damage == "crafted" else "truncated or corrupt") in line
    assert not marker.exists()
    assert checksums(run) == before


# ----------------------------------------------------------------------------- train --out
def test_train_refuses_a_users_folder_and_leaves_it_alone(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("experiment: my own settings\nlr: 0.1\n")
    (folder / "train_log.jsonl").write_text('{"note": "my log"}\n')
    before = checksums(folder)
    assert _train_cli(folder, tmp_path / "cache") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder) in line and "not empty" in line and "--run" in line
    assert checksums(folder) == before
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_train_accepts_an_empty_folder_and_its_own_unfinished_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_run_folder(empty)
    check_run_folder(tmp_path / "new")
    failed = tmp_path / "failed"  # a run that stopped before its first step
    save_yaml(tiny_config(), failed / "config.yaml")
    write_jsonl(failed / "train_log.jsonl", [])
    check_run_folder(failed)


def test_train_refuses_a_partial_config_of_the_users_own(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("seed: 3\n")  # a valid layer, but not a saved run config
    with pytest.raises(DataError, match="holds no training run"):
        check_run_folder(folder)


# ----------------------------------------------------------------------------- output == input
def _annotation(root: Path) -> Path:
    entry = {"report": "The lungs are clear.", "image_path": ["a.png"]}
    splits = {
        s: [{"id": f"{s}{i}", "split": s, **entry} for i in range(2)]
        for s in ("train", "val", "test")
    }
    return write_json(root / "annotation.json", splits)


def test_data_check_refuses_to_write_its_manifest_over_the_annotation(tmp_path, capsys):
    ann = _annotation(tmp_path)
    link = tmp_path / "alias.json"
    link.symlink_to(ann)
    before = checksums(tmp_path)
    for out in (ann, link, tmp_path / "sub" / ".." / "annotation.json"):
        assert main(["data", "check", str(ann), "--no-image-check", "--out", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(out) in line and "ANN" in line and "destroy" in line
    manifest = ann.rename(tmp_path / "manifest.json")  # the default output is manifest.json
    assert main(["data", "check", str(manifest), "--no-image-check"]) == 2
    assert "destroy" in one_error_line(capsys.readouterr().err)
    assert sha256_file(manifest) == before["annotation.json"]


def test_score_and_compare_refuse_an_output_that_is_an_input(tmp_path, capsys):
    ann = _annotation(tmp_path)
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"id": "test0", "prediction": "Clear."}])
    other = write_jsonl(tmp_path / "b.jsonl", [{"id": "test0", "prediction": "Clear."}])
    before = checksums(tmp_path)
    base = ["--ann", str(ann), "--no-cache"]
    for argv, option in (
        (["score", "--pred", str(pred), *base, "--out", str(pred)], "--pred"),
        (["score", "--pred", str(pred), *base, "--out", str(ann)], "--ann"),
        (["compare", str(pred), str(other), *base, "--out", str(other)], "B.jsonl"),
    ):
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert option in line and "destroy" in line
    assert checksums(tmp_path) == before


# ----------------------------------------------------------------------------- file modes
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_follow_the_umask_and_rewrites_keep_their_mode(tmp_path, umask_022):
    path = write_json(tmp_path / "new.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(write_jsonl(tmp_path / "private.jsonl", []).stat().st_mode) == 0o600
    path.chmod(0o640)
    write_json(path, {"a": 2})  # an input rewritten in place keeps the mode it had
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# ----------------------------------------------------------------------------- bad text
def test_non_utf8_jsonl_names_file_and_line(tmp_path, capsys):
    pred = tmp_path / "pred.jsonl"
    pred.write_bytes(
        b'{"id": "test0", "prediction": "ok"}\n{"id": "test1", "prediction": "\xff"}\n'
    )
    before = checksums(pred)
    with pytest.raises(DataError, match=r"pred\.jsonl:2: not UTF-8 text \(byte 0xff"):
        read_jsonl(pred)
    assert main(["score", "--pred", str(pred), "--ann", str(_annotation(tmp_path))]) == 2
    assert f"{pred}:2: not UTF-8" in one_error_line(capsys.readouterr().err)
    assert checksums(pred) == before


def test_crlf_jsonl_still_reads(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": "\xc3\xa9"}\r\n')
    assert list(iter_jsonl(path)) == [{"a": 1}, {"a": "é"}]


# ----------------------------------------------------------------------------- Ctrl-C twice
STOP_TIMEOUT_S = 300  # the whole test; the stop itself takes a second or two


@pytest.mark.slow
@pytest.mark.java
def test_a_second_ctrl_c_while_the_pool_stops_is_one_line_130_and_gives_the_runs_back(
    tmp_path_factory, tmp_path
):
    """Ctrl-C, then Ctrl-C again while the workers are stopping: the first line of a real
    ``s2d-align ablate --jobs 2`` (tiny smoke grid of three runs) is still the only one, the exit
    is 130 (not a death by SIGINT half-way through), every claim and lock file is given back,
    and the third, queued run is neither started nor marked failed."""
    out = tmp_path / "results"
    argv = [
        sys.executable, "-c", "from s2d_align.cli.main import entrypoint; entrypoint()",
        "ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0,1,2", "--jobs", "2",
        "--no-references", *TINY, "--results", str(out),
        "--cache", str(cache_root(tmp_path_factory)), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + STOP_TIMEOUT_S

    def until(condition) -> None:
        while not condition() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        until(lambda: len(list(out.glob(f"runs/smoke/sft/*/{LOCK_FILE}"))) == 2)  # both training
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        until(lambda: any("interrupted: stopping" in x for x in lines))
        os.killpg(proc.pid, signal.SIGINT)  # again, while the pool shuts down
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=30)
    proc.stderr.close()
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    problems = [x.rstrip() for x in lines if x.strip() and not x.startswith("INFO ")]
    assert problems == [
        "interrupted: finished runs are kept in the store; run the same command again to resume"
    ]
    assert any("Ctrl-C again while stopping" in x for x in lines)  # it did land in the stop
    store = Store.open_readonly(None, out)
    try:
        runs = store.runs()
        assert len(runs) == 2 and all(r.status != "failed" for r in runs)  # the third: not begun
        assert all(store.claim(r.id) is None for r in runs)  # every claim given back
    finally:
        store.close()
    assert not list(out.glob(f"runs/**/{LOCK_FILE}"))
