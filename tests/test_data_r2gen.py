"""Loading R2Gen annotations: both layouts, grouping, bad input, path escapes, images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import entry, write_image, write_r2gen
from PIL import Image

from s2d_align.data.r2gen import Study, load_annotation, load_image
from s2d_align.errors import ConfigError, DataError


def iu_splits() -> dict[str, list[dict]]:
    return {
        "train": [
            entry(
                "CXR1",
                "train",
                "Heart size normal. No effusion.",
                impression="Normal.",
                mesh=["normal"],
            ),
            entry("CXR2", "train", "Small left pleural effusion."),
        ],
        "val": [entry("CXR3", "val")],
        "test": [entry("CXR4", "test", "No pneumothorax."), entry("CXR5", "test")],
    }


def mimic_row(dicom: str, study: str, subject: str, split: str, report: str) -> dict:
    return {
        "id": dicom,
        "study_id": int(study),
        "subject_id": int(subject),
        "report": report,
        "image_path": [f"p10/p{subject}/s{study}/{dicom}.jpg"],
        "split": split,
    }


def test_iu_layout_two_views_resolved_under_root(tmp_path: Path) -> None:
    ann_path = write_r2gen(tmp_path / "iu", iu_splits())
    ann = load_annotation(ann_path, dataset="iu_xray", check_images=True)
    assert [s.id for s in ann.split("test")] == ["CXR4", "CXR5"]
    study = ann.split("train")[0]
    root = (tmp_path / "iu").resolve()
    assert study.image_paths == (str(root / "CXR1/0.png"), str(root / "CXR1/1.png"))
    assert study.extra == {"impression": "Normal.", "mesh": ["normal"]}
    assert study.subject_id is None and study.split == "train"
    assert ann.reports("test") == {"CXR4": "No pneumothorax.", "CXR5": "The lungs are clear."}
    assert ann.image_root == root and ann.skipped == []


def test_explicit_image_root(tmp_path: Path) -> None:
    splits = iu_splits()
    write_r2gen(tmp_path / "imgs", splits)  # images live here
    ann_file = tmp_path / "meta" / "annotation.json"
    ann_file.parent.mkdir()
    ann_file.write_text(json.dumps(splits))
    ann = load_annotation(ann_file, tmp_path / "imgs", check_images=True)
    assert ann.split("val")[0].image_paths[0] == str((tmp_path / "imgs" / "CXR3/0.png").resolve())
    with pytest.raises(DataError, match="image not found"):
        load_annotation(ann_file, check_images=True)  # default root: the annotation's folder


def test_mimic_rows_and_group_by_study(tmp_path: Path) -> None:
    rows = {
        "train": [
            mimic_row("d1", "501", "10000001", "train", "Clear lungs."),
            mimic_row("d2", "501", "10000001", "train", "Clear lungs."),
            mimic_row("d3", "502", "10000002", "train", "Small effusion."),
        ],
        "val": [],
        "test": [mimic_row("d4", "503", "10000003", "test", "Cardiomegaly.")],
    }
    path = write_r2gen(tmp_path / "m", rows)
    per_image = load_annotation(path, dataset="mimic_cxr")
    assert [s.id for s in per_image.split("train")] == ["d1", "d2", "d3"]
    assert per_image.split("train")[0].study_id == "501"  # integers in the file become strings
    assert per_image.split("train")[0].subject_id == "10000001"

    grouped = load_annotation(path, dataset="mimic_cxr", group_by_study=True)
    train = grouped.split("train")
    assert [s.id for s in train] == ["501", "502"]
    assert len(train[0].image_paths) == 2 and train[0].image_paths[1].endswith("d2.jpg")
    assert train[0].report == "Clear lungs." and train[0].extra["row_ids"] == ["d1", "d2"]
    assert grouped.grouped and grouped.split("val") == []


def test_group_by_study_conflicting_reports(tmp_path: Path) -> None:
    rows = {
        "train": [
            mimic_row("d1", "501", "10000001", "train", "Clear lungs."),
            mimic_row("d2", "501", "10000001", "train", "Large effusion."),
            mimic_row("d3", "502", "10000002", "train", "Normal."),
        ],
        "val": [],
        "test": [],
    }
    path = write_r2gen(tmp_path / "m", rows)
    with pytest.raises(DataError) as err:
        load_annotation(path, dataset="mimic_cxr", group_by_study=True)
    msg = str(err.value)
    assert str(path) in msg and "different reports" in msg and "'d1'" in msg and "'d2'" in msg

    ann = load_annotation(path, dataset="mimic_cxr", group_by_study=True, skip_bad=True)
    assert [s.id for s in ann.split("train")] == ["502"]
    assert [(e["split"], e["index"], e["id"]) for e in ann.skipped] == [
        ("train", 0, "d1"),
        ("train", 1, "d2"),
    ]


def test_group_by_study_same_study_in_two_splits(tmp_path: Path) -> None:
    rows = {
        "train": [mimic_row("d1", "501", "10000001", "train", "Clear.")],
        "val": [],
        "test": [mimic_row("d2", "501", "10000001", "test", "Clear.")],
    }
    path = write_r2gen(tmp_path / "m", rows)
    with pytest.raises(DataError, match=r"test\[0\].*also listed in split 'train'"):
        load_annotation(path, group_by_study=True)


def _bad_cases() -> list[tuple[str, object, str]]:
    """(case, value of test[1], expected message part); test[1] replaces CXR5 unless noted."""
    good = entry("CXR5", "test")
    return [
        (
            "missing report",
            {k: v for k, v in good.items() if k != "report"},
            "missing field 'report'",
        ),
        ("empty report", {**good, "report": "  \n "}, "empty report"),
        ("report not text", {**good, "report": ["a"]}, "'report' must be a string"),
        (
            "missing image_path",
            {k: v for k, v in good.items() if k != "image_path"},
            "missing field 'image_path'",
        ),
        ("image_path string", {**good, "image_path": "CXR5/0.png"}, "non-empty list"),
        ("empty image_path", {**good, "image_path": []}, "non-empty list"),
        (
            "wrong split field",
            {**good, "split": "train"},
            "says 'train' but it is listed under 'test'",
        ),
        ("duplicate id", {**good, "id": "CXR4"}, "duplicate id (first used by entry test[0])"),
        ("not an object", ["CXR5"], "expected an object"),
    ]


@pytest.mark.parametrize(
    ("case", "bad", "expected"), _bad_cases(), ids=[c[0] for c in _bad_cases()]
)
def test_bad_entry_names_file_and_entry(
    tmp_path: Path, case: str, bad: object, expected: str
) -> None:
    splits = iu_splits()
    splits["test"][1] = bad  # type: ignore[call-overload]
    path = write_r2gen(tmp_path / "iu", splits)
    with pytest.raises(DataError) as err:
        load_annotation(path)
    msg = str(err.value)
    assert str(path) in msg and "entry test[1]" in msg and expected in msg
    if isinstance(bad, dict) and "id" in bad:
        assert repr(bad["id"]) in msg

    ann = load_annotation(path, skip_bad=True)
    assert [s.id for s in ann.split("test")] == ["CXR4"]
    assert len(ann.skipped) == 1
    skipped = ann.skipped[0]
    assert (skipped["split"], skipped["index"]) == ("test", 1) and expected in skipped["reason"]


def test_missing_id_and_mimic_fields(tmp_path: Path) -> None:
    splits = iu_splits()
    del splits["val"][0]["id"]
    path = write_r2gen(tmp_path / "iu", splits)
    with pytest.raises(DataError, match=r"entry val\[0\]: missing field 'id'"):
        load_annotation(path)
    rows = {
        "train": [{**mimic_row("d1", "501", "10000001", "train", "Clear."), "subject_id": None}],
        "val": [],
        "test": [],
    }
    path = write_r2gen(tmp_path / "m", rows)
    load_annotation(path)  # fine without dataset-specific checks
    with pytest.raises(DataError, match=r"train\[0\] \(id 'd1'\): missing field 'subject_id'"):
        load_annotation(path, dataset="mimic_cxr")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"train": [', "malformed JSON at line 1"),
        ("[]", "expected a JSON object with 'train', 'val' and 'test' lists"),
        ('{"train": [], "test": []}', "missing split key(s) 'val'"),
        (
            '{"train": [], "validate": [], "test": []}',
            "unknown split 'validate' (write it as 'val')",
        ),
        ('{"train": [], "val": [], "test": [], "dev": []}', "unknown split 'dev'"),
        ('{"train": {}, "val": [], "test": []}', "split 'train' must be a list"),
    ],
)
def test_bad_file_structure(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "annotation.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_annotation(path, skip_bad=True)  # structural errors are never skipped
    assert str(path) in str(err.value) and expected in str(err.value)


def test_metadata_keys_are_kept_and_unknown_dataset_refused(tmp_path: Path) -> None:
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps({"train": [], "val": [], "test": [], "info": {"source": "x"}}))
    assert load_annotation(path).meta == {"info": {"source": "x"}}
    with pytest.raises(ConfigError, match="unknown dataset 'chexpert'"):
        load_annotation(path, dataset="chexpert")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_annotation(path).split("dev")


def test_skip_bad_lists_every_bad_entry(tmp_path: Path) -> None:
    splits = iu_splits()
    splits["train"][1]["report"] = ""
    splits["val"][0]["split"] = "test"
    splits["test"].append(entry("CXR1", "test"))  # duplicate of a train id
    path = write_r2gen(tmp_path / "iu", splits)
    ann = load_annotation(path, skip_bad=True)
    assert sum(len(v) for v in ann.splits.values()) == 3
    assert [(e["split"], e["index"], e["id"]) for e in ann.skipped] == [
        ("train", 1, "CXR2"),
        ("val", 0, "CXR3"),
        ("test", 2, "CXR1"),
    ]
    assert "duplicate id (first used by entry train[0])" in ann.skipped[2]["reason"]


def test_path_escaping_the_root_is_refused(tmp_path: Path) -> None:
    outside = write_image(tmp_path / "outside.png")
    root = tmp_path / "ds"
    write_image(root / "inside.png")
    (root / "link.png").symlink_to(outside)
    cases = {
        "../outside.png": "escapes the image root",
        str(outside): "escapes the image root",
        "link.png": "escapes the image root",
        "sub/../../outside.png": "escapes the image root",
    }
    for rel, expected in cases.items():
        splits = {
            "train": [],
            "val": [],
            "test": [{"id": "s1", "report": "Clear.", "image_path": [rel]}],
        }
        path = write_r2gen(root, splits, images=False)
        with pytest.raises(DataError) as err:
            load_annotation(path)
        assert expected in str(err.value) and "entry test[0] (id 's1')" in str(err.value), rel
    # an absolute path inside the root is fine
    splits = {
        "train": [],
        "val": [],
        "test": [{"id": "s1", "report": "Clear.", "image_path": [str(root / "inside.png")]}],
    }
    path = write_r2gen(root, splits, images=False)
    assert load_annotation(path).split("test")[0].image_paths == (
        str((root / "inside.png").resolve()),
    )


def test_check_images_missing_and_corrupt(tmp_path: Path) -> None:
    splits = iu_splits()
    path = write_r2gen(tmp_path / "iu", splits)
    (tmp_path / "iu" / "CXR5" / "1.png").unlink()
    (tmp_path / "iu" / "CXR2" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    load_annotation(path)  # no image check by default
    with pytest.raises(DataError) as err:
        load_annotation(path, check_images=True)
    assert "train[1] (id 'CXR2')" in str(err.value) and "CXR2/0.png: cannot decode image" in str(
        err.value
    )
    ann = load_annotation(path, check_images=True, skip_bad=True)
    reasons = {e["id"]: e["reason"] for e in ann.skipped}
    assert reasons.keys() == {"CXR2", "CXR5"} and "image not found" in reasons["CXR5"]


def test_load_image_grey_float_resized(tmp_path: Path) -> None:
    png = write_image(tmp_path / "a.png", size=20, value=0)
    arr = load_image(png, 8)
    assert arr.shape == (8, 8) and arr.dtype == np.float32
    assert 0.0 <= arr.min() < arr.max() <= 1.0
    assert load_image(png, None).shape == (20, 20)
    rgb = tmp_path / "rgb.jpg"
    Image.new("RGB", (12, 10), (255, 255, 255)).save(rgb)
    assert np.allclose(load_image(rgb, 4), 1.0, atol=0.02)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(wide)
    assert np.allclose(load_image(wide, 6), 1.0)  # 16-bit white is white, not clipped garbage


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image not found: .*nope\.png"):
        load_image(tmp_path / "nope.png", 8)
    bad = tmp_path / "bad.png"
    bad.write_bytes(os.urandom(64))
    with pytest.raises(DataError, match=r"bad\.png: cannot decode image"):
        load_image(bad, 8)
    truncated = tmp_path / "trunc.png"
    write_image(tmp_path / "full.png", size=64)
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:80])
    with pytest.raises(DataError, match=r"trunc\.png: cannot decode image"):
        load_image(truncated, 8)


def test_study_is_hashable_and_frozen() -> None:
    s = Study("a", "r", ("/x.png",), "test", extra={"k": [1]})
    assert s in {s}
    with pytest.raises(AttributeError):
        s.report = "other"  # type: ignore[misc]
