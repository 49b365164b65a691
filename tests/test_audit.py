"""The test-set manifest and audit: counts, hashes, overlaps, missing images, bad entries."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from data_fixtures import entry, write_r2gen
from rich.console import Console

from s2d_align.cli.main import main
from s2d_align.data.audit import audit_annotation, manifest_hash, print_manifest
from s2d_align.data.r2gen import load_annotation


def clean_splits() -> dict[str, list[dict]]:
    """Six patients, none shared between splits; patient P1 has two studies in train."""
    return {
        "train": [
            entry("s1", "train", "Heart normal.", subject_id="P1"),
            entry("s2", "train", "Small left effusion.", subject_id="P1"),
            entry("s3", "train", "No pneumothorax.", subject_id="P2"),
        ],
        "val": [entry("s4", "val", "Mild cardiomegaly.", subject_id="P3")],
        "test": [
            entry("s5", "test", "Right lower lobe opacity.", subject_id="P4"),
            entry("s6", "test", "Lungs are clear.", subject_id="P5", views=1),
        ],
    }


def test_clean_set_is_ok(tmp_path: Path) -> None:
    ann = load_annotation(write_r2gen(tmp_path / "ds", clean_splits()))
    m = audit_annotation(ann)
    assert m["ok"] and m["problems"] == []
    test = m["splits"]["test"]
    assert (test["entries"], test["studies"], test["images"], test["subjects"]) == (2, 2, 3, 2)
    assert test["views_per_entry"] == {"1": 1, "2": 1}
    assert test["missing_images"] == [] and test["unreadable_images"] == []
    assert m["overlap"]["patient"]["train|test"] == {"count": 0, "subjects": []}
    assert m["splits"]["train"]["subjects"] == 2
    assert m["sections"].startswith("unknown")


def test_injected_patient_overlap_and_missing_image_are_found(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["test"][0]["subject_id"] = "P2"  # a train patient in test
    root = tmp_path / "ds"
    path = write_r2gen(root, splits)
    (root / "s6" / "0.png").unlink()  # missing test image
    (root / "s4" / "1.png").write_bytes(b"garbage")  # unreadable val image
    m = audit_annotation(load_annotation(path))
    assert not m["ok"]
    assert m["overlap"]["patient"]["train|test"] == {"count": 1, "subjects": ["P2"]}
    assert [x["id"] for x in m["splits"]["test"]["missing_images"]] == ["s6"]
    assert m["splits"]["val"]["unreadable_images"][0]["path"].endswith("s4/1.png")
    assert "1 patients in more than one split (train & test)" in m["problems"]
    assert "1 missing images in 'test'" in m["problems"]
    assert "1 unreadable images in 'val'" in m["problems"]

    only_test = audit_annotation(load_annotation(path), splits=["test"])
    assert only_test["audited_splits"] == ["test"]
    assert not only_test["splits"]["val"]["images_checked"]  # val images not opened
    assert "1 unreadable images in 'val'" not in only_test["problems"]
    assert set(only_test["overlap"]["patient"]) == {"train|test", "val|test"}


def test_per_image_rows_vs_studies_and_study_overlap(tmp_path: Path) -> None:
    def row(rid: str, study: str, subject: str, split: str, report: str) -> dict:
        return {**entry(rid, split, report, views=1), "study_id": study, "subject_id": subject}

    splits = {
        "train": [
            row("d1", "501", "10", "train", "Clear."),
            row("d2", "501", "10", "train", "Clear."),
            row("d3", "502", "11", "train", "Effusion."),
        ],
        "val": [row("d4", "503", "12", "val", "Edema.")],
        "test": [row("d5", "502", "13", "test", "Effusion.")],  # study 502 leaks into test
    }
    ann = load_annotation(write_r2gen(tmp_path / "m", splits), dataset="mimic_cxr")
    m = audit_annotation(ann)
    train = m["splits"]["train"]
    assert (train["entries"], train["studies"], train["images"]) == (3, 2, 3)
    assert train["duplicate_reports"]["groups"] == 0  # two rows of one study are not a duplicate
    assert m["overlap"]["study"]["train|test"] == {"count": 1, "studies": ["502"]}
    assert "1 studies in more than one split (train & test)" in m["problems"]
    assert m["overlap"]["report_text"]["train|test"]["count"] == 1


def test_duplicates_and_skipped_entries(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["train"].append(entry("s7", "train", "heart   NORMAL.", subject_id="P6"))
    splits["test"].append(entry("s8", "test", "Heart normal.", subject_id="P7"))
    splits["test"].append(entry("s9", "test", " ", subject_id="P8"))  # empty report
    ann = load_annotation(write_r2gen(tmp_path / "ds", splits), skip_bad=True)
    m = audit_annotation(ann)
    assert m["splits"]["train"]["duplicate_reports"]["groups"] == 1
    assert m["splits"]["train"]["duplicate_reports"]["most_common"] == [
        {"text": "heart normal.", "count": 2}
    ]
    assert m["overlap"]["report_text"]["train|test"] == {"count": 1, "examples": ["heart normal."]}
    assert m["splits"]["test"]["empty_reports"] == ["s9"]
    assert m["skipped"] == [{"split": "test", "index": 3, "id": "s9", "reason": "empty report"}]
    assert any("bad entries skipped" in p for p in m["problems"])
    assert any("share 1 repeated report texts" in w for w in m["warnings"])


def test_manifest_hash_tracks_content_not_order(tmp_path: Path) -> None:
    splits = clean_splits()
    h1 = manifest_hash(load_annotation(write_r2gen(tmp_path / "a", splits)), "test")
    splits["test"].reverse()
    h2 = manifest_hash(load_annotation(write_r2gen(tmp_path / "b", splits)), "test")
    splits["test"][0]["report"] += " Stable."
    h3 = manifest_hash(load_annotation(write_r2gen(tmp_path / "c", splits)), "test")
    assert h1 == h2 != h3
    m = audit_annotation(load_annotation(tmp_path / "a" / "annotation.json"))
    assert m["splits"]["test"]["hash"] == h1
    m_train_changed = audit_annotation(load_annotation(tmp_path / "c" / "annotation.json"))
    assert m_train_changed["hash"] != m["hash"]


def test_source_info_from_import_summary(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    path = write_r2gen(root, clean_splits())
    (root / "import_summary.json").write_text(
        json.dumps(
            {
                "importer": "iu_xray",
                "section": "findings",
                "dropped_no_findings": {"ids": list(range(50))},
            }
        )
    )
    m = audit_annotation(load_annotation(path), check_images=False)
    assert m["sections"] == "findings"
    assert m["source"]["importer"] == "iu_xray"
    assert m["source"]["dropped_no_findings"]["ids"] == "<50 items>"
    assert not m["splits"]["test"]["images_checked"]


def test_print_manifest_table(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["test"][0]["subject_id"] = "P1"
    m = audit_annotation(load_annotation(write_r2gen(tmp_path / "ds", splits)))
    buf = io.StringIO()
    print_manifest(m, Console(file=buf, width=160))
    text = buf.getvalue()
    assert "train" in text and "test" in text and m["splits"]["test"]["hash"][:12] in text
    assert "problem: 1 patients in more than one split" in text


def test_cli_check_writes_manifest_and_strict_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ds"
    path = write_r2gen(root, clean_splits())
    assert main(["data", "check", str(path), "--strict"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["ok"] and manifest["splits"]["test"]["entries"] == 2

    (root / "s5" / "1.png").unlink()
    out = tmp_path / "m.json"
    assert main(["data", "check", str(path), "--split", "test", "--out", str(out)]) == 0
    assert main(["data", "check", str(path), "--split", "test", "--out", str(out), "--strict"]) == 1
    assert json.loads(out.read_text())["splits"]["test"]["missing_images"][0]["id"] == "s5"
    assert "missing images in 'test'" in capsys.readouterr().out

    (root / "annotation.json").write_text("{")
    assert main(["data", "check", str(path)]) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_synthcxr_passes_the_audit(tmp_path: Path) -> None:
    """The generator's splits are by patient, so the audit must find no overlap or bad entry."""
    out = tmp_path / "syn"
    args = ["--n-train", "12", "--n-val", "4", "--n-test", "6", "--size", "32", "--no-progress"]
    assert main(["data", "synth", "--out", str(out), *args]) == 0
    m = audit_annotation(load_annotation(out / "annotation.json", dataset="synthcxr"))
    assert m["ok"], m["problems"]
    assert m["sections"].startswith("findings") and m["source"]["file"] == "synth_meta.json"
    assert m["splits"]["test"]["studies"] == 6 and m["splits"]["test"]["subjects"] is not None
    assert all(found["count"] == 0 for found in m["overlap"]["patient"].values())
