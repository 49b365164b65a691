"""``s2d-align data import-iu | import-mimic | check``: real-data importers and the audit.

``data check`` always prints the manifest and writes it as JSON. It exits 0 unless ``--strict``
is given, in which case any *problem* that invalidates evaluation (missing or unreadable images,
bad entries, an empty split, a patient or study in two splits) makes it exit 1. Warnings
(repeated report texts) never change the exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from s2d_align.cli.vocab import command, option
from s2d_align.data.importers.common import ImportSummary
from s2d_align.data.r2gen import DATASETS, SPLITS
from s2d_align.utils.progress import progress_enabled


def _add_data_dir(p) -> None:
    option(p, "--data-dir", "--out", required=True, type=Path, metavar="DIR",
           help="dataset folder to write annotation.json into")  # fmt: skip


def register(group: argparse._SubParsersAction) -> None:
    p = command(
        group,
        "import-iu",
        help="Open-i IU X-Ray reports (XML) -> annotation.json",
        example="s2d-align data import-iu --report-texts NLMCXR_reports.tgz "
        "--images NLMCXR_png/ --data-dir data/iu",
    )
    option(
        p,
        "--report-texts",
        "--reports",
        required=True,
        type=Path,
        metavar="PATH",
        help="NLMCXR_reports.tgz or its extracted folder",
    )
    _add_data_dir(p)
    p.add_argument("--images", type=Path, help="folder of NLMCXR PNGs; checks every image exists")
    p.add_argument("--seed", type=int, default=0, help="seed of the 7:1:2 split")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and list bad XML files instead of failing"
    )
    p.set_defaults(handler=_import_iu)

    p = command(
        group,
        "import-mimic",
        help="MIMIC-CXR-JPG (split CSV, reports, JPEGs) -> annotation.json",
        example="s2d-align data import-mimic --root /data/mimic-cxr-jpg --data-dir data/mimic",
    )
    p.add_argument(
        "--root", required=True, type=Path, help="MIMIC-CXR-JPG folder (split CSV, files/)"
    )
    _add_data_dir(p)
    option(
        p,
        "--report-texts",
        "--reports",
        type=Path,
        metavar="DIR",
        help="MIMIC-CXR reports folder (default: under --root)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and list bad rows instead of failing"
    )
    p.add_argument(
        "--no-image-check", action="store_true", help="do not check that each JPEG exists"
    )
    p.set_defaults(handler=_import_mimic)

    p = command(
        group,
        "check",
        help="test-set manifest and audit of an annotation.json",
        example="s2d-align data check data/iu/annotation.json --images NLMCXR_png/ "
        "--out manifest.json --strict",
    )
    p.add_argument("annotation", type=Path, metavar="ANN", help="R2Gen annotation.json")
    p.add_argument("--images", type=Path, help="image root (default: the annotation's folder)")
    p.add_argument(
        "--out", type=Path, help="manifest JSON (default: manifest[.SPLIT].json beside ANN)"
    )
    p.add_argument("--split", choices=SPLITS, help="audit one split (counts and hashes cover all)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset-specific checks (mimic_cxr: ids)")
    p.add_argument("--group-by-study", action="store_true", help="fold per-image rows into studies")
    p.add_argument("--no-image-check", action="store_true", help="skip opening the images")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a problem invalidates evaluation"
    )
    p.set_defaults(handler=_check)


def _progress() -> bool:
    return progress_enabled(True)


def _print_import(summary: ImportSummary, out: Path) -> None:
    counts = summary.counts
    print(f"wrote {out / 'annotation.json'}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    print(
        f"dropped {summary.dropped_no_findings} studies without a FINDINGS section; "
        f"skipped {summary.skipped_bad} bad inputs (listed in import_summary.json)"
    )
    root = summary.image_root
    print(
        f"image root for loading: {root or '<folder of the PNGs> (pass it as --images / data.image_root)'}"
    )
    for note in summary.notes:
        print(note)


def _import_iu(args: argparse.Namespace) -> int:
    from s2d_align.data.importers.iu import import_iu

    summary = import_iu(
        args.report_texts,
        args.data_dir,
        images=args.images,
        seed=args.seed,
        skip_bad=args.skip_bad,
        progress=_progress(),
    )
    _print_import(summary, args.data_dir)
    return 0


def _import_mimic(args: argparse.Namespace) -> int:
    from s2d_align.data.importers.mimic import import_mimic

    summary = import_mimic(
        args.root,
        args.data_dir,
        reports=args.report_texts,
        skip_bad=args.skip_bad,
        check_images=not args.no_image_check,
        progress=_progress(),
    )
    _print_import(summary, args.data_dir)
    return 0


def _print_bad_images(manifest: dict[str, Any], limit: int = 20) -> None:
    """Name the missing and unreadable image files (the table only counts them)."""
    lines = [
        f"{split}: {kind} image {bad['path']} (entry {bad['id']})"
        + (
            f": {str(bad['error']).removeprefix(str(bad['path']) + ': ')}"
            if bad.get("error")
            else ""
        )
        for split, sec in manifest["splits"].items()
        for kind, key in (("missing", "missing_images"), ("unreadable", "unreadable_images"))
        for bad in sec.get(key) or []
    ]
    for line in lines[:limit]:
        print(line)
    if len(lines) > limit:
        print(f"... and {len(lines) - limit} more bad image(s), listed in the manifest JSON")


def _check(args: argparse.Namespace) -> int:
    from s2d_align.data.audit import audit_annotation, print_manifest, write_manifest
    from s2d_align.data.r2gen import load_annotation
    from s2d_align.utils.io import check_output_path

    out = args.out or args.annotation.parent / (
        f"manifest.{args.split}.json" if args.split else "manifest.json"
    )
    check_output_path(out, {"ANN": args.annotation})
    # skip_bad: the audit lists every bad entry instead of stopping at the first one.
    annotation = load_annotation(
        args.annotation,
        args.images,
        dataset=args.dataset,
        group_by_study=args.group_by_study,
        skip_bad=True,
    )
    manifest = audit_annotation(
        annotation,
        splits=[args.split] if args.split else None,
        check_images=not args.no_image_check,
        progress=_progress(),
    )
    print_manifest(manifest)
    _print_bad_images(manifest)
    write_manifest(manifest, out)
    print(f"manifest written to {out}")
    return 1 if args.strict and not manifest["ok"] else 0
