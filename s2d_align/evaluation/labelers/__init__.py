"""CheXpert-14 labelers for clinical-efficacy metrics: ``rules`` (default) and ``chexbert``."""

from s2d_align.evaluation.labelers.base import Labeler, Labels, get_labeler

__all__ = ["Labeler", "Labels", "get_labeler"]
