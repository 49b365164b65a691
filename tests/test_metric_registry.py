"""The metric registry: every scored name has an entry, and a metric added as one entry plus its
compute function is scored, stored with its direction, shown in the table and tracked by regress.

Scoring here swaps METEOR's Java process for a stub NLG scorer that gives every report the same
NLG scores: what is checked is the registry's plumbing, not pycocoevalcap.
"""

from __future__ import annotations

import dataclasses
import math

import harness_fakes as fakes
import numpy as np
import pytest

from s2d_align.config.schema import EvalConfig
from s2d_align.errors import ConfigError
from s2d_align.evaluation import metrics as registry
from s2d_align.evaluation.metrics import (
    CORPUS,
    SENTENCE_MEAN,
    MetricSpec,
    ScoringInput,
    mean_scores,
    metric_spec,
    scored_names,
)
from s2d_align.evaluation.nlg import BLEU_STAT_COLUMNS, NLG_METRICS, NLGResult
from s2d_align.evaluation.score import ScoringContext, compare_corpora, score_corpus
from s2d_align.harness import regress
from s2d_align.harness.reports.data import load_preset
from s2d_align.harness.reports.style import metric_label
from s2d_align.harness.reports.tables import ablation_table, to_csv, to_latex, to_markdown
from s2d_align.harness.store import Store

REFS = {
    "a": "Small left pleural effusion. Mild cardiomegaly.",
    "b": "Right lower lobe consolidation.",
    "c": "Bibasilar atelectasis.",
    "d": "No acute cardiopulmonary process.",
    "e": "Right apical pneumothorax.",
}
LONG = {k: f"{v} The heart size is normal. No pneumothorax." for k, v in REFS.items()}
TOY = "toy_length_ratio"
TOY_LABEL = "length ratio (toy)"


class StubNLG:
    """Stands in for NLGScorer: the same NLG scores for every report, of the right shapes."""

    def score(self, references, hypothesis_sets, *, tokenize=None, on_step=None):
        n = len(references)
        stats = np.tile(np.arange(1.0, 1.0 + len(BLEU_STAT_COLUMNS)), (n, 1))
        return [
            NLGResult(
                list(references),
                dict.fromkeys(NLG_METRICS, 0.25),
                {name: np.full(n, 0.25) for name in NLG_METRICS},
                stats,
            )
            for _ in hypothesis_sets
        ]


def _ratios(predictions, references) -> list[float]:
    return [len(p.split()) / len(r.split()) for p, r in zip(predictions, references, strict=True)]


def length_ratio(s: ScoringInput) -> list:
    """The toy metric: words of the prediction per word of the reference, mean over reports."""
    return [mean_scores(TOY, s.ids, _ratios(s.predictions, s.references))]


#: Adding a metric: one registry entry plus its compute function.
TOY_SPEC = MetricSpec(TOY, "toy", higher_is_better=False, statistic=CORPUS, shown_in_tables=True,
                      tracked_by_regress=True, compute=length_ratio, bounds=(0.0, math.inf),
                      label=TOY_LABEL)  # fmt: skip


@pytest.fixture
def toy_metric():
    """The toy metric registered for one test, and removed afterwards."""
    registry.register(TOY_SPEC)
    yield TOY
    registry.unregister(TOY)


def _context() -> ScoringContext:
    return ScoringContext("0" * 64, nlg_scorer=StubNLG())


def test_every_scored_name_has_an_entry_with_its_direction():
    report = score_corpus(LONG, REFS, EvalConfig(bootstrap=50), _context())
    assert list(report.metrics) == scored_names()  # the report follows the registry's order
    for name, metric in report.metrics.items():
        assert metric.higher_is_better == metric_spec(name).higher_is_better, name
    assert report.metrics["BLEU_4"].higher_is_better
    assert report.metrics[report.headline].higher_is_better
    assert metric_spec("CIDEr").bounds[1] == math.inf
    # directions of names recorded outside scoring come from patterns
    assert metric_spec("diag/image_dependence").higher_is_better
    assert not metric_spec("diag/permuted/ce/u0/14/micro/f1").higher_is_better
    assert not metric_spec("diag/align_vs_chance/reference").higher_is_better
    with pytest.raises(ConfigError, match="no entry in the metric registry"):
        metric_spec("nonsense")


def test_regress_tracks_the_nlg_metrics_and_ce_f1_cells_only():
    tracked = {s.name for s in registry.metric_specs() if s.tracked_by_regress}
    assert tracked == {*NLG_METRICS, *(n for n in scored_names() if n.startswith("ce/") and
                                       n.endswith("/f1"))}  # fmt: skip


def test_an_added_metric_is_scored_with_an_interval_and_a_paired_test(toy_metric):
    cfg = EvalConfig(bootstrap=200)
    plain = score_corpus(LONG, REFS, cfg, _context())
    registry.unregister(TOY)
    try:
        without = score_corpus(LONG, REFS, cfg, _context())
    finally:
        registry.register(TOY_SPEC)
    assert list(plain.metrics)[-1] == TOY and TOY not in without.metrics
    assert plain.signature == without.signature  # no signature fields of its own
    for name, m in without.metrics.items():  # the other metrics do not move
        assert plain.metrics[name] == m, name
    toy = plain.metrics[TOY]
    expected = _ratios(LONG.values(), REFS.values())
    assert toy.value == pytest.approx(np.mean(expected))
    assert toy.ci_low < toy.value < toy.ci_high and toy.higher_is_better is False
    assert plain.per_sample[TOY] == pytest.approx(dict(zip(REFS, expected, strict=True)))

    comparison = compare_corpora(LONG, REFS, REFS, cfg, _context(), trials=199)
    assert comparison.tests[TOY].delta[0] == pytest.approx(np.mean(expected) - 1.0)


