"""Builders for small on-disk datasets used by the data tests (R2Gen, Open-i XML, MIMIC-CXR)."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: Path, size: int = 16, value: int = 128, fmt: str | None = None) -> Path:
    """A small greyscale image with a gradient (so resizing has something to do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.add.outer(np.arange(size), np.arange(size)) * 4 + value) % 256
    Image.fromarray(arr.astype(np.uint8)).save(path, format=fmt)
    return path


def entry(
    sid: str, split: str, report: str = "The lungs are clear.", views: int = 2, **extra: Any
) -> dict:
    return {
        "id": sid,
        "report": report,
        "image_path": [f"{sid}/{v}.png" for v in range(views)],
        "split": split,
        **extra,
    }


def write_r2gen(root: Path, splits: dict[str, list[dict]], images: bool = True) -> Path:
    """Write ``root/annotation.json`` and a PNG for every image path of every entry."""
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for rows in splits.values():
            for row in rows:
                paths = row.get("image_path", []) if isinstance(row, dict) else []
                for rel in paths if isinstance(paths, list) else []:
                    if isinstance(rel, str) and not rel.startswith(("/", "..")):
                        write_image(root / rel)
    path = root / "annotation.json"
    path.write_text(json.dumps(splits, indent=1))
    return path


def iu_xml(
    uid: str,
    findings: str | None,
    impression: str = "No acute disease.",
    mesh: tuple[str, ...] = ("normal",),
    images: tuple[str, ...] = ("1001", "2001"),
) -> str:
    """An Open-i style report XML; image ids become ``<uid>_IM-<n>``."""
    sections = [
        ("COMPARISON", "None."),
        ("INDICATION", "Chest pain"),
        ("FINDINGS", findings),
        ("IMPRESSION", impression),
    ]
    abstract = "\n".join(
        f'        <AbstractText Label="{label}">{text}</AbstractText>'
        if text is not None
        else f'        <AbstractText Label="{label}"/>'
        for label, text in sections
    )
    majors = "\n".join(f"    <major>{m}</major>" for m in mesh)
    parents = "\n".join(
        f'  <parentImage id="{uid}_IM-{i}">\n    <figureId>F{k}</figureId>\n'
        f"    <caption>Xray Chest</caption>\n  </parentImage>"
        for k, i in enumerate(images, 1)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="{uid}"/>
  <pmcId id="{uid[3:]}"/>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      <Abstract>
{abstract}
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH>
{majors}
    <automatic>not a major tag</automatic>
  </MeSH>
{parents}
</eCitation>
"""


def write_iu_folder(folder: Path, reports: dict[str, str]) -> Path:
    """``reports``: file name -> XML text."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in reports.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def make_tgz(folder: Path, out: Path, arcdir: str = "ecgen-radiology") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{arcdir}/{path.name}")
    return out


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 {header}
 {findings}

 IMPRESSION:
 No acute cardiopulmonary process.
"""


def write_mimic(
    root: Path, studies: list[dict[str, Any]], reports_root: Path | None = None
) -> Path:
    """``studies``: dicts with subject, study, split, dicoms, and ``report`` text (or None)."""
    reports_root = reports_root or root
    rows = []
    for st in studies:
        subject, study = st["subject"], st["study"]
        if st.get("report") is not None:
            rep = reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            rep.parent.mkdir(parents=True, exist_ok=True)
            rep.write_text(st["report"])
        for dicom in st["dicoms"]:
            if st.get("images", True):
                write_image(
                    root
                    / "files"
                    / f"p{subject[:2]}"
                    / f"p{subject}"
                    / f"s{study}"
                    / f"{dicom}.jpg",
                    fmt="JPEG",
                )
            rows.append(
                {"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": st["split"]}
            )
    with (root / "mimic-cxr-2.0.0-split.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["dicom_id", "study_id", "subject_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root
