"""Seaborn figures built from store frames: ablation bars, Δ-vs-reference forest plot, CE
heatmap, training curves, report lengths, validation metric vs step, sweep history and parameter
importance. Each function writes one figure and states its one kind of uncertainty in its title.

Every figure is written twice, ``NAME.pdf`` (vector, for the paper) and ``NAME.png`` (for the
Markdown reports), at :data:`~s2d_align.harness.reports.style.SINGLE_COLUMN` or
:data:`~s2d_align.harness.reports.style.FULL_WIDTH` inches wide with fonts of at least 7 pt;
colours and labels come from ``style.py``, so a variant has one colour in every figure.

Matplotlib runs headless (Agg) and every figure is closed after saving, so a long report run
does not accumulate memory.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from s2d_align.evaluation.metrics import CE_F1_PREFIX, CORPUS, SUPPORT_PREFIX
from s2d_align.harness.references import REFERENCE_PREFIX, display_name
from s2d_align.harness.reports.data import order_variants
from s2d_align.harness.reports.style import (
    FULL_WIDTH,
    LOSS_LABELS,
    PNG_DPI,
    REFERENCE_REPORTS,
    SINGLE_COLUMN,
    colours_for,
    metric_label,
    paper,
    reference_style,
)
from s2d_align.harness.reports.tables import MARK, AblationTable

# matplotlib's PDF backend subsets fonts through fontTools, which logs every table at INFO
logging.getLogger("fontTools").setLevel(logging.WARNING)


def _save(fig: Any, path: Path) -> Path:
    """Write ``path`` as PNG and its ``.pdf`` sibling at the figure's own size; return the PNG."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # no creation date: a rebuilt report from the same store gives the same PDF
        fig.savefig(path.with_suffix(".pdf"), metadata={"CreationDate": None})
        fig.savefig(path, dpi=PNG_DPI)
    finally:
        plt.close(fig)
    return path


def figure_files(png: Path) -> list[Path]:
    """The files one saved figure consists of (PNG and PDF)."""
    return [png, png.with_suffix(".pdf")]


def _is_row(frame: pd.DataFrame) -> pd.Series:
    """Which rows of a metric frame are reference rows (made without training)."""
    return frame["variant"].astype(str).str.startswith(REFERENCE_PREFIX).astype(bool)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return -(-n // cols), cols


def _panels(n: int, height: float, *, max_cols: int = 4, sharey: bool = False) -> tuple[Any, Any]:
    """A full-width figure of ``n`` panels, at most ``max_cols`` a row (unused cells hidden)."""
    rows, cols = _grid(n, max_cols)
    fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH, height), squeeze=False,
                             sharey=sharey, layout="constrained")  # fmt: skip
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _title(fig: Any, text: str) -> None:
    """A figure title wrapped to the figure's width (8 pt)."""
    chars = int(fig.get_figwidth() * 72 / (8 * 0.52))
    fig.suptitle("\n".join(textwrap.wrap(text, chars)))


def _reference_lines(ax: Any, rows: pd.DataFrame, name: str, order: Sequence[str]) -> None:
    for variant in order:
        value = rows.loc[(rows["metric"] == name) & (rows["variant"] == variant), "value"]
        if len(value):
            colour, ls = reference_style(variant)
            ax.axvline(float(value.mean()), ls=ls, lw=0.9, color=colour)


def _reference_legend(fig: Any, order: Sequence[str]) -> None:
    if order:
        handles = [plt.Line2D([], [], ls=reference_style(v)[1], color=reference_style(v)[0],
                              label=display_name(v)) for v in order]  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                   title="reference rows (no training)", frameon=False)  # fmt: skip


