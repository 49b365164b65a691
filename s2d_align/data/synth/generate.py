"""Orchestration: plan patients and studies, render and report them (in parallel), write files.

Output folder (the SynthCXR contract):

* ``images/<study_id>_<view>.png``: 8-bit greyscale PNGs (view 0 frontal, 1 lateral);
* ``annotation.json``: R2Gen format, ``image_path`` relative to the folder, plus ``study_id``
  and ``subject_id``;
* ``ground_truth.json``: per study the 14 CheXpert labels, key phrases (and the structured
  mentions they come from), the patient id, the drawn findings and the number of views;
* ``synth_meta.json``: generator version, settings and counts;
* ``COMPLETE``: written last; a folder without it is an interrupted generation.

Determinism: a study's report and pixels depend only on ``(seed, study index)`` and the
settings, never on the worker that made it, so any ``workers`` gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import SynthConfig
from s2d_align.data.synth.anatomy import sample_pose
from s2d_align.data.synth.findings import StudyPlan, plan_studies
from s2d_align.data.synth.grammar import write_report
from s2d_align.data.synth.render import render_frontal, render_lateral
from s2d_align.errors import ConfigError, DataError
from s2d_align.utils.io import atomic_write_bytes, sha256_text, write_json
from s2d_align.utils.progress import progress_bar

#: Bump whenever the bytes produced for given settings change (invalidates caches).
GENERATOR_VERSION = "1.0.0"
COMPLETE_MARKER = "COMPLETE"
_OUTPUT_NAMES = ("annotation.json", "ground_truth.json", "synth_meta.json", COMPLETE_MARKER)
_TEXT_STREAM, _IMAGE_STREAM = 1, 2
log = logging.getLogger(__name__)


def synth_fingerprint(cfg: SynthConfig) -> str:
    """Hash of the settings and generator version (names cache folders, fills COMPLETE)."""
    blob = json.dumps(asdict(cfg), sort_keys=True)
    return sha256_text("synthcxr", GENERATOR_VERSION, blob)[:16]


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _png_bytes(pixels: np.ndarray) -> bytes:
    # No metadata chunks (no time stamp): identical pixels give identical bytes.
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def make_study(plan: StudyPlan, settings: SynthConfig, out_dir: Path) -> dict[str, Any]:
    """Render, report and write one study; returns its annotation and ground-truth records."""
    text_rng = _rng(settings.seed, plan.index, _TEXT_STREAM)
    report = write_report(
        plan.findings, text_rng, visit=plan.visit, portable=plan.portable, views=settings.views
    )
    img_rng = _rng(settings.seed, plan.index, _IMAGE_STREAM)
    pose = sample_pose(img_rng)
    images = [render_frontal(plan.anatomy, pose, plan.findings, settings.size, img_rng)]
    if settings.views == 2:
        images.append(
            render_lateral(
                plan.anatomy, sample_pose(img_rng), plan.findings, settings.size, img_rng
            )
        )
    rel_paths = []
    for view, pixels in enumerate(images):
        rel = f"images/{plan.study_id}_{view}.png"
        (out_dir / rel).write_bytes(_png_bytes(pixels))
        rel_paths.append(rel)
    annotation = {
        "id": plan.study_id,
        "study_id": plan.study_id,
        "subject_id": plan.subject_id,
        "report": report.text,
        "image_path": rel_paths,
        "split": plan.split,
    }
    truth = {
        "labels": report.labels,
        "keyphrases": report.keyphrases,
        "mentions": [m.to_dict() for m in report.mentions],
        "subject_id": plan.subject_id,
        "split": plan.split,
        "visit": plan.visit,
        "views": settings.views,
        "findings": [f.to_dict() for f in plan.findings],
    }
    return {"annotation": annotation, "truth": truth}


def _make_chunk(
    plans: Sequence[StudyPlan], settings: SynthConfig, out_dir: str
) -> list[dict[str, Any]]:
    return [make_study(p, settings, Path(out_dir)) for p in plans]


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        ours = (out_dir / "annotation.json").exists() or (out_dir / COMPLETE_MARKER).exists()
        if not ours:
            raise DataError(
                f"{out_dir}: folder is not empty and holds no SynthCXR output; choose another --data-dir"
            )
        if not overwrite:
            raise DataError(
                f"{out_dir}: already holds a SynthCXR dataset (pass --force / overwrite=True to replace it)"
            )
        (out_dir / COMPLETE_MARKER).unlink(missing_ok=True)  # first: a killed rewrite is incomplete
        shutil.rmtree(out_dir / "images", ignore_errors=True)
        for name in _OUTPUT_NAMES:
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)


def _progress(total: int, enabled: bool):
    return progress_bar(total=total, wanted=enabled, desc="SynthCXR", unit="study")


def _summary(
    settings: SynthConfig, plans: list[StudyPlan], truths: dict[str, dict]
) -> dict[str, Any]:
    prevalence = {}
    for obs in OBSERVATIONS:
        values = Counter(t["labels"][obs] for t in truths.values())
        prevalence[obs] = {
            "positive": values[1],
            "negative": values[0],
            "uncertain": values[-1],
            "blank": values[None],
        }
    splits = ("train", "val", "test")
    return {
        "generator": "SynthCXR",
        "version": GENERATOR_VERSION,
        "settings": asdict(settings),
        "fingerprint": synth_fingerprint(settings),
        "studies": {s: sum(p.split == s for p in plans) for s in splits},
        "patients": {s: len({p.subject_id for p in plans if p.split == s}) for s in splits},
        "images": len(plans) * settings.views,
        "no_finding_share": round(prevalence["No Finding"]["positive"] / max(len(plans), 1), 4),
        "finding_types": dict(sorted(Counter(f.type for p in plans for f in p.findings).items())),
        "prevalence": prevalence,
    }


def generate_synthcxr(
    out_dir: str | Path,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int = 128,
    views: int = 1,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate SynthCXR into ``out_dir``; returns the path of its ``annotation.json``.

    ``workers`` > 1 renders in that many processes; the files are the same bytes either way.
    """
    settings = SynthConfig(n_train, n_val, n_test, size, views, seed)  # checks the values
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"synth: workers must be an integer >= 1, got {workers!r}")
    out_dir = Path(out_dir)
    _prepare_dir(out_dir, overwrite)
    plans = plan_studies(n_train, n_val, n_test, seed)
    records: list[dict[str, Any]] = []
    chunk = max(8, min(64, len(plans) // (workers * 4) or 1))
    chunks = [plans[i : i + chunk] for i in range(0, len(plans), chunk)]
    with _progress(len(plans), progress) as bar:
        if workers == 1 or len(chunks) == 1:
            for part in chunks:
                records += _make_chunk(part, settings, str(out_dir))
                bar.update(len(part))
        else:
            # spawn: safe even when the parent holds threads (torch, tokenizers)
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_make_chunk, part, settings, str(out_dir)) for part in chunks
                ]
                for part, future in zip(chunks, futures, strict=True):
                    records += future.result()
                    bar.update(len(part))
    annotation: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    truths: dict[str, dict[str, Any]] = {}
    for rec in records:
        annotation[rec["annotation"]["split"]].append(rec["annotation"])
        truths[rec["annotation"]["id"]] = rec["truth"]
    write_json(out_dir / "annotation.json", annotation)
    write_json(out_dir / "ground_truth.json", truths)
    write_json(out_dir / "synth_meta.json", _summary(settings, plans, truths))
    atomic_write_bytes(out_dir / COMPLETE_MARKER, (synth_fingerprint(settings) + "\n").encode())
    return out_dir / "annotation.json"


