"""The test-set manifest and audit of an R2Gen annotation.

The manifest is stored with every result: it says exactly which references a score was computed
against (content hashes of ids + report texts) and whether the split can be trusted (missing or
unreadable images, bad entries skipped on loading, patients or studies shared between splits,
duplicate reports). :func:`manifest_hash` is the hash the evaluation layer puts in a signature.

*Problems* invalidate an evaluation (missing or unreadable images, skipped bad entries, a split
with no entries, a patient or study in two splits); ``s2d-align data check --strict`` exits 1 on
them. *Warnings* are facts worth knowing that real datasets have (IU X-Ray repeats normal reports
verbatim, within and across splits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from s2d_align.data.images import verify_image
from s2d_align.data.r2gen import Annotation, Study
from s2d_align.errors import DataError
from s2d_align.utils.io import read_json, sha256_text, write_json
from s2d_align.utils.progress import progress_bar

MANIFEST_VERSION = 1
#: Files beside annotation.json that describe where it came from (importer or generator).
SOURCE_FILES = ("import_summary.json", "synth_meta.json")
_EXAMPLES = 5  # examples kept per finding in the manifest


def split_hash(studies: Iterable[Study]) -> str:
    """sha256 over the sorted ``(id, report)`` pairs of a split (independent of file order)."""
    return sha256_text(*(f"{i}\t{r}" for i, r in sorted((s.id, s.report) for s in studies)))


def manifest_hash(annotation: Annotation, split: str) -> str:
    """Content hash of one split's ids and report texts: the references a score depends on."""
    return split_hash(annotation.split(split))


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unique_reports(studies: Sequence[Study]) -> dict[str, str]:
    """One report per study (per-image rows of a MIMIC study share it): ``{study: text}``."""
    out: dict[str, str] = {}
    for s in studies:
        out.setdefault(s.study_id or s.id, _norm(s.report))
    return out


def _check_images(studies: Sequence[Study], progress: bool) -> tuple[list[dict], list[dict]]:
    missing: list[dict[str, str]] = []
    unreadable: list[dict[str, str]] = []
    paths = {p: s.id for s in studies for p in s.image_paths}
    for path, sid in progress_bar(
        paths.items(),
        desc="verifying images",
        unit="img",
        wanted=progress,
    ):
        if not Path(path).is_file():
            missing.append({"id": sid, "path": path})
            continue
        try:
            verify_image(path)
        except DataError as exc:
            unreadable.append({"id": sid, "path": path, "error": str(exc)})
    return missing, unreadable


def _split_section(
    name: str, studies: Sequence[Study], skipped: list[dict], check_images: bool, progress: bool
) -> dict[str, Any]:
    reports = _unique_reports(studies)
    counts = Counter(reports.values())
    dup_groups = {text: n for text, n in counts.items() if n > 1}
    subjects = {s.subject_id for s in studies if s.subject_id is not None}
    section: dict[str, Any] = {
        "entries": len(studies),
        "studies": len(reports),
        "images": sum(len(s.image_paths) for s in studies),
        "subjects": len(subjects) if subjects else None,
        "views_per_entry": {
            str(k): v for k, v in sorted(Counter(len(s.image_paths) for s in studies).items())
        },
        "hash": split_hash(studies),
        "skipped": sum(1 for e in skipped if e["split"] == name),
        "empty_reports": [
            e["id"] for e in skipped if e["split"] == name and e["reason"] == "empty report"
        ],
        "duplicate_reports": {
            "groups": len(dup_groups),
            "studies": sum(dup_groups.values()),
            "most_common": [
                {"text": t[:100], "count": n} for t, n in counts.most_common(_EXAMPLES) if n > 1
            ],
        },
        "images_checked": check_images,
    }
    if check_images:
        missing, unreadable = _check_images(studies, progress)
        section["missing_images"] = missing
        section["unreadable_images"] = unreadable
    return section


def _overlaps(annotation: Annotation, audited: Sequence[str]) -> dict[str, Any]:
    """Subjects, studies and report texts shared by two splits (pairs touching an audited one)."""
    names = list(annotation.splits)
    subjects = {
        n: {s.subject_id for s in annotation.splits[n] if s.subject_id is not None} for n in names
    }
    studies = {
        n: {s.study_id for s in annotation.splits[n] if s.study_id is not None} for n in names
    }
    texts = {n: set(_unique_reports(annotation.splits[n]).values()) for n in names}
    has_subjects = any(subjects.values())
    out: dict[str, Any] = {"patient": {} if has_subjects else None, "study": {}, "report_text": {}}
    for a, b in combinations(names, 2):
        if a not in audited and b not in audited:
            continue
        key = f"{a}|{b}"
        if has_subjects:
            shared = sorted(subjects[a] & subjects[b])
            out["patient"][key] = {"count": len(shared), "subjects": shared}
        shared_studies = sorted(studies[a] & studies[b])
        out["study"][key] = {"count": len(shared_studies), "studies": shared_studies}
        shared_texts = texts[a] & texts[b]
        out["report_text"][key] = {
            "count": len(shared_texts),
            "examples": sorted(shared_texts)[:_EXAMPLES],
        }
    return out


def _compact(obj: Any, limit: int = 10) -> Any:
    """Shrink long lists (id lists in import summaries) to a count, keeping the manifest small."""
    if isinstance(obj, dict):
        return {k: _compact(v, limit) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_compact(v, limit) for v in obj] if len(obj) <= limit else f"<{len(obj)} items>"
    return obj


