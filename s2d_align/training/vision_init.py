"""The initial weights of a tiny vision tower: its cached pre-training on the train split.

Labels come from the configured labeler (``eval.labeler``) applied to the train reports, so the
same code serves SynthCXR and a real annotation file; nothing from val or test is read. The
cache key covers the decoded train pixels, the reports and the labeler's signature.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config.schema import Config
from s2d_align.data.r2gen import Annotation
from s2d_align.errors import DataError
from s2d_align.training.data import StudyDataset

log = logging.getLogger(__name__)


def wants_vision_pretraining(cfg: Config) -> bool:
    return cfg.model.vision.source == "tiny" and cfg.model.vision.pretrain_steps > 0


def initial_vision_state(
    cfg: Config,
    annotation: Annotation,
    cache_root: Path,
    *,
    train: StudyDataset | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor] | None:
    """The pre-trained tiny backbone's state dict, or None when the config asks for none."""
    if not wants_vision_pretraining(cfg):
        return None
    from s2d_align.evaluation.labelers import get_labeler
    from s2d_align.models.vision_pretrain import label_targets, pretrained_tiny_vision

    studies = annotation.split("train")
    if not studies:
        raise DataError(f"{annotation.path}: vision pre-training needs a non-empty train split")
    if train is None:
        train = StudyDataset(
            studies, image_size=cfg.data.image_size, max_views=cfg.data.max_views, cache=True
        )
    pixels, views = train.pixel_arrays()
    reports = [s.report for s in studies]
    labeler = get_labeler(cfg.eval)
    digest = hashlib.sha256(str(labeler.signature).encode("utf-8"))
    digest.update(pixels.tobytes())
    digest.update(views.tobytes())
    for sid, report in zip((s.id for s in studies), reports, strict=True):
        digest.update(f"{sid}\0{report}\0".encode())
    state, folder = pretrained_tiny_vision(
        cfg,
        pixels,
        views,
        lambda: label_targets(labeler.label(reports), OBSERVATIONS),
        digest.hexdigest(),
        cache_root,
        extra_meta={"labeler": str(labeler.signature), "observations": list(OBSERVATIONS)},
        progress=progress,
    )
    log.info("vision tower pre-trained weights ready (%s)", folder.name)
    return state
