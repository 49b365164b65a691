"""The diagnostics table: per-run ``diag/...`` metrics, mean ± sd over seeds, per variant.

Written beside the ablation table. It answers what the headline cannot: does a variant's report
depend on the image, do its sentence likelihoods track the findings, did its memory gate open and
its alignment loss leave chance, and do its retrieved references state the study's findings
(see ``s2d_align.inference.diagnostics`` for how each is measured). Three report-level columns
sit with them, read from each run's stored scores and predictions rather than its ``diag/``
metrics: the grounded finding F1 and its ungrounded counterpart (does a report put its findings
where the reference does) and the share of distinct reports (does the model write one report for
everybody). The reference rows with predictions (all-normal, nn-retrieval, oracle-paraphrase)
get those three as floor and ceiling; the probe rows get what they measure. The Markdown shows
the summary columns, each explained in a caption line; the CSV holds every value, the
per-observation finding AUROCs included.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.grounded import GROUNDED_METRICS
from s2d_align.evaluation.metrics import DIAG, family_of
from s2d_align.harness.references import (
    DESCRIPTIONS,
    ReferenceRows,
    display_name,
    load_reference_rows,
)
from s2d_align.harness.reports.data import PresetResults
from s2d_align.harness.reports.tables import Cell
from s2d_align.harness.store import Store

PREFIX = "diag/"
#: Report-level columns (not ``diag/`` metrics): two stored scores and one read off predictions.
GROUNDED_F1, UNGROUNDED_F1 = (m for m in GROUNDED_METRICS if m.endswith("f1"))
DISTINCT = "report/distinct"
_REPORT_LEVEL = (DISTINCT, GROUNDED_F1, UNGROUNDED_F1)
#: Column name and meaning of the diagnostics with a name of their own (the registry knows them
#: only as the ``diag/*`` patterns of its DIAG family, for their direction).
_FIXED = {
    DISTINCT: (
        "distinct reports",
        "distinct generated reports (exact text) over the split's studies (1/n: one report for "
        "every study; 1: a different report for each)",
    ),
    GROUNDED_F1: (
        "grounded F1",
        "positive findings matched with the reference's side and zone as well as the observation "
        "(grounded finding F1, see the evaluation protocol)",
    ),
    UNGROUNDED_F1: (
        "ungrounded F1",
        "the same findings matched on the observation alone (the gap to grounded F1 is what "
        "location costs)",
    ),
    "diag/image_dependence": (
        "image dep.",
        "CE headline with the real images minus with images permuted across studies "
        "(0: the report ignores the image)",
    ),
    "diag/finding_auroc": (
        "finding AUROC",
        "macro AUROC, over observations, of the likelihood of the train reports' commonest "
        "sentences stating the finding minus those negating it, against the reference label "
        "(0.5: blind to the image)",
    ),
    "diag/keyphrase_auroc": (
        "key-phrase AUROC",
        "key-phrase head: macro AUROC over vocabulary phrases present in the split",
    ),
    "diag/keyphrase_f1": (
        "key-phrase F1",
        "key-phrase head: micro F1 at the per-phrase thresholds tuned on val",
    ),
    "diag/retrieval_label_precision": (
        "retrieval precision",
        "share of retrieved reference reports stating exactly the study's positive findings",
    ),
    "diag/retrieval_label_precision/shuffled": (
        "retrieval precision (shuffled)",
        "the same against the references retrieved for the other studies (chance on this split)",
    ),
    "diag/retrieval_label_jaccard": (
        "retrieval Jaccard",
        "mean Jaccard of positive findings, study vs retrieved reference (normal vs normal = 1)",
    ),
}


def header(metric: str) -> tuple[str, str]:
    """Short column name and one-line meaning of a diagnostic."""
    if metric in _FIXED:
        return _FIXED[metric]
    if metric.startswith("diag/permuted/"):
        cell = metric[len("diag/permuted/") :]
        return "CE permuted", f"{cell} with every study shown another study's image"
    if metric.startswith("diag/gate/"):
        stage = metric[len("diag/gate/") :]
        return f"gate {stage}", f"tanh(g) of the memory gate at the end of stage {stage} (0: shut)"
    if metric.startswith("diag/align_vs_chance/"):
        stage = metric[len("diag/align_vs_chance/") :]
        return (
            f"align/log B {stage}",
            f"alignment InfoNCE over the last steps of stage {stage} / log(batch) (1: chance)",
        )
    if metric.startswith("diag/finding_auroc/"):
        obs = metric[len("diag/finding_auroc/") :]
        return f"AUROC {obs}", f"finding AUROC of {obs}"
    return metric[len(PREFIX) :], metric


def _stage_order(store: Store, results: PresetResults) -> list[str]:
    """Stage names in training order, as the runs' logs met them (variant order first)."""
    order: list[str] = []
    for variant in results.variants:
        for run_id in results.run_ids(variant):
            for row in store.train_log(run_id):
                stage = row.get("stage")
                if stage is not None and stage not in order:
                    order.append(str(stage))
    return order


