"""Reports rebuilt from the results store alone: tables (Markdown, LaTeX, CSV) and figures.

``build_reports(store, out_dir)`` is a pure function of the store: run directories, datasets
and caches may be gone (images in the qualitative panel are drawn when their files still exist).
Layout: ``OUT/index.md``; per preset ``OUT/PRESET/ablation.{md,tex,csv}``,
``OUT/PRESET/diagnostics.{md,csv}`` (per-run diagnostics, when recorded) and
``OUT/PRESET/figures/NAME.{pdf,png}`` (``ablation_bars``, ``delta_forest`` ..., ``val_curves``
when runs scored val during training, ``train.eval_every``); per Optuna study
``OUT/sweeps/STUDY/{trials.csv,sweep.*,val_curves.*}``. The index lists presets in
:data:`MACHINERY_CHECKS` apart, as checks that the pipeline runs, not results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from s2d_align.evaluation.metrics import NLG, SUPPORT_PREFIX, metric_specs
from s2d_align.harness.references import ReferenceRows, load_reference_rows
from s2d_align.harness.reports import diagnostics, figures, qualitative, tables
from s2d_align.harness.reports.captions import EXAMPLE_DIRS, MACHINERY_CHECKS, MACHINERY_NOTE
from s2d_align.harness.reports.data import (
    PresetResults,
    load_preset,
    mixed_config_notes,
    presets_in,
)
from s2d_align.harness.reports.figures import figure_files
from s2d_align.harness.reports.style import REFERENCE_REPORTS, variant_colours
from s2d_align.harness.reports.sweeps import sweep_reports
from s2d_align.harness.store import Store
from s2d_align.harness.variants import REFERENCE_VARIANT
from s2d_align.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["MACHINERY_CHECKS", "PresetTables", "build_reports", "preset_report", "preset_tables"]


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
    rows = [{"variant": REFERENCE_REPORTS, "words": len(t.split())} for t, _ in refs.values()]
    for variant, texts in preds.items():
        rows += [{"variant": variant, "words": len(t.split())} for t in texts.values()]
    return pd.DataFrame(rows, columns=["variant", "words"])


def _train_logs(store: Store, results: PresetResults) -> dict[str, dict[int, list[dict]]]:
    """variant -> seed -> training-log rows."""
    return {
        variant: {
            seed: store.train_log(run_id) for seed, run_id in results.seeds_of(variant).items()
        }
        for variant in results.variants
    }


def _val_curves(store: Store, results: PresetResults) -> pd.DataFrame:
    """variant, seed, step, metric, value: val metrics the runs scored during training."""
    rows = [
        {"variant": variant, "seed": seed, **row}
        for variant in results.variants
        for seed, run_id in results.seeds_of(variant).items()
        for row in store.val_curve(run_id)
    ]
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "metric", "value"])


def _val_curve_metrics(results: PresetResults, curves: pd.DataFrame) -> list[str]:
    """The headline metric and one NLG metric (BLEU-4, else the table's first NLG column)."""
    scored = set(curves["metric"])
    columns = [s.name for s in metric_specs() if s.shown_in_tables and s.family == NLG]
    nlg = next((m for m in ("BLEU_4", *columns) if m in scored), None)
    return [m for m in (results.headline, nlg) if m and m in scored]


def _reference_support(store: Store, results: PresetResults, split: str) -> dict[str, int] | None:
    """Observation -> references positive under the headline mapping, from the stored reference
    labels (for stores scored before ``ce_support/`` rows were recorded); None without labels."""
    from s2d_align.chexpert import OBSERVATIONS
    from s2d_align.evaluation import ce

    labels: dict[str, dict] = {}
    for manifest in results.manifest_hashes.get(split, []):
        labels.update(store.reference_labels(manifest, split))
    if not labels:
        return None
    mapping = ce.parse_headline(results.headline)[0] if results.headline else "u0"
    positives = ce.binarize(list(labels.values()), mapping, source="reference labels").sum(0)
    return {o: int(n) for o, n in zip(OBSERVATIONS, positives, strict=True)}


def _eval_every(store: Store, results: PresetResults) -> int:
    steps = []
    for run_id in results.runs["run_id"]:
        run = store.get_run(run_id)
        if run is not None and run.config:
            steps.append(int((run.config.get("train") or {}).get("eval_every") or 0))
    return max(steps, default=0)


def preset_report(store: Store, preset: str, out_dir: Path, split: str = "test") -> list[Path]:
    """Tables and figures of one preset under ``out_dir/preset``; the paths written."""
    return _preset_report(store, preset, out_dir, split)[0]


@dataclass
class PresetTables:
    """The tables of one preset and split, and the file texts they are written as."""

    results: PresetResults
    references: ReferenceRows
    ablation: tables.AblationTable
    diagnostics: diagnostics.DiagnosticsTable | None

    def files(self) -> dict[str, str]:
        """File name (under ``OUT/PRESET``) -> text."""
        out = {
            "ablation.md": tables.to_markdown(self.ablation),
            "ablation.tex": tables.to_latex(self.ablation),
            "ablation.csv": tables.to_csv(self.ablation),
        }
        if self.diagnostics is not None:
            out["diagnostics.md"] = diagnostics.to_markdown(self.diagnostics)
            out["diagnostics.csv"] = diagnostics.to_csv(self.diagnostics)
        return out


def preset_tables(store: Store, preset: str, split: str = "test") -> PresetTables | None:
    """The ablation and diagnostics tables of ``preset`` on ``split``; None without runs."""
    results = load_preset(store, preset)
    if results.runs.empty:
        return None
    ref_rows = load_reference_rows(store, preset, split, results.manifest_hashes.get(split, []))
    table = tables.ablation_table(store, results, split=split, references=ref_rows)
    table.footnotes += mixed_config_notes(results)  # a row averaging unlike runs says so
    diag = diagnostics.diagnostics_table(store, results, split=split, references=ref_rows)
    return PresetTables(results, ref_rows, table, diag)


def _preset_report(
    store: Store, preset: str, out_dir: Path, split: str = "test"
) -> tuple[list[Path], list[str]]:
    """Paths written, and notes for the index (figures not drawn, and why)."""
    made = preset_tables(store, preset, split)
    if made is None:
        return [], []
    results, ref_rows, table = made.results, made.references, made.ablation
    base = out_dir / preset
    fig_dir = base / "figures"
    # figures draw the reference rows too, set apart from the variants
    metrics = results.metrics
    if not ref_rows.metrics.empty:
        metrics = pd.concat([metrics, ref_rows.metrics], ignore_index=True)
    written = [_write(base / name, text) for name, text in made.files().items()]
    intervals = {
        (variant, m): (c.ci_low, c.ci_high)
        for variant, cells in table.rows.items()
        for m, c in cells.items()
    }
    # one colour per variant for every figure of the report
    colours = variant_colours([*results.variants, *ref_rows.variants, REFERENCE_REPORTS])
    has_support = metrics["metric"].str.startswith(SUPPORT_PREFIX).any()
    support = None if has_support else _reference_support(store, results, split)
    maybe = [
        figures.ablation_bars(
            metrics, table.metrics, split, fig_dir / "ablation_bars.png", intervals, colours
        ),
        figures.delta_forest(table, fig_dir / "delta_forest.png", colours),
        figures.ce_heatmap(metrics, split, fig_dir / "ce_f1_heatmap.png", support=support),
        figures.training_curves(
            _train_logs(store, results), fig_dir / "training_curves.png", colours
        ),
    ]
    preds = _predictions(store, results, split)
    refs = _references(store, results, split)
    row_preds = {v: store.predictions(rid, split) for v, rid in ref_rows.run_ids.items()}
    lengths = _lengths({**preds, **{v: p for v, p in row_preds.items() if p}}, refs)
    maybe.append(figures.length_distribution(lengths, fig_dir / "report_lengths.png", colours))
    shown = {v: preds[v] for v in (REFERENCE_VARIANT, "sft") if v in preds} or dict(
        list(preds.items())[:2]
    )
    if refs and shown:
        examples = qualitative.pick_examples(refs, shown)
        maybe.append(qualitative.qualitative_panel(examples, fig_dir / "qualitative.png"))
    drawn, notes = _val_curve_figure(store, results, fig_dir, colours)
    maybe.append(drawn)
    written += [f for p in maybe if p is not None for f in figure_files(p)]
    return written, notes


def _val_curve_figure(
    store: Store, results, fig_dir: Path, colours
) -> tuple[Path | None, list[str]]:
    """The validation-metric-vs-step figure, or the note saying why it is not drawn."""
    notes: list[str] = []
    drawn = None
    every = _eval_every(store, results)
    curves = _val_curves(store, results)
    if every <= 0:
        notes.append(
            "Validation metric vs step: not drawn, no run of this preset scored val during "
            "training (train.eval_every = 0, the default; set train.eval_every=N to draw it). "
            "Sweeps with eval_every draw it per trial."
        )
    elif curves.empty:
        notes.append(
            "Validation metric vs step: not drawn, runs of this preset scored val during "
            f"training (train.eval_every = {every}) but the store holds none of those scores "
            "(written before the store kept them)."
        )
    else:
        names = _val_curve_metrics(results, curves)
        drawn = figures.val_curves(curves, names, fig_dir / "val_curves.png", colours, every=every)
        if drawn is None:
            notes.append(
                "Validation metric vs step: not drawn, the val scores recorded during training "
                "hold neither the headline metric nor an NLG metric."
            )
    return drawn, notes


def _on_disk(out_dir: Path) -> list[Path]:
    """Tables and figures already under ``out_dir`` (presets another store wrote keep their
    index entries when this store does not hold them)."""
    patterns = ("*/*.md", "*/figures/*.png", "sweeps/*/*.png", "sweeps/*/*.csv",
                *(f"{folder}/*.png" for folder in sorted(EXAMPLE_DIRS)))  # fmt: skip
    return [p for pattern in patterns for p in out_dir.glob(pattern) if p.is_file()]


def _preset_of(rel: Path) -> str:
    """``default/...`` -> default; ``sweeps/STUDY/...`` -> the study's preset (its name starts
    PRESET., see ``default_study_name``)."""
    if rel.parts[0] == "sweeps" and len(rel.parts) > 1:
        return rel.parts[1].split(".")[0]
    return rel.parts[0]


def _entries(out_dir: Path, paths: list[Path], embed: bool) -> list[str]:
    """Links to tables, then figures (embedded, or linked for machinery checks), PDF beside."""
    lines = []
    for path in paths:
        rel = path.relative_to(out_dir)
        if path.suffix in (".md", ".csv"):
            lines.append(f"- [{rel}]({rel})")
    for path in paths:
        rel = path.relative_to(out_dir)
        if path.suffix != ".png":
            continue
        pdf = f" ([PDF]({rel.with_suffix('.pdf')}))" if path.with_suffix(".pdf").is_file() else ""
        if embed:
            lines += ["", f"![{rel}]({rel}){pdf}"]
        else:
            lines.append(f"- figure: [{rel}]({rel}){pdf}")
    return lines


def _index(out_dir: Path, written: list[Path], notes: dict[str, list[str]] | None = None) -> Path:
    """``index.md``: results by preset, then sweeps, then machinery checks set apart."""
    notes = notes or {}
    found = sorted(p for p in {*written, *_on_disk(out_dir)} if p.suffix in (".md", ".csv", ".png"))
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in found:
        rel = path.relative_to(out_dir)
        if len(rel.parts) < 2:
            continue
        kind = "sweeps" if rel.parts[0] == "sweeps" else "presets"
        if rel.parts[0] != "sweeps" and path.suffix == ".csv":
            continue  # a preset's CSV sits beside its Markdown table
        groups.setdefault((kind, rel.parts[1] if kind == "sweeps" else rel.parts[0]), []).append(
            path
        )
    checks = {key for key in groups if key[1] in EXAMPLE_DIRS
              or _preset_of(groups[key][0].relative_to(out_dir)) in MACHINERY_CHECKS}  # fmt: skip
    lines = [
        "# S2D-Align results",
        "",
        "Rebuilt by `s2d-align report` from the results store. Every figure is a PNG with a "
        "vector PDF of the same name beside it; the LaTeX tables (`ablation.tex`) need "
        "`\\usepackage{booktabs}`.",
    ]
    for kind, title in (("presets", "Results"), ("sweeps", "Sweeps")):
        keys = sorted(k for k in groups if k[0] == kind and k not in checks)
        if keys:
            lines += ["", f"## {title}"]
        for key in keys:
            lines += ["", f"### `{key[1]}`", ""]
            lines += [f"*{n}*" for n in notes.get(key[1], [])] + ([""] if key[1] in notes else [])
            lines += _entries(out_dir, groups[key], embed=True)
    if checks:
        lines += ["", "## Machinery checks (not results)", "", MACHINERY_NOTE]
        for key in sorted(checks):
            what = {"sweeps": "sweep"}.get(
                key[0], "example" if key[1] in EXAMPLE_DIRS else "preset"
            )
            lines += ["", f"### `{key[1]}` ({what}; machinery check, not results)", ""]
            lines += _entries(out_dir, groups[key], embed=False)
    return _write(out_dir / "index.md", "\n".join(lines) + "\n")


def build_reports(store: Store, out_dir: str | Path, *, split: str = "test") -> list[Path]:
    """Write every table and figure for every preset and study in the store; return the paths."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    notes: dict[str, list[str]] = {}
    for preset in presets_in(store):
        log.info("report: preset %s", preset)
        paths, preset_notes = _preset_report(store, preset, out_dir, split=split)
        written += paths
        if paths and preset_notes:
            notes[preset] = preset_notes
            for note in preset_notes:
                log.info("report %s: %s", preset, note)
    written += sweep_reports(store.url, out_dir / "sweeps", store)
    written.append(_index(out_dir, written, notes))
    return written
