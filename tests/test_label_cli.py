"""``s2d-align label``: labels and key phrases for a JSONL of reports; bad input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.cli.main import main


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_label_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(
        tmp_path / "reports.jsonl",
        [
            {"id": "a", "report": "Small left pleural effusion. No pneumothorax."},
            {"id": "b", "report": "FINDINGS: The lungs are clear. Heart size is normal."},
            {"id": 7, "report": "Possible right lower lobe pneumonia."},
        ],
    )
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--in", str(src), "--out", str(out)]) == 0
    assert "rules-" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "7"]
    for r in rows:
        assert list(r["labels"]) == list(OBSERVATIONS)
    a, b, c = rows
    assert a["labels"]["Pleural Effusion"] == 1 and a["labels"]["Pneumothorax"] == 0
    assert a["keyphrases"] == ["small left pleural effusion", "no pneumothorax"]
    assert a["keyphrase_details"][0] == {
        "text": "small left pleural effusion",
        "observation": "Pleural Effusion",
        "anatomy": "left",
        "status": "positive",
    }
    assert b["labels"]["No Finding"] == 1 and b["labels"]["Cardiomegaly"] == 0
    assert c["labels"]["Pneumonia"] == -1
    assert c["keyphrases"] == ["possible right lower lobe pneumonia"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a"}], "entry 1: needs"),
        ([{"id": "a", "report": "x"}, {"id": "a", "report": "y"}], "entry 2: duplicate id 'a'"),
        ([{"id": "a", "report": 3}], "report must be a string"),
    ],
)
def test_label_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[dict], message: str
) -> None:
    src = _write(tmp_path / "bad.jsonl", rows)
    assert main(["label", "--in", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and message in err
    assert not (tmp_path / "o.jsonl").exists()


def test_label_malformed_json_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "broken.jsonl"
    src.write_text('{"id": "a", "report": "x"}\n{not json\n', encoding="utf-8")
    assert main(["label", "--in", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err
    assert (
        main(["label", "--in", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl")])
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_label_chexbert_needs_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "r.jsonl", [{"id": "a", "report": "No effusion."}])
    out = tmp_path / "o.jsonl"
    assert main(["label", "--in", str(src), "--out", str(out), "--labeler", "chexbert"]) == 2
    assert "chexbert_checkpoint" in capsys.readouterr().err
    missing = tmp_path / "chexbert.pth"
    args = ["label", "--in", str(src), "--out", str(out), "--labeler", "chexbert"]
    assert main([*args, "--chexbert-ckpt", str(missing)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_label_reads_generate_output_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rows ``generate`` writes are labelled as they are; ``--field`` picks another text."""
    src = _write(
        tmp_path / "predictions.jsonl",
        [
            {"id": "s1", "prediction": "Small left pleural effusion.", "reference_ids": ["t9"],
             "keyphrases": [], "context": "image", "draft": "No pneumothorax."},
        ],
    )  # fmt: skip
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--in", str(src), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["labels"]["Pleural Effusion"] == 1 and row["labels"]["Pneumothorax"] is None
    assert main(["label", "--in", str(src), "--out", str(out), "--field", "draft"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["labels"]["Pneumothorax"] == 0 and row["labels"]["Pleural Effusion"] is None
    capsys.readouterr()
    assert main(["label", "--in", str(src), "--out", str(out), "--field", "text"]) == 2
    assert 'no field "text"' in capsys.readouterr().err
    both = _write(tmp_path / "both.jsonl", [{"id": "a", "report": "x", "prediction": "y"}])
    assert main(["label", "--in", str(both), "--out", str(out)]) == 2
    assert "--field" in capsys.readouterr().err


def test_label_counts_dropped_sections_and_reports_with_no_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report that is all indication and comparison comes out blank and is named, not
    silently "No Finding"."""
    src = _write(
        tmp_path / "reports.jsonl",
        [
            {"id": "plain", "report": "No pneumothorax."},
            {"id": "mimic", "report": "INDICATION: Fever.\nPORTABLE AP CHEST: Small effusion."},
            {"id": "empty", "report": "INDICATION: Cough. COMPARISON: None."},
        ],
    )
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--in", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sections dropped in 2 of 3 reports" in printed
    assert "1 had no findings text left" in printed and "empty" in printed.splitlines()[-1]
    plain, mimic, empty = [json.loads(line) for line in out.read_text().splitlines()]
    assert plain["dropped_sections"] == [] and plain["no_text"] is False
    assert mimic["labels"]["Pleural Effusion"] == 1 and mimic["dropped_sections"] == ["indication"]
    assert empty["no_text"] is True and empty["dropped_sections"] == ["indication", "comparison"]
    assert all(v is None for v in empty["labels"].values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a", "report": null}\n', "entry 1 (id 'a'): report is null"),
        ("\n\n", "no reports"),
        ("", "no reports"),
        ('\n{"id": "a", "report": null}\n', "entry 1 (line 2) (id 'a'): report is null"),
    ],
)
def test_label_null_report_and_empty_file_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(text, encoding="utf-8")
    assert main(["label", "--in", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl" in err and message in err
    assert not (tmp_path / "o.jsonl").exists()


def test_label_refuses_to_overwrite_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "reports.jsonl", [{"id": "a", "report": "No effusion."}])
    before = src.read_bytes()
    assert main(["label", "--in", str(src), "--out", str(tmp_path / "." / "reports.jsonl")]) == 2
    assert "is the input --in" in capsys.readouterr().err
    assert src.read_bytes() == before
