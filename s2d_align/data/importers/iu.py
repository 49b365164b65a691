"""Open-i IU X-Ray (``NLMCXR_reports.tgz`` + ``NLMCXR_png.tgz``) -> R2Gen ``annotation.json``.

Each report XML (``<eCitation>``) gives the study id (``<uId id="CXR1"/>``), the sections as
``<AbstractText Label="FINDINGS">`` / ``"IMPRESSION"``, MeSH major tags and one
``<parentImage id="CXR1_1_IM-0001-3001">`` per image; the PNG archive names images
``<parentImage id>.png``.

Choices, all recorded in ``import_summary.json``:

- ``report`` is the FINDINGS section, whitespace-normalised; IMPRESSION is kept under
  ``impression`` and MeSH major tags under ``mesh``, never mixed into the target.
- De-identification: Open-i replaced names, dates and some words with ``XXXX``. Every run of
  four or more capital X is written as the single token ``XXXX`` and runs separated only by
  whitespace (``XXXX XXXX``) collapse to one, so every redaction is the same one token; the
  redacted word is never guessed (``x-XXXX`` stays ``x-XXXX``).
- Studies without FINDINGS are dropped and listed. Studies without any image are dropped and
  listed (no input for the model). Studies with one image, or more than two, are kept with all
  their images in XML order and listed: R2Gen kept two views per study; here ``data.max_views``
  decides how many views a model reads.
- Open-i exposes no patient linkage, so entries carry no ``subject_id``.
- Split 7:1:2 over the kept studies by a seeded shuffle of the naturally sorted ids.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2d_align.data.importers.common import (
    ImportSummary,
    natural_key,
    normalize_whitespace,
    seeded_split,
    write_outputs,
)
from s2d_align.data.r2gen import SPLITS
from s2d_align.errors import DataError
from s2d_align.utils.progress import progress_bar

DEID_TOKEN = "XXXX"
_DEID_RUN = re.compile(r"X{4,}(?:\s+X{4,})*")
SPLIT_RATIOS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class IUReport:
    """The fields of one Open-i report XML that the importer keeps."""

    uid: str
    findings: str
    impression: str
    mesh: tuple[str, ...]
    images: tuple[str, ...]
    source: str
    deid_tokens: int  # XXXX tokens seen in findings + impression before collapsing


def map_deid(text: str) -> tuple[str, int]:
    """Map de-identification runs to one ``XXXX`` token; returns (text, tokens seen)."""
    seen = 0

    def _one(match: re.Match[str]) -> str:
        nonlocal seen
        seen += len(match.group(0).split())
        return DEID_TOKEN

    return _DEID_RUN.sub(_one, text), seen


def parse_report_xml(data: bytes, source: str) -> IUReport:
    """Parse one Open-i report XML; ``source`` names the file in errors."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{source}: malformed XML: {exc}") from None
    uid_el = root.find(".//uId")
    uid = (uid_el.get("id") or "").strip() if uid_el is not None else ""
    if not uid:
        raise DataError(f"{source}: no <uId id=...> element, cannot identify the study")

    sections: dict[str, str] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        text = normalize_whitespace("".join(el.itertext()))
        if label and text and label not in sections:
            sections[label] = text
    findings, n_find = map_deid(sections.get("FINDINGS", ""))
    impression, n_imp = map_deid(sections.get("IMPRESSION", ""))

    mesh = tuple(
        normalize_whitespace("".join(el.itertext()))
        for mesh_el in root.iter("MeSH")
        for el in mesh_el.iter("major")
        if "".join(el.itertext()).strip()
    )
    images: list[str] = []
    for el in root.iter("parentImage"):
        image_id = (el.get("id") or "").strip()
        if image_id and image_id not in images:
            images.append(image_id)
    return IUReport(uid, findings, impression, mesh, tuple(images), source, n_find + n_imp)


