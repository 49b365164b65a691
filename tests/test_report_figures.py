"""Paper-ready reports: every figure as PDF and PNG at a column's width with fonts of at least
7 pt, one colour per variant in every figure, agreement colours in the qualitative panel, the
LaTeX split into two booktabs tables whose notes survive OT1, and an index that sets the smoke
preset apart as a machinery check."""

from __future__ import annotations

import re
from pathlib import Path

import harness_fakes as fakes
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text
from PIL import Image

from s2d_align.harness.plan import plan_grid
from s2d_align.harness.reports import build_reports, figures, qualitative
from s2d_align.harness.reports.style import (
    AGREEMENT,
    FULL_WIDTH,
    MIN_FONT_PT,
    PALETTE,
    PNG_DPI,
    SINGLE_COLUMN,
    metric_label,
    variant_colours,
)
from s2d_align.harness.reports.tables import AblationTable, Cell, to_latex
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

VARIANTS = ["s2d", "sft", "sft+mem"]
METRICS = ["BLEU_4", "ce/u0/14/micro/f1"]


# -- synthetic inputs ------------------------------------------------------------------------
def _metrics(variants=VARIANTS, seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(variants):
        for s in seeds:
            for m in METRICS:
                rows.append({"variant": v, "seed": s, "split": "test", "metric": m,
                             "value": 0.3 + 0.05 * i + 0.01 * s})  # fmt: skip
            for k, obs in enumerate(["Edema", "Fracture"]):
                rows.append({"variant": v, "seed": s, "split": "test",
                             "metric": f"ce_f1/{obs}", "value": 0.2 * k + 0.1 * i})  # fmt: skip
    rows.append({"variant": "ref:all-normal", "seed": 0, "split": "test", "metric": "BLEU_4",
                 "value": 0.25})  # fmt: skip
    return pd.DataFrame(rows)


def _table() -> AblationTable:
    rows = {
        v: {m: Cell(0.4 + 0.01 * i, 0.01, 2, delta=None if v == "s2d" else -0.02 * i,
                    delta_low=-0.05, delta_high=0.01, p_holm=0.01 if v == "sft" else 0.5,
                    seeds_significant="2/2" if v == "sft" else "0/2")
            for m in METRICS}
        for i, v in enumerate(VARIANTS)
    }  # fmt: skip
    compute = {v: {"steps": 4.0, "tokens_seen": 400.0, "train_wall_s": 1.0} for v in VARIANTS}
    return AblationTable("tiny", "test", "s2d", METRICS, dict.fromkeys(METRICS, True), rows,
                         compute, tested=4)  # fmt: skip


def _logs(variants=VARIANTS) -> dict:
    out = {}
    for i, v in enumerate(variants):
        out[v] = {
            seed: [
                {
                    "stage": "pair" if step <= 10 else "reference",
                    "step": step,
                    "losses": {
                        "lm": 2.0 / step + 0.01 * seed,
                        **({"align": 1.0 + i / step} if step > 10 else {}),
                    },
                }
                for step in range(1, 21)
            ]
            for seed in (0, 1, 2)
        }
    return out


def _lengths(variants) -> pd.DataFrame:
    rows = [{"variant": "reference", "words": 20 + k} for k in range(5)]
    rows += [{"variant": v, "words": 10 + k + i} for i, v in enumerate(variants) for k in range(5)]
    return pd.DataFrame(rows)


def _example() -> qualitative.Example:
    return qualitative.Example(
        "s001", ["/nonexistent.png"], "Mild cardiomegaly. Small left pleural effusion.",
        {"s2d": "Mild cardiomegaly. Right pneumothorax.", "sft": "The lungs are clear."},
    )  # fmt: skip


def _trials() -> pd.DataFrame:
    return pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE"] * 3 + ["PRUNED"],
                         "value": [0.3, 0.5, 0.4, None]})  # fmt: skip


def _curves() -> pd.DataFrame:
    return pd.DataFrame({"number": [0, 0, 1, 1, 3], "state": ["COMPLETE"] * 4 + ["PRUNED"],
                         "step": [10, 20, 10, 20, 10], "value": [0.2, 0.3, 0.25, 0.5, 0.1]})  # fmt: skip