def test_the_store_keeps_each_metric_direction(toy_metric, tmp_path):
    results, run_ids = fakes.small_results_store(tmp_path)
    report = score_corpus(LONG, REFS, EvalConfig(bootstrap=0), _context())
    store = Store.open(None, results)
    try:
        store.record_scores(run_ids[0], "val", report, manifest_hash="0" * 64, n_samples=5)
        rows = store.metrics(run_ids[0], "val")
    finally:
        store.close()
    assert rows[TOY].higher_is_better is False
    assert rows["BLEU_4"].higher_is_better is True


def _toy_table(tmp_path):
    """The fakes' ``tiny`` ablation table with a value of the toy metric for sft and s2d."""
    results, _ = fakes.small_results_store(tmp_path)
    store = Store.open(None, results)
    try:
        runs = load_preset(store, "tiny")
        for variant, value in (("sft", 0.8), ("s2d", 1.3)):
            direction = {TOY: metric_spec(TOY).higher_is_better}  # as the runner records it
            store.record_metrics(runs.seeds_of(variant)[0], "test", {TOY: value},
                                 higher_is_better=direction)  # fmt: skip
        return ablation_table(store, load_preset(store, "tiny"))
    finally:
        store.close()


def test_an_added_metric_is_a_table_column_with_its_direction_and_label(toy_metric, tmp_path):
    table = _toy_table(tmp_path)
    # the registry's column order, then the CE headline; the fakes' "length_ratio" has no
    # entry, so it is no column
    assert table.metrics == ["BLEU_4", "ROUGE_L", TOY, "ce/u0/14/micro/f1"]
    assert table.rows["sft"][TOY].best and not table.rows["s2d"][TOY].best  # lower is better
    header = to_markdown(table).splitlines()[2]  # (the fakes stored no BLEU n-gram statistics)
    assert header.split(" | ")[4:] == ["BLEU-4‡", "ROUGE-L", TOY_LABEL, "CE micro-F1 |"]
    assert TOY_LABEL in to_latex(table) and metric_label(TOY) == TOY_LABEL
    csv_rows = [line.split(",") for line in to_csv(table).splitlines()]
    toy_rows = [r for r in csv_rows if r[3] == TOY]  # the CSV keeps the name
    assert toy_rows and all(r[8] == "0" for r in toy_rows)  # higher_is_better column


def test_an_added_sentence_mean_metric_is_marked_as_a_proxy(tmp_path):
    registry.register(dataclasses.replace(TOY_SPEC, statistic=SENTENCE_MEAN))
    try:
        table = _toy_table(tmp_path)
        markdown = to_markdown(table)
    finally:
        registry.unregister(TOY)
    assert table.basis[TOY] == SENTENCE_MEAN and table.basis["ROUGE_L"] == CORPUS
    assert f"{TOY_LABEL}‡" in markdown.splitlines()[2] and "ROUGE-L‡" not in markdown
    assert f"the corpus {TOY_LABEL} has no per-study decomposition" in markdown


def test_regress_tracks_an_added_metric_in_its_direction(toy_metric):
    directions = {TOY: False, "length_ratio": False, "ce/u0/14/micro/p": True}
    rows = [
        {"split": "test", "variant": "s2d", "seed": seed, "metric": name, "value": value,
         "higher_is_better": direction}
        for seed, value in ((0, 1.0), (1, 1.02))
        for name, direction in directions.items()
    ]  # fmt: skip
    base = regress.summarise(rows)
    assert set(base["s2d"]) == {TOY}  # untracked and unknown names are left out
    baseline = {"tolerance": {"k_sd": 3.0, "abs_floor": 0.01}, "metrics": base}
    worse = regress.summarise([{**r, "value": r["value"] + 0.2} for r in rows])
    better = regress.summarise([{**r, "value": r["value"] - 0.2} for r in rows])
    assert [d.status for d in regress.compare(baseline, worse)] == ["REGRESSION"]
    assert [d.status for d in regress.compare(baseline, better)] == ["improved"]


def test_registry_refuses_clashing_entries(toy_metric):
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(TOY_SPEC)
    with pytest.raises(ConfigError, match="computed by"):  # one compute function per family
        registry.register(MetricSpec("toy_other", "toy", True, CORPUS, compute=lambda s: []))
    with pytest.raises(ConfigError, match="cannot have a compute"):
        registry.register(MetricSpec("toy/*", "toy2", True, CORPUS, compute=length_ratio))


def test_a_compute_function_must_return_exactly_its_family(toy_metric):
    registry.register(MetricSpec("toy_missing", "toy", True, CORPUS, compute=length_ratio))
    try:
        with pytest.raises(ConfigError, match=r"family 'toy': length_ratio computed"):
            score_corpus(LONG, REFS, EvalConfig(bootstrap=0), _context())
    finally:
        registry.unregister("toy_missing")
