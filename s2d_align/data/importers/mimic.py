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

from s2d_align.data.importers.common import ImportSummary, normalize_whitespace, write_outputs
from s2d_align.data.r2gen import SPLITS
from s2d_align.errors import DataError
from s2d_align.utils.progress import progress_bar

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
) -> ImportSummary:
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
    collector = _RowCollector(root, reports_root, _RowProblems(csv_path, skip_bad), check_images)
    for line, row in progress_bar(rows, wanted=progress, desc="importing rows", unit="row"):
        collector.add(line, row)
    annotation = collector.annotation
    if not any(annotation.values()):
        raise DataError(f"{csv_path}: no row with a findings section and an image to import")
    record = _summary_record(collector, csv_path, n_rows=len(rows))
    written = write_outputs(out_dir, annotation, record)
    return ImportSummary(
        record=written,
        counts=record["counts"],
        dropped_no_findings=len(collector.no_findings_studies),
        skipped_bad=len(collector.problems.entries),
        image_root=record["image_root"],
        notes=(
            "studies per split: " + ", ".join(f"{s} {n}" for s, n in record["studies"].items()),
        ),
    )


class _RowCollector:
    """Turns split-CSV rows into annotation entries, reporting each bad row once."""

    def __init__(
        self, root: Path, reports_root: Path, problems: _RowProblems, check_images: bool
    ) -> None:
        self.root, self.reports_root = root, reports_root
        self.problems, self.check_images = problems, check_images
        self.annotation: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.findings_of: dict[str, tuple[str, str] | str] = {}  # study -> sections | error
        self.seen: dict[str, int] = {}  # dicom_id -> first CSV line
        self.study_split: dict[str, str] = {}
        self.no_findings_studies: set[str] = set()
        self.no_findings_rows = 0

    def add(self, line: int, row: dict[str, str]) -> None:
        """Add the row's image as an entry, or drop it (no findings) or report it (bad)."""
        fields = self._checked_fields(line, row)
        if fields is None:
            return
        dicom, study, subject, split = fields
        if study not in self.findings_of:
            self.findings_of[study] = _read_sections(report_path(self.reports_root, subject, study))
        sections = self.findings_of[study]
        if isinstance(sections, str):
            self.problems.report(line, dicom, sections)
            return
        findings, impression = sections
        if not findings:
            self.no_findings_studies.add(study)
            self.no_findings_rows += 1
            return
        rel = image_relpath(subject, study, dicom)
        if self.check_images and not (self.root / rel).is_file():
            self.problems.report(line, dicom, f"image not found: {self.root / rel}")
            return
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
        self.annotation[split].append(entry)

    def _checked_fields(self, line: int, row: dict[str, str]) -> tuple[str, str, str, str] | None:
        """(dicom, study, subject, split) of a well-formed row; None once a problem is reported."""
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
            self.problems.report(line, dicom or None, f"empty field(s) {', '.join(empty)}")
            return None
        if split_raw not in SPLIT_NAMES:
            self.problems.report(
                line, dicom, f"unknown split {split_raw!r} (expected train, validate or test)"
            )
            return None
        split = SPLIT_NAMES[split_raw]
        if dicom in self.seen:
            self.problems.report(
                line, dicom, f"duplicate dicom_id (first on line {self.seen[dicom]})"
            )
            return None
        self.seen[dicom] = line
        if self.study_split.setdefault(study, split) != split:
            self.problems.report(
                line, dicom, f"study {study} is also in split {self.study_split[study]!r}"
            )
            return None
        return dicom, study, subject, split


def _summary_record(collector: _RowCollector, csv_path: Path, *, n_rows: int) -> dict[str, Any]:
    """The ``import_summary.json`` record: sources, counts and every row dropped or skipped."""
    annotation, problems = collector.annotation, collector.problems
    return {
        "importer": "mimic_cxr",
        "importer_version": 1,
        "source": str(collector.root),
        "reports": str(collector.reports_root),
        "split_csv": str(csv_path),
        "section": "findings",
        "image_root": str(collector.root),
        "images_checked": collector.check_images,
        "csv_rows": n_rows,
        "counts": {s: len(annotation[s]) for s in SPLITS},
        "studies": {s: len({e["study_id"] for e in annotation[s]}) for s in SPLITS},
        "subjects": {s: len({e["subject_id"] for e in annotation[s]}) for s in SPLITS},
        "dropped_no_findings": {
            "studies": len(collector.no_findings_studies),
            "rows": collector.no_findings_rows,
            "study_ids": sorted(collector.no_findings_studies),
        },
        "skipped_bad": {"count": len(problems.entries), "entries": problems.entries},
        "split_names": {"validate": "val"},
    }


def _read_sections(path: Path) -> tuple[str, str] | str:
    """(findings, impression) of one report file, or the reason it cannot be read."""
    if not path.is_file():
        return f"report not found: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read report {path}: {exc}"
    return extract_section(text, FINDINGS_NAMES), extract_section(text, IMPRESSION_NAMES)
