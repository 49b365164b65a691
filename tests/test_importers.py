"""Open-i IU X-Ray and MIMIC-CXR-JPG importers, on small distributions written by the tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from data_fixtures import iu_xml, make_tgz, write_image, write_iu_folder, write_mimic

from s2d_align.cli.main import main
from s2d_align.data.importers.common import seeded_split
from s2d_align.data.importers.iu import import_iu, map_deid, parse_report_xml
from s2d_align.data.importers.mimic import extract_section, import_mimic
from s2d_align.data.r2gen import load_annotation
from s2d_align.errors import DataError

# ---------------------------------------------------------------- IU X-Ray (Open-i)


def iu_reports(n: int = 10) -> dict[str, str]:
    reports = {
        f"{k}.xml": iu_xml(
            f"CXR{k}", f"Heart size normal. Finding number {k}.", images=(f"{k}01", f"{k}02")
        )
        for k in range(1, n + 1)
    }
    reports["1.xml"] = iu_xml(
        "CXR1",
        "The XXXX   XXXX are normal.\n   No  pneumothorax on x-XXXX.",
        impression="Normal chest x-XXXX.",
        mesh=("Cardiomegaly/mild", "Opacity/lung/base/left"),
        images=("1_1", "1_2", "1_1"),  # repeated id counted once
    )
    reports[f"{n + 1}.xml"] = iu_xml(f"CXR{n + 1}", None)  # no findings: dropped
    reports[f"{n + 2}.xml"] = iu_xml(f"CXR{n + 2}", "   ")  # blank findings: dropped
    reports[f"{n + 3}.xml"] = iu_xml(f"CXR{n + 3}", "One view only.", images=("3001",))
    reports[f"{n + 4}.xml"] = iu_xml(f"CXR{n + 4}", "No images at all.", images=())
    return reports


def test_parse_report_xml_fields() -> None:
    rep = parse_report_xml(iu_reports()["1.xml"].encode(), "1.xml")
    assert rep.uid == "CXR1"
    assert rep.findings == "The XXXX are normal. No pneumothorax on x-XXXX."
    assert rep.impression == "Normal chest x-XXXX."
    assert rep.mesh == ("Cardiomegaly/mild", "Opacity/lung/base/left")  # <automatic> ignored
    assert rep.images == ("CXR1_IM-1_1", "CXR1_IM-1_2")
    assert rep.deid_tokens == 4


def test_map_deid_is_consistent() -> None:
    assert map_deid("XXXX XXXX XXXXX and XXXX.") == ("XXXX and XXXX.", 4)
    assert map_deid("x-XXXX, Xray, XXX") == ("x-XXXX, Xray, XXX", 1)


def test_import_iu_folder_and_tgz_agree(tmp_path: Path) -> None:
    folder = write_iu_folder(tmp_path / "ecgen-radiology", iu_reports())
    tgz = make_tgz(folder, tmp_path / "NLMCXR_reports.tgz")
    s1 = import_iu(folder, tmp_path / "out_dir", seed=3)
    s2 = import_iu(tgz, tmp_path / "out_tgz", seed=3)
    a1 = json.loads((tmp_path / "out_dir" / "annotation.json").read_text())
    a2 = json.loads((tmp_path / "out_tgz" / "annotation.json").read_text())
    assert a1 == a2
    assert s1.counts == s2.counts == {"train": 8, "val": 1, "test": 2}  # 11 kept, 7:1:2

    entries = {e["id"]: e for split in a1.values() for e in split}
    cxr1 = entries["CXR1"]
    assert cxr1["report"] == "The XXXX are normal. No pneumothorax on x-XXXX."
    assert cxr1["impression"] == "Normal chest x-XXXX."
    assert cxr1["mesh"] == ["Cardiomegaly/mild", "Opacity/lung/base/left"]
    assert cxr1["image_path"] == ["CXR1_IM-1_1.png", "CXR1_IM-1_2.png"]
    assert all(e["split"] == name for name, split in a1.items() for e in split)
    assert "subject_id" not in cxr1

    summary = json.loads((tmp_path / "out_dir" / "import_summary.json").read_text())
    assert summary["dropped_no_findings"] == {"count": 2, "ids": ["CXR11", "CXR12"]}
    assert summary["dropped_no_images"] == {"count": 1, "ids": ["CXR14"]}
    assert summary["fewer_than_2_images"] == ["CXR13"] and "CXR13" in entries
    assert summary["views_per_study"] == {"1": 1, "2": 10}
    assert summary["xml_files"] == 14 and summary["section"] == "findings"
    assert s1.record == summary  # the returned record is what the file holds
    assert (s1.dropped_no_findings, s1.skipped_bad, s1.image_root) == (2, 0, None)
    assert s1.notes == (
        "1 studies have fewer than 2 images (kept); views per study: {'1': 1, '2': 10}",
    )


def test_iu_split_depends_on_seed_only(tmp_path: Path) -> None:
    reports = iu_reports(30)
    forward = write_iu_folder(tmp_path / "a", reports)
    import_iu(forward, tmp_path / "o1", seed=1)
    import_iu(forward, tmp_path / "o2", seed=1)
    import_iu(forward, tmp_path / "o3", seed=2)
    b1, b2, b3 = ((tmp_path / o / "annotation.json").read_bytes() for o in ("o1", "o2", "o3"))
    assert b1 == b2 and b1 != b3
    # R2Gen's IU X-Ray sizes follow from the 7:1:2 rule on its 2,955 studies
    sizes = list(seeded_split([f"CXR{i}" for i in range(2955)], seed=0).values())
    assert (sizes.count("train"), sizes.count("val"), sizes.count("test")) == (2069, 296, 590)


def test_iu_output_loads_and_images_check(tmp_path: Path) -> None:
    reports = iu_reports(4)
    folder = write_iu_folder(tmp_path / "xml", reports)
    images = tmp_path / "png"
    for text in reports.values():
        for image_id in parse_report_xml(text.encode(), "x").images:
            write_image(images / f"{image_id}.png")
    summary = import_iu(folder, tmp_path / "out", images=images)
    assert summary.record["images_checked"] and summary.image_root == str(images)
    ann = load_annotation(
        tmp_path / "out" / "annotation.json", images, dataset="iu_xray", check_images=True
    )
    assert sum(len(v) for v in ann.splits.values()) == 5

    (images / "CXR2_IM-201.png").unlink()
    with pytest.raises(
        DataError, match=r"2\.xml: study 'CXR2': image\(s\) not found .*CXR2_IM-201\.png"
    ):
        import_iu(folder, tmp_path / "out2", images=images)
    summary = import_iu(folder, tmp_path / "out2", images=images, skip_bad=True)
    assert summary.record["dropped_missing_images"]["count"] == 1
    assert summary.record["dropped_missing_images"]["entries"][0]["id"] == "CXR2"


def test_iu_malformed_xml_and_duplicates(tmp_path: Path) -> None:
    reports = iu_reports(4)
    reports["3.xml"] = reports["3.xml"].replace("</eCitation>", "")
    reports["dup.xml"] = reports["2.xml"]
    reports["noid.xml"] = reports["4.xml"].replace('<uId id="CXR4"/>', "")
    folder = write_iu_folder(tmp_path / "xml", reports)
    with pytest.raises(DataError, match=r"3\.xml: malformed XML"):
        import_iu(folder, tmp_path / "out")
    tgz = make_tgz(folder, tmp_path / "r.tgz")
    with pytest.raises(DataError, match=r"r\.tgz:ecgen-radiology/3\.xml: malformed XML"):
        import_iu(tgz, tmp_path / "out")
    summary = import_iu(folder, tmp_path / "out", skip_bad=True)
    bad = {Path(e["file"]).name: e["reason"] for e in summary.record["skipped_bad"]["entries"]}
    assert summary.skipped_bad == 3
    assert set(bad) == {"3.xml", "dup.xml", "noid.xml"}
    assert "duplicate study id 'CXR2'" in bad["dup.xml"] and "no <uId" in bad["noid.xml"]
    ids = {
        e["id"]
        for split in json.loads((tmp_path / "out" / "annotation.json").read_text()).values()
        for e in split
    }
    assert "CXR3" not in ids and "CXR2" in ids


def test_iu_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="reports not found"):
        import_iu(tmp_path / "missing.tgz", tmp_path / "out")
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    with pytest.raises(DataError, match=r"junk\.tgz: not a readable"):
        import_iu(junk, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.xml report files"):
        import_iu(tmp_path / "empty", tmp_path / "out")


# ---------------------------------------------------------------- MIMIC-CXR-JPG


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 {header}
 {findings}

 IMPRESSION:
 No acute cardiopulmonary process.
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            REPORT.format(header="FINDINGS:", findings="Lungs are clear.\n  No effusion."),
            "Lungs are clear. No effusion.",
        ),
        (REPORT.format(header="Findings:", findings="Heart is normal."), "Heart is normal."),
        (
            "FINDINGS: PA and lateral views. Tip: in the SVC.\nWET READ: abc\n",
            "PA and lateral views. Tip: in the SVC.",
        ),
        ("FINDINGS: No effusion. IMPRESSION: Normal.", "No effusion."),
        ("FINDINGS:\n\nIMPRESSION: Normal.\nFINDINGS: second section", "second section"),
        ("EXAMINATION: chest\nIMPRESSION: no findings section here", ""),
        ("findings:   lungs clear\n\nRECOMMENDATION(S): follow up", "lungs clear"),
        (
            "FINDINGS: Lines: right PICC ends in SVC.\nNOTIFICATION: called",
            "Lines: right PICC ends in SVC.",
        ),
    ],
)
def test_extract_findings(text: str, expected: str) -> None:
    assert extract_section(text) == expected


def mimic_studies() -> list[dict]:
    ok = "FINDINGS:\n Lungs are clear.\n\nIMPRESSION: Normal."
    return [
        {
            "subject": "10000001",
            "study": "50000001",
            "split": "train",
            "dicoms": ["a1", "a2"],
            "report": REPORT.format(
                header="FINDINGS:", findings="Small left effusion.\n Heart normal."
            ),
        },
        {
            "subject": "10000001",
            "study": "50000002",
            "split": "train",
            "dicoms": ["b1"],
            "report": "IMPRESSION: only an impression",
        },  # no findings: dropped
        {
            "subject": "10000002",
            "study": "50000003",
            "split": "validate",
            "dicoms": ["c1"],
            "report": ok,
        },
        {
            "subject": "11000003",
            "study": "50000004",
            "split": "test",
            "dicoms": ["d1", "d2", "d3"],
            "report": REPORT.format(header="Findings:", findings="Mild cardiomegaly."),
        },
    ]


def test_import_mimic_rows_sections_and_splits(tmp_path: Path) -> None:
    root = write_mimic(tmp_path / "mimic", mimic_studies())
    summary = import_mimic(root, tmp_path / "out")
    ann_json = json.loads((tmp_path / "out" / "annotation.json").read_text())
    assert [e["id"] for e in ann_json["train"]] == ["a1", "a2"]
    assert ann_json["train"][0] == {
        "id": "a1",
        "study_id": "50000001",
        "subject_id": "10000001",
        "report": "Small left effusion. Heart normal.",
        "image_path": ["files/p10/p10000001/s50000001/a1.jpg"],
        "split": "train",
        "impression": "No acute cardiopulmonary process.",
    }
    assert [e["split"] for e in ann_json["val"]] == ["val"]
    assert summary.counts == {"train": 2, "val": 1, "test": 3}
    assert summary.record["studies"] == {"train": 1, "val": 1, "test": 1}
    assert summary.record["dropped_no_findings"] == {
        "studies": 1,
        "rows": 1,
        "study_ids": ["50000002"],
    }
    assert (summary.dropped_no_findings, summary.skipped_bad) == (1, 0)
    assert summary.image_root == str(root)
    assert summary.notes == ("studies per split: train 1, val 1, test 1",)
    assert summary.record == json.loads((tmp_path / "out" / "import_summary.json").read_text())

    ann = load_annotation(
        tmp_path / "out" / "annotation.json",
        root,
        dataset="mimic_cxr",
        group_by_study=True,
        check_images=True,
    )
    (test_study,) = ann.split("test")
    assert test_study.id == "50000004" and len(test_study.image_paths) == 3
    assert test_study.report == "Mild cardiomegaly."


def test_import_mimic_separate_reports_and_gz_csv(tmp_path: Path) -> None:
    root = write_mimic(tmp_path / "jpg", mimic_studies(), reports_root=tmp_path / "reports")
    csv_path = root / "mimic-cxr-2.0.0-split.csv"
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(csv_path.read_bytes()))
    csv_path.unlink()
    with pytest.raises(DataError, match="report not found"):
        import_mimic(root, tmp_path / "out")
    summary = import_mimic(root, tmp_path / "out", reports=tmp_path / "reports")
    assert summary.counts["test"] == 3


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s[3].update(split="holdout"), r":6 \(dicom_id 'd1'\): unknown split 'holdout'"),
        (
            lambda s: s[0].update(report=None),
            r":2 \(dicom_id 'a1'\): report not found: .*s50000001\.txt",
        ),
        (lambda s: s[2].update(images=False), r":5 \(dicom_id 'c1'\): image not found"),
        (
            lambda s: s[3]["dicoms"].append("a1"),
            r":9 \(dicom_id 'a1'\): duplicate dicom_id \(first on line 2\)",
        ),
    ],
)
def test_import_mimic_bad_rows_name_csv_line(tmp_path: Path, mutate, expected: str) -> None:
    studies = mimic_studies()
    mutate(studies)
    root = write_mimic(tmp_path / "mimic", studies)
    with pytest.raises(DataError, match=r"mimic-cxr-2\.0\.0-split\.csv" + expected):
        import_mimic(root, tmp_path / "out")
    summary = import_mimic(root, tmp_path / "out", skip_bad=True)
    assert summary.skipped_bad >= 1
    assert all(e["line"] and e["reason"] for e in summary.record["skipped_bad"]["entries"])


def test_import_mimic_bad_csv(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    with pytest.raises(DataError, match=r"no mimic-cxr-2\.0\.0-split\.csv"):
        import_mimic(root, tmp_path / "out")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,split\nx,1,train\n")
    with pytest.raises(DataError, match="missing column"):
        import_mimic(root, tmp_path / "out")


# ---------------------------------------------------------------- CLI


def test_cli_import_iu_and_mimic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_iu_folder(tmp_path / "xml", iu_reports(3))
    assert (
        main(
            [
                "data",
                "import-iu",
                "--reports",
                str(folder),
                "--out",
                str(tmp_path / "iu"),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dropped 2 studies without a FINDINGS section" in out
    assert "1 studies have fewer than 2 images (kept)" in out
    assert (tmp_path / "iu" / "import_summary.json").is_file()

    bad = write_iu_folder(tmp_path / "bad", {"1.xml": "<eCitation>"})
    assert main(["data", "import-iu", "--reports", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "1.xml: malformed XML" in capsys.readouterr().err

    root = write_mimic(tmp_path / "mimic", mimic_studies())
    assert main(["data", "import-mimic", "--root", str(root), "--out", str(tmp_path / "mm")]) == 0
    assert "train 2, val 1, test 3" in capsys.readouterr().out
