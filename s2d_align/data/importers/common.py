"""Helpers the importers share: text clean-up, seeded splits and writing the outputs."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2d_align import __version__
from s2d_align.data.r2gen import SPLITS
from s2d_align.utils.io import sha256_file, write_json

ANNOTATION_FILE = "annotation.json"
SUMMARY_FILE = "import_summary.json"

_WS = re.compile(r"\s+")
_NUM = re.compile(r"(\d+)")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to one space and strip the ends."""
    return _WS.sub(" ", text).strip()


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``CXR2`` before ``CXR10``, so file order never affects a split."""
    return tuple(int(part) if part.isdigit() else part for part in _NUM.split(text))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def seeded_split(
    ids: Iterable[str], seed: int, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, str]:
    """Assign ids to train/val/test by shuffling the naturally sorted ids with ``seed``.

    Sizes are round-half-up of ``ratio * n`` for train and val, test takes the rest; for the
    2,955 IU X-Ray studies with findings this gives R2Gen's 2,069 / 296 / 590.
    """
    ordered = sorted(set(ids), key=natural_key)
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_train = _round_half_up(ratios[0] * n)
    n_val = min(_round_half_up(ratios[1] * n), n - n_train)
    out: dict[str, str] = {}
    for i, study_id in enumerate(ordered):
        out[study_id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


@dataclass(frozen=True)
class ImportSummary:
    """What one import did, in the same shape for every importer.

    ``record`` is exactly what ``import_summary.json`` holds, importer-specific keys included;
    the other fields are the figures every importer reports.
    """

    record: dict[str, Any]
    counts: dict[str, int]  # entries written per split
    dropped_no_findings: int  # studies dropped for having no FINDINGS section
    skipped_bad: int  # bad inputs skipped under skip_bad
    image_root: str | None  # folder the image paths are relative to, when known
    notes: tuple[str, ...] = ()  # importer-specific one-line remarks for the user


def write_outputs(
    out_dir: Path, annotation: dict[str, list[dict]], record: dict[str, Any]
) -> dict[str, Any]:
    """Write ``annotation.json`` and ``import_summary.json``; returns the record as written.

    The written record is ``record`` plus the suite version and the annotation's sha256.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ann_path = write_json(out_dir / ANNOTATION_FILE, {s: annotation.get(s, []) for s in SPLITS})
    record = {
        **record,
        "suite_version": __version__,
        "annotation_file": ANNOTATION_FILE,
        "annotation_sha256": sha256_file(ann_path),
    }
    write_json(out_dir / SUMMARY_FILE, record)
    return record
