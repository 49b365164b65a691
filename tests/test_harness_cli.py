"""The harness commands through ``main(argv)``: results, report, dry run, and the real smoke grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.cli.main import main
from s2d_align.harness.references import REFERENCE_NAMES
from s2d_align.harness.store import Store


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, list[str]]:
    return fakes.small_results_store(tmp_path)


def test_results_list_show_and_compare(results, capsys):
    out, (sft, s2d) = results
    assert main(["results", "list", "--results", str(out)]) == 0
    listed = capsys.readouterr().out
    assert "2 run(s)" in listed and "complete" in listed
    assert main(["results", "show", s2d, "--results", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "ROUGE_L" in shown and "signature: fake-protocol|v1" in shown
    assert "test evaluations logged: 1" in shown
    assert main(["results", "compare", sft, s2d, "--results", str(out), "--resamples", "500"]) == 0
    compared = capsys.readouterr().out
    assert "ROUGE_L" in compared and "p (paired AR)" in compared


def test_results_show_unknown_run_is_a_user_error(results, capsys):
    out, _ = results
    assert main(["results", "show", "nope", "--results", str(out)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_report_command_rebuilds_from_the_store(results, tmp_path):
    out, _ = results
    shutil.rmtree(out / "runs")
    assert main(["report", "--results", str(out), "--reports", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "tiny" / "ablation.md").is_file()
    assert (tmp_path / "rep" / "tiny" / "ablation.tex").is_file()


def test_ablate_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    code = main(["ablate", "--preset", "smoke", "--variants", "sft,s2d", "--seeds", "0,1",
                 "--results", str(tmp_path), "--dry-run"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "4 run(s) to do" in text and "optimizer steps" in text and "estimated" in text
    assert "run(s) at a time" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_ablate_rejects_a_bad_jobs_value(tmp_path, capsys, jobs):
    code = main(["ablate", "--preset", "smoke", "--jobs", jobs, "--results", str(tmp_path)])
    assert code == 2 and "--jobs must be a positive integer or 'auto'" in capsys.readouterr().err


def test_ablate_rejects_an_unknown_variant(tmp_path, capsys):
    argv = ["ablate", "--preset", "smoke", "--variants", "sft,nope", "--results", str(tmp_path)]
    code = main(argv)
    assert code == 2 and "unknown variant 'nope'" in capsys.readouterr().err


# Smaller than the smoke preset's own budget so CI stays fast; still the real pipeline end to end.
FAST = ["train.total_steps=10", "model.llm.pretrain_steps=10", "inference.max_new_tokens=24",
        "eval.bootstrap=100"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.java
def test_ablate_smoke_end_to_end_then_resume_is_a_no_op(tmp_path, capsys):
    out, reports, cache = tmp_path / "results", tmp_path / "reports", tmp_path / "cache"

    def ablate(out: Path, reports: Path) -> list[str]:
        return ["ablate", "--preset", "smoke", "--variants", "sft,s2d", "--seeds", "0",
                "--results", str(out), "--reports", str(reports), "--cache", str(cache),
                "--no-progress", *FAST]  # fmt: skip

    argv = ablate(out, reports)
    assert main([*argv, "--jobs", "2"]) == 0  # two worker processes
    text = capsys.readouterr().out
    assert "2 run(s) executed" in text and "(2 at a time)" in text and "| `s2d` |" in text
    store = Store.open(None, out)
    runs = store.runs(preset="smoke", purpose="ablate")
    assert {r.variant for r in runs} == {"sft", "s2d"} and all(r.status == "complete" for r in runs)
    rows = store.runs(preset="smoke", purpose="reference", status="complete")  # made once, first
    assert {r.variant[4:] for r in rows} == set(REFERENCE_NAMES)  # tower-probe included
    assert "| `ref: all-normal` |" in text
    for run in runs:
        assert run.steps == 10 and run.tokens_seen > 0
        metrics = store.metrics(run.id, "test")
        assert {"BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "ce/u0/14/micro/f1"} <= set(metrics)
        assert len(store.test_evaluations(run.id)) == 1
        assert store.prediction_labels(run.id, "test")  # CE labels kept for exact tests
        assert store.train_log(run.id)
        assert (Path(run.run_dir) / "predictions" / "test.jsonl").is_file()
    for name in ("ablation.md", "ablation.tex", "ablation.csv", "figures/ablation_bars.png",
                 "figures/training_curves.png", "figures/qualitative.png"):  # fmt: skip
        assert (reports / "smoke" / name).is_file(), name
    # a second invocation finds every run complete: nothing retrains, nothing is rescored
    assert main([*argv, "--jobs", "2"]) == 0
    assert "0 run(s) executed, 2 already complete" in capsys.readouterr().out
    assert len(store.test_evaluations()) == 2 + len(REFERENCE_NAMES)  # each run's and row's, once
    # the same grid run one at a time in this process records the same numbers
    out1 = tmp_path / "sequential"
    assert main([*ablate(out1, tmp_path / "reports1"), "--jobs", "1"]) == 0
    assert "(1 at a time)" in capsys.readouterr().out
    store1 = Store.open(None, out1)
    for run in runs:
        for split in ("val", "test"):
            parallel = {k: m.value for k, m in store.metrics(run.id, split).items()}
            assert parallel == {k: m.value for k, m in store1.metrics(run.id, split).items()}
            assert store.predictions(run.id, split) == store1.predictions(run.id, split)
