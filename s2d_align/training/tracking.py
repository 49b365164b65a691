"""Experiment tracking: ``train.report_to`` feeds TensorBoard and/or MLflow.

``train_log.jsonl`` is always written and stays the record the harness reads; trackers only
mirror it, plus the intermediate val metrics (``train.eval_every``) and the final metrics the
harness scores, with the run's config as hyperparameters. They draw no random numbers and
change nothing the loop computes, so a run trains the same with or without them.

- ``tensorboard`` (extra ``tensorboard``): event files in ``RUN/tensorboard/``.
- ``mlflow`` (extra ``mlflow``): the server or store named by ``$MLFLOW_TRACKING_URI``, else a
  SQLite store inside the run folder (``RUN/mlflow/mlflow.db``, artifacts beside it). The
  experiment is ``$MLFLOW_EXPERIMENT_NAME``, else the config's ``name`` (the preset). The MLflow
  run id is kept in ``RUN/mlflow/run.json``, so a resumed run continues the same MLflow run.

Neither package is imported unless a run asks for it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s2d_align.config import Config, config_hash, to_dict
from s2d_align.errors import ConfigError, S2DError
from s2d_align.utils.io import read_json, write_json

TRACKERS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"
#: Where the MLflow run of a run folder is recorded: {"tracking_uri", "experiment_id", "run_id"}.
MLFLOW_RUN_FILE = "run.json"
#: MLflow's client-side limits per ``log_batch`` call.
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_METRICS_PER_BATCH = 1000
_MLFLOW_BAD_KEY = re.compile(r"[^\w./\- :]")


class TrackingError(S2DError):
    """A tracker cannot be used: its package is missing or its store refused the run."""


def check_report_to(report_to: Sequence[str]) -> None:
    """Fail before training when a tracker in ``report_to`` is unknown or not installed.

    Looks the packages up without importing them (importing them takes seconds)."""
    for name in report_to:
        if name not in TRACKERS:
            raise ConfigError(
                f"train.report_to: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}"
            )
        if importlib.util.find_spec(name) is None:
            raise TrackingError(
                f"train.report_to lists {name!r} but the {name} package is not installed; "
                f"install it with: pip install 's2d-align[{name}]'"
            )


def step_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars a ``train_log.jsonl`` row is tracked as, under ``train/``."""
    out = {"train/loss": float(row["loss"])}
    for term, value in row.get("losses", {}).items():
        out[f"train/loss_{term}"] = float(value)
    for key in ("lr", "grad_norm", "gate", "samples_per_s"):
        if row.get(key) is not None:  # no gate without memory; no rate for a 0 s step
            out[f"train/{key}"] = float(row[key])
    return out