def order_metrics(names: set[str], stages: list[str]) -> list[str]:
    """Summary diagnostics first (in reading order), per-observation AUROCs last."""

    def key(name: str) -> tuple:
        def stage_rank(prefix: str) -> tuple:
            stage = name[len(prefix) :]
            return (stages.index(stage) if stage in stages else len(stages), stage)

        if name == "diag/image_dependence":
            return (0,)
        if name.startswith("diag/permuted/"):
            return (1, name)
        if name in _REPORT_LEVEL:
            return (1.5, _REPORT_LEVEL.index(name))
        if name == "diag/finding_auroc":
            return (2,)
        if name.startswith("diag/keyphrase_"):
            return (2.5, name)
        if name.startswith("diag/gate/"):
            return (3, *stage_rank("diag/gate/"))
        if name.startswith("diag/align_vs_chance/"):
            return (4, *stage_rank("diag/align_vs_chance/"))
        if name.startswith("diag/retrieval_label_"):
            return (5, list(_FIXED).index(name) if name in _FIXED else 99, name)
        if name.startswith("diag/finding_auroc/"):
            obs = name[len("diag/finding_auroc/") :]
            return (7, OBSERVATIONS.index(obs) if obs in OBSERVATIONS else 99, obs)
        return (6, name)

    return sorted(names, key=key)


@dataclass
class DiagnosticsTable:
    preset: str
    split: str
    metrics: list[str]  # every diagnostic, in column order
    rows: dict[str, dict[str, Cell]]  # variant -> metric -> mean, sd, n over seeds
    #: reference rows (ref:NAME) -> metric -> their single value (no seeds): the rows that
    #: write reports with their report-level columns, then the probe rows
    references: dict[str, dict[str, Cell]] = field(default_factory=dict)


def distinct_share(predictions: dict[str, str]) -> float | None:
    """Distinct report texts (stripped, exact) over studies; None without predictions."""
    if not predictions:
        return None
    return len({text.strip() for text in predictions.values()}) / len(predictions)


def _report_level(store: Store, run_id: str, split: str, scores: dict[str, float]) -> dict:
    """The report-level columns of one run: its stored grounded scores and its distinct share."""
    values = {m: scores[m] for m in (GROUNDED_F1, UNGROUNDED_F1) if m in scores}
    share = distinct_share(store.predictions(run_id, split))
    if share is not None:
        values[DISTINCT] = share
    return values