def ablation_bars(
    metrics: pd.DataFrame,
    names: Sequence[str],
    split: str,
    path: Path,
    intervals: Mapping[tuple[str, str], tuple[float | None, float | None]] | None = None,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """One panel per metric: mean over seeds (bar), seeds (dots) and, from ``intervals``
    (``(variant, metric) -> (low, high)``), the 95% hierarchical bootstrap interval of the mean
    over seeds (error bar); reference rows (``ref:...``) as vertical lines. Full width."""
    intervals = intervals or {}
    frame = metrics[(metrics["split"] == split) & metrics["metric"].isin(names)]
    ref_rows = frame[_is_row(frame)]
    frame = frame[~_is_row(frame)]
    ref_order = order_variants(ref_rows["variant"].unique())
    order = order_variants(frame["variant"].unique())
    palette = colours_for(order, colours)
    rows, _ = _grid(len(names), 4)
    height = rows * (0.12 * len(order) + 0.7) + (0.75 if ref_order else 0.45)
    ys = {v: i for i, v in enumerate(order)}
    with paper():
        fig, axes = _panels(len(names), height, sharey=True)
        for ax, name in zip(axes.flat, names, strict=False):
            sub = frame[frame["metric"] == name]
            means = sub.groupby("variant")["value"].mean()
            shown = [v for v in order if v in means.index]
            y = np.array([ys[v] for v in shown], dtype=float)
            ax.barh(y, means[shown], height=0.72, color=[palette[v] for v in shown])
            bounds = [intervals.get((v, name), (None, None)) for v in shown]
            ok = [i for i, (lo, hi) in enumerate(bounds) if lo is not None and hi is not None]
            if ok:
                mid = means[shown].to_numpy()[ok]
                lo = np.array([bounds[i][0] for i in ok], dtype=float)
                hi = np.array([bounds[i][1] for i in ok], dtype=float)
                err = np.vstack([np.clip(mid - lo, 0, None), np.clip(hi - mid, 0, None)])
                ax.errorbar(mid, y[ok], xerr=err, fmt="none", ecolor="black", capsize=1.5,
                            lw=0.7)  # fmt: skip
            ax.scatter(sub["value"], [ys[v] for v in sub["variant"]], s=3, color="black",
                       zorder=3, linewidths=0)  # fmt: skip
            _reference_lines(ax, ref_rows, name, ref_order)
            ax.set_title(metric_label(name))
            ax.set_xlim(left=0)
            ax.grid(axis="y", visible=False)
        axes[0, 0].set_yticks(range(len(order)), order)
        axes[0, 0].set_ylim(len(order) - 0.5, -0.5)
        _reference_legend(fig, ref_order)
        what = "95% hierarchical bootstrap CI (seeds, then studies)" if intervals else "none"
        _title(
            fig, f"Ablation, {split} split. Bar: mean over seeds; error bar: {what}; dots: seeds"
        )
        return _save(fig, path)


def delta_forest(
    table: AblationTable, path: Path, colours: Mapping[str, str] | None = None
) -> Path | None:
    """Forest plot: per metric, each variant's difference from the reference variant (mean over
    seeds of per-seed differences) with its 95% hierarchical bootstrap interval; significant
    cells (seed-level test, Holm) drawn filled and marked with the dagger and k/n. Full width."""
    names = [m for m in table.metrics if any(
        m in cells and cells[m].delta is not None for cells in table.rows.values())]  # fmt: skip
    variants = [v for v in table.rows if v != table.reference]
    if not names or not variants:
        return None
    palette = colours_for(variants, colours)
    rows, _ = _grid(len(names), 4)
    height = rows * (0.13 * len(variants) + 0.75) + 0.5
    with paper():
        fig, axes = _panels(len(names), height, sharey=True)
        for ax, name in zip(axes.flat, names, strict=False):
            for y, variant in enumerate(variants):
                c = table.rows[variant].get(name)
                if c is None or c.delta is None:
                    continue
                colour = palette[variant]
                right = c.delta
                if c.delta_low is not None and c.delta_high is not None:
                    ax.plot([c.delta_low, c.delta_high], [y, y], color=colour, lw=1.2)
                    right = c.delta_high
                face = colour if c.significant else "white"
                ax.scatter([c.delta], [y], s=14, color=face, edgecolors=colour, zorder=3,
                           linewidths=0.9)  # fmt: skip
                if c.significant:
                    ax.annotate(f"{MARK}{c.seeds_significant}", (right, y), xytext=(2, 0),
                                textcoords="offset points", va="center", fontsize=7)  # fmt: skip
            ax.axvline(0.0, color="black", lw=0.6)
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.25)  # room for the marks right of the intervals
            proxy = " (sentence mean)" if table.basis.get(name, CORPUS) != CORPUS else ""
            ax.set_title(f"Δ {metric_label(name)}{proxy}")
        axes[0, 0].set_yticks(range(len(variants)), variants)
        axes[0, 0].set_ylim(len(variants) - 0.5, -0.5)
        _title(
            fig,
            f"Difference vs {table.reference} ({table.split} split): mean over seeds of per-seed "
            "differences, 95% hierarchical bootstrap CI (seeds, then studies). Filled, "
            f"{MARK} k/n: seed-level paired test, Holm over {table.tested} cells; k/n seeds "
            "significant on their own.",
        )
        return _save(fig, path)


