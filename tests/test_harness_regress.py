"""Regression tracking: per (variant, seed) near-exact on the same platform, then tolerances
from seed noise; pass on unchanged results, fail on a one-token change or a drop."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.cli.main import main
from s2d_align.errors import ConfigError
from s2d_align.harness import regress


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    return path


def _baseline(metric: str, mean: float, sd: float, hib: bool = True) -> dict:
    return {
        "format": 1,
        "tolerance": {"k_sd": 3.0, "abs_floor": 0.01},
        "metrics": {"s2d": {metric: {"mean": mean, "sd": sd, "higher_is_better": hib}}},
    }


def test_tolerance_is_k_sd_or_the_floor_and_respects_direction():
    base = _baseline("BLEU_4", 0.20, 0.02)
    (d,) = regress.compare(base, {"s2d": {"BLEU_4": {"mean": 0.15}}})
    assert d.tolerance == pytest.approx(0.06) and d.status == "ok"
    (d,) = regress.compare(base, {"s2d": {"BLEU_4": {"mean": 0.13}}})
    assert d.status == "REGRESSION"
    (d,) = regress.compare(base, {"s2d": {"BLEU_4": {"mean": 0.27}}})
    assert d.status == "improved"
    deterministic = _baseline("CIDEr", 0.5, 0.0)
    (d,) = regress.compare(deterministic, {"s2d": {"CIDEr": {"mean": 0.495}}})
    assert d.tolerance == 0.01 and d.status == "ok"  # the floor absorbs float jitter
    lower_better = _baseline("loss", 1.0, 0.0, hib=False)
    (d,) = regress.compare(lower_better, {"s2d": {"loss": {"mean": 1.2}}})
    assert d.status == "REGRESSION"
    (d,) = regress.compare(base, {})
    assert d.status == "missing" and regress.failed([d]) == [d]


def run(preset, tmp_path, name, **kw):
    return regress.run_regression(
        str(preset),
        tmp_path / "baselines" / "tiny.json",
        tmp_path / name,
        run_fn=fakes.fake_run_fn,
        scorer=fakes.FakeScorer(),
        progress=False,
        **kw,
    )


@pytest.mark.slow
def test_unchanged_results_pass_and_an_injected_regression_fails(tmp_path, preset, monkeypatch):
    written = run(preset, tmp_path, "w0", update=True, variants=["sft", "s2d"], seeds=[0, 1])
    assert written.updated and written.baseline_file.is_file()
    base = regress.load_baseline(written.baseline_file)
    assert base["variants"] == ["sft", "s2d"] and base["seeds"] == [0, 1]
    assert base["metrics"]["s2d"]["ROUGE_L"]["sd"] > 0  # seed noise is measured
    assert "ce/u0/14/micro/f1" in base["metrics"]["s2d"]

    again = run(preset, tmp_path, "w1")  # variants and seeds come from the baseline
    assert again.ok and {d.status for d in again.diffs} == {"ok"}
    n_metrics = sum(len(m) for m in base["metrics"].values())
    assert len([d for d in again.diffs if d.level == "mean"]) == n_metrics
    assert len([d for d in again.diffs if d.level == "seed"]) == 2 * n_metrics  # two seeds

    monkeypatch.setenv(fakes.WORSEN_ENV, "0.4")
    worse = run(preset, tmp_path, "w2")
    assert not worse.ok
    assert {(d.variant, d.metric) for d in regress.failed(worse.diffs)} >= {("s2d", "ROUGE_L")}


def test_regress_needs_a_baseline_and_two_seeds(tmp_path, preset):
    with pytest.raises(ConfigError, match="--update-baseline"):
        run(preset, tmp_path, "w")
    with pytest.raises(ConfigError, match=">= 2 seeds"):
        run(preset, tmp_path, "w", update=True, seeds=[0])


def test_cli_exit_codes(tmp_path, preset, monkeypatch, capsys):
    monkeypatch.setattr(
        regress,
        "run_regression",
        functools.partial(
            regress.run_regression, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer()
        ),
    )
    common = ["regress", "--preset", str(preset), "--out", str(tmp_path), "--no-progress"]
    assert main([*common, "--update-baseline", "--variants", "s2d", "--seeds", "0,1"]) == 0
    assert (tmp_path / "baselines" / "tiny.json").is_file()
    assert main(common) == 0
    assert "no regression" in capsys.readouterr().out
    monkeypatch.setenv(fakes.WORSEN_ENV, "0.4")
    assert main(common) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "regression(s)" in out


# -- per (variant, seed) level ------------------------------------------------------------------
PLATFORM = {"torch": "2.5.1", "device": "cpu", "python": "3.11.7", "machine": "x86_64"}


def _two_level_baseline(values=(0.30, 0.34)) -> dict:
    summary = regress.summarise(
        {"variant": "s2d", "seed": s, "split": "test", "metric": "ROUGE_L", "value": v,
         "higher_is_better": True}
        for s, v in enumerate(values)
    )  # fmt: skip
    return regress.make_baseline("tiny", ["s2d"], [0, 1], summary, "sig", platform=PLATFORM)


def _current(values) -> dict:
    rows = [{"variant": "s2d", "seed": s, "split": "test", "metric": "ROUGE_L", "value": v,
             "higher_is_better": True} for s, v in enumerate(values)]  # fmt: skip
    return regress.summarise(rows)


def test_a_tiny_change_in_one_seed_fails_on_the_same_platform_only():
    base = _two_level_baseline()
    assert base["platform"] == PLATFORM and base["seed_tolerance"] == {"ROUGE_L": 1e-6}
    diffs, notes = regress.check(base, _current([0.30, 0.34]), PLATFORM)
    assert notes == [] and {d.status for d in diffs} == {"ok"}
    assert [d.level for d in diffs] == ["seed", "seed", "mean"]
    nudged = _current([0.30, 0.34 + 1e-4])  # far inside the across-seed tolerance (0.085)
    diffs, _ = regress.check(base, nudged, PLATFORM)
    (bad,) = regress.failed(diffs)
    assert (bad.seed, bad.status) == (1, "CHANGED")
    assert diffs[-1].level == "mean" and diffs[-1].status == "ok"
    better = regress.check(base, _current([0.30 + 1e-4, 0.34]), PLATFORM)[0]
    assert [d.status for d in regress.failed(better)] == ["CHANGED"]  # any change, either way
    other = {**PLATFORM, "device": "cuda (NVIDIA H200)"}
    diffs, notes = regress.check(base, nudged, other)
    assert [d.level for d in diffs] == ["mean"] and not regress.failed(diffs)
    assert "device cpu -> cuda (NVIDIA H200)" in notes[0] and "across-seed" in notes[0]


def test_a_format_1_baseline_still_reads_and_falls_back_to_the_across_seed_level(tmp_path):
    old = _two_level_baseline()
    for key in ("platform", "seed_tolerance"):
        del old[key]
    old["format"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    diffs, notes = regress.check(regress.load_baseline(path), _current([0.30, 0.35]), PLATFORM)
    assert [d.level for d in diffs] == ["mean"] and "records no platform" in notes[0]
    path.write_text(json.dumps({**old, "format": 7}))
    with pytest.raises(ConfigError, match="format"):
        regress.load_baseline(path)


#: Set to make the fake model change one token of one test prediction of s2d, seed 1.
ONE_TOKEN_ENV = "S2D_TEST_ONE_TOKEN"


def one_token_run_fn(spec, run_dir, **kw):
    """The fake model; with ONE_TOKEN_ENV set, one word of one s2d seed-1 test prediction is
    replaced (a word the reference has, so the word-overlap score moves)."""
    artifacts = fakes.fake_run_fn(spec, run_dir, **kw)
    if os.environ.get(ONE_TOKEN_ENV) and (spec.variant.name, spec.seed) == ("s2d", 1):
        refs = fakes.references("test").reports
        for row in artifacts.predictions["test"]:
            words = row["prediction"].split()
            hits = [i for i, w in enumerate(words) if w in refs[row["id"]].split()
                    and words.count(w) == 1 and refs[row["id"]].split().count(w) == 1]  # fmt: skip
            if hits:
                words[hits[0]] = "zzz"
                row["prediction"] = " ".join(words)
                break
    return artifacts


def test_regress_fails_on_one_changed_token_and_passes_unchanged(tmp_path, preset, monkeypatch):
    kw = {"run_fn": one_token_run_fn, "scorer": fakes.FakeScorer(), "progress": False}
    path = tmp_path / "baselines" / "tiny.json"
    written = regress.run_regression(str(preset), path, tmp_path / "w0", update=True,
                                     variants=["sft", "s2d"], seeds=[0, 1], **kw)  # fmt: skip
    assert written.updated and regress.load_baseline(path)["platform"] == written.platform
    same = regress.run_regression(str(preset), path, tmp_path / "w1", **kw)
    assert same.ok and same.notes == []
    assert {d.level for d in same.diffs} == {"seed", "mean"}
    monkeypatch.setenv(ONE_TOKEN_ENV, "1")
    changed = regress.run_regression(str(preset), path, tmp_path / "w2", **kw)
    assert not changed.ok
    bad = regress.failed(changed.diffs)
    assert {(d.variant, d.seed, d.status) for d in bad} == {("s2d", 1, "CHANGED")}
    assert {d.metric for d in bad} >= {"ROUGE_L"}
    assert all(d.status == "ok" for d in changed.diffs if d.level == "mean")  # too small there


def test_cli_says_when_another_platform_skips_the_per_seed_level(tmp_path, preset, monkeypatch,
                                                                 capsys):  # fmt: skip
    monkeypatch.setattr(
        regress,
        "run_regression",
        functools.partial(
            regress.run_regression, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer()
        ),
    )
    common = ["regress", "--preset", str(preset), "--out", str(tmp_path), "--no-progress"]
    assert main([*common, "--update-baseline", "--variants", "s2d", "--seeds", "0,1"]) == 0
    path = tmp_path / "baselines" / "tiny.json"
    data = json.loads(path.read_text())
    data["platform"]["torch"] = "0.0.1"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "note:" in out and "torch 0.0.1 ->" in out and "per-(variant, seed) check skipped" in out
