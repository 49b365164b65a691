"""The qualitative panel: image, reference and generated reports with findings highlighted.

Sentences are coloured by what the project's clinical text analyser finds in them (positive,
uncertain, negated finding, or nothing), so a reader sees at a glance whether a model reports
the reference's abnormalities. Samples are chosen deterministically: the test studies whose
reference has the most positive findings (ties by id), from the lowest-seed runs.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from s2d_align.harness.reports.figures import _save

COLOURS = {"positive": "#c0392b", "uncertain": "#d68910", "negative": "#1e8449", "none": "#222222"}
WRAP = 46


@dataclass
class Example:
    sample_id: str
    image_paths: list[str]
    reference: str
    generated: dict[str, str]  # variant -> text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def sentence_status(sentence: str) -> str:
    """positive > uncertain > negative > none, from the analyser's labels of the sentence."""
    from s2d_align.chexpert import OBSERVATIONS
    from s2d_align.evaluation.analyser import analyse

    labels = analyse(sentence).labels
    values = [labels.get(o) for o in OBSERVATIONS if o != "No Finding"]
    if 1 in values:
        return "positive"
    if -1 in values:
        return "uncertain"
    if 0 in values:
        return "negative"
    return "none"


def positive_count(text: str) -> int:
    from s2d_align.evaluation.analyser import analyse

    return sum(1 for o, v in analyse(text).labels.items() if v == 1 and o != "No Finding")


def pick_examples(
    references: Mapping[str, tuple[str, list[str]]],
    generated: Mapping[str, Mapping[str, str]],
    n: int = 3,
) -> list[Example]:
    """``references``: id -> (report, images); ``generated``: variant -> id -> text."""
    common = set(references)
    for preds in generated.values():
        common &= set(preds)
    ranked = sorted(common, key=lambda i: (-positive_count(references[i][0]), i))
    return [
        Example(i, references[i][1], references[i][0], {v: p[i] for v, p in generated.items()})
        for i in ranked[:n]
    ]


def _load_image(paths: Sequence[str]) -> np.ndarray | None:
    from PIL import Image

    for p in paths:
        if Path(p).is_file():
            with Image.open(p) as img:
                return np.asarray(img.convert("L"))
    return None


def _draw_text(ax, title: str, text: str) -> None:
    ax.axis("off")
    ax.text(0, 1, title, fontsize=8, fontweight="bold", va="top", transform=ax.transAxes)
    y = 0.9
    for sentence in _sentences(text) or ["(empty)"]:
        colour = COLOURS[sentence_status(sentence)]
        for line in textwrap.wrap(sentence, WRAP) or [""]:
            ax.text(0, y, line, fontsize=6.5, va="top", color=colour, transform=ax.transAxes)
            y -= 0.075
        if y < 0:
            break


def qualitative_panel(examples: Sequence[Example], path: Path) -> Path | None:
    if not examples:
        return None
    variants = list(examples[0].generated)
    cols = 2 + len(variants)
    fig, axes = plt.subplots(
        len(examples), cols, figsize=(2.6 * cols, 2.6 * len(examples)), squeeze=False
    )
    for row, ex in zip(axes, examples, strict=False):
        image = _load_image(ex.image_paths)
        if image is None:
            row[0].text(0.5, 0.5, "image not available", ha="center", va="center", fontsize=7)
            row[0].set_xticks([])
            row[0].set_yticks([])
        else:
            row[0].imshow(image, cmap="gray")
            row[0].axis("off")
        row[0].set_title(ex.sample_id, fontsize=7)
        _draw_text(row[1], "reference", ex.reference)
        for ax, variant in zip(row[2:], variants, strict=False):
            _draw_text(ax, variant, ex.generated[variant])
    handles = [
        plt.Line2D([], [], color=c, lw=4, label=k) for k, c in COLOURS.items() if k != "none"
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False,
               title="finding mentioned in the sentence", title_fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)