#: name -> (call drawing it into a path, expected width in inches)
DRAW = {
    "ablation_bars": (lambda p: figures.ablation_bars(_metrics(), METRICS, "test", p), FULL_WIDTH),
    "delta_forest": (lambda p: figures.delta_forest(_table(), p), FULL_WIDTH),
    "ce_f1_heatmap": (
        lambda p: figures.ce_heatmap(_metrics(), "test", p, support={"Edema": 3, "Fracture": 0}),
        FULL_WIDTH,
    ),
    "training_curves": (lambda p: figures.training_curves(_logs(), p), FULL_WIDTH),
    "report_lengths": (lambda p: figures.length_distribution(_lengths(VARIANTS), p), SINGLE_COLUMN),
    "qualitative": (lambda p: qualitative.qualitative_panel([_example()], p), FULL_WIDTH),
    "sweep": (
        lambda p: figures.sweep_figure(
            _trials(), {"lr": 0.7, "slots": 0.3}, "toy", p, True, "ce/u0/14/micro/f1"
        ),
        FULL_WIDTH,
    ),
    "val_curves": (
        lambda p: figures.sweep_val_curves(_curves(), "ROUGE_L", "toy", p, best=1),
        SINGLE_COLUMN,
    ),
}


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch):
    """Figures kept open for inspection instead of saved."""
    figs = []

    def keep(fig, path: Path) -> Path:
        figs.append(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)
    yield figs
    for fig in figs:
        plt.close(fig)


def _pdf_size_in(path: Path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    assert box, f"{path}: no MediaBox"
    return float(box.group(1)) / 72, float(box.group(2)) / 72


@pytest.mark.parametrize("name", list(DRAW))
def test_figure_is_a_pdf_and_a_png_of_a_column_width(tmp_path: Path, name: str) -> None:
    draw, width = DRAW[name]
    png = draw(tmp_path / f"{name}.png")
    assert png == tmp_path / f"{name}.png"
    pdf_w, pdf_h = _pdf_size_in(png.with_suffix(".pdf"))
    assert pdf_w == pytest.approx(width, abs=0.01) and 1.0 < pdf_h < 9.0
    with Image.open(png) as img:
        assert img.size[0] == pytest.approx(width * PNG_DPI, abs=1)
        assert img.size[1] == pytest.approx(pdf_h * PNG_DPI, abs=1)  # same figure, same size


@pytest.mark.parametrize("name", list(DRAW))
def test_every_text_is_at_least_7pt(tmp_path: Path, drawn, name: str) -> None:
    DRAW[name][0](tmp_path / f"{name}.png")
    (fig,) = drawn
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = {t.get_text(): t.get_fontsize() for t in texts if t.get_fontsize() < MIN_FONT_PT}
    assert not small, small


def _bar_colours(fig) -> dict[str, str]:
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    return {labels[round(b.get_y() + b.get_height() / 2)]: to_hex(b.get_facecolor())
            for b in ax.patches}  # fmt: skip


def _box_colours(fig) -> dict[str, str]:
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    return {label: to_hex(p.get_facecolor()) for label, p in zip(labels, ax.patches, strict=True)}


def _line_colours(fig) -> dict[str, str]:
    legend = fig.legends[0]
    return {t.get_text(): to_hex(h.get_color())
            for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)}  # fmt: skip


def test_a_variant_has_one_colour_in_every_figure(tmp_path: Path, drawn) -> None:
    figures.ablation_bars(_metrics(VARIANTS), METRICS, "test", tmp_path / "a.png")
    # fewer variants, and the reference reports first: colours must not shift by a place
    figures.length_distribution(_lengths(["sft+mem", "sft"]), tmp_path / "b.png")
    figures.training_curves(_logs(["sft", "s2d"]), tmp_path / "c.png")
    bars, boxes, lines = (f(fig) for f, fig in zip((_bar_colours, _box_colours, _line_colours),
                                                    drawn, strict=True))  # fmt: skip
    assert set(bars) == set(VARIANTS)
    assert boxes["sft"] == bars["sft"] == lines["sft"]
    assert boxes["sft+mem"] == bars["sft+mem"] and lines["s2d"] == bars["s2d"]
    assert len(set(bars.values())) == 3 and set(bars.values()) <= set(map(str.lower, PALETTE))
    assert boxes["reference reports"] not in bars.values()


