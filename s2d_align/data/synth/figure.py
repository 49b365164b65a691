"""A picture of SynthCXR: example images with their reports and labels (for the README)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from s2d_align.errors import DataError
from s2d_align.utils.io import read_json


def _pick_examples(
    entries: list[dict[str, Any]], truth: dict[str, Any], n: int
) -> list[dict[str, Any]]:
    """A varied, deterministic selection: one normal study, then those adding new labels."""
    chosen: list[dict[str, Any]] = []
    covered: set[str] = set()
    normal = next(
        (
            e
            for e in entries
            if {k for k, v in truth[e["id"]]["labels"].items() if v == 1} == {"No Finding"}
        ),
        None,
    )
    if normal is not None:
        chosen.append(normal)
    ranked = []
    for e in entries:
        labels = truth[e["id"]]["labels"]
        ranked.append((e, {k for k, v in labels.items() if v in (1, -1) and k != "No Finding"}))
    while len(chosen) < n:
        best = max(
            (item for item in ranked if item[0] not in chosen),
            # new labels first; then abnormal studies with a few labels over normal ones
            key=lambda item: (len(item[1] - covered), bool(item[1]), -abs(len(item[1]) - 2)),
            default=None,
        )
        if best is None:
            break
        chosen.append(best[0])
        covered |= best[1]
    return chosen


def plot_examples(
    synth_dir: str | Path, out_png: str | Path, n: int = 8, split: str = "test"
) -> Path:
    """Grid of ``n`` examples from ``split``: image(s), wrapped report, positive (and ?) labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth_dir = Path(synth_dir)
    annotation = read_json(synth_dir / "annotation.json")
    truth = read_json(synth_dir / "ground_truth.json")
    entries = annotation.get(split) or annotation.get("train") or []
    if not entries:
        raise DataError(f"{synth_dir / 'annotation.json'}: split {split!r} has no studies to plot")
    examples = _pick_examples(entries, truth, n)
    cols = min(4, len(examples))
    rows = -(-len(examples) // cols)
    n_views = max(len(e["image_path"]) for e in examples)
    cell_w, text_h = 4.2, 2.3  # inches; the image row keeps the pictures' aspect ratio
    image_h = 0.92 * cell_w / n_views
    fig = plt.figure(figsize=(cell_w * cols, (image_h + text_h + 0.3) * rows + 0.5))
    grid = fig.add_gridspec(
        2 * rows,
        cols,
        height_ratios=[image_h, text_h] * rows,
        hspace=0.08,
        wspace=0.06,
        top=0.96,
        bottom=0.01,
        left=0.01,
        right=0.99,
    )
    for k, entry in enumerate(examples):
        r, c = divmod(k, cols)
        _draw_example(fig, grid[2 * r, c], grid[2 * r + 1, c], entry, truth, synth_dir)
    fig.suptitle(
        "SynthCXR examples: images, generated reports and CheXpert labels (? = uncertain)",
        fontsize=12,
        y=0.995,
    )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png


def _draw_example(fig, image_cell, text_cell, entry: dict, truth: dict, synth_dir: Path) -> None:
    """One study: its views side by side, then its labels (red) and wrapped report."""
    import numpy as np
    from PIL import Image

    views = []
    for rel in entry["image_path"]:
        with Image.open(synth_dir / rel) as img:
            views.append(np.asarray(img.convert("L")))
    ax = fig.add_subplot(image_cell)
    ax.imshow(np.concatenate(views, axis=1), cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(f"{entry['id']} (patient {entry['subject_id']})", fontsize=9)
    labels = truth[entry["id"]]["labels"]
    positive = [k for k, v in labels.items() if v == 1]
    uncertain = [f"{k}?" for k, v in labels.items() if v == -1]
    label_text = textwrap.fill("Labels: " + ", ".join(positive + uncertain), 46)
    report_text = "\n".join(textwrap.wrap(entry["report"], 60))
    tax = fig.add_subplot(text_cell)
    tax.set_axis_off()
    tax.text(
        0.0,
        1.0,
        label_text,
        va="top",
        ha="left",
        fontsize=8,
        color="#8b0000",
        weight="bold",
        transform=tax.transAxes,
    )
    tax.text(
        0.0,
        0.98 - 0.075 * (label_text.count("\n") + 1),
        report_text,
        va="top",
        ha="left",
        fontsize=7.5,
        transform=tax.transAxes,
    )
