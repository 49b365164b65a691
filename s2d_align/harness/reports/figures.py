"""Seaborn figures built from store frames: ablation bars, Δ-vs-reference forest plot, CE
heatmap, training curves, report lengths, sweep history and parameter importance. Each function
writes one PNG and states its one kind of uncertainty in its title.

Matplotlib runs headless (Agg) and every figure is closed after saving, so a long report run
does not accumulate memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from s2d_align.harness.references import REFERENCE_PREFIX, display_name
from s2d_align.harness.reports.data import order_variants
from s2d_align.harness.reports.significance import CORPUS
from s2d_align.harness.reports.tables import MARK, AblationTable

DPI = 130
#: Per-observation support (references positive under the headline mapping), when recorded.
SUPPORT_PREFIX = "ce_support/"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _is_row(frame: pd.DataFrame) -> pd.Series:
    """Which rows of a metric frame are reference rows (made without training)."""
    return frame["variant"].astype(str).str.startswith(REFERENCE_PREFIX).astype(bool)


def ablation_bars(
    metrics: pd.DataFrame,
    names: Sequence[str],
    split: str,
    path: Path,
    intervals: Mapping[tuple[str, str], tuple[float | None, float | None]] | None = None,
) -> Path:
    """One panel per metric: mean over seeds (bar), seeds (dots) and, from ``intervals``
    (``(variant, metric) -> (low, high)``), the 95% hierarchical bootstrap interval of the mean
    over seeds (error bar); reference rows (``ref:...``) as dashed horizontal lines."""
    intervals = intervals or {}
    frame = metrics[(metrics["split"] == split) & metrics["metric"].isin(names)]
    ref_rows = frame[_is_row(frame)]
    frame = frame[~_is_row(frame)]
    ref_order = order_variants(ref_rows["variant"].unique())
    greys = ("black", "dimgray", "darkgray", "silver")
    ref_colours = {v: greys[i % len(greys)] for i, v in enumerate(ref_order)}
    order = order_variants(frame["variant"].unique())
    sns.set_theme(style="whitegrid", context="paper")
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.5, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    palette = dict(zip(order, sns.color_palette("tab10", len(order)), strict=False))
    for ax, name in zip(axes.flat, names, strict=False):
        sub = frame[frame["metric"] == name]
        agg = (
            sub.groupby("variant")
            .agg(value=("value", "mean"))
            .reindex([v for v in order if v in set(sub["variant"])])
        )
        bounds = [intervals.get((v, name), (None, None)) for v in agg.index]
        agg["lo"] = pd.to_numeric(pd.Series([b[0] for b in bounds], index=agg.index))
        agg["hi"] = pd.to_numeric(pd.Series([b[1] for b in bounds], index=agg.index))
        xs = range(len(agg))
        ax.bar(xs, agg["value"], color=[palette[v] for v in agg.index], alpha=0.85)
        has_ci = agg["lo"].notna() & agg["hi"].notna()
        ax.errorbar(
            [x for x, ok in zip(xs, has_ci, strict=False) if ok],
            agg.loc[has_ci, "value"],
            yerr=[
                (agg.loc[has_ci, "value"] - agg.loc[has_ci, "lo"]).clip(lower=0),
                (agg.loc[has_ci, "hi"] - agg.loc[has_ci, "value"]).clip(lower=0),
            ],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
        pos = {v: i for i, v in enumerate(agg.index)}
        ax.scatter([pos[v] for v in sub["variant"]], sub["value"], s=9, color="black", zorder=3)
        ax.set_xticks(list(xs), list(agg.index), rotation=60, ha="right", fontsize=7)
        ax.set_title(name.replace("ce/", "CE "), fontsize=9)
        for variant in ref_order:
            value = ref_rows.loc[
                (ref_rows["metric"] == name) & (ref_rows["variant"] == variant), "value"
            ]
            if len(value):
                ax.axhline(float(value.mean()), ls="--", lw=1, color=ref_colours[variant])
    if ref_order:
        handles = [plt.Line2D([], [], ls="--", color=ref_colours[v], label=display_name(v))
                   for v in ref_order]  # fmt: skip
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=7,
                   title="no training", title_fontsize=7)  # fmt: skip
    what = "95% hierarchical bootstrap CI (seeds, then studies)" if intervals else "no intervals"
    fig.suptitle(
        f"Ablation ({split}): bar = mean over seeds, error bar = {what}, dots = seeds", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def delta_forest(table: AblationTable, path: Path) -> Path | None:
    """Forest plot: per metric, each variant's difference from the reference variant (mean over
    seeds of per-seed differences) with its 95% hierarchical bootstrap interval; significant
    cells (seed-level test, Holm) drawn filled and marked with the dagger and k/n."""
    names = [m for m in table.metrics if any(
        m in cells and cells[m].delta is not None for cells in table.rows.values())]  # fmt: skip
    variants = [v for v in table.rows if v != table.reference]
    if not names or not variants:
        return None
    sns.set_theme(style="whitegrid", context="paper")
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    height = 0.32 * len(variants) + 1.4
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.6, height * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    palette = dict(zip(variants, sns.color_palette("tab10", len(variants)), strict=False))
    for ax, name in zip(axes.flat, names, strict=False):
        labels = []
        for y, variant in enumerate(variants):
            c = table.rows[variant].get(name)
            labels.append(variant)
            if c is None or c.delta is None:
                continue
            colour = palette[variant]
            if c.delta_low is not None and c.delta_high is not None:
                ax.plot([c.delta_low, c.delta_high], [y, y], color=colour, lw=1.6)
            face = colour if c.significant else "white"
            ax.scatter([c.delta], [y], s=28, color=face, edgecolors=colour, zorder=3)
            if c.significant:
                labels[-1] = f"{variant} {MARK}{c.seeds_significant}"
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(variants)), labels, fontsize=7)
        ax.set_ylim(len(variants) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=7)
        proxy = " (mean sentence score)" if table.basis.get(name, CORPUS) != CORPUS else ""
        ax.set_title(f"Δ {name.replace('ce/', 'CE ')}{proxy}", fontsize=9)
    fig.suptitle(
        f"Difference vs {table.reference} ({table.split}): mean over seeds of per-seed "
        "differences, 95% hierarchical bootstrap CI (seeds, then studies);\n"
        f"filled, {MARK} k/n: seed-level paired test, Holm over {table.tested} cells, "
        "k/n seeds significant on their own",
        fontsize=9,
    )
    fig.tight_layout()
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
    metrics: pd.DataFrame, split: str, path: Path, prefix: str = "ce_f1/"
) -> Path | None:
    """Per-observation CE F1, variants x observations, mean over seeds. With ``ce_support/``
    rows each column also says how many references are positive, and an observation with none
    reads "absent" rather than an F1 of 0 that would look like a miss."""
    frame = metrics[(metrics["split"] == split) & metrics["metric"].str.startswith(prefix)]
    if frame.empty:
        return None
    grid = frame.assign(observation=frame["metric"].str[len(prefix) :]).pivot_table(
        index="variant", columns="observation", values="value", aggfunc="mean"
    )
    grid = grid.reindex(order_variants(grid.index))
    columns = list(dict.fromkeys(frame["metric"].str[len(prefix) :]))  # store order
    grid = grid[[c for c in columns if c in grid.columns]]
    support = _support(metrics, split, list(grid.columns))
    absent = [c for c, n in support.items() if n == "0"]
    shown = grid.copy()
    shown[absent] = float("nan")  # no F1 to read: left blank and marked below
    sns.set_theme(style="white", context="paper")
    fig, ax = plt.subplots(figsize=(0.7 * grid.shape[1] + 2.5, 0.45 * grid.shape[0] + 2))
    sns.heatmap(shown, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": "F1"}, annot_kws={"fontsize": 6})  # fmt: skip
    for x, column in enumerate(grid.columns):
        if column in absent:
            for y in range(len(grid)):
                ax.text(x + 0.5, y + 0.5, "absent", ha="center", va="center", fontsize=6)
    if support:
        ax.set_xticklabels([f"{c} (n={support[c]})" if c in support else c for c in grid.columns])
    n_rows = int((~grid.index.to_series().astype(str).str.startswith(REFERENCE_PREFIX)).sum())
    if 0 < n_rows < len(grid):  # set the reference rows (last) apart from the variants
        ax.axhline(n_rows, color="white", lw=3)
        ax.set_yticklabels([display_name(str(v)) for v in grid.index], rotation=0)
    n_note = "; n = references positive, absent = none" if support else ""
    ax.set_title(f"Per-observation CE F1 ({split}, mean over seeds{n_note})", fontsize=10)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    return _save(fig, path)


def _loss_column(frame: pd.DataFrame) -> str | None:
    for name in ("loss", "loss/total", "total", "lm", "loss/lm"):
        if name in frame.columns:
            return name
    numeric = [
        c for c in frame.columns if c.startswith("loss") and pd.api.types.is_numeric_dtype(frame[c])
    ]
    return numeric[0] if numeric else None


def training_curves(logs: Mapping[str, list[dict]], path: Path) -> Path | None:
    """Training loss against optimizer step, coloured by stage, one panel per variant."""
    frames = [pd.DataFrame(rows).assign(variant=v) for v, rows in logs.items() if rows]
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    loss = _loss_column(frame)
    if loss is None or "step" not in frame.columns:
        return None
    frame = frame.dropna(subset=[loss])
    if "stage" not in frame.columns:
        frame["stage"] = "train"
    order = order_variants(frame["variant"].unique())
    stages = list(dict.fromkeys(frame["stage"]))
    colours = dict(zip(stages, sns.color_palette("deep", len(stages)), strict=False))
    # mean over seeds per (variant, stage, step); plain matplotlib: relplot is ~10x slower here
    mean = frame.groupby(["variant", "stage", "step"], sort=False)[loss].mean().reset_index()
    sns.set_theme(style="whitegrid", context="paper")
    cols = min(5, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols, 2.3 * rows), squeeze=False, sharey=True
    )
    for ax in axes.flat[len(order) :]:
        ax.set_visible(False)
    for ax, variant in zip(axes.flat, order, strict=False):
        sub = mean[mean["variant"] == variant]
        for stage in stages:
            part = sub[sub["stage"] == stage].sort_values("step")
            if not part.empty:
                ax.plot(part["step"], part[loss], lw=0.9, color=colours[stage], label=stage)
        ax.set_title(variant, fontsize=8)
        ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=colours[s], lw=2, label=s) for s in stages]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="stage", title_fontsize=7)
    fig.supxlabel("optimizer step", fontsize=8)
    fig.supylabel(loss, fontsize=8)
    fig.suptitle("Training loss per stage (mean over seeds)", fontsize=10)
    fig.subplots_adjust(hspace=0.5)
    return _save(fig, path)


def length_distribution(lengths: pd.DataFrame, path: Path) -> Path | None:
    """Words per generated report per variant, with the references' distribution for scale."""
    if lengths.empty:
        return None
    order = order_variants([v for v in lengths["variant"].unique() if v != "reference"])
    if "reference" in set(lengths["variant"]):
        order = ["reference", *order]
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(0.75 * len(order) + 2.5, 3.4))
    sns.boxplot(data=lengths, x="variant", y="words", order=order, ax=ax, fliersize=1.5,
                hue="variant", palette="tab10", legend=False)  # fmt: skip
    ax.set_xlabel("")
    ax.set_ylabel("words per report")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.set_title("Report length (test split)", fontsize=10)
    return _save(fig, path)


def sweep_history(trials: pd.DataFrame, title: str, path: Path, maximize: bool) -> Path | None:
    """Objective per completed trial and the best-so-far line."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if done.empty:
        return None
    best = done["value"].cummax() if maximize else done["value"].cummin()
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.scatter(done["number"], done["value"], s=14, label="trial", color="tab:blue")
    ax.step(done["number"], best, where="post", color="tab:red", label="best so far")
    pruned = trials[trials["state"] == "PRUNED"]
    if not pruned.empty:
        ax.scatter(pruned["number"], [done["value"].min()] * len(pruned), marker="x",
                   color="gray", s=14, label="pruned")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel("val objective")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def param_importance(importance: Mapping[str, float], title: str, path: Path) -> Path | None:
    if not importance:
        return None
    frame = pd.DataFrame({"param": list(importance), "importance": list(importance.values())})
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(frame) + 1.2))
    sns.barplot(data=frame, y="param", x="importance", ax=ax, color="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("")
    return _save(fig, path)