def _support(metrics: pd.DataFrame, split: str, columns: Sequence[str]) -> dict[str, str]:
    """Observation -> references positive ("12", or "10-12" if rows disagree), from the
    ``ce_support/<observation>`` rows when the store has them."""
    rows = metrics[(metrics["split"] == split) & metrics["metric"].str.startswith(SUPPORT_PREFIX)]
    found = {}
    for obs, values in rows.groupby(rows["metric"].str[len(SUPPORT_PREFIX) :])["value"]:
        low, high = int(values.min()), int(values.max())
        found[obs] = str(low) if low == high else f"{low}-{high}"
    return {c: found[c] for c in columns if c in found}


def ce_heatmap(
    metrics: pd.DataFrame,
    split: str,
    path: Path,
    prefix: str = CE_F1_PREFIX,
    support: Mapping[str, int] | None = None,
) -> Path | None:
    """Per-observation CE F1, variants x observations, mean over seeds. Each column says how
    many references are positive (``support``: observation -> count, else the store's
    ``ce_support/`` rows), and an observation with none reads "absent" in every cell rather than
    an F1 of 0 that would look like a miss. Full width."""
    frame = metrics[(metrics["split"] == split) & metrics["metric"].str.startswith(prefix)]
    if frame.empty:
        return None
    grid = frame.assign(observation=frame["metric"].str[len(prefix) :]).pivot_table(
        index="variant", columns="observation", values="value", aggfunc="mean"
    )
    grid = grid.reindex(order_variants(grid.index))
    columns = list(dict.fromkeys(frame["metric"].str[len(prefix) :]))  # store order
    grid = grid[[c for c in columns if c in grid.columns]]
    if support is not None:
        counts = {c: str(int(support[c])) for c in grid.columns if c in support}
    else:
        counts = _support(metrics, split, list(grid.columns))
    absent = [c for c, n in counts.items() if n == "0"]
    shown = grid.copy()
    shown[absent] = float("nan")  # no F1 to read: left blank and marked below
    height = 0.19 * grid.shape[0] + 1.9
    with paper("white"):
        fig, ax = plt.subplots(figsize=(FULL_WIDTH, height), layout="constrained")
        sns.heatmap(shown, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                    cbar_kws={"label": "F1", "shrink": 0.8}, annot_kws={"fontsize": 7},
                    linewidths=0.4, linecolor="white")  # fmt: skip
        for x, column in enumerate(grid.columns):
            if column in absent:
                for y in range(len(grid)):
                    ax.text(x + 0.5, y + 0.5, "absent", ha="center", va="center", fontsize=7,
                            color="#555555")  # fmt: skip
        ticks = [f"{c} (n={counts[c]})" if c in counts else c for c in grid.columns]
        ax.set_xticks([x + 0.5 for x in range(len(ticks))], ticks, rotation=40, ha="right",
                      rotation_mode="anchor")  # fmt: skip
        n_rows = int((~grid.index.to_series().astype(str).str.startswith(REFERENCE_PREFIX)).sum())
        if 0 < n_rows < len(grid):  # set the reference rows (last) apart from the variants
            ax.axhline(n_rows, color="black", lw=1.2)
        ax.set_yticks([y + 0.5 for y in range(len(grid))],
                      [display_name(str(v)) for v in grid.index], rotation=0)  # fmt: skip
        n_note = "; n = references positive, absent = none" if counts else ""
        ax.set_title(f"Per-observation CE F1 ({split} split, mean over seeds{n_note})")
        ax.set_xlabel("")
        ax.set_ylabel("")
        return _save(fig, path)


def _loss_frame(logs: Mapping[str, Mapping[Any, list[dict]]]) -> pd.DataFrame:
    """One row per (variant, seed, stage, step, loss term) from the runs' training logs."""
    records = []
    for variant, runs in logs.items():
        for seed, rows in runs.items():
            for row in rows:
                if "step" not in row:
                    continue
                terms = row.get("losses") or ({"loss": row["loss"]} if "loss" in row else {})
                stage = str(row.get("stage", "train"))
                for term, value in terms.items():
                    if value is not None:
                        records.append((variant, seed, stage, int(row["step"]), term, value))
    return pd.DataFrame(records, columns=["variant", "seed", "stage", "step", "term", "value"])