def iter_report_files(reports: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every ``.xml`` in a folder (recursively) or a tar archive."""
    if reports.is_dir():
        paths = sorted(reports.rglob("*.xml"), key=lambda p: natural_key(str(p)))
        for path in paths:
            yield str(path), path.read_bytes()
        return
    if not reports.is_file():
        raise DataError(
            f"reports not found: {reports} (give NLMCXR_reports.tgz or its extracted folder)"
        )
    try:
        # One pass in archive order (a gzip stream seeks backwards only by re-reading from the
        # start); the reports are small (about 4 MB unpacked), so they are sorted in memory.
        files: list[tuple[str, bytes]] = []
        with tarfile.open(reports, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    fh = tar.extractfile(member)
                    if fh is not None:
                        files.append((f"{reports}:{member.name}", fh.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{reports}: not a readable .tgz/.tar archive: {exc}") from None
    yield from sorted(files, key=lambda item: natural_key(item[0]))


@dataclass
class _Selection:
    """The parsed studies an import keeps, and the ones it drops with the reason."""

    kept: list[IUReport]
    no_findings: list[str]
    no_images: list[str]
    missing_images: list[dict[str, str]]


def import_iu(
    reports: str | Path,
    out_dir: str | Path,
    *,
    images: str | Path | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImportSummary:
    """Convert Open-i reports into ``out_dir/annotation.json``; returns the import summary."""
    reports, out_dir = Path(reports), Path(out_dir)
    image_dir = Path(images) if images is not None else None
    if image_dir is not None and not image_dir.is_dir():
        raise DataError(f"--images is not a folder: {image_dir}")
    parsed, bad, n_files = _read_reports(reports, skip_bad=skip_bad, progress=progress)
    selection = _select_studies(parsed, image_dir, skip_bad=skip_bad)
    if not selection.kept:
        raise DataError(f"{reports}: no study with findings and images to import")
    annotation = _build_annotation(selection.kept, seed)
    record = _summary_record(
        reports,
        image_dir,
        seed,
        n_files=n_files,
        n_parsed=len(parsed),
        selection=selection,
        annotation=annotation,
        bad=bad,
    )
    written = write_outputs(out_dir, annotation, record)
    few = len(record["fewer_than_2_images"])
    return ImportSummary(
        record=written,
        counts=record["counts"],
        dropped_no_findings=len(selection.no_findings),
        skipped_bad=len(bad),
        image_root=record["image_root"],
        notes=(
            f"{few} studies have fewer than 2 images (kept); "
            f"views per study: {record['views_per_study']}",
        ),
    )


def _read_reports(
    reports: Path, *, skip_bad: bool, progress: bool
) -> tuple[list[IUReport], list[dict[str, str]], int]:
    """Parse every report file: (reports in file order, bad files skipped, files read)."""
    parsed: list[IUReport] = []
    bad: list[dict[str, str]] = []
    first_file: dict[str, str] = {}
    n_files = 0
    files = progress_bar(
        iter_report_files(reports),
        desc="reading XML",
        unit="file",
        wanted=progress,
    )
    for source, data in files:
        n_files += 1
        try:
            report = parse_report_xml(data, source)
            if report.uid in first_file:
                raise DataError(
                    f"{source}: duplicate study id {report.uid!r} (also in {first_file[report.uid]})"
                )
        except DataError as exc:
            if not skip_bad:
                raise
            bad.append({"file": source, "reason": str(exc)})
            continue
        first_file[report.uid] = source
        parsed.append(report)
    if n_files == 0:
        raise DataError(f"{reports}: no .xml report files found")
    return parsed, bad, n_files


def _select_studies(
    parsed: list[IUReport], image_dir: Path | None, *, skip_bad: bool
) -> _Selection:
    """Keep the studies with findings and images (present on disk, when ``image_dir`` is given)."""
    no_findings = [r.uid for r in parsed if not r.findings]
    no_images = [r.uid for r in parsed if r.findings and not r.images]
    kept = [r for r in parsed if r.findings and r.images]
    missing_images: list[dict[str, str]] = []
    if image_dir is not None:
        checked: list[IUReport] = []
        for r in kept:
            absent = [f"{i}.png" for i in r.images if not (image_dir / f"{i}.png").is_file()]
            if absent and not skip_bad:
                raise DataError(
                    f"{r.source}: study {r.uid!r}: image(s) not found under {image_dir}: {', '.join(absent)}"
                )
            if absent:
                missing_images.append({"id": r.uid, "file": r.source, "missing": ", ".join(absent)})
            else:
                checked.append(r)
        kept = checked
    return _Selection(kept, no_findings, no_images, missing_images)


def _build_annotation(kept: list[IUReport], seed: int) -> dict[str, list[dict[str, Any]]]:
    """R2Gen entries per split, each split in natural id order."""
    assignment = seeded_split([r.uid for r in kept], seed, SPLIT_RATIOS)
    annotation: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for r in sorted(kept, key=lambda r: natural_key(r.uid)):
        split = assignment[r.uid]
        annotation[split].append(
            {
                "id": r.uid,
                "report": r.findings,
                "image_path": [f"{i}.png" for i in r.images],
                "split": split,
                "impression": r.impression,
                "mesh": list(r.mesh),
                "source_file": r.source.rsplit("/", 1)[-1],
            }
        )
    return annotation


def _summary_record(
    reports: Path,
    image_dir: Path | None,
    seed: int,
    *,
    n_files: int,
    n_parsed: int,
    selection: _Selection,
    annotation: dict[str, list[dict[str, Any]]],
    bad: list[dict[str, str]],
) -> dict[str, Any]:
    """The ``import_summary.json`` record: every choice made and every study dropped."""
    kept = selection.kept
    views: dict[str, int] = {}
    for r in kept:
        views[str(len(r.images))] = views.get(str(len(r.images)), 0) + 1
    return {
        "importer": "iu_xray",
        "importer_version": 1,
        "source": str(reports),
        "section": "findings",
        "image_root": str(image_dir) if image_dir is not None else None,
        "image_naming": "<parentImage id>.png (NLMCXR_png.tgz layout)",
        "images_checked": image_dir is not None,
        "seed": seed,
        "split_ratios": list(SPLIT_RATIOS),
        "xml_files": n_files,
        "studies_parsed": n_parsed,
        "studies_kept": len(kept),
        "counts": {s: len(annotation[s]) for s in SPLITS},
        "dropped_no_findings": {"count": len(selection.no_findings), "ids": selection.no_findings},
        "dropped_no_images": {"count": len(selection.no_images), "ids": selection.no_images},
        "dropped_missing_images": {
            "count": len(selection.missing_images),
            "entries": selection.missing_images,
        },
        "skipped_bad": {"count": len(bad), "entries": bad},
        "views_per_study": dict(sorted(views.items(), key=lambda kv: int(kv[0]))),
        "fewer_than_2_images": [r.uid for r in kept if len(r.images) < 2],
        "more_than_2_images": [r.uid for r in kept if len(r.images) > 2],
        "deid": {
            "token": DEID_TOKEN,
            "policy": "runs of 4+ capital X -> XXXX; whitespace-separated runs collapse to one token",
            "tokens_seen": sum(r.deid_tokens for r in kept),
        },
        "subject_ids": "not available in Open-i; entries carry none",
    }
