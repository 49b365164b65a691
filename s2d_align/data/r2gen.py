"""The R2Gen ``annotation.json`` format: loading, validation and per-study grouping.

The file is ``{"train": [...], "val": [...], "test": [...]}``. IU X-Ray entries hold one study
with its views (``image_path`` has two paths); MIMIC-CXR entries hold one image each and carry
``study_id`` and ``subject_id``, so a study with three images is three rows sharing one report.
``group_by_study=True`` folds such rows into one :class:`Study`.

An entry's ``split`` field is optional; when present it must name the list the entry is in.
Every problem is a :class:`DataError` naming the file and the entry (split, index and id). With
``skip_bad=True`` bad entries are left out instead and listed in :attr:`Annotation.skipped`;
nothing is dropped without a record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_align.data.images import load_image, resolve_under_root, verify_image
from s2d_align.errors import ConfigError, DataError
from s2d_align.utils.io import read_json
from s2d_align.utils.progress import progress_bar

__all__ = [
    "DATASETS",
    "SPLITS",
    "Annotation",
    "Study",
    "load_annotation",
    "load_image",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATASETS = ("iu_xray", "mimic_cxr", "synthcxr")
#: Entry keys with a meaning in the format; every other key of an entry lands in ``Study.extra``.
CORE_FIELDS = frozenset({"id", "report", "image_path", "split", "study_id", "subject_id"})


@dataclass(frozen=True)
class Study:
    """One sample: a report and its image(s). ``image_paths`` are absolute, inside the image root."""

    id: str
    report: str
    image_paths: tuple[str, ...]
    split: str
    subject_id: str | None = None
    study_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Annotation:
    """A loaded annotation file. ``skipped`` lists entries left out under ``skip_bad``."""

    path: Path
    image_root: Path
    splits: dict[str, list[Study]]
    dataset: str | None = None
    grouped: bool = False
    skipped: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # non-split top-level keys, if any

    def split(self, name: str) -> list[Study]:
        if name not in self.splits:
            raise DataError(
                f"{self.path}: unknown split {name!r} (known: {', '.join(self.splits)})"
            )
        return self.splits[name]

    def studies(self) -> Iterator[Study]:
        for rows in self.splits.values():
            yield from rows

    def reports(self, split: str) -> dict[str, str]:
        """``{id: report}`` of one split: the references that scoring reads."""
        return {s.id: s.report for s in self.split(split)}


class _EntryError(Exception):
    """A problem with one entry; the loader adds file and location before reporting it."""


class _Problems:
    """Raises on the first bad entry, or (``skip_bad``) records it and lets loading continue."""

    def __init__(self, path: Path, skip_bad: bool) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.skipped: list[dict[str, Any]] = []

    def report(self, split: str, index: int, entry_id: Any, reason: str) -> None:
        if not self.skip_bad:
            where = f"entry {split}[{index}]" + (
                f" (id {entry_id!r})" if entry_id is not None else ""
            )
            raise DataError(f"{self.path}: {where}: {reason}")
        self.skipped.append({"split": split, "index": index, "id": entry_id, "reason": reason})


def load_annotation(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    dataset: str | None = None,
    group_by_study: bool = False,
    skip_bad: bool = False,
    check_images: bool = False,
    progress: bool = False,
) -> Annotation:
    """Load and validate an R2Gen annotation.

    ``image_root`` defaults to the folder holding the file. ``dataset`` (``iu_xray``,
    ``mimic_cxr``, ``synthcxr`` or None) adds its own checks: MIMIC-CXR rows need ``study_id``
    and ``subject_id``. ``check_images`` opens and verifies every image (slow on big sets).
    """
    path = Path(path)
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    data = read_json(path)
    _check_layout(path, data)
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        raise DataError(f"image root is not a folder: {root} (annotation {path})")

    problems = _Problems(path, skip_bad)
    first_seen: dict[str, str] = {}
    indexed: dict[str, list[tuple[int, Study]]] = {}
    total = sum(len(data[s]) for s in SPLITS)
    bar = progress_bar(
        total=total,
        desc="checking images" if check_images else "loading annotation",
        unit="entry",
        wanted=progress and check_images,
    )
    with bar:
        for split in SPLITS:
            rows: list[tuple[int, Study]] = []
            for index, entry in enumerate(data[split]):
                bar.update()
                entry_id = entry.get("id") if isinstance(entry, dict) else None
                try:
                    study = _parse_entry(entry, split, root, dataset, group_by_study, check_images)
                    if study.id in first_seen:
                        raise _EntryError(
                            f"duplicate id (first used by entry {first_seen[study.id]})"
                        )
                except _EntryError as exc:
                    problems.report(split, index, entry_id, str(exc))
                    continue
                first_seen[study.id] = f"{split}[{index}]"
                rows.append((index, study))
            indexed[split] = rows

    splits = (
        _group_by_study(indexed, problems)
        if group_by_study
        else {split: [study for _, study in rows] for split, rows in indexed.items()}
    )
    if problems.skipped:
        log.warning(
            "%s: skipped %d bad entries (listed in Annotation.skipped and the manifest)",
            path,
            len(problems.skipped),
        )
    return Annotation(
        path=path,
        image_root=root.resolve(),
        splits=splits,
        dataset=dataset,
        grouped=group_by_study,
        skipped=problems.skipped,
        meta={k: v for k, v in data.items() if k not in SPLITS},
    )


def _check_layout(path: Path, data: Any) -> None:
    """Top-level structure: a mapping with exactly the three split lists (plus metadata keys)."""
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object with 'train', 'val' and 'test' lists, "
            f"got {type(data).__name__}"
        )
    for key, value in data.items():
        if key not in SPLITS and isinstance(value, list):
            hint = (
                " (write it as 'val')" if key in ("validate", "valid", "validation", "dev") else ""
            )
            raise DataError(
                f"{path}: unknown split {key!r}{hint}; known splits: {', '.join(SPLITS)}"
            )
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise DataError(
            f"{path}: missing split key(s) {', '.join(repr(m) for m in missing)}; an R2Gen "
            "annotation has 'train', 'val' and 'test' lists (an empty list is fine)"
        )
    for split in SPLITS:
        if not isinstance(data[split], list):
            raise DataError(
                f"{path}: split {split!r} must be a list of entries, got {type(data[split]).__name__}"
            )


def _as_id(value: Any, name: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise _EntryError(f"missing field {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _EntryError(
            f"field {name!r} must be a string or an integer, got {type(value).__name__}"
        )
    text = str(value).strip()
    if not text:
        raise _EntryError(f"field {name!r} is empty")
    return text


def _parse_entry(
    entry: Any,
    split: str,
    root: Path,
    dataset: str | None,
    group_by_study: bool,
    check_images: bool,
) -> Study:
    if not isinstance(entry, dict):
        raise _EntryError(f"expected an object, got {type(entry).__name__}")
    entry_id = _as_id(entry.get("id"), "id", required=True)
    assert entry_id is not None
    need_study = dataset == "mimic_cxr" or group_by_study
    study_id = _as_id(entry.get("study_id"), "study_id", required=need_study)
    subject_id = _as_id(entry.get("subject_id"), "subject_id", required=dataset == "mimic_cxr")

    if "report" not in entry:
        raise _EntryError("missing field 'report'")
    report = entry["report"]
    if not isinstance(report, str):
        raise _EntryError(f"field 'report' must be a string, got {type(report).__name__}")
    if not report.strip():
        raise _EntryError("empty report")

    declared = entry.get("split", split)
    if declared != split:
        raise _EntryError(f"its 'split' field says {declared!r} but it is listed under {split!r}")

    if "image_path" not in entry:
        raise _EntryError("missing field 'image_path'")
    rel_paths = entry["image_path"]
    if not isinstance(rel_paths, list) or not rel_paths:
        raise _EntryError(f"'image_path' must be a non-empty list of paths, got {rel_paths!r}")
    image_paths: list[str] = []
    for rel in rel_paths:
        try:
            resolved = resolve_under_root(rel, root)
            if check_images:
                verify_image(resolved)
        except DataError as exc:
            raise _EntryError(str(exc)) from None
        image_paths.append(str(resolved))

    return Study(
        id=entry_id,
        report=report,
        image_paths=tuple(image_paths),
        split=split,
        subject_id=subject_id,
        study_id=study_id,
        extra={k: v for k, v in entry.items() if k not in CORE_FIELDS},
    )


def _group_by_study(
    indexed: dict[str, list[tuple[int, Study]]], problems: _Problems
) -> dict[str, list[Study]]:
    """Fold per-image rows into one Study per ``study_id`` (first-appearance order).

    The report is taken once; rows of one study with different reports or patients are an
    error, and so is a study listed in two splits (that would leak it into evaluation).
    """
    home: dict[str, str] = {}  # study_id -> split it was first seen in
    grouped: dict[str, list[Study]] = {}
    for split, rows in indexed.items():
        members: dict[str, list[tuple[int, Study]]] = {}
        for index, row in rows:
            assert row.study_id is not None
            members.setdefault(row.study_id, []).append((index, row))
        out: list[Study] = []
        for study_id, group in members.items():
            reason = _group_conflict(group)
            if reason is None and home.get(study_id, split) != split:
                reason = f"study {study_id!r} is also listed in split {home[study_id]!r}"
            if reason is not None:
                for index, row in group:
                    problems.report(split, index, row.id, reason)
                continue
            home[study_id] = split
            first = group[0][1]
            out.append(
                Study(
                    id=study_id,
                    report=first.report,
                    image_paths=tuple(p for _, row in group for p in row.image_paths),
                    split=split,
                    subject_id=first.subject_id,
                    study_id=study_id,
                    extra={**first.extra, "row_ids": [row.id for _, row in group]},
                )
            )
        grouped[split] = out
    return grouped


def _group_conflict(group: list[tuple[int, Study]]) -> str | None:
    first_index, first = group[0]
    for index, row in group[1:]:
        if row.report.strip() != first.report.strip():
            return (
                f"rows of study {first.study_id!r} have different reports "
                f"(entries {first.split}[{first_index}] id {first.id!r} and "
                f"{row.split}[{index}] id {row.id!r})"
            )
        if row.subject_id != first.subject_id:
            return (
                f"rows of study {first.study_id!r} name different subject_id values "
                f"({first.subject_id!r} and {row.subject_id!r})"
            )
    return None
