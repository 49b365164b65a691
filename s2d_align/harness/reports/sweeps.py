"""Sweep reports from the Optuna studies stored under the results URL (read-only)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, inspect

from s2d_align.harness.reports import figures
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


def sweep_reports(url: str, out_dir: Path) -> list[Path]:
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
        hist = figures.sweep_history(
            frame, f"{name}: val objective", base / "history.png", maximize
        )
        written += [hist] if hist else []
        complete = (frame["state"] == "COMPLETE").sum()
        if complete >= 3 and len(study.best_params) > 0:
            try:
                importance = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # e.g. a parameter never varied
                log.warning("study %s: no parameter importance: %s", name, exc)
            else:
                path = figures.param_importance(
                    importance, f"{name}: fANOVA importance", base / "importance.png"
                )
                written += [path] if path else []
    return written