def _seed_band(part: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per step of one (variant, stage, term): the running mean of each seed's curve over
    ``window`` logged points, put on the stage's steps, then mean / min / max over seeds."""
    steps = np.sort(part["step"].unique())
    curves = []
    for _, run in part.groupby("seed"):
        run = run.sort_values("step")
        smooth = run["value"].rolling(window, center=True, min_periods=1).mean().to_numpy()
        inside = (steps >= run["step"].min()) & (steps <= run["step"].max())
        curve = np.full(len(steps), np.nan)
        curve[inside] = np.interp(steps[inside], run["step"].to_numpy(), smooth)
        curves.append(curve)
    stack = np.vstack(curves)
    with np.errstate(all="ignore"):
        return pd.DataFrame({"step": steps, "mean": np.nanmean(stack, 0),
                             "low": np.nanmin(stack, 0), "high": np.nanmax(stack, 0)})  # fmt: skip


def training_curves(
    logs: Mapping[str, Mapping[Any, list[dict]]],
    path: Path,
    colours: Mapping[str, str] | None = None,
) -> Path | None:
    """Per-term training losses against the optimizer step: one panel per loss term (``lm``,
    ``align``, ``kp``), one line per variant (mean over seeds of each seed's running mean), its
    band the min-max over seeds; curves break at stage boundaries. ``logs``: variant -> seed ->
    training-log rows. Full width."""
    frame = _loss_frame(logs)
    if frame.empty:
        return None
    known = [t for t in LOSS_LABELS if t in set(frame["term"])]
    terms = known + sorted(set(frame["term"]) - set(known))
    order = order_variants(frame["variant"].unique())
    palette = colours_for(order, colours)
    window = max(1, int(frame["step"].max()) // 25)
    rows, _ = _grid(len(terms), 3)
    legend_rows = -(-len(order) // 6)
    height = rows * 2.0 + 0.25 * legend_rows + 0.6
    with paper():
        fig, axes = _panels(len(terms), height, max_cols=3)
        for ax, term in zip(axes.flat, terms, strict=False):
            sub = frame[frame["term"] == term]
            for variant in order:
                mine = sub[sub["variant"] == variant]
                for _, part in mine.groupby("stage", sort=False):
                    band = _seed_band(part, window)
                    colour = palette[variant]
                    ax.fill_between(band["step"], band["low"], band["high"], color=colour,
                                    alpha=0.2, lw=0)  # fmt: skip
                    ax.plot(band["step"], band["mean"], color=colour, lw=0.8)
            ax.set_title(LOSS_LABELS.get(term, term))
            ax.set_xlabel("optimizer step")
        axes[0, 0].set_ylabel("loss")
        handles = [plt.Line2D([], [], color=palette[v], lw=2, label=v) for v in order]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(order)),
                   frameon=False)  # fmt: skip
        smooth = f"; running mean over {window} steps" if window > 1 else ""
        _title(fig, f"Training losses per term: line = mean over seeds, band = min-max over "
                    f"seeds{smooth}")  # fmt: skip
        return _save(fig, path)


def val_curves(
    curves: pd.DataFrame,
    names: Sequence[str],
    path: Path,
    colours: Mapping[str, str] | None = None,
    every: int = 0,
) -> Path | None:
    """Val metrics scored during training against the optimizer step: one panel per metric in
    ``names``, one line per variant (mean over seeds, a dot per scored step), its band the
    min-max over seeds. ``curves``: variant, seed, step, metric, value. Full width."""
    names = [n for n in names if n in set(curves["metric"])]
    if curves.empty or not names:
        return None
    order = order_variants(curves["variant"].unique())
    palette = colours_for(order, colours)
    legend_rows = -(-len(order) // 6)
    with paper():
        fig, axes = plt.subplots(1, len(names), figsize=(FULL_WIDTH, 2.2 + 0.25 * legend_rows),
                                 squeeze=False, layout="constrained")  # fmt: skip
        for ax, name in zip(axes.flat, names, strict=True):
            sub = curves[curves["metric"] == name]
            for variant in order:
                part = sub[sub["variant"] == variant]
                if part.empty:
                    continue
                band = _seed_band(part, window=1)
                colour = palette[variant]
                ax.fill_between(band["step"], band["low"], band["high"], color=colour,
                                alpha=0.2, lw=0)  # fmt: skip
                ax.plot(band["step"], band["mean"], color=colour, lw=0.9, marker="o", ms=2)
            ax.set_title(f"val {metric_label(name)}")
            ax.set_xlabel("optimizer step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [plt.Line2D([], [], color=palette[v], lw=2, label=v) for v in order]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(order)),
                   frameon=False)  # fmt: skip
        every_note = f" (train.eval_every = {every})" if every > 0 else ""
        _title(fig, f"Val metrics scored during training{every_note}: line = mean over seeds, "
                    "band = min-max over seeds")  # fmt: skip
        return _save(fig, path)


#: ``boxplot``'s horizontal switch (``vert`` is deprecated from matplotlib 3.10 on).
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"}
    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)


def length_distribution(
    lengths: pd.DataFrame, path: Path, colours: Mapping[str, str] | None = None
) -> Path | None:
    """Words per generated report per variant (box: quartiles, whiskers 1.5 IQR), with the
    reference reports' distribution for scale. Single column."""
    if lengths.empty:
        return None
    lengths = lengths.replace({"variant": {"reference": REFERENCE_REPORTS}})
    order = order_variants([v for v in lengths["variant"].unique() if v != REFERENCE_REPORTS])
    if REFERENCE_REPORTS in set(lengths["variant"]):
        order = [REFERENCE_REPORTS, *order]
    palette = colours_for(order, colours)
    data = [lengths.loc[lengths["variant"] == v, "words"].to_numpy() for v in order]
    with paper():
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.16 * len(order) + 0.9),
                               layout="constrained")  # fmt: skip
        box = ax.boxplot(data, **_HORIZONTAL, patch_artist=True, widths=0.6,
                         flierprops={"markersize": 1.5, "markeredgewidth": 0.4},
                         medianprops={"color": "black", "lw": 0.8},
                         whiskerprops={"lw": 0.6}, capprops={"lw": 0.6},
                         boxprops={"lw": 0.6})  # fmt: skip
        for patch, variant in zip(box["boxes"], order, strict=True):
            patch.set_facecolor(palette[variant])
        ax.set_yticks(range(1, len(order) + 1), [display_name(v) for v in order])
        ax.set_ylim(len(order) + 0.5, 0.5)
        ax.set_xlabel("words per report")
        ax.set_title("Report length (test split)")
        return _save(fig, path)


