"""``train.report_to``: TensorBoard and MLflow, read back with the real packages.

The event files are read with TensorBoard's ``EventAccumulator`` and the MLflow run is queried
with ``MlflowClient``, as a user would look at them; the trackers are never mocked. A tracked run
must train exactly like an untracked one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import harness_fakes as fakes
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import cache_root, shared_run, tiny_config

from s2d_align.config import config_hash
from s2d_align.errors import ConfigError
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants
from s2d_align.training.run_dir import ADAPTER_DIR, RESULT_FILE
from s2d_align.training.tracking import (
    MLFLOW_DIR,
    MLFLOW_RUN_FILE,
    TENSORBOARD_DIR,
    TrackingError,
)
from s2d_align.utils.io import read_json, read_jsonl

BOTH = "train.report_to=[tensorboard,mlflow]"
ADAPTER = f"{ADAPTER_DIR}/adapter_model.safetensors"


@pytest.fixture
def trackers(monkeypatch):
    """Both packages present, and MLflow left to its default store (the run folder)."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / TENSORBOARD_DIR))
    events.Reload()
    return events


def scalars(events, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def tensorboard_hparams(events) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def mlflow_run(run: Path):
    from mlflow.tracking import MlflowClient

    record = read_json(run / MLFLOW_DIR / MLFLOW_RUN_FILE)
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    return record, client, client.get_run(record["run_id"])


def history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


# ----------------------------------------------------------------------------- config, extras
def test_report_to_is_checked_and_is_not_part_of_the_run_identity():
    cfg = tiny_config(BOTH)
    assert cfg.train.report_to == ("tensorboard", "mlflow")
    assert tiny_config().train.report_to == ()  # default: no tracker
    # turning a tracker on must not make a new run id (or refuse to resume a run folder)
    assert config_hash(cfg) == config_hash(tiny_config())
    with pytest.raises(ConfigError, match=r"train\.report_to\[0\].*'wandb'.*'tensorboard'"):
        tiny_config("train.report_to=[wandb]")
    with pytest.raises(ConfigError, match="twice"):
        tiny_config("train.report_to=[mlflow,mlflow]")
    with pytest.raises(ConfigError, match=r"unknown key 'report_too'.*report_to"):
        tiny_config("train.report_too=[mlflow]")


@pytest.mark.slow
def test_the_library_imports_no_tracker_unless_a_run_asks(tmp_path):
    code = (
        "import sys\n"
        "from s2d_align.config import load_config\n"
        "import s2d_align.training.pipeline, s2d_align.harness.runner\n"
        "from s2d_align.training.tracking import open_tracking\n"
        "with open_tracking(load_config('smoke'), sys.argv[1]) as t:\n"
        "    t.log_step({'step': 1, 'loss': 1.0})\n"
        "print(sorted({'tensorboard', 'mlflow', 'torch.utils.tensorboard'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "run").exists()  # and a run without trackers writes nothing for them


@pytest.mark.parametrize("missing", ["tensorboard", "mlflow"])
def test_a_missing_tracker_package_fails_before_training_and_names_the_extra(
    missing, monkeypatch, tmp_path_factory, tmp_path
):
    from s2d_align.training.pipeline import run_training

    monkeypatch.setitem(sys.modules, missing, None)  # what Python does for a blocked import
    run = tmp_path / "run"
    with pytest.raises(TrackingError) as info:
        run_training(
            tiny_config(BOTH), run, progress=False, cache_root=cache_root(tmp_path_factory)
        )
    assert f"pip install 's2d-align[{missing}]'" in str(info.value)
    assert not run.exists()  # nothing was started


# ----------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_a_tracked_run_trains_identically_and_both_trackers_hold_its_log(
    trackers, tmp_path_factory, tmp_path, monkeypatch
):
    from s2d_align.training.pipeline import run_training

    reference = shared_run(tmp_path_factory)  # the same config and seed, no trackers
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show here
    run = tmp_path / "tracked"
    cfg = tiny_config(BOTH)
    result = run_training(cfg, run, progress=False, cache_root=cache_root(tmp_path_factory))

    log, ref_log = read_jsonl(run / "train_log.jsonl"), read_jsonl(reference / "train_log.jsonl")
    for key in ("loss", "losses", "grad_norm", "lr", "gate"):
        assert [r[key] for r in log] == [r[key] for r in ref_log], key
    ref_w, got_w = load_file(reference / ADAPTER), load_file(run / ADAPTER)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert [p.name for p in tmp_path.iterdir()] == ["tracked"]  # nothing outside the run

    steps = list(range(1, cfg.train.total_steps + 1))
    events = tensorboard(run)
    assert sorted(scalars(events, "train/loss")) == steps
    for row in log:  # TensorBoard keeps float32
        step = row["step"]
        assert scalars(events, "train/loss")[step] == pytest.approx(row["loss"], rel=1e-6)
        assert scalars(events, "train/lr")[step] == pytest.approx(row["lr"], rel=1e-6)
        assert scalars(events, "train/grad_norm")[step] == pytest.approx(row["grad_norm"], rel=1e-6)
        assert scalars(events, "train/gate")[step] == pytest.approx(row["gate"], rel=1e-6, abs=1e-9)
        assert step in scalars(events, "train/samples_per_s")
        for term, value in row["losses"].items():
            assert scalars(events, f"train/loss_{term}")[step] == pytest.approx(value, rel=1e-6)
    # every loss term of the three stages (lm; align from stage 2; kp in stage 3)
    assert {"train/loss_lm", "train/loss_align", "train/loss_kp"} <= set(events.Tags()["scalars"])
    final = scalars(events, "train/final_loss")
    assert final == {12: pytest.approx(result.final_loss, rel=1e-6)}
    hparams = tensorboard_hparams(events)
    assert hparams["train.lr"] == pytest.approx(cfg.train.lr)
    assert hparams["name"] == cfg.name and hparams["stages.2.name"] == cfg.stages[2].name
    assert hparams["config_hash"] == config_hash(cfg)

    record, client, mrun = mlflow_run(run)
    db = (run / MLFLOW_DIR / "mlflow.db").resolve()
    assert record["tracking_uri"] == f"sqlite:///{db}" and db.is_file()
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "tracked"
    assert client.get_experiment(mrun.info.experiment_id).name == cfg.name
    assert mrun.data.params["train.total_steps"] == "12"
    assert mrun.data.params["stages.1.lambda_align"] == str(cfg.stages[1].lambda_align)
    assert history(client, record["run_id"], "train/loss") == {r["step"]: r["loss"] for r in log}
    assert history(client, record["run_id"], "train/loss_kp") == {
        r["step"]: r["losses"]["kp"] for r in log if "kp" in r["losses"]
    }
    assert mrun.data.metrics["train/final_loss"] == result.final_loss
    assert mrun.data.metrics["train/tokens_seen"] == result.tokens_seen


class _Kill(Exception):
    pass


def _kill_at(step: int):
    def callback(info):
        if info.global_step == step:
            raise _Kill(f"killed at {step}")

    return callback


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_and_shows_each_step_once(
    trackers, tmp_path_factory, tmp_path
):
    from s2d_align.training.pipeline import run_training

    cache = cache_root(tmp_path_factory)
    run, cfg = tmp_path / "resumed", tiny_config(BOTH)
    with pytest.raises(_Kill):  # after step 4 was logged; the last checkpoint is step 3
        run_training(cfg, run, progress=False, cache_root=cache, callbacks=[_kill_at(4)])
    record, client, mrun = mlflow_run(run)
    assert mrun.info.status == "FAILED" and not (run / RESULT_FILE).exists()

    run_training(cfg, run, progress=False, cache_root=cache)
    log = read_jsonl(run / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    again, client, mrun = mlflow_run(run)
    assert again["run_id"] == record["run_id"] and mrun.info.status == "FINISHED"
    assert history(client, record["run_id"], "train/loss")[12] == log[-1]["loss"]
    # TensorBoard drops what the killed attempt logged after the checkpoint it resumed from
    events = tensorboard(run).Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 13))
    assert events[3].value == pytest.approx(log[3]["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- the harness
@pytest.mark.slow
def test_the_harness_tracks_intermediate_and_final_val_and_test_metrics(trackers, tmp_path):
    """Fake training (no model), real scoring path of the runner, real trackers."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "name: tiny\ntrain: {total_steps: 10, eval_every: 5, report_to: [tensorboard, mlflow]}\n"
    )
    store = Store.open(None, tmp_path / "results")
    runner = Runner(
        store,
        tmp_path / "results",
        run_fn=fakes.fake_run_fn,
        scorer=fakes.FakeScorer(),
        progress=False,
    )
    (spec,) = plan_grid(preset, load_variants(["s2d"]), [0])
    assert runner.run_grid([spec]).ok
    run = spec.run_dir(tmp_path / "results")
    stored = {split: store.metrics(spec.run_id, split) for split in ("val", "test")}
    # the fake reports val predictions at the end of each of the s2d variant's stages
    intermediate = fake_stage_ends(spec)

    events = tensorboard(run)
    val_rouge = scalars(events, "val/ROUGE_L")
    assert sorted(val_rouge) == sorted({*intermediate, 10})
    assert val_rouge[10] == pytest.approx(stored["val"]["ROUGE_L"].value, rel=1e-6)
    assert scalars(events, "test/ce/u0/14/micro/f1") == {
        10: pytest.approx(stored["test"]["ce/u0/14/micro/f1"].value, rel=1e-6)
    }
    assert tensorboard_hparams(events)["train.eval_every"] == 5

    record, client, mrun = mlflow_run(run)
    assert mrun.info.status == "FINISHED"
    assert mrun.data.params["train.eval_every"] == "5"
    assert sorted(history(client, record["run_id"], "val/ROUGE_L")) == sorted({*intermediate, 10})
    assert mrun.data.metrics["test/ce/u0/14/micro/f1"] == stored["test"]["ce/u0/14/micro/f1"].value
    assert mrun.data.metrics["test/BLEU_4"] == stored["test"]["BLEU_4"].value


def fake_stage_ends(spec) -> list[int]:
    """The steps at which ``fakes.fake_run_fn`` hands over val predictions (its stage ends)."""
    steps, total = [], 0
    for stage in spec.config.stages:
        total += max(1, round(stage.step_fraction * spec.config.train.total_steps))
        steps.append(total)
    return steps
