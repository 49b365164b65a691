"""SynthCXR: the embedded benchmark of procedurally drawn chest radiographs with reports.

``generate_synthcxr`` writes a dataset folder in the R2Gen format with per-study ground truth;
``ensure_synthcxr`` does the same into a content-addressed cache; ``plot_examples`` draws a grid
of examples. Modules: ``anatomy`` and ``render`` (pixels), ``findings`` (what each study shows),
``phrases`` and ``grammar`` (report text and labels), ``generate`` (files), ``figure``;
``paraphrase_reports`` rewrites a split's reports from their findings in another style.
"""

from s2d_align.data.synth.figure import plot_examples
from s2d_align.data.synth.generate import (
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    ensure_synthcxr,
    generate_synthcxr,
    is_complete,
    synth_fingerprint,
)
from s2d_align.data.synth.paraphrase import paraphrase_reports

__all__ = [
    "COMPLETE_MARKER",
    "GENERATOR_VERSION",
    "ensure_synthcxr",
    "generate_synthcxr",
    "is_complete",
    "paraphrase_reports",
    "plot_examples",
    "synth_fingerprint",
]
