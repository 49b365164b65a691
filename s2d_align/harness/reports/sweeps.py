"""Sweep reports from the Optuna studies stored under the results URL (read-only)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, inspect

from s2d_align.harness.reports import figures
from s2d_align.harness.store import Store
from s2d_align.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


def _has_optuna_tables(url: str) -> bool:
    # Opening an RDBStorage creates Optuna's tables; a report must not write to the store.
    engine = create_engine(url)
    try:
        return inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def study_frame(study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "run_id": t.user_attrs.get("run_id", "")}  # fmt: skip
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def importances(study) -> tuple[dict[str, float], str, str]:
    """Parameter importances, the evaluator's name and, when there are none, why: fANOVA (seeded, so a rebuilt report is
    the same) where scikit-learn is installed, else PED-ANOVA, which needs nothing more (and
    is Optuna's default from 5.0)."""
    import optuna

    try:
        import sklearn  # noqa: F401
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    else:
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found, why = optuna.importance.get_param_importances(study, evaluator=evaluator), ""
        except (RuntimeError, ValueError) as exc:  # e.g. the objective never varied
            log.warning("study %s: no parameter importance: %s", study.study_name, exc)
            found, why = {}, str(exc)
    for w in caught:  # e.g. "importances will be equal" with few trials: said, not raised
        if not issubclass(w.category, optuna.exceptions.ExperimentalWarning):
            log.warning("study %s: %s importance: %s", study.study_name, name, w.message)
    return found, name, why


def _eval_every(store: Store | None, run_id: str) -> int:
    run = store.get_run(run_id) if store is not None and run_id else None
    if run is None or not run.config:
        return 0
    return int((run.config.get("train") or {}).get("eval_every") or 0)


def val_curve_frame(study, store: Store | None) -> pd.DataFrame:
    """number, state, step, value: the intermediate values of trials whose run scored val during
    training (``train.eval_every`` > 0). Other intermediate values are stage-end training
    losses (see ``PruningHooks``), not a val metric, and are left out."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values or _eval_every(store, t.user_attrs.get("run_id", "")) <= 0:
            continue
        rows += [
            {"number": t.number, "state": t.state.name, "step": int(step), "value": value}
            for step, value in sorted(t.intermediate_values.items())
        ]
    return pd.DataFrame(rows, columns=["number", "state", "step", "value"])


def _objective(study) -> str:
    """The study's objective metric (recorded by ``run_sweep``; generic for older studies)."""
    return str(study.user_attrs.get("objective", "objective"))


def sweep_reports(url: str, out_dir: Path, store: Store | None = None) -> list[Path]:
    """Per study under ``url``: ``trials.csv``, the sweep figure (history and parameter
    importance) and, where trials scored val during training, the val-metric-vs-step figure.
    ``store`` (the results store at ``url``) tells which trials scored val."""
    if not _has_optuna_tables(url):
        return []
    import optuna

    from s2d_align.harness.sweep import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(url)
    written: list[Path] = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        frame = study_frame(study)
        if frame.empty:
            continue
        base = out_dir / name
        written.append(atomic_write_bytes(base / "trials.csv", frame.to_csv(index=False).encode()))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        metric = _objective(study)
        complete = int((frame["state"] == "COMPLETE").sum())
        importance, evaluator, why = {}, "", f"{complete} complete trial(s); needs 3"
        if complete >= 3 and len(study.best_params) > 0:
            importance, evaluator, why = importances(study)
        fig = figures.sweep_figure(
            frame, importance, f"Sweep {name}: {complete} complete trial(s) of {len(frame)}, "
            "objective on the val split", base / "sweep.png", maximize, metric, evaluator,
            why,
        )  # fmt: skip
        written += figures.figure_files(fig) if fig else []
        curves = val_curve_frame(study, store)
        best = study.best_trial.number if complete else None
        fig = figures.sweep_val_curves(
            curves, metric, f"{name}: val score during training, per trial",
            base / "val_curves.png", best,
        )  # fmt: skip
        if fig:
            written += figures.figure_files(fig)
        else:
            log.info("study %s: no val-vs-step figure (no trial scored val during training; "
                     "set eval_every in the space)", name)  # fmt: skip
    return written