def config_params(cfg: Config) -> dict[str, str | int | float | bool]:
    """The resolved config as flat ``dotted.key: value`` pairs (``train.lr``, ``stages.0.name``);
    lists of scalars and nulls become strings."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif isinstance(value, (str, int, float, bool)):
            flat[prefix] = value
        else:  # None, or a list of scalars
            flat[prefix] = "null" if value is None else ",".join(map(str, value))

    walk("", to_dict(cfg))
    flat["config_hash"] = config_hash(cfg)
    return flat


class _TensorBoard:
    def __init__(self, run_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops what an interrupted attempt logged at and after the
        # step this attempt resumes from, so curves show each step once.
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # Only the session's start and end, no experiment summary: TensorBoard then lists every
        # scalar as a metric and compares run folders side by side, where one summary per
        # folder would make it pick one folder's summary for all of them.
        _, start, end = hparams(dict(params), {})
        self.writer.file_writer.add_summary(start)
        self.writer.file_writer.add_summary(end)

    def close(self, status: str) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, cfg: Config, run_dir: Path, new_run: bool, params: Mapping[str, Any]):
        from mlflow.tracking import MlflowClient

        folder = run_dir / MLFLOW_DIR
        folder.mkdir(parents=True, exist_ok=True)
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        uri = env_uri or f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        try:
            self.client = MlflowClient(tracking_uri=uri)
            record_path = folder / MLFLOW_RUN_FILE
            record = read_json(record_path) if record_path.is_file() else None
            if record is not None and record.get("tracking_uri") == uri and not new_run:
                self.run_id = record["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                experiment = self._experiment(cfg, folder, local=env_uri is None)
                run = self.client.create_run(
                    experiment,
                    run_name=run_dir.name,
                    tags={"s2d.run_dir": str(run_dir.resolve()), "s2d.preset": cfg.name},
                )
                self.run_id = run.info.run_id
                write_json(
                    record_path,
                    {"tracking_uri": uri, "experiment_id": experiment, "run_id": self.run_id},
                )
            self._log_params(params)
        except S2DError:
            raise
        except Exception as exc:  # MLflow's own errors name no setting of ours
            raise TrackingError(
                f"MLflow tracking at {uri} failed for {run_dir}: {type(exc).__name__}: {exc}"
            ) from exc

    def _experiment(self, cfg: Config, folder: Path, *, local: bool) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.name
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # Artifacts of the default store stay in the run folder (MLflow would use ./mlruns of
        # the working directory); a server decides its own.
        location = (folder / "artifacts").resolve().as_uri() if local else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by a parallel run on the same server
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for i in range(0, len(items), _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MLFLOW_PARAMS_PER_BATCH])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_MLFLOW_BAD_KEY.sub("_", k), v, now, step) for k, v in values.items()]
        for i in range(0, len(items), _MLFLOW_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _MLFLOW_METRICS_PER_BATCH])

    def hparams(self, params: Mapping[str, Any]) -> None:
        pass  # logged as params when the run opened

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class Tracking:
    """The trackers of one run folder; a no-op when ``train.report_to`` is empty.

    Get it from :func:`open_tracking`. Backends start at the first value logged, so a call
    that logs nothing (a finished run returned as is) creates no file.
    """

    def __init__(self, cfg: Config, run_dir: Path, names: Sequence[str], key: Path | None = None):
        self.cfg, self.run_dir, self.names = cfg, Path(run_dir), tuple(names)
        self._key = key
        self._backends: list[Any] | None = None
        self._users = 1

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    def _started(self, first_step: int | None = None) -> list[Any]:
        """The backends, started on first use. ``first_step``: the training step this process
        logs first, when it logs steps (1 for a run from scratch, else the resume point + 1)."""
        if self._backends is None:
            params = config_params(self.cfg)
            backends: list[Any] = []
            if "tensorboard" in self.names:
                backends.append(_TensorBoard(self.run_dir, first_step))
            if "mlflow" in self.names:
                backends.append(_MLflow(self.cfg, self.run_dir, first_step == 1, params))
            self._backends = backends
        return self._backends

    def log_step(self, row: Mapping[str, Any]) -> None:
        """One ``train_log.jsonl`` row: losses per term, lr, grad norm, gate, samples/s."""
        if self.names:
            step = int(row["step"])
            for backend in self._started(first_step=step):
                backend.scalars(step_scalars(row), step)

    def log_metrics(self, metrics: Mapping[str, float | None], *, step: int, prefix: str) -> None:
        """Metrics at ``step`` as ``PREFIX/NAME`` (``val/BLEU_4``); None values are skipped."""
        if self.names:
            values = {
                f"{prefix}/{name}": float(value)
                for name, value in metrics.items()
                if value is not None
            }
            for backend in self._started():
                backend.scalars(values, step)

    def log_final(self, metrics: Mapping[str, float | None], *, step: int, prefix: str) -> None:
        """End-of-run metrics, with the run's config as hyperparameters."""
        if self.names:
            self.log_metrics(metrics, step=step, prefix=prefix)
            params = config_params(self.cfg)
            for backend in self._started():
                backend.hparams(params)

    def close(self, *, error: BaseException | None = None) -> None:
        """Flush and end the trackers (once the last user of a shared one closes it)."""
        self._users -= 1
        if self._users > 0:
            return
        if self._key is not None:
            _OPEN.pop(self._key, None)
        if self._backends:
            status = "FINISHED"
            if error is not None:
                status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            for backend in self._backends:
                backend.close(status)
        self._backends = None

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)


#: Trackings open in this process, by run folder. The harness scores intermediate val
#: predictions while the training loop's tracking is open: it must reuse that writer, because
#: TensorBoard reads the event files of a folder one after the other and would skip scalars
#: that two writers interleave.
_OPEN: dict[Path, Tracking] = {}


def open_tracking(cfg: Config, run_dir: str | Path, *, enabled: bool = True) -> Tracking:
    """The trackers ``cfg.train.report_to`` asks for, for ``run_dir`` (use as a context manager).

    Returns the tracking already open for ``run_dir`` in this process when there is one.
    ``enabled=False`` (processes other than the main one) gives a no-op."""
    names = cfg.train.report_to if enabled else ()
    if not names:
        return Tracking(cfg, Path(run_dir), ())
    check_report_to(names)
    key = Path(run_dir).resolve()
    if key in _OPEN:
        shared = _OPEN[key]
        shared._users += 1
        return shared
    tracking = _OPEN[key] = Tracking(cfg, Path(run_dir), names, key)
    return tracking


__all__ = [
    "TRACKERS",
    "Tracking",
    "TrackingError",
    "check_report_to",
    "config_params",
    "open_tracking",
    "step_scalars",
]
