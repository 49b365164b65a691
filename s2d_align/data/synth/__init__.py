"""SynthCXR: the embedded benchmark of procedurally drawn chest radiographs with reports.

``generate_synthcxr`` writes a dataset folder in the R2Gen format with per-study ground truth;
``ensure_synthcxr`` does the same into a content-addressed cache; ``plot_examples`` draws a grid
of examples. Modules: ``anatomy`` and ``render`` (pixels), ``findings`` (what each study shows),
``phrases`` and ``grammar`` (report text and labels), ``generate`` (files), ``figure``.
"""

from s2d_align.data.synth.figure import plot_examples
from s2d_align.data.synth.generate import (
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    SynthSettings,
    ensure_synthcxr,
    generate_synthcxr,
    is_complete,
)

__all__ = [
    "COMPLETE_MARKER",
    "GENERATOR_VERSION",
    "SynthSettings",
    "ensure_synthcxr",
    "generate_synthcxr",
    "is_complete",
    "plot_examples",
]