def diagnostics_table(
    store: Store,
    results: PresetResults,
    split: str = "test",
    references: ReferenceRows | None = None,
) -> DiagnosticsTable | None:
    """Every per-run diagnostic (the metric registry's DIAG family) of the preset's runs on
    ``split``, with the report-level columns; None when no run has any diagnostic.
    ``references``: the reference rows with predictions, when the caller has loaded them."""
    in_split = results.metrics[results.metrics["split"] == split]
    frame = in_split[in_split["metric"].map(lambda m: family_of(m) == DIAG).astype(bool)]
    if frame.empty:
        return None
    per_run: dict[str, dict[str, float]] = {}  # run id -> metric -> value
    for run_id, metric, value in zip(frame["run_id"], frame["metric"], frame["value"], strict=True):
        per_run.setdefault(run_id, {})[metric] = float(value)
    stored = in_split[in_split["metric"].isin([GROUNDED_F1, UNGROUNDED_F1])]
    for run_id, values in per_run.items():  # runs without diagnostics stay out of the table
        mine = stored[stored["run_id"] == run_id]
        scores = dict(zip(mine["metric"], mine["value"].astype(float), strict=True))
        values.update(_report_level(store, run_id, split, scores))
    seen = {m for values in per_run.values() for m in values}
    manifests = results.manifest_hashes.get(split, [])
    refs: dict[str, dict[str, Cell]] = {}
    if references is None:
        references = load_reference_rows(store, results.preset, split, manifests)
    probes = load_reference_rows(store, results.preset, split, manifests, probes=True)
    for rows, report_level in ((references, True), (probes, False)):
        ref_frame = rows.metrics[rows.metrics["split"] == split]
        for variant, run_id in rows.run_ids.items():
            mine = ref_frame[ref_frame["variant"] == variant]
            values = {m: float(v) for m, v in zip(mine["metric"], mine["value"], strict=True)}
            if report_level:
                values = _report_level(store, run_id, split, values)
            values = {m: v for m, v in values.items() if m in seen or m.startswith(PREFIX)}
            if values:
                refs[variant] = {m: Cell(v, 0.0, 1) for m, v in values.items()}
    seen |= {m for cells in refs.values() for m in cells}
    metrics = order_metrics(seen, _stage_order(store, results))
    cells_of: dict[str, dict[str, Cell]] = {}
    for variant in results.variants:
        runs = [per_run[r] for r in results.run_ids(variant) if r in per_run]
        cells = {}
        for m in metrics:
            vals = np.array([values[m] for values in runs if m in values], dtype=float)
            if len(vals):
                sd = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                cells[m] = Cell(float(vals.mean()), sd, len(vals))
        if cells:  # rows computed without a trained model (e.g. references) have none
            cells_of[variant] = cells
    return DiagnosticsTable(results.preset, split, metrics, cells_of, refs)


def to_markdown(table: DiagnosticsTable) -> str:
    preset, split, metrics, rows = table.preset, table.split, table.metrics, table.rows
    shown = [m for m in metrics if not m.startswith("diag/finding_auroc/")]
    head = ["variant", "seeds", *(header(m)[0] for m in shown)]
    lines = [
        f"### Diagnostics: `{preset}` ({split})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for variant, cells in rows.items():
        out = [f"`{variant}`", str(max((c.n for c in cells.values()), default=0))]
        for m in shown:
            c = cells.get(m)
            if c is None:
                out.append("-")
            else:
                out.append(f"{c.mean:.3f} ± {c.sd:.3f}" if c.n > 1 else f"{c.mean:.3f}")
        lines.append("| " + " | ".join(out) + " |")
    for variant, cells in table.references.items():
        out = [f"`{display_name(variant)}`", "-"]
        out += [f"{cells[m].mean:.3f}" if m in cells else "-" for m in shown]
        lines.append("| " + " | ".join(out) + " |")
    lines += ["", f"Mean ± sd over seeds per variant ({split} split); '-': not measured."]
    lines += [f"- **{header(m)[0]}**: {header(m)[1]}." for m in shown]
    for variant in table.references:
        name = variant[len("ref:") :]
        lines.append(
            f"- **{display_name(variant)}** (no training): {DESCRIPTIONS.get(name, name)}."
        )
    if len(shown) < len(metrics):
        lines.append("- Per-observation finding AUROCs are in `diagnostics.csv`.")
    return "\n".join(lines) + "\n"


def to_csv(table: DiagnosticsTable) -> str:
    preset, split, metrics, rows = table.preset, table.split, table.metrics, table.rows
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["preset", "split", "variant", "metric", "mean", "sd", "n_seeds", "meaning"])
    for variant, cells in [*rows.items(), *table.references.items()]:
        for m in metrics:
            c = cells.get(m)
            if c is not None:
                writer.writerow(
                    [preset, split, variant, m, f"{c.mean:.6f}", f"{c.sd:.6f}", c.n, header(m)[1]]
                )
    return buf.getvalue()
