"""``s2d-align score`` / ``compare`` end to end, id checks, and the reference-label cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.cli.main import main
from s2d_align.config.schema import EvalConfig
from s2d_align.data.audit import manifest_hash
from s2d_align.data.r2gen import load_annotation
from s2d_align.errors import DataError
from s2d_align.evaluation.ce import ce_cell_names
from s2d_align.evaluation.grounded import GROUNDED_METRICS
from s2d_align.evaluation.nlg import NLG_METRICS
from s2d_align.evaluation.profiles import get_profile
from s2d_align.evaluation.records import ScoreReport
from s2d_align.evaluation.score import ScoringContext, reference_labels, score_corpus
from s2d_align.evaluation.signature import SIGNATURE_FIELDS, format_signature, parse_signature
from s2d_align.utils.io import write_json, write_jsonl

TEST_REPORTS = {
    "t1": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "t2": "Small left pleural effusion. Mild cardiomegaly.",
    "t3": "Right lower lobe consolidation concerning for pneumonia.",
    "t4": "Endotracheal tube in standard position. No pneumothorax.",
    "t5": "Mild pulmonary edema. Cardiomegaly is stable.",
    "t6": "No acute cardiopulmonary abnormality.",
}
GOOD = {
    "t1": "Heart size is normal. Lungs are clear. No effusion or pneumothorax.",
    "t2": "Small left pleural effusion. The heart is enlarged.",
    "t3": "Consolidation in the right lower lobe, likely pneumonia.",
    "t4": "Endotracheal tube in place. No pneumothorax.",
    "t5": "Mild pulmonary edema with cardiomegaly.",
    "t6": "No acute abnormality.",
}
POOR = dict.fromkeys(TEST_REPORTS, "The heart is normal.")


@pytest.fixture(scope="module")
def ann(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ann")

    def entry(i: str, report: str, split: str) -> dict:
        return {"id": i, "report": report, "image_path": [f"images/{i}.png"], "split": split}

    data = {
        "train": [entry(f"r{k}", "Heart normal. Lungs clear.", "train") for k in range(3)],
        "val": [entry("v1", "No effusion.", "val")],
        "test": [entry(i, r, "test") for i, r in TEST_REPORTS.items()],
    }
    write_json(root / "annotation.json", data)
    return root / "annotation.json"


def _preds(path: Path, predictions: dict[str, str]) -> Path:
    write_jsonl(path, [{"id": i, "prediction": p} for i, p in predictions.items()])
    return path


def test_missing_and_extra_ids_are_an_error_with_counts(ann, tmp_path, capsys):
    preds = {i: p for i, p in GOOD.items() if i not in ("t2", "t5")} | {"zz": "extra"}
    code = main(["score", "--pred", str(_preds(tmp_path / "p.jsonl", preds)), "--ann", str(ann)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 of 6 ids of the split have no prediction" in err and "'t2'" in err
    assert "1 predicted ids are not in the split" in err and "'zz'" in err
    assert "p.jsonl" in err


def test_score_corpus_refuses_a_partial_corpus():
    with pytest.raises(DataError, match="1 of 6 ids"):
        score_corpus({k: v for k, v in GOOD.items() if k != "t1"}, TEST_REPORTS, EvalConfig(),
                     ScoringContext("0" * 64))  # fmt: skip


def test_duplicate_prediction_id_names_file_and_entry(ann, tmp_path, capsys):
    path = tmp_path / "dup.jsonl"
    write_jsonl(path, [{"id": "t1", "prediction": "a"}, {"id": "t1", "prediction": "b"}])
    assert main(["score", "--pred", str(path), "--ann", str(ann)]) == 2
    assert "dup.jsonl: entry 2: duplicate id 't1'" in capsys.readouterr().err


def test_r2gen_legacy_needs_a_dataset(ann, tmp_path, capsys):
    pred = _preds(tmp_path / "p.jsonl", GOOD)
    code = main(["score", "--pred", str(pred), "--ann", str(ann), "--profile", "r2gen-legacy"])
    assert code == 2
    assert "needs --dataset" in capsys.readouterr().err


class CountingLabeler:
    signature = "count-1"

    def __init__(self) -> None:
        self.calls = 0

    def label(self, reports):
        self.calls += 1
        return [{o: int("effusion" in r.lower()) if o == "Pleural Effusion" else None
                 for o in OBSERVATIONS} for r in reports]  # fmt: skip


def test_reference_labels_are_cached_by_manifest_and_content(tmp_path):
    labeler, profile = CountingLabeler(), get_profile("raw-v1")
    ids, texts = list(TEST_REPORTS), list(TEST_REPORTS.values())
    first = reference_labels(labeler, ids, texts, profile, "a" * 64, tmp_path)
    again = reference_labels(labeler, ids, texts, profile, "a" * 64, tmp_path)
    assert labeler.calls == 1 and again == first
    assert first[1]["Pleural Effusion"] == 1
    changed = [*texts[:-1], "Large effusion."]  # same manifest hash, other text: never reused
    assert (
        reference_labels(labeler, ids, changed, profile, "a" * 64, tmp_path)[-1]["Pleural Effusion"]
        == 1
    )
    assert labeler.calls == 2
    (tmp_path / next(p.name for p in tmp_path.iterdir())).write_text("{broken")
    reference_labels(labeler, ids, texts, profile, "a" * 64, tmp_path)  # damaged: recomputed
    assert labeler.calls >= 3


@pytest.fixture(scope="module")
def scored(ann, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("score")
    pred = _preds(out_dir / "pred.jsonl", GOOD)
    out = out_dir / "metrics.json"
    argv = ["score", "--pred", str(pred), "--ann", str(ann), "--split", "test", "--out", str(out),
            "--cache", str(out_dir / "cache"), "--bootstrap", "200"]  # fmt: skip
    code = main(argv)
    return code, out, out_dir


@pytest.mark.slow
@pytest.mark.java
def test_score_writes_every_metric_and_the_signature(scored, ann):
    code, out, out_dir = scored
    assert code == 0
    data = json.loads(out.read_text())
    expected = [
        *NLG_METRICS,
        *ce_cell_names(),
        *(f"ce_f1/{o}" for o in OBSERVATIONS),
        *GROUNDED_METRICS,
        *(f"ce_support/{o}" for o in OBSERVATIONS),
    ]
    assert list(data["metrics"]) == expected
    for name in expected:
        m = data["metrics"][name]
        if name.startswith("ce_support/"):  # a count of positive references: no interval
            assert m["ci_low"] is None and m["value"] == int(m["value"]) >= 0, name
            continue
        assert m["ci_low"] <= m["value"] + 1e-12 and m["value"] <= m["ci_high"] + 1e-12, name
    assert data["headline"] == "ce/u0/14/micro/f1"
    fields = data["signature_fields"]
    assert list(fields) == list(SIGNATURE_FIELDS)
    assert (
        fields["profile"] == "raw-v1"
        and fields["tok"] == "ptb"
        and fields["ce"].startswith("rules-")
    )
    digest = manifest_hash(load_annotation(ann), "test")
    assert fields["manifest"] == digest[:12]
    assert set(data["per_sample"]["BLEU_4"]) == set(TEST_REPORTS)
    assert (
        data["ce_matrix"]["u1"]["5"]["example"]["f1"]
        == data["metrics"]["ce/u1/5/example/f1"]["value"]
    )
    # reference labels were cached, in the eval/ folder of --cache
    assert list((out_dir / "cache" / "eval").glob("ref-labels-*.json"))
    report = ScoreReport.from_dict(data)
    assert report.metrics["CIDEr"].value == data["metrics"]["CIDEr"]["value"]
    assert report.per_observation_f1() == data["per_observation_f1"]


@pytest.mark.slow
@pytest.mark.java
def test_score_prints_a_table_with_cis_and_the_signature(scored):
    # the module fixture ran before this test's capture started: rerun the printer on the JSON
    from rich.console import Console

    from s2d_align.cli.eval_score import print_report

    _, out, _ = scored
    report = ScoreReport.from_dict(json.loads(out.read_text()))
    console = Console(width=160, force_terminal=False)
    with console.capture() as captured:
        print_report(report, console)
    text = captured.get()
    assert "BLEU_4" in text and "ce/u0/14/micro/f1" in text and "95% CI" in text
    assert f"signature: {report.signature}" in text
    assert "Pleural Effusion" in text


@pytest.mark.slow
@pytest.mark.java
def test_compare_runs_a_paired_test_per_metric(ann, tmp_path, capsys):
    a, b = _preds(tmp_path / "a.jsonl", TEST_REPORTS), _preds(tmp_path / "b.jsonl", POOR)
    out = tmp_path / "cmp.json"
    argv = ["compare", str(a), str(b), "--ann", str(ann), "--resamples", "2000", "--out", str(out),
            "--bootstrap", "50", "--no-cache"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "paired approximate randomisation" in printed and "ROUGE_L" in printed
    assert f"A = {a}" in printed
    rows = {r["metric"]: r for r in json.loads(out.read_text())["tests"]}
    assert set(NLG_METRICS) <= set(rows)
    for name in ("BLEU_1", "ROUGE_L", "CIDEr", "METEOR"):
        assert rows[name]["delta"] > 0  # A is the reference itself
        # A beats B on all 6 reports: the exact two-sided p is 2 / 2**6
        assert rows[name]["p_value"] == pytest.approx(2 / 64, abs=0.02)
    assert all(0 < r["p_value"] <= 1 for r in rows.values())


def test_signature_round_trip_and_errors():
    fields = {"profile": "raw-v1", "ce": "chexbert-sha256:ab|cd", "manifest": "0123456789ab"}
    text = format_signature(fields)
    parsed = parse_signature(text)
    assert list(parsed) == list(SIGNATURE_FIELDS)
    assert parsed["ce"] == "chexbert-sha256:ab/cd"  # '|' cannot break the field split
    assert parsed["ckpt"] == "-" and parsed["s2d"]
    with pytest.raises(ValueError, match="unknown signature fields"):
        format_signature({"tokenizer": "ptb"})
    with pytest.raises(DataError, match="malformed signature"):
        parse_signature("profile:raw-v1|oops")


@pytest.mark.java
def test_a_shared_nlg_scorer_gives_the_numbers_of_a_fresh_one_on_every_call():
    from s2d_align.evaluation.nlg import NLGScorer

    cfg = EvalConfig(bootstrap=50)
    fresh = [score_corpus(p, TEST_REPORTS, cfg, ScoringContext("0" * 64)) for p in (GOOD, POOR)]
    with NLGScorer() as shared:  # one METEOR process for both corpora, and once more for GOOD
        reused = [
            score_corpus(p, TEST_REPORTS, cfg, ScoringContext("0" * 64, nlg_scorer=shared))
            for p in (GOOD, POOR, GOOD)
        ]
    assert fresh[0].metrics["METEOR"].value != fresh[1].metrics["METEOR"].value
    for a, b in zip([*fresh, fresh[0]], reused, strict=True):
        assert a.metrics == b.metrics and a.per_sample == b.per_sample
        assert a.signature == b.signature


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "t1", "prediction": null}\n', "entry 1 (id 't1'): prediction is null"),
        ('{"id": "t1"}\n', "missing prediction"),
        ('{"id": null, "prediction": "x"}\n', "'id' is null"),
    ],
)
def test_score_null_prediction_says_so(ann, tmp_path, capsys, text, message):
    pred = tmp_path / "pred.jsonl"
    pred.write_text(text, encoding="utf-8")
    assert main(["score", "--pred", str(pred), "--ann", str(ann), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "pred.jsonl" in err and message in err


def test_clip_interval_keeps_cis_inside_the_metric_range():
    from s2d_align.evaluation.score import clip_interval

    assert clip_interval("METEOR", 0.660, 1.035) == (0.660, 1.0)
    assert clip_interval("BLEU_4", -0.02, 0.3) == (0.0, 0.3)
    assert clip_interval("ce_f1/Pneumonia", 1.2, 1.4) == (1.0, 1.0)
    assert clip_interval("CIDEr", -0.1, 2.5) == (0.0, 2.5)  # CIDEr-D exceeds 1 legitimately


@pytest.mark.java
def test_every_bounded_ci_lies_in_zero_one():
    # A punctuation-only prediction beside exact copies: METEOR's CI is shifted onto the corpus
    # value, the step that once gave [0.660, 1.035].
    preds = dict(TEST_REPORTS)
    preds[sorted(preds)[0]] = ". , ;"
    report = score_corpus(preds, TEST_REPORTS, EvalConfig(bootstrap=100), ScoringContext("0" * 64))
    for name, m in report.metrics.items():
        if m.ci_low is None:
            continue
        top = float("inf") if name == "CIDEr" else 1.0
        assert 0.0 <= m.ci_low <= m.ci_high <= top, (name, m)
