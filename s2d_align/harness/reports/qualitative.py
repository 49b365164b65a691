"""The qualitative panel: image, reference and generated reports, findings coloured by their
agreement with the reference.

A generated sentence that states a finding (positive under the project's clinical text
analyser, uncertain counted as negative as in the CE headline) is a true positive (TP) when the
reference states every such finding too, else a false positive (FP); below each generated
report, the reference's findings it never states are listed as false negatives (FN). Colours
are Okabe-Ito's, and each sentence also carries its tag, so the panel reads in grey print.
Samples are chosen deterministically (:data:`SELECTION_RULE`, printed on the figure).
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
from matplotlib.transforms import offset_copy

from s2d_align.harness.reports import figures
from s2d_align.harness.reports.style import AGREEMENT, FULL_WIDTH, NEUTRAL_TEXT, paper

#: How :func:`pick_examples` chooses the studies, as the figure states it.
SELECTION_RULE = (
    "Studies: the {n} test studies whose reference report states the most findings (ties by "
    "study id); each variant's report from its lowest-seed run."
)
FONT = 7  # pt
LINE_PT = 8.6  # line spacing
WRAP = 36  # characters per line in a 7 in wide panel of four columns at 7 pt


@dataclass
class Example:
    sample_id: str
    image_paths: list[str]
    reference: str
    generated: dict[str, str]  # variant -> text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def findings(text: str) -> set[str]:
    """Observations the analyser finds positive in ``text`` (No Finding excluded)."""
    from s2d_align.evaluation.analyser import analyse

    return {o for o, v in analyse(text).labels.items() if v == 1 and o != "No Finding"}


def agreement(sentence: str, reference: set[str]) -> str | None:
    """ "TP" when every finding the sentence states is in ``reference``, "FP" when one is not,
    None when it states none."""
    stated = findings(sentence)
    if not stated:
        return None
    return "TP" if stated <= reference else "FP"


def positive_count(text: str) -> int:
    return len(findings(text))


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


def _lines(text: str, reference: set[str] | None) -> list[tuple[str, str]]:
    """(line, colour) of a report: each sentence wrapped, tagged and coloured by its agreement
    with ``reference`` (None: the reference column, findings in black, the rest grey)."""
    out = []
    for sentence in _sentences(text) or ["(empty)"]:
        if reference is None:
            tag, colour = None, ("black" if findings(sentence) else NEUTRAL_TEXT)
        else:
            tag = agreement(sentence, reference)
            colour = AGREEMENT[tag] if tag else NEUTRAL_TEXT
        body = f"{sentence} [{tag}]" if tag else sentence
        out += [(line, colour) for line in textwrap.wrap(body, WRAP) or [""]]
    return out


def _draw_text(ax, title: str, text: str, reference: set[str] | None) -> None:
    ax.axis("off")
    ax.set_title(title, fontsize=8, fontweight="bold", loc="left")
    lines = _lines(text, reference)
    if reference is not None:
        missed = sorted(reference - findings(text))
        if missed:
            note = "[FN] missed: " + ", ".join(missed)
            lines += [(line, AGREEMENT["FN"]) for line in textwrap.wrap(note, WRAP)]
    for i, (line, colour) in enumerate(lines):
        where = offset_copy(ax.transAxes, fig=ax.figure, y=-i * LINE_PT, units="points")
        ax.text(0, 1, line, fontsize=FONT, va="top", color=colour, transform=where)


def _line_count(example: Example) -> int:
    ref = findings(example.reference)
    counts = [len(_lines(example.reference, None))]
    for text in example.generated.values():
        missed = ", ".join(sorted(ref - findings(text)))
        counts.append(len(_lines(text, ref)) + len(textwrap.wrap(missed, WRAP)))
    return max(counts)


def qualitative_panel(examples: Sequence[Example], path: Path) -> Path | None:
    """One row per example: image, reference, one column per variant. Full width."""
    if not examples:
        return None
    variants = list(examples[0].generated)
    cols = 2 + len(variants)
    # row heights follow the longest column of each row (7 pt lines, ~0.12 in each)
    heights = [max(1.2, LINE_PT / 72 * _line_count(ex) + 0.3) for ex in examples]
    with paper("white"):
        fig, axes = plt.subplots(
            len(examples), cols, figsize=(FULL_WIDTH, sum(heights) + 0.9), squeeze=False,
            gridspec_kw={"height_ratios": heights, "width_ratios": [0.8] + [1.0] * (cols - 1)},
            layout="constrained",
        )  # fmt: skip
        for row, ex in zip(axes, examples, strict=False):
            image = _load_image(ex.image_paths)
            if image is None:
                row[0].text(0.5, 0.5, "image not\navailable", ha="center", va="center",
                            fontsize=FONT)  # fmt: skip
                row[0].set_xticks([])
                row[0].set_yticks([])
            else:
                row[0].imshow(image, cmap="gray")
                row[0].axis("off")
            row[0].set_title(ex.sample_id, fontsize=FONT)
            reference = findings(ex.reference)
            _draw_text(row[1], "reference", ex.reference, None)
            for ax, variant in zip(row[2:], variants, strict=False):
                _draw_text(ax, variant, ex.generated[variant], reference)
        handles = [
            plt.Line2D([], [], color=AGREEMENT["TP"], lw=3,
                       label="[TP] states only findings the reference states"),
            plt.Line2D([], [], color=AGREEMENT["FP"], lw=3,
                       label="[FP] states a finding the reference does not"),
            plt.Line2D([], [], color=AGREEMENT["FN"], lw=3,
                       label="[FN] reference finding never stated"),
        ]  # fmt: skip
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=2,
            frameon=False,
            title="Findings (rules analyser; uncertain counts as absent, as in CE u0)",
        )
        fig.suptitle(SELECTION_RULE.format(n=len(examples)), fontsize=FONT)
        return figures._save(fig, path)