def test_known_variants_take_their_grid_place_whatever_else_is_drawn() -> None:
    alone = variant_colours(["sft-blind"])
    grid = variant_colours(["s2d", "sft", "sft+mem", "sft-blind", "my-variant"])
    assert alone["sft-blind"] == grid["sft-blind"] and grid["s2d"] == PALETTE[0]
    assert len(set(grid.values())) == 5
    assert variant_colours(["ref:all-normal"])["ref:all-normal"] not in PALETTE


def test_metric_keys_read_as_words() -> None:
    assert metric_label("ce/u0/14/micro/f1") == "CE micro-F1"
    assert metric_label("ce/u1/5/macro/p") == "CE macro-P (u1, 5 obs.)"
    assert metric_label("BLEU_4") == "BLEU-4" and metric_label("ROUGE_L") == "ROUGE-L"


def test_heatmap_writes_absent_where_the_given_support_is_zero(tmp_path: Path, drawn) -> None:
    figures.ce_heatmap(_metrics(), "test", tmp_path / "h.png", support={"Edema": 3, "Fracture": 0})
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Edema (n=3)", "Fracture (n=0)"]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("absent") == len(VARIANTS)  # one per variant in the Fracture column


def test_qualitative_colours_sentences_by_agreement_with_the_reference(tmp_path, drawn) -> None:
    qualitative.qualitative_panel([_example()], tmp_path / "q.png")
    fig = drawn[0]
    colour = {t.get_text(): to_hex(t.get_color()) for t in fig.findobj(Text)}
    assert colour["Mild cardiomegaly. [TP]"] == AGREEMENT["TP"].lower()
    assert colour["Right pneumothorax. [FP]"] == AGREEMENT["FP"].lower()
    missed = [t for t in colour if t.startswith("[FN] missed:")]
    assert {colour[t] for t in missed} == {AGREEMENT["FN"].lower()}
    assert "Pleural Effusion" in " ".join(missed)  # s2d never states it
    assert "most findings" in fig._suptitle.get_text()  # the selection rule, on the figure


