"""Flat tables of the results store for pandas, spreadsheets and other tools (``results export``)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from s2d_align.errors import ConfigError
from s2d_align.harness.records import SampleScore
from s2d_align.harness.store import Store
from s2d_align.utils.io import atomic_write_bytes

METRIC_COLUMNS = [
    "run_id",
    "preset",
    "variant",
    "seed",
    "purpose",
    "split",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "higher_is_better",
]
SAMPLE_COLUMNS = ["run_id", "split", "metric", "sample_id", "value"]
FORMATS = ("csv", "parquet", "jsonl")
PARQUET_HINT = "pip install 's2d-align[parquet]'"


def metric_frame(store: Store, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (run, split, metric), sorted, with :data:`METRIC_COLUMNS`."""
    rows = store.metric_rows(run_ids)
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return frame.sort_values(["run_id", "split", "metric"], ignore_index=True)


def sample_frame(store: Store, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (run, split, metric, sample), sorted, with :data:`SAMPLE_COLUMNS`."""
    query = select(SampleScore)
    if run_ids is not None:
        query = query.where(SampleScore.run_id.in_(list(run_ids)))
    with store.session() as s:
        rows = [
            (ss.run_id, ss.split, ss.metric, str(sid), float(value))
            for ss in s.scalars(query)
            for sid, value in ss.scores.items()
        ]
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    return frame.sort_values(["run_id", "split", "metric", "sample_id"], ignore_index=True)


def check_format(fmt: str) -> None:
    """Refuse an unknown format, or Parquet without pyarrow, with the fix in the message."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"Parquet export needs pyarrow: {PARQUET_HINT}") from None


def write_frame(frame: pd.DataFrame, path: str | Path, fmt: str) -> Path:
    """Write ``frame`` as csv, parquet or jsonl in one atomic step (no half-written file)."""
    check_format(fmt)
    if fmt == "csv":
        data = frame.to_csv(index=False).encode("utf-8")
    elif fmt == "jsonl":
        data = frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    else:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False, engine="pyarrow")
        data = buf.getvalue()
    return atomic_write_bytes(path, data)
