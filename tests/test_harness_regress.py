"""Regression tracking: tolerances from seed noise, pass on unchanged results, fail on a drop."""

from __future__ import annotations

import functools
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
    assert len(again.diffs) == sum(len(m) for m in base["metrics"].values())

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