def is_complete(out_dir: str | Path, settings: SynthConfig | None = None) -> bool:
    """True when ``out_dir`` holds a finished generation (of ``settings``, when given)."""
    marker = Path(out_dir) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    return settings is None or marker.read_text().strip() == synth_fingerprint(settings)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so that parallel sweep workers generate a cached dataset only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; the COMPLETE marker still guards readers
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_synthcxr(
    cfg: SynthConfig, cache_root: str | Path, *, workers: int = 1, progress: bool = True
) -> Path:
    """The annotation.json of SynthCXR for ``cfg``, generating it if needed.

    Cached in ``cache_root/synthcxr-<fingerprint>/``; an interrupted generation (no COMPLETE
    marker) is thrown away and redone.
    """
    fingerprint = synth_fingerprint(cfg)
    target = Path(cache_root) / f"synthcxr-{fingerprint}"
    if is_complete(target, cfg):
        return target / "annotation.json"
    with _file_lock(Path(cache_root) / f".synthcxr-{fingerprint}.lock"):
        if is_complete(target, cfg):  # another process finished while we waited
            return target / "annotation.json"
        if target.exists():
            shutil.rmtree(target)
        started = time.perf_counter()
        path = generate_synthcxr(target, **asdict(cfg), workers=workers, progress=progress)
        log.info("SynthCXR generated in %.1fs: %s", time.perf_counter() - started, target)
        return path