def _source_info(annotation: Annotation) -> tuple[dict[str, Any] | None, str]:
    """The importer/generator record beside the annotation, and the report section it used."""
    for name in SOURCE_FILES:
        path = annotation.path.parent / name
        if path.is_file():
            info = read_json(path)
            if not isinstance(info, dict):
                return None, "unknown"
            if name == "synth_meta.json":
                return {"file": name, **_compact(info)}, str(
                    info.get("section", "findings (generated)")
                )
            return {"file": name, **_compact(info)}, str(info.get("section", "unknown"))
    return None, "unknown (no import_summary.json or synth_meta.json beside the annotation)"


def audit_annotation(
    annotation: Annotation,
    *,
    splits: Sequence[str] | None = None,
    check_images: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Build the manifest of ``annotation``; ``splits`` limits image checks and overlap pairs.

    Counts and hashes cover every split; problems found make ``manifest["ok"]`` False.
    """
    audited = list(splits) if splits else list(annotation.splits)
    for name in audited:
        annotation.split(name)  # unknown split -> DataError naming the file
    per_split = {
        name: _split_section(
            name, studies, annotation.skipped, check_images and name in audited, progress
        )
        for name, studies in annotation.splits.items()
    }
    overlaps = _overlaps(annotation, audited)
    source, section_used = _source_info(annotation)

    problems: list[str] = []
    warnings: list[str] = []
    if annotation.skipped:
        reasons = Counter(e["reason"].split(":")[0] for e in annotation.skipped)
        problems.append(
            f"{len(annotation.skipped)} bad entries skipped on loading ({dict(reasons)})"
        )
    for name in audited:
        sec = per_split[name]
        if sec["entries"] == 0:
            problems.append(f"split {name!r} is empty")
        if sec.get("missing_images"):
            problems.append(f"{len(sec['missing_images'])} missing images in {name!r}")
        if sec.get("unreadable_images"):
            problems.append(f"{len(sec['unreadable_images'])} unreadable images in {name!r}")
        if sec["duplicate_reports"]["groups"]:
            dup = sec["duplicate_reports"]
            warnings.append(
                f"{dup['studies']} studies in {name!r} share {dup['groups']} repeated report texts"
            )
    for kind, label in (("patient", "patients"), ("study", "studies")):
        for pair, found in (overlaps[kind] or {}).items():
            if found["count"]:
                problems.append(
                    f"{found['count']} {label} in more than one split ({pair.replace('|', ' & ')})"
                )
    for pair, found in overlaps["report_text"].items():
        if found["count"]:
            warnings.append(
                f"{found['count']} report texts occur in both {pair.replace('|', ' and ')}"
            )
    if overlaps["patient"] is None:
        warnings.append("no subject_id in the annotation: patient overlap cannot be checked")

    return {
        "manifest_version": MANIFEST_VERSION,
        "annotation": str(annotation.path),
        "image_root": str(annotation.image_root),
        "dataset": annotation.dataset,
        "grouped_by_study": annotation.grouped,
        "audited_splits": audited,
        "sections": section_used,
        "hash": sha256_text(*(f"{n}:{per_split[n]['hash']}" for n in annotation.splits)),
        "splits": per_split,
        "overlap": overlaps,
        "skipped": annotation.skipped,
        "source": source,
        "problems": problems,
        "warnings": warnings,
        "ok": not problems,
    }


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    return write_json(path, manifest)


def print_manifest(manifest: dict[str, Any], console: Any = None) -> None:
    """Render the manifest as a rich table plus problem and warning lines."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: do not squeeze the table into 80 columns
            console = Console(width=120)
    table = Table(title=f"manifest of {manifest['annotation']}")
    for col in (
        "split",
        "rows",
        "studies",
        "images",
        "subjects",
        "views",
        "dup. reports",
        "missing img",
        "bad img",
        "skipped",
        "hash",
    ):
        table.add_column(
            col,
            justify="left" if col in ("split", "views", "hash") else "right",
            no_wrap=col in ("split", "hash"),
        )
    for name, sec in manifest["splits"].items():
        checked = sec["images_checked"]
        table.add_row(
            name,
            str(sec["entries"]),
            str(sec["studies"]),
            str(sec["images"]),
            "-" if sec["subjects"] is None else str(sec["subjects"]),
            " ".join(f"{k}:{v}" for k, v in sec["views_per_entry"].items()),
            str(sec["duplicate_reports"]["studies"]),
            str(len(sec["missing_images"])) if checked else "-",
            str(len(sec["unreadable_images"])) if checked else "-",
            str(sec["skipped"]),
            sec["hash"][:12],
        )
    console.print(table)
    console.print(f"sections: {manifest['sections']}   overall hash: {manifest['hash'][:16]}")
    unchecked = [n for n, sec in manifest["splits"].items() if not sec["images_checked"]]
    if unchecked:
        console.print(f"images not opened in: {', '.join(unchecked)} ('-' above)")
    for line in manifest["problems"]:
        console.print(f"[bold red]problem:[/] {line}")
    for line in manifest["warnings"]:
        console.print(f"[yellow]warning:[/] {line}")
    console.print(
        "[green]OK[/]: no problem that invalidates evaluation"
        if manifest["ok"]
        else f"[red]{len(manifest['problems'])} problem(s)[/]"
    )