# -- from a store ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Store]:
    """A fake grid under two presets, ``tiny`` and ``smoke``, reported once."""
    root = tmp_path_factory.mktemp("paper")
    store = Store.open(None, root / "results")
    runner = Runner(store, root / "results", run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    for name in ("tiny", "smoke"):
        preset = root / f"{name}.yaml"
        preset.write_text(f"name: {name}\ntrain: {{total_steps: 4}}\n")
        assert runner.run_grid(plan_grid(preset, load_variants(["s2d", "sft"]), [0, 1])).ok
    build_reports(store, root / "rep")
    return root / "rep", store


@pytest.mark.slow
def test_a_report_writes_each_figure_twice_and_marks_absent_findings(built, drawn) -> None:
    rep, store = built
    for png in (rep / "tiny" / "figures").glob("*.png"):
        assert _pdf_size_in(png.with_suffix(".pdf"))[0] in (SINGLE_COLUMN, FULL_WIDTH), png
    assert len(list((rep / "tiny" / "figures").glob("*.pdf"))) == 6
    # the fake references never state a pneumothorax: from the stored reference labels, the
    # heatmap says so instead of drawing an F1 of 0 for a finding nobody could report
    from s2d_align.harness.reports import _reference_support
    from s2d_align.harness.reports.data import load_preset

    results = load_preset(store, "tiny")
    support = _reference_support(store, results, "test")
    assert support["Pneumothorax"] == 0 and support["Cardiomegaly"] > 0
    figures.ce_heatmap(results.metrics, "test", rep / "h.png", support=support)
    ax = drawn[0].axes[0]
    assert "Pneumothorax (n=0)" in [t.get_text() for t in ax.get_xticklabels()]
    assert "absent" in [t.get_text() for t in ax.texts]


@pytest.mark.slow
def test_latex_is_two_booktabs_tables_with_an_ot1_safe_signature_note(built) -> None:
    rep, _ = built
    tex = (rep / "tiny" / "ablation.tex").read_text()
    assert tex.isascii() and "|" not in tex  # OT1 prints a raw | as a dash
    assert "booktabs" in tex.split(r"\begin")[0]  # stated in the comment on top
    floats = tex.split(r"\begin{table*}")[1:]
    assert len(floats) == 2 and tex.count(r"\end{table*}") == 2
    nlg, ce = floats
    for part in floats:
        assert all(rule in part for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    heads = [next(line for line in part.splitlines() if line.startswith("Variant &"))
             for part in floats]  # fmt: skip
    assert "BLEU-4" in heads[0] and "CE micro-F1" not in heads[0]
    assert "CE micro-F1" in heads[1] and "BLEU" not in heads[1]
    caption = re.search(r"\\caption\{(.*)\}\n", nlg).group(1)
    assert "signature" not in caption.lower()
    note = nlg.split(r"\end{tabular}")[1]
    assert r"Protocol signature: \texttt{fake-protocol\textbar{}\allowbreak{}v1}" in note
    assert r"\label{tab:ablation-tiny-nlg}" in nlg and r"\ref{tab:ablation-tiny-nlg}" in ce


@pytest.mark.slow
def test_index_sets_smoke_apart_as_a_machinery_check(built) -> None:
    rep, _ = built
    index = (rep / "index.md").read_text()
    results, checks = index.split("## Machinery checks (not results)")
    assert "tiny/ablation.md" in results and "smoke/" not in results
    assert "smoke/ablation.md" in checks and "tiny/" not in checks
    assert "not results" in checks.split("###")[0]  # said in words, not only in the heading
    assert "![tiny/figures/ablation_bars.png]" in results  # results embedded, PDF linked
    assert "(tiny/figures/ablation_bars.pdf)" in results
    table = (rep / "smoke" / "ablation.md").read_text()
    assert "Machinery check, not results" in table.split("|")[0]
    assert "Machinery check" not in (rep / "tiny" / "ablation.md").read_text()


def test_latex_without_ce_columns_is_one_table() -> None:
    table = _table()
    table.metrics = ["BLEU_4"]
    tex = to_latex(table)
    assert tex.count(r"\begin{table*}") == 1 and "CE micro" not in tex


def test_importance_needs_no_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import optuna

    from s2d_align.harness.reports.sweeps import importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 3 * t.suggest_float("x", 0, 1) + 0.1 * t.suggest_float("y", 0, 1),
                   n_trials=8)  # fmt: skip
    found, name, _ = importances(study)
    assert name == "fANOVA" and set(found) == {"x", "y"} and found["x"] > found["y"]
    monkeypatch.setitem(sys.modules, "sklearn", None)  # a plain install: no scikit-learn
    found, name, _ = importances(study)
    assert name == "PED-ANOVA" and set(found) == {"x", "y"}


@pytest.mark.slow
def test_a_sweep_with_eval_every_gets_val_curves_and_one_without_does_not(tmp_path) -> None:
    from s2d_align.harness.space import load_space
    from s2d_align.harness.store import storage_url
    from s2d_align.harness.sweep import SweepJob, run_sweep

    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    url = storage_url(None, tmp_path / "results")
    for name, extra in (("toy-eval", "eval_every: 2\n"), ("toy-plain", "")):
        space = tmp_path / f"{name}.yaml"
        space.write_text(
            f"name: {name}\nobjective: {{metric: ROUGE_L}}\n{extra}params:\n"
            "  lr: {key: train.lr, type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        )
        job = SweepJob(str(preset), load_space(space), url, name, str(tmp_path / "results"),
                       run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer())  # fmt: skip
        run_sweep(job, trials=3, workers=1, progress=False)
    rep = tmp_path / "rep"
    written = set(build_reports(Store(url), rep))
    for name in ("toy-eval", "toy-plain"):
        assert {rep / "sweeps" / name / f"sweep.{ext}" for ext in ("pdf", "png")} <= written
    assert (rep / "sweeps" / "toy-eval" / "val_curves.pdf").is_file()
    assert not (rep / "sweeps" / "toy-plain" / "val_curves.png").exists()  # no val mid-run
    index = (rep / "index.md").read_text()
    assert "## Sweeps" in index and "sweeps/toy-eval/val_curves.png" in index