def sweep_figure(
    trials: pd.DataFrame,
    importance: Mapping[str, float],
    title: str,
    path: Path,
    maximize: bool,
    metric: str,
    evaluator: str = "fANOVA",
    no_importance: str = "",
) -> Path | None:
    """A sweep at full width: the objective per trial with the best so far (left) and the
    parameters' importances (right; ``no_importance`` says why there are none)."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if done.empty:
        return None
    best = done["value"].cummax() if maximize else done["value"].cummin()
    with paper():
        fig, axes = plt.subplots(1, 2, figsize=(FULL_WIDTH, 2.6), squeeze=False,
                                 layout="constrained")  # fmt: skip
        ax = axes[0, 0]
        ax.scatter(done["number"], done["value"], s=10, color="#0072B2", label="complete trial")
        ax.step(done["number"], best, where="post", color="#D55E00", label="best so far")
        pruned = trials[trials["state"] == "PRUNED"]
        if not pruned.empty:
            ax.scatter(pruned["number"], [done["value"].min()] * len(pruned), marker="x",
                       color="#555555", s=10, label="pruned (drawn at the bottom)")  # fmt: skip
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"val {metric_label(metric)}")
        ax.set_title("History")
        ax.legend(frameon=False)
        if importance:
            ax = axes[0, 1]
            names = list(importance)[::-1]  # largest on top
            ax.barh(range(len(names)), [importance[n] for n in names], color="#0072B2")
            ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("importance (normalised to sum to 1)")
            ax.set_title(f"Parameter importance ({evaluator})")
            ax.grid(axis="y", visible=False)
        else:
            ax = axes[0, 1]
            ax.axis("off")
            why = "\n".join(textwrap.wrap(no_importance or "no importance computed", 40))
            ax.text(0.5, 0.5, f"Parameter importance not computed:\n{why}", ha="center",
                    va="center", transform=ax.transAxes)  # fmt: skip
        _title(fig, title)
        return _save(fig, path)


def sweep_val_curves(
    curves: pd.DataFrame, metric: str, title: str, path: Path, best: int | None = None
) -> Path | None:
    """Validation metric against the optimizer step, one line per trial (``curves``: number,
    state, step, value), coloured by the trial's fate; the best trial drawn in black.
    Single column."""
    if curves.empty:
        return None
    fates = {"COMPLETE": ("#0072B2", "complete"), "PRUNED": ("#D55E00", "pruned")}
    with paper():
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
        seen = set()
        for (number, state), part in curves.groupby(["number", "state"], sort=True):
            part = part.sort_values("step")
            colour, label = fates.get(str(state), ("#999999", str(state).lower()))
            if number == best:
                colour, label = "#000000", f"best (trial {number})"
            ax.plot(part["step"], part["value"], marker="o", ms=2.5, lw=0.9, color=colour,
                    label=None if label in seen else label)  # fmt: skip
            seen.add(label)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"val {metric_label(metric)}")
        ax.legend(frameon=False)
        _title(fig, title)
        return _save(fig, path)
