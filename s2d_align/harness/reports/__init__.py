"""Reports rebuilt from the results store alone: tables (Markdown, LaTeX, CSV) and figures.

``build_reports(store, out_dir)`` is a pure function of the store: run directories, datasets
and caches may be gone (images in the qualitative panel are drawn when their files still exist).
Layout: ``OUT/index.md``; per preset ``OUT/PRESET/ablation.{md,tex,csv}``,
``OUT/PRESET/diagnostics.{md,csv}`` (per-run diagnostics, when recorded) and
``OUT/PRESET/figures/*.png`` (``ablation_bars``, ``delta_forest`` ...); per Optuna study ``OUT/sweeps/STUDY/{trials.csv,*.png}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from s2d_align.harness.references import load_reference_rows
from s2d_align.harness.reports import diagnostics, figures, qualitative, tables
from s2d_align.harness.reports.data import (
    PresetResults,
    load_preset,
    mixed_config_notes,
    presets_in,
)
from s2d_align.harness.reports.sweeps import sweep_reports
from s2d_align.harness.store import Store
from s2d_align.harness.variants import REFERENCE_VARIANT
from s2d_align.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["build_reports", "preset_report"]


def _write(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _predictions(store: Store, results: PresetResults, split: str) -> dict[str, dict[str, str]]:
    """variant -> id -> text, from each variant's lowest-seed run."""
    out = {}
    for variant in results.variants:
        seeds = results.seeds_of(variant)
        if seeds:
            preds = store.predictions(seeds[min(seeds)], split)
            if preds:
                out[variant] = preds
    return out


def _references(store: Store, results: PresetResults, split: str) -> dict[str, tuple[str, list]]:
    refs: dict[str, tuple[str, list]] = {}
    for manifest in results.manifest_hashes.get(split, []):
        refs.update(store.references(manifest, split))
    return refs


def _lengths(preds: dict[str, dict[str, str]], refs: dict[str, tuple[str, list]]) -> pd.DataFrame:
    rows = [{"variant": "reference", "words": len(t.split())} for t, _ in refs.values()]
    for variant, texts in preds.items():
        rows += [{"variant": variant, "words": len(t.split())} for t in texts.values()]
    return pd.DataFrame(rows, columns=["variant", "words"])


def _train_logs(store: Store, results: PresetResults) -> dict[str, list[dict]]:
    logs = {}
    for variant in results.variants:
        rows: list[dict] = []
        for run_id in results.run_ids(variant):
            rows += store.train_log(run_id)
        logs[variant] = rows
    return logs


def preset_report(store: Store, preset: str, out_dir: Path, split: str = "test") -> list[Path]:
    results = load_preset(store, preset)
    if results.runs.empty:
        return []
    base = out_dir / preset
    fig_dir = base / "figures"
    ref_rows = load_reference_rows(store, preset, split, results.manifest_hashes.get(split, []))
    table = tables.ablation_table(store, results, split=split, references=ref_rows)
    table.footnotes += mixed_config_notes(results)  # a row averaging unlike runs says so
    # figures draw the reference rows too, set apart from the variants
    metrics = results.metrics
    if not ref_rows.metrics.empty:
        metrics = pd.concat([metrics, ref_rows.metrics], ignore_index=True)
    written = [
        _write(base / "ablation.md", tables.to_markdown(table)),
        _write(base / "ablation.tex", tables.to_latex(table)),
        _write(base / "ablation.csv", tables.to_csv(table)),
    ]
    diag = diagnostics.diagnostics_table(store, results, split=split)
    if diag is not None:
        written += [
            _write(base / "diagnostics.md", diagnostics.to_markdown(diag)),
            _write(base / "diagnostics.csv", diagnostics.to_csv(diag)),
        ]
    intervals = {
        (variant, m): (c.ci_low, c.ci_high)
        for variant, cells in table.rows.items()
        for m, c in cells.items()
    }
    maybe = [
        figures.ablation_bars(
            metrics, table.metrics, split, fig_dir / "ablation_bars.png", intervals
        ),
        figures.delta_forest(table, fig_dir / "delta_forest.png"),
        figures.ce_heatmap(metrics, split, fig_dir / "ce_f1_heatmap.png"),
        figures.training_curves(_train_logs(store, results), fig_dir / "training_curves.png"),
    ]
    preds = _predictions(store, results, split)
    refs = _references(store, results, split)
    row_preds = {v: store.predictions(rid, split) for v, rid in ref_rows.run_ids.items()}
    lengths = _lengths({**preds, **{v: p for v, p in row_preds.items() if p}}, refs)
    maybe.append(figures.length_distribution(lengths, fig_dir / "report_lengths.png"))
    shown = {v: preds[v] for v in (REFERENCE_VARIANT, "sft") if v in preds} or dict(
        list(preds.items())[:2]
    )
    if refs and shown:
        examples = qualitative.pick_examples(refs, shown)
        maybe.append(qualitative.qualitative_panel(examples, fig_dir / "qualitative.png"))
    written += [p for p in maybe if p is not None]
    return written


def _on_disk(out_dir: Path) -> list[Path]:
    """Tables and figures already under ``out_dir`` (presets another store wrote keep their
    index entries when this store does not hold them)."""
    patterns = ("*/*.md", "*/figures/*.png", "sweeps/*/*.png")
    return [p for pattern in patterns for p in out_dir.glob(pattern) if p.is_file()]


def _index(out_dir: Path, written: list[Path]) -> Path:
    lines = ["# S2D-Align results", "", "Rebuilt by `s2d-align report` from the results store.", ""]
    written = sorted({*written, *_on_disk(out_dir)})
    for path in sorted(written):
        rel = path.relative_to(out_dir)
        if path.suffix == ".md":
            lines.append(f"- [{rel}]({rel})")
    lines.append("")
    for path in sorted(written):
        if path.suffix == ".png":
            rel = path.relative_to(out_dir)
            lines.append(f"![{rel}]({rel})")
    return _write(out_dir / "index.md", "\n".join(lines) + "\n")


def build_reports(store: Store, out_dir: str | Path, *, split: str = "test") -> list[Path]:
    """Write every table and figure for every preset and study in the store; return the paths."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for preset in presets_in(store):
        log.info("report: preset %s", preset)
        written += preset_report(store, preset, out_dir, split=split)
    written += sweep_reports(store.url, out_dir / "sweeps")
    written.append(_index(out_dir, written))
    return written
