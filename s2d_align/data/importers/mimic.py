"""MIMIC-CXR-JPG -> R2Gen ``annotation.json`` (one row per image, findings only).

Layout read (PhysioNet's MIMIC-CXR-JPG 2.0.0 and the MIMIC-CXR report files):

- ``ROOT/mimic-cxr-2.0.0-split.csv`` (or ``.csv.gz``): ``dicom_id, study_id, subject_id, split``
  with split ``train`` / ``validate`` / ``test``; ``validate`` is written as ``val``.
- reports ``REPORTS/files/p10/p10000032/s50414267.txt`` (``REPORTS`` defaults to ``ROOT``; a
  reports folder without the ``files/`` level is accepted too);
- images ``ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg``. ``image_path`` is written
  relative to ``ROOT``, so ``ROOT`` is the image root when loading the annotation.

The FINDINGS section is extracted from the free text (see :func:`extract_section`); studies
without one are dropped and counted, as R2Gen's MIMIC-CXR annotation did. The IMPRESSION, when
present, is kept under ``impression``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from s2d_align.data.importers.common import normalize_whitespace, progress_enabled, write_outputs
from s2d_align.data.r2gen import SPLITS
from s2d_align.errors import DataError

SPLIT_CSV_NAMES = ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
REQUIRED_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")

# Section names recognised in any case; any other line-start name in capitals ("WET READ:",
# "PORTABLE AP CHEST:") also starts a new section.
KNOWN_SECTIONS = frozenset(
    {
        "addendum", "clinical history", "comment", "comments", "comparison", "comparisons",
        "conclusion", "conclusions", "exam", "examination", "final report", "finding",
        "findings", "history", "impression", "impressions", "indication", "indications",
        "notification", "reason for exam", "reason for examination", "recommendation",
        "recommendation(s)", "recommendations", "technique", "wet read",
    }
)  # fmt: skip
# Combined headers ("FINDINGS AND IMPRESSION:", "FINDINGS/IMPRESSION:") are not findings: like
# MIMIC-CXR's own section parser, they count as an impression, so such studies are dropped.
FINDINGS_NAMES = frozenset({"findings", "finding"})
IMPRESSION_NAMES = frozenset({"impression", "impressions"})

_LINE_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z &/()\-]{0,48}[A-Za-z)])[ \t]*:", re.M)
# Closing headers written mid-line ("... no effusion. IMPRESSION: normal") end a section too,
# but only in capitals: "impression:" inside a sentence is prose.
_INLINE_HEADER = re.compile(
    r"\b(IMPRESSIONS?|CONCLUSIONS?|RECOMMENDATIONS?|RECOMMENDATION\(S\)|NOTIFICATION|ADDENDUM)[ \t]*:"
)


def _is_header(name: str) -> bool:
    name = name.strip()
    letters = sum(c.isalpha() for c in name)
    return name.lower() in KNOWN_SECTIONS or (name.isupper() and letters >= 3)


def extract_section(text: str, names: frozenset[str] = FINDINGS_NAMES) -> str:
    """Text of the first non-empty section whose line-start header is one of ``names``.

    Headers match in any case (``FINDINGS:``, ``Findings:``); the section runs to the next
    header: a known section name in any case or any capitalised name at a line start, or a
    capitalised closing header (``IMPRESSION:``) mid-line. Whitespace is normalised. Returns
    "" when there is no such section.
    """
    headers = [m for m in _LINE_HEADER.finditer(text) if _is_header(m.group(1))]
    boundaries = sorted(
        {m.start() for m in headers} | {m.start() for m in _INLINE_HEADER.finditer(text)}
    )
    for m in headers:
        if m.group(1).strip().lower() not in names:
            continue
        end = next((b for b in boundaries if b >= m.end()), len(text))
        body = normalize_whitespace(text[m.end() : end])
        if body:
            return body
    return ""


def _find_split_csv(root: Path) -> Path:
    for name in SPLIT_CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root}: no {SPLIT_CSV_NAMES[0]} (or .gz) found; --root must be the MIMIC-CXR-JPG folder"
    )


def _read_split_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the split CSV: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}"
        )
    return [(reader.line_num, row) for row in reader]


def report_path(reports_root: Path, subject_id: str, study_id: str) -> Path:
    """``files/p10/p10000032/s50414267.txt``; the ``files/`` level may be absent."""
    rel = Path(f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}.txt")
    with_files = reports_root / "files" / rel
    return (
        with_files
        if with_files.is_file() or not (reports_root / rel).is_file()
        else reports_root / rel
    )


def image_relpath(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


class _RowProblems:
    def __init__(self, csv_path: Path, skip_bad: bool) -> None:
        self.csv_path, self.skip_bad = csv_path, skip_bad
        self.entries: list[dict[str, Any]] = []

    def report(self, line: int, dicom_id: str | None, reason: str) -> None:
        if not self.skip_bad:
            who = f" (dicom_id {dicom_id!r})" if dicom_id else ""
            raise DataError(f"{self.csv_path}:{line}{who}: {reason}")
        self.entries.append({"line": line, "id": dicom_id, "reason": reason})


def import_mimic(
    root: str | Path,
    out_dir: str | Path,
    *,
    reports: str | Path | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert MIMIC-CXR-JPG into ``out_dir/annotation.json``; returns the import summary.

    ``check_images`` checks that each JPEG exists (a stat, not a decode; ``data check`` decodes).
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"--root is not a folder: {root}")
    reports_root = Path(reports) if reports is not None else root
    if not reports_root.is_dir():
        raise DataError(f"--report-texts is not a folder: {reports_root}")
    csv_path = _find_split_csv(root)
    rows = _read_split_csv(csv_path)
    problems = _RowProblems(csv_path, skip_bad)

    findings_of: dict[str, tuple[str, str] | str] = {}  # study -> (findings, impression) | error
    annotation: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen: dict[str, int] = {}
    study_split: dict[str, str] = {}
    no_findings_studies: set[str] = set()
    no_findings_rows = 0
    for line, row in tqdm(
        rows, desc="importing rows", unit="row", disable=not progress_enabled(progress)
    ):
        dicom = (row.get("dicom_id") or "").strip()
        study = (row.get("study_id") or "").strip()
        subject = (row.get("subject_id") or "").strip()
        split_raw = (row.get("split") or "").strip()
        empty = [
            c
            for c, v in zip(REQUIRED_COLUMNS, (dicom, study, subject, split_raw), strict=True)
            if not v
        ]
        if empty:
            problems.report(line, dicom or None, f"empty field(s) {', '.join(empty)}")
            continue
        if split_raw not in SPLIT_NAMES:
            problems.report(
                line, dicom, f"unknown split {split_raw!r} (expected train, validate or test)"
            )
            continue
        split = SPLIT_NAMES[split_raw]
        if dicom in seen:
            problems.report(line, dicom, f"duplicate dicom_id (first on line {seen[dicom]})")
            continue
        seen[dicom] = line
        if study_split.setdefault(study, split) != split:
            problems.report(line, dicom, f"study {study} is also in split {study_split[study]!r}")
            continue

        if study not in findings_of:
            findings_of[study] = _read_sections(report_path(reports_root, subject, study))
        sections = findings_of[study]
        if isinstance(sections, str):
            problems.report(line, dicom, sections)
            continue
        findings, impression = sections
        if not findings:
            no_findings_studies.add(study)
            no_findings_rows += 1
            continue
        rel = image_relpath(subject, study, dicom)
        if check_images and not (root / rel).is_file():
            problems.report(line, dicom, f"image not found: {root / rel}")
            continue
        entry: dict[str, Any] = {
            "id": dicom,
            "study_id": study,
            "subject_id": subject,
            "report": findings,
            "image_path": [rel],
            "split": split,
        }
        if impression:
            entry["impression"] = impression
        annotation[split].append(entry)

    if not any(annotation.values()):
        raise DataError(f"{csv_path}: no row with a findings section and an image to import")
    summary = {
        "importer": "mimic_cxr",
        "importer_version": 1,
        "source": str(root),
        "reports": str(reports_root),
        "split_csv": str(csv_path),
        "section": "findings",
        "image_root": str(root),
        "images_checked": check_images,
        "csv_rows": len(rows),
        "counts": {s: len(annotation[s]) for s in SPLITS},
        "studies": {s: len({e["study_id"] for e in annotation[s]}) for s in SPLITS},
        "subjects": {s: len({e["subject_id"] for e in annotation[s]}) for s in SPLITS},
        "dropped_no_findings": {
            "studies": len(no_findings_studies),
            "rows": no_findings_rows,
            "study_ids": sorted(no_findings_studies),
        },
        "skipped_bad": {"count": len(problems.entries), "entries": problems.entries},
        "split_names": {"validate": "val"},
    }
    write_outputs(out_dir, annotation, summary)
    return summary


def _read_sections(path: Path) -> tuple[str, str] | str:
    """(findings, impression) of one report file, or the reason it cannot be read."""
    if not path.is_file():
        return f"report not found: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read report {path}: {exc}"
    return extract_section(text, FINDINGS_NAMES), extract_section(text, IMPRESSION_NAMES)
