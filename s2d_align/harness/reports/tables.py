"""The ablation table: mean +- sd over seeds, best marked, delta vs s2d, significance marks.

One computation (:func:`ablation_table`) feeds three renderers (Markdown, LaTeX, CSV), so the
formats can never disagree; their captions are written in ``captions.py``.

Statistics, with the training seed as the unit (``significance.py`` rebuilds each metric's
statistic from the store, at corpus level where it decomposes over studies):

- the main table shows mean +- sd over seeds, and nothing else as uncertainty;
- the difference table and the forest figure show Delta vs the reference variant (s2d): the mean
  over seeds of per-seed differences (seed s against s2d's seed s, same studies) with a 95%
  hierarchical bootstrap interval (seeds, then studies within each seed);
- the bar figure shows each variant's mean over seeds with the same kind of interval;
- the dagger: p = the largest per-seed paired-randomisation p when every seed's difference has
  the same sign, else 1 (the difference must hold in every seed), Holm-corrected over every cell
  the table tests (all variants x metrics); next to it k/n, the seeds whose own paired test is
  significant (uncorrected).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

from s2d_align.evaluation import ce
from s2d_align.evaluation.metrics import CE, CORPUS, family_of, table_names
from s2d_align.harness.references import ReferenceRows, display_name, load_reference_rows
from s2d_align.harness.reports.captions import (
    LATEX_NOTE,
    MACHINERY_CHECKS,
    MACHINERY_NOTE,
    MARK,
    PROXY,
    delta_note,
    footnotes,
    reference_footnotes,
)
from s2d_align.harness.reports.captions import short_metric as _short
from s2d_align.harness.reports.data import PresetResults
from s2d_align.harness.reports.significance import ALPHA, PairedTests, RunPair
from s2d_align.harness.reports.style import ce_definition
from s2d_align.harness.store import Store
from s2d_align.harness.variants import REFERENCE_VARIANT


@dataclass
class Cell:
    mean: float
    sd: float
    n: int
    delta: float | None = None  # variant mean - reference mean
    p_value: float | None = None  # seed-level paired test vs the reference (raw)
    p_holm: float | None = None  # Holm over every tested cell of the table
    seeds_significant: str = ""  # "2/3": per-seed tests significant at ALPHA (uncorrected)
    best: bool = False
    # 95% hierarchical bootstrap intervals (seeds, then studies), on the reported values
    ci_low: float | None = None  # of the mean over seeds
    ci_high: float | None = None
    delta_low: float | None = None  # of delta
    delta_high: float | None = None
    p_seeds: float | None = None  # t-test of per-seed differences over seeds
    p_studies: float | None = None  # randomisation of studies within seeds

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


@dataclass
class AblationTable:
    preset: str
    split: str
    reference: str
    metrics: list[str]
    higher_is_better: dict[str, bool]
    rows: dict[str, dict[str, Cell]]  # variant -> metric -> cell
    compute: dict[str, dict[str, float]]  # variant -> steps / tokens_seen / train_wall_s (means)
    footnotes: list[str] = field(default_factory=list)
    # reference rows (ref:NAME -> metric -> cell): made without training, shown below the
    # variants, never marked best, never tested
    references: dict[str, dict[str, Cell]] = field(default_factory=dict)
    basis: dict[str, str] = field(default_factory=dict)  # metric -> CORPUS or SENTENCE_MEAN
    tested: int = 0  # cells in the Holm family


def table_metrics(results: PresetResults, split: str) -> list[str]:
    """The registry's table metrics present in the store, then the CE headline cell with its
    precision and recall."""
    names = set(results.metrics.loc[results.metrics["split"] == split, "metric"])
    cols = [m for m in table_names() if m in names]
    head = results.headline
    if head and head in names:
        stem = head.rsplit("/", 1)[0]
        for part in ("p", "r"):
            if f"{stem}/{part}" in names:
                cols.append(f"{stem}/{part}")
        cols.append(head)
    return cols


def _holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return out


def _significance(
    store: Store,
    results: PresetResults,
    rows: dict[str, dict[str, Cell]],
    metrics: list[str],
    split: str,
    reference: str,
) -> tuple[dict[str, str], int]:
    """Fill intervals, delta intervals, seed-level p (raw and Holm) and per-seed agreement into
    the cells; return each metric's statistic basis and the size of the Holm family.

    Intervals are computed on each metric's statistic and placed on the reported value (shifted
    by reported - statistic): no shift for exact statistics, the corpus - sentence gap for a
    proxy such as METEOR."""
    mapping = ce.parse_headline(results.headline)[0] if results.headline else "u0"
    tests = PairedTests(store, split, results.manifest_hashes.get(split, []), mapping)
    all_runs = [r for v in rows for r in results.run_ids(v)]
    basis = {m: tests.plan(m, all_runs).basis for m in metrics}
    for variant, cells in rows.items():
        present = [m for m in metrics if m in cells]
        for m, iv in tests.seed_intervals(present, results.seeds_of(variant)).items():
            shift = cells[m].mean - iv.value
            cells[m].ci_low, cells[m].ci_high = iv.low + shift, iv.high + shift
    if reference not in rows:
        return basis, 0
    ref_seeds = results.seeds_of(reference)
    raw: dict[tuple[str, str], float] = {}
    for variant, cells in rows.items():
        if variant == reference:
            continue
        mine = results.seeds_of(variant)
        pairs = [RunPair(s, mine[s], ref_seeds[s]) for s in sorted(set(mine) & set(ref_seeds))]
        present = [m for m in metrics if m in cells and m in rows[reference]]
        for m in present:
            cells[m].delta = cells[m].mean - rows[reference][m].mean
        if not pairs:
            continue
        for m, test in tests.seed_tests(present, pairs).items():
            cell = cells[m]
            shift = cell.delta - test.delta
            cell.delta_low, cell.delta_high = test.low + shift, test.high + shift
            cell.p_seeds, cell.p_studies = test.p_seeds, test.p_studies
            cell.seeds_significant = f"{test.seeds_significant}/{test.n_seeds}"
            if test.p_value is not None:
                cell.p_value = raw[(variant, m)] = test.p_value
    for (variant, m), p in _holm(raw).items():
        rows[variant][m].p_holm = p
    return basis, len(raw)


def ablation_table(
    store: Store,
    results: PresetResults,
    split: str = "test",
    reference: str = REFERENCE_VARIANT,
    references: ReferenceRows | None = None,
) -> AblationTable:
    """``references``: the reference rows to show (default: those in the store that were scored
    on the variants' studies)."""
    frame = results.metrics[results.metrics["split"] == split]
    metrics = table_metrics(results, split)
    hib = {m: bool(frame.loc[frame["metric"] == m, "higher_is_better"].iloc[0]) for m in metrics}
    rows: dict[str, dict[str, Cell]] = {}
    for variant in results.variants:
        cells = {}
        for m in metrics:
            vals = frame.loc[(frame["variant"] == variant) & (frame["metric"] == m), "value"]
            if len(vals):
                sd = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                cells[m] = Cell(float(vals.mean()), sd, len(vals))
        rows[variant] = cells
    basis, tested = _significance(store, results, rows, metrics, split, reference)
    for m in metrics:
        present = [(v, c[m].mean) for v, c in rows.items() if m in c]
        if present:
            pick = max if hib[m] else min
            best = pick(present, key=lambda t: t[1])[1]
            for v, value in present:
                rows[v][m].best = math.isclose(value, best, rel_tol=0, abs_tol=1e-12)
    compute = {}
    for variant in rows:
        r = results.runs[results.runs["variant"] == variant]
        compute[variant] = {
            k: float(r[k].mean()) if r[k].notna().any() else float("nan")
            for k in ("steps", "tokens_seen", "train_wall_s")
        }
    table = AblationTable(results.preset, split, reference, metrics, hib, rows, compute,
                          basis=basis, tested=tested)  # fmt: skip
    table.footnotes = footnotes(results, split, reference, table)
    if references is None:
        references = load_reference_rows(
            store, results.preset, split, results.manifest_hashes.get(split, [])
        )
    table.references = reference_cells(references, metrics, split)
    table.footnotes += reference_footnotes(references, results, split)
    return table


def reference_cells(
    references: ReferenceRows, metrics: list[str], split: str
) -> dict[str, dict[str, Cell]]:
    """One cell per (reference row, metric): a single deterministic value, so sd 0 and n 1."""
    frame = references.metrics[references.metrics["split"] == split]
    out: dict[str, dict[str, Cell]] = {}
    for variant in references.variants:
        mine = frame[frame["variant"] == variant]
        values = dict(zip(mine["metric"], mine["value"], strict=True))
        out[variant] = {m: Cell(float(values[m]), 0.0, 1) for m in metrics if m in values}
    return out


# -- rendering ---------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def _head(table: AblationTable, metric: str) -> str:
    """Column header; a proxy-tested metric carries :data:`PROXY`."""
    proxy = table.basis.get(metric, CORPUS) != CORPUS
    return _short(metric) + (PROXY if proxy else "")


def _delta_md(c: Cell) -> str:
    if c.delta is None:
        return "-"
    ci = "" if c.delta_low is None else f" [{c.delta_low:+.3f}, {c.delta_high:+.3f}]"
    seeds = f" {c.seeds_significant}" if c.seeds_significant else ""
    p = "" if c.p_holm is None else f" p={c.p_holm:.2g}"
    return f"{c.delta:+.3f}{ci}{MARK if c.significant else ''}{seeds}{p}"


def to_markdown(table: AblationTable) -> str:
    head = ["variant", "seeds", "steps", "tokens seen", *(_head(table, m) for m in table.metrics)]
    lines = [f"### Ablation: `{table.preset}` ({table.split})", ""]
    if table.preset in MACHINERY_CHECKS:
        lines += [f"> **Machinery check, not results.** {MACHINERY_NOTE}", ""]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for variant, cells in table.rows.items():
        comp = table.compute[variant]
        out = [f"`{variant}`", str(max((c.n for c in cells.values()), default=0))]
        out += [_int(comp["steps"]), _int(comp["tokens_seen"])]
        for m in table.metrics:
            c = cells.get(m)
            if c is None:
                out.append("-")
                continue
            text = f"{_fmt(c.mean)} ± {_fmt(c.sd)}"
            text = f"**{text}**" if c.best else text
            out.append(text + (f"{MARK} ({c.seeds_significant})" if c.significant else ""))
        lines.append("| " + " | ".join(out) + " |")
    if table.references:
        lines.append("| *reference rows (no training)* |" + " |" * (len(head) - 1))
        for variant, cells in table.references.items():
            out = [f"`{display_name(variant)}`", "-", "-", "-"]
            out += [_fmt(cells[m].mean) if m in cells else "-" for m in table.metrics]
            lines.append("| " + " | ".join(out) + " |")
    lines += ["", f"#### Difference vs `{table.reference}`", "", f"*{delta_note(table.reference)}*"]
    lines += ["", "| variant | " + " | ".join(_head(table, m) for m in table.metrics) + " |"]
    lines += ["|---|" + "---:|" * len(table.metrics)]
    for variant, cells in table.rows.items():
        if variant == table.reference:
            continue
        out = [_delta_md(cells[m]) if m in cells else "-" for m in table.metrics]
        lines.append(f"| `{variant}` | " + " | ".join(out) + " |")
    lines += [""] + [f"{i + 1}. {note}" for i, note in enumerate(table.footnotes)]
    return "\n".join(lines) + "\n"


def _int(x: float) -> str:
    return "-" if x != x else f"{round(x):,}"


def _tex(text: str) -> str:
    """Plain text escaped for LaTeX; ``|``, ``<`` and ``>`` as commands, since the default OT1
    font encoding prints them as other glyphs."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "`": "",
            "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}  # fmt: skip
    return "".join(repl.get(ch, ch) for ch in text)


#: Non-ASCII symbols of the captions as LaTeX (the output is ASCII, whatever the encoding).
_SYMBOLS = {"†": r"$^\dagger$", "‡": r"$^\ddagger$", "±": r"$\pm$", "×": r"$\times$",
            "Δ": r"$\Delta$", "–": "--", "—": "---", "≥": r"$\geq$", "≤": r"$\leq$",
            "…": r"\ldots{}", "’": "'"}  # fmt: skip


def _tex_text(text: str) -> str:
    """A caption or note: `code` spans in typewriter (breakable after each ``|``), symbols as
    LaTeX commands."""
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2:
            code = _tex(part).replace(r"\textbar{}", r"\textbar{}\allowbreak{}")
            out.append(rf"\texttt{{{code}}}")
        else:
            out.append("".join(_SYMBOLS.get(ch, ch) for ch in _tex(part)))
    return "".join(out)


def _tex_head(table: AblationTable, metric: str) -> str:
    proxy = table.basis.get(metric, CORPUS) != CORPUS
    return _tex(_short(metric)) + (r"$^\ddagger$" if proxy else "")


def _label(table: AblationTable, part: str) -> str:
    return "tab:ablation-" + re.sub(r"[^A-Za-z0-9-]+", "-", table.preset) + "-" + part


def _latex_rows(table: AblationTable, metrics: list[str], tokens: bool) -> list[str]:
    """Two lines per variant: mean (small: sd) with the dagger, then in small type the
    difference from the reference and the seeds significant on their own."""
    lines = []
    for variant, cells in table.rows.items():
        out = [rf"\texttt{{{_tex(variant)}}}"]
        under = [""]
        if tokens:
            out.append(_tex(_int(table.compute[variant]["tokens_seen"])))
            under.append("")
        for m in metrics:
            c = cells.get(m)
            if c is None:
                out.append("--")
                under.append("")
                continue
            mean = rf"\textbf{{{_fmt(c.mean)}}}" if c.best else _fmt(c.mean)
            mark = r"$^\dagger$" if c.significant else ""
            out.append(rf"{mean}{{\scriptsize$\pm${_fmt(c.sd)}}}{mark}")
            seeds = f"; {c.seeds_significant}" if c.seeds_significant else ""
            under.append("" if c.delta is None else rf"{{\scriptsize({c.delta:+.3f}{seeds})}}")
        lines.append(" & ".join(out) + r" \\")
        if any(under):
            lines += [" & ".join(under) + r" \\", r"\addlinespace[2pt]"]
    if table.references:
        lines.append(r"\midrule")
        for variant, cells in table.references.items():
            out = [rf"\textit{{{_tex(display_name(variant))}}}"] + (["--"] if tokens else [])
            out += [_fmt(cells[m].mean) if m in cells else "--" for m in metrics]
            lines.append(" & ".join(out) + r" \\")
    return lines


def _latex_float(
    table: AblationTable, metrics: list[str], part: str, what: str, notes: list[str]
) -> list[str]:
    """One ``table*`` float; ``notes`` are LaTeX already."""
    tokens = part == "nlg"
    head = ["Variant", *(["Tokens"] if tokens else []), *(_tex_head(table, m) for m in metrics)]
    check = " Machinery check, not results." if table.preset in MACHINERY_CHECKS else ""
    ref = _tex(table.reference)
    caption = (
        rf"Ablation on \texttt{{{_tex(table.preset)}}}, {table.split} split: {what}.{check} "
        r"Mean{\scriptsize$\pm$sd} over training seeds, best per column in bold; "
        rf"$^\dagger$: differs from \texttt{{{ref}}} in a seed-level paired test (Holm); "
        rf"small type: ($\Delta$ vs \texttt{{{ref}}}; seeds significant on their own). "
        "Notes below the table."
    )
    lines = [
        r"\begin{table*}[t]",
        r"\centering\small",
        rf"\caption{{{caption}}}",
        rf"\label{{{_label(table, part)}}}",
        r"\smallskip",
        rf"\begin{{tabular}}{{l{'r' * (len(head) - 1)}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
        *_latex_rows(table, metrics, tokens),
        r"\bottomrule",
        r"\end{tabular}",
        "",
        r"\smallskip",
        r"\begin{minipage}{\linewidth}\footnotesize\raggedright",
    ]
    lines += [rf"({i}) {note}\par" for i, note in enumerate(notes, 1)]
    lines += [r"\end{minipage}", r"\end{table*}"]
    return lines


def to_latex(table: AblationTable) -> str:
    """Two ``table*`` floats, NLG metrics and clinical efficacy, each fitting the text width
    of a two-column paper; the notes (protocol signature, code) sit below the NLG table."""
    ce_cols = [m for m in table.metrics if family_of(m) == CE]
    nlg = [m for m in table.metrics if m not in ce_cols]
    notes = [_tex_text(n) for n in [LATEX_NOTE.format(reference=table.reference), *table.footnotes]]
    lines = [
        "% generated by s2d-align report from the results store; do not edit",
        r"% Requires \usepackage{booktabs} in the preamble (\toprule, \midrule, \bottomrule,",
        r"% \addlinespace). Up to two table* floats, each as wide as the text of a two-column",
        "% paper: NLG metrics, then clinical efficacy (CE); either can be cut out on its own.",
        "% Plain ASCII: every symbol is a LaTeX command, so it compiles under OT1 and T1.",
    ]
    if nlg:
        lines += ["", *_latex_float(table, nlg, "nlg", "NLG metrics", notes)]
    if ce_cols:
        definition = ce_definition(ce_cols) or ""
        nlg_ref = rf"Table~\ref{{{_label(table, 'nlg')}}}"
        pointer = f"Statistics, protocol signature and code: the notes of {nlg_ref}."
        ce_notes = [_tex_text(definition), pointer] if nlg else [_tex_text(definition), *notes]
        lines += ["", *_latex_float(table, ce_cols, "ce", "clinical efficacy (CE)", ce_notes)]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def to_csv(table: AblationTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "preset",
            "split",
            "variant",
            "metric",
            "mean",
            "sd",
            "n_seeds",
            "best",
            "higher_is_better",
            "delta_vs_" + table.reference,
            "p_value",
            "p_holm",
            "significant",
            "seeds_significant",
            "ci_low",
            "ci_high",
            "delta_ci_low",
            "delta_ci_high",
            "p_seeds",
            "p_studies",
            "test_basis",
            "steps",
            "tokens_seen",
            "train_wall_s",
            "kind",
        ]
    )
    for variant, cells in table.rows.items():
        comp = table.compute[variant]
        for m in table.metrics:
            c = cells.get(m)
            if c is None:
                continue
            writer.writerow(
                [
                    table.preset,
                    table.split,
                    variant,
                    m,
                    f"{c.mean:.6f}",
                    f"{c.sd:.6f}",
                    c.n,
                    int(c.best),
                    int(table.higher_is_better[m]),
                    "" if c.delta is None else f"{c.delta:.6f}",
                    "" if c.p_value is None else f"{c.p_value:.6g}",
                    "" if c.p_holm is None else f"{c.p_holm:.6g}",
                    int(c.significant),
                    c.seeds_significant,
                    _num(c.ci_low),
                    _num(c.ci_high),
                    _num(c.delta_low),
                    _num(c.delta_high),
                    "" if c.p_seeds is None else f"{c.p_seeds:.6g}",
                    "" if c.p_studies is None else f"{c.p_studies:.6g}",
                    table.basis.get(m, ""),
                    _int(comp["steps"]).replace(",", ""),
                    _int(comp["tokens_seen"]).replace(",", ""),
                    f"{comp['train_wall_s']:.2f}",
                    "variant",
                ]
            )
    for variant, cells in table.references.items():
        for m in table.metrics:
            if m in cells:
                c = cells[m]
                row = [table.preset, table.split, variant, m, f"{c.mean:.6f}", "", "", 0]
                row += [int(table.higher_is_better[m]), "", "", "", 0, ""]
                row += ["", "", "", "", "", "", "", 0, 0, "0.00"]
                writer.writerow([*row, "reference"])
    return buf.getvalue()
