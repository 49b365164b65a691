"""Reference rows: computed once per grid without training, recorded like runs, shown apart."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.config import load_config
from s2d_align.config.schema import EvalConfig
from s2d_align.errors import DataError
from s2d_align.evaluation.labelers import get_labeler
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.references import (
    REFERENCE_PURPOSE,
    PipelineReferences,
    ReferenceUnavailable,
    load_reference_rows,
    most_frequent_normal_report,
)
from s2d_align.harness.reports.data import load_preset, order_variants
from s2d_align.harness.reports.tables import ablation_table, to_csv, to_latex, to_markdown
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

ROWS = ["ref:all-normal", "ref:nn-retrieval", "ref:oracle-paraphrase"]
NORMAL = "the heart size is normal. the lungs are clear."


class FakeSource:
    """Reference predictions over the fake references; counts every call."""

    def __init__(self, synth: bool = True, broken: str | None = None):
        self.synth, self.broken = synth, broken
        self.calls: list[tuple[str, str]] = []

    def predictions(self, name, cfg, split, ids):
        self.calls.append((name, split))
        if name == self.broken:
            raise RuntimeError("encoder exploded")
        reports = fakes.references(split).reports
        if name == "all-normal":
            return {sid: NORMAL for sid in ids}
        if name == "nn-retrieval":  # another study's report: right sometimes, by chance
            order = list(reports)
            return {sid: reports[order[(i + 5) % len(order)]] for i, sid in enumerate(ids)}
        if not self.synth:
            raise ReferenceUnavailable("needs SynthCXR ground truth")
        return {sid: reports[sid] for sid in ids}  # a perfect "paraphrase": beats every variant


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 6}\n")
    return path


def make_runner(root: Path, source=None, **kwargs) -> Runner:
    store = Store.open(None, root / "results")
    return Runner(store, root / "results", run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(),
                  progress=False, reference_source=source, **kwargs)  # fmt: skip


# -- the rows ----------------------------------------------------------------------------------
def test_all_normal_picks_the_most_frequent_normal_report():
    normal = {"No Finding": 1}
    reports = {"a": "effusion.", "b": "effusion.", "c": "effusion.",  # most frequent, abnormal
               "d": "clear.", "e": "clear.", "f": "normal.", "g": "normal.", "h": "fine."}  # fmt: skip
    labels = {sid: ({"Pleural Effusion": 1} if sid in "abc" else normal) for sid in reports}
    assert most_frequent_normal_report(reports, labels) == "clear."  # tie with normal.: smaller
    labels["g"] = {"No Finding": None}
    labels["h"] = normal
    assert most_frequent_normal_report({**reports, "i": "normal."}, labels) == "clear."
    labels["f"] = labels["e"] = {"No Finding": None}
    assert most_frequent_normal_report(reports, labels) == "clear."  # d alone, ties with h
    with pytest.raises(DataError, match="No Finding"):
        most_frequent_normal_report(reports, {sid: {} for sid in reports})


@pytest.fixture(scope="module")
def synth_cfg():
    return load_config(None, ["data.synth.n_train=60", "data.synth.n_val=4",
                              "data.synth.n_test=12", "data.synth.size=32"])  # fmt: skip


def test_all_normal_on_synthcxr_is_the_commonest_normal_train_report(synth_cfg, tmp_path):
    from s2d_align.training.data import load_run_annotation

    source = PipelineReferences(tmp_path)
    ids = ["x1", "x2"]
    preds = source.predictions("all-normal", synth_cfg, "test", ids)
    assert set(preds) == set(ids) and len(set(preds.values())) == 1
    text = preds["x1"]
    train = [s.report for s in load_run_annotation(synth_cfg, tmp_path).split("train")]
    labeler = get_labeler(EvalConfig())
    counts = Counter(t for t, lab in zip(train, labeler.label(train), strict=True)
                     if lab["No Finding"] == 1)  # fmt: skip
    assert labeler.label([text])[0]["No Finding"] == 1
    assert counts[text] == max(counts.values()) and counts[text] < len(train)


def test_nn_retrieval_is_the_shared_encoder_nearest_train_report(synth_cfg, tmp_path, monkeypatch):
    from s2d_align.training import retrieval

    seen = []

    def nearest(cfg, cache_root, split, *, progress=False):
        seen.append((cfg, Path(cache_root), split, progress))
        return {"t1": "train report one.", "t2": "train report two."}

    monkeypatch.setattr(retrieval, "nearest_train_reports", nearest, raising=False)
    got = PipelineReferences(tmp_path).predictions("nn-retrieval", synth_cfg, "test", ["t1", "t2"])
    assert got == {"t1": "train report one.", "t2": "train report two."}
    assert seen == [(synth_cfg, tmp_path, "test", False)]


def test_oracle_paraphrase_needs_synthcxr(synth_cfg, tmp_path):
    real = dataclasses.replace(
        synth_cfg, data=dataclasses.replace(synth_cfg.data, source="r2gen", annotation="a.json")
    )
    with pytest.raises(ReferenceUnavailable, match="SynthCXR"):
        PipelineReferences(tmp_path).predictions("oracle-paraphrase", real, "test", ["x"])
    ids = [f"s{i:06d}" for i in range(64, 76)]  # the 12 test studies after 60 train + 4 val
    para = PipelineReferences(tmp_path).predictions("oracle-paraphrase", synth_cfg, "test", ids)
    assert set(para) == set(ids)


# -- recording ---------------------------------------------------------------------------------
def test_rows_are_recorded_once_per_grid_like_runs(tmp_path, preset):
    source = FakeSource()
    prepared = []
    runner = make_runner(tmp_path, source, prepare_fn=lambda spec, root, progress: prepared.append(
        len(source.calls)))  # fmt: skip
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    report = runner.run_grid(specs)
    assert report.ok and sorted(report.references.values()) == ["recorded"] * 3
    assert prepared == [0]  # the shared caches first, once, before any row is computed
    assert sorted(source.calls) == sorted((n, s) for n in
                                          ("all-normal", "nn-retrieval", "oracle-paraphrase")
                                          for s in ("val", "test"))  # fmt: skip
    store = runner.store
    rows = store.runs(purpose=REFERENCE_PURPOSE)
    assert sorted(r.variant for r in rows) == ROWS
    for run in rows:
        assert run.status == "complete" and run.preset == "tiny" and run.steps == 0
        for split in ("val", "test"):
            assert store.metrics(run.id, split)["ROUGE_L"].ci_low is not None
            assert len(store.predictions(run.id, split)) == 24
            assert store.prediction_labels(run.id, split)
        assert [t.purpose for t in store.test_evaluations(run.id)] == [REFERENCE_PURPOSE]
    normal = next(r for r in rows if r.variant == "ref:all-normal")
    assert set(store.predictions(normal.id, "test").values()) == {NORMAL}
    # a second ablate (a fresh process) finds every row recorded: nothing is recomputed
    again = make_runner(tmp_path, source).run_grid(specs)
    assert sorted(again.references.values()) == ["already recorded"] * 3
    assert len(source.calls) == 6 and len(store.test_evaluations()) == 4 + 3
    # a grid of another seed set shares the rows (same preset, data and protocol)
    more = make_runner(tmp_path, source).run_grid(plan_grid(preset, load_variants(["sft"]), [2]))
    assert set(more.references.values()) == {"already recorded"} and len(source.calls) == 6


def test_an_unavailable_row_is_skipped_and_noted_once(tmp_path, preset):
    source = FakeSource(synth=False)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0])
    report = make_runner(tmp_path, source).run_grid(specs)
    assert report.ok
    skipped = [o for o in report.references.values() if o.startswith("skipped")]
    assert skipped == ["skipped: needs SynthCXR ground truth"]
    calls = len(source.calls)
    again = make_runner(tmp_path, source).run_grid(specs)
    assert sorted(again.references.values()) == ["already recorded"] * 2 + skipped
    assert len(source.calls) == calls  # not retried
    store = Store.open(None, tmp_path / "results")
    table = ablation_table(store, load_preset(store, "tiny"))
    assert list(table.references) == ROWS[:2]
    md = to_markdown(table)
    assert "`ref: oracle-paraphrase` not computed: needs SynthCXR ground truth." in md


def test_a_failing_row_is_recorded_and_retried_while_the_grid_runs(tmp_path, preset):
    specs = plan_grid(preset, load_variants(["sft"]), [0])
    runner = make_runner(tmp_path, FakeSource(broken="nn-retrieval"))
    report = runner.run_grid(specs)
    (row_id,) = [rid for rid, o in report.references.items() if o.startswith("failed")]
    assert "encoder exploded" in report.failed[row_id] and not report.ok
    assert runner.store.get_run(row_id).status == "failed"
    assert runner.state(specs[0]) == "complete"  # the variants still ran
    fixed = FakeSource()
    again = make_runner(tmp_path, fixed).run_grid(specs)
    assert again.ok and again.references[row_id] == "recorded"
    assert {n for n, _ in fixed.calls} == {"nn-retrieval"}


def test_regression_and_sweep_grids_make_no_rows(tmp_path, preset):
    source = FakeSource()
    runner = make_runner(tmp_path, source)
    report = runner.run_grid(plan_grid(preset, load_variants(["sft"]), [0, 1], purpose="regress"))
    assert report.ok and report.references == {} and source.calls == []
    off = make_runner(tmp_path / "off", source, references=False)
    assert off.run_grid(plan_grid(preset, load_variants(["sft"]), [0])).references == {}
    assert source.calls == [] and off.store.runs(purpose=REFERENCE_PURPOSE) == []


# -- reports -----------------------------------------------------------------------------------
@pytest.fixture
def reported(tmp_path, preset):
    runner = make_runner(tmp_path, FakeSource())
    assert runner.run_grid(plan_grid(preset, load_variants(["sft", "sft+mem", "s2d"]), [0, 1])).ok
    return runner.store


def test_rows_sit_in_their_own_block_never_best_never_tested(reported):
    store = reported
    results = load_preset(store, "tiny")
    assert results.variants == ["s2d", "sft", "sft+mem"]  # reference rows are not variants
    table = ablation_table(store, results)
    assert list(table.rows) == ["s2d", "sft", "sft+mem"] and list(table.references) == ROWS
    oracle = table.references["ref:oracle-paraphrase"]["ROUGE_L"]
    assert oracle.mean > max(c["ROUGE_L"].mean for c in table.rows.values())
    assert not oracle.best and table.rows["s2d"]["ROUGE_L"].best  # best among variants only
    for cells in table.references.values():
        assert all(not c.best and c.p_value is None and c.delta is None for c in cells.values())
    # the Holm family is the variants: the same p-values with or without the rows
    bare = ablation_table(store, results, references=load_reference_rows(store, "none", "test"))
    assert bare.references == {}
    for v in ("sft", "sft+mem"):
        assert table.rows[v]["ROUGE_L"].p_holm == bare.rows[v]["ROUGE_L"].p_holm
    lines = to_markdown(table).splitlines()
    block = next(i for i, x in enumerate(lines) if x.startswith("| *reference rows (no training)"))
    diff_at = lines.index("#### Difference vs `s2d`")
    assert block < diff_at
    assert [x.split(" | ")[0] for x in lines[block - 3 : block]] == ["| `s2d`", "| `sft`",
                                                                    "| `sft+mem`"]  # fmt: skip
    assert [line.split(" | ")[0] for line in lines[block + 1 : block + 4]] == [
        "| `ref: all-normal`", "| `ref: nn-retrieval`", "| `ref: oracle-paraphrase`"
    ]  # fmt: skip
    diff = lines[diff_at:]
    assert not any("`ref:" in line for line in diff if line.startswith("|"))
    assert any("Reference rows (below the variants)" in line for line in diff)
    assert "\\textit{ref: all-normal}" in to_latex(table)
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    kinds = {r["variant"]: r["kind"] for r in rows}
    assert kinds == {"s2d": "variant", "sft": "variant", "sft+mem": "variant",
                     **dict.fromkeys(ROWS, "reference")}  # fmt: skip
    assert all(r["best"] == "0" for r in rows if r["kind"] == "reference")


def test_rows_of_other_studies_are_not_shown(reported):
    assert load_reference_rows(reported, "tiny", "test").variants == ROWS
    assert load_reference_rows(reported, "tiny", "test", ["another-manifest"]).variants == []
    assert order_variants(["ref:oracle-paraphrase", "zz", "ref:all-normal", "s2d"]) == [
        "s2d", "zz", "ref:all-normal", "ref:oracle-paraphrase"
    ]  # fmt: skip


@pytest.mark.slow
def test_figures_draw_the_rows(reported, tmp_path):
    from s2d_align.harness.reports import build_reports

    written = build_reports(reported, tmp_path / "rep")
    names = {p.name for p in written}
    assert {"ablation_bars.png", "ce_f1_heatmap.png", "report_lengths.png"} <= names
    assert "`ref: nn-retrieval`" in (tmp_path / "rep" / "tiny" / "ablation.md").read_text()
