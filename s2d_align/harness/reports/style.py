"""What every report figure and table shares: sizes, fonts, the variant palette, metric labels.

- Sizes fit a paper: :data:`SINGLE_COLUMN` (3.5 in) or :data:`FULL_WIDTH` (7 in) wide, fonts
  at least :data:`MIN_FONT_PT` at that size; each figure is saved as a vector PDF with a PNG
  beside it.
- One palette: a variant keeps its colour in every figure. Variants with a file in the variants
  folder take the colour of their place in the grid's ``order:``, so ``s2d`` is the same blue in
  every report; others follow in name order. The first seven colours are Okabe and Ito's
  colour-blind-safe set, the rest Paul Tol's "muted" set; no figure identifies a variant by
  colour alone (each names it on an axis, in a panel title or a legend). Reference rows
  (``ref:...``, made without training) are greys with their own line styles.
- One label per metric key (:func:`metric_label`), the one its metric registry entry gives:
  ``ce/u0/14/micro/f1`` reads "CE micro-F1".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import seaborn as sns

from s2d_align.errors import ConfigError
from s2d_align.evaluation.metrics import CE, DEFAULT_CE, family_of, find_spec
from s2d_align.harness.references import REFERENCE_NAMES, REFERENCE_PREFIX, is_reference

SINGLE_COLUMN = 3.5  # inches
FULL_WIDTH = 7.0
MIN_FONT_PT = 7.0
PNG_DPI = 200

#: Okabe-Ito (without black), then Paul Tol's muted colours; yellow last (faint on white).
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#332288",  # indigo
    "#999933",  # olive
    "#882255",  # wine
    "#44AA99",  # teal
    "#DDCC77",  # sand
    "#F0E442",  # yellow
)
#: Reference rows, in ``REFERENCE_NAMES`` order: (colour, line style).
REFERENCE_STYLES = (("#000000", "--"), ("#555555", "-."), ("#777777", ":"))
#: The reference (radiologists') reports where a figure shows them beside the variants.
REFERENCE_REPORTS = "reference reports"
REFERENCE_REPORTS_COLOUR = "#BBBBBB"

#: Agreement of a generated finding with the reference report (Okabe-Ito).
AGREEMENT = {"TP": "#009E73", "FP": "#D55E00", "FN": "#0072B2"}
NEUTRAL_TEXT = "#555555"

RC: dict[str, Any] = {
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "figure.labelsize": 7,
    "axes.linewidth": 0.6,
    "grid.color": "#E6E6E6",
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.0,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
    "ps.fonttype": 42,
}

LOSS_LABELS = {"lm": "language-model loss", "align": "alignment loss", "kp": "key-phrase loss"}


def metric_label(key: str) -> str:
    """The human label of a metric key, its registry entry's ``label``: ``ce/u0/14/micro/f1`` ->
    "CE micro-F1", ``BLEU_4`` -> "BLEU-4"; a key without an entry of its own (a pattern's match,
    an unknown name) is returned with its slashes as spaces."""
    spec = find_spec(key)
    return spec.label if spec is not None and not spec.is_pattern else key.replace("/", " ")


def ce_definition(keys: Iterable[str]) -> str | None:
    """One sentence defining the CE labels among ``keys`` (None when there is none)."""
    cells = sorted({tuple(k.split("/")[1:3]) for k in keys if family_of(k) == CE})
    if not cells:
        return None
    what = []
    for mapping, labels in cells:
        obs = "the 14 CheXpert observations" if labels == "14" else f"{labels} observations"
        unc = "negative (u0)" if mapping == "u0" else "positive (u1)"
        qualifier = "" if (mapping, labels) == DEFAULT_CE else f"({mapping}, {labels} obs.): "
        what.append(f"{qualifier}{obs}, uncertain mentions counted as {unc}")
    return (
        "CE: clinical efficacy, findings labelled in the generated and the reference report; "
        + "; ".join(what)
        + "; micro = over all (study, observation) pairs, P/R/F1 = precision/recall/F1."
    )


def _grid_order() -> list[str]:
    from s2d_align.harness.variants import grid_variants

    try:
        return grid_variants()
    except (ConfigError, OSError):  # a broken variants folder must not stop a report
        return []


def variant_colours(names: Iterable[str]) -> dict[str, str]:
    """Variant -> colour, the same for a variant in every figure (see the module docstring)."""
    names = list(dict.fromkeys(str(n) for n in names))
    known = _grid_order()
    plain = [n for n in names if not is_reference(n) and n != REFERENCE_REPORTS]
    slots = known + sorted(n for n in plain if n not in known)
    out = {}
    for name in names:
        if is_reference(name):
            out[name] = reference_style(name)[0]
        elif name == REFERENCE_REPORTS:
            out[name] = REFERENCE_REPORTS_COLOUR
        else:
            out[name] = PALETTE[slots.index(name) % len(PALETTE)]
    return out


def reference_style(variant: str) -> tuple[str, str]:
    """(colour, line style) of a reference row; rows not in ``REFERENCE_NAMES`` share the last."""
    name = variant[len(REFERENCE_PREFIX) :] if is_reference(variant) else variant
    index = REFERENCE_NAMES.index(name) if name in REFERENCE_NAMES else len(REFERENCE_STYLES) - 1
    return REFERENCE_STYLES[min(index, len(REFERENCE_STYLES) - 1)]


def colours_for(names: Iterable[str], given: Mapping[str, str] | None) -> dict[str, str]:
    """``given`` where it names a variant, the palette elsewhere."""
    names = list(names)
    return {**variant_colours(names), **{n: given[n] for n in names if given and n in given}}


@contextmanager
def paper(style: str = "whitegrid") -> Iterator[None]:
    """Seaborn's ``style`` with the paper font sizes, for the figures built inside."""
    with plt.rc_context({**sns.axes_style(style), **RC}):
        yield
