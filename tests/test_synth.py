"""SynthCXR: determinism, report/label agreement, prevalence, patient splits, images, CLI, cache.

The report checks use their own small keyword rules (not the generator's code): a mention is
negated when a negation cue precedes it in its sentence (or "normal" follows it in its clause),
hedged when a hedge cue precedes it (or "cannot be excluded" follows it in its clause).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.cli.main import main
from s2d_align.config.schema import SynthConfig
from s2d_align.data.synth import COMPLETE_MARKER, ensure_synthcxr, generate_synthcxr
from s2d_align.data.synth.anatomy import Anatomy, Pose
from s2d_align.data.synth.findings import Finding
from s2d_align.data.synth.render import render_frontal
from s2d_align.errors import ConfigError, DataError

SMALL = {"n_train": 24, "n_val": 6, "n_test": 10, "size": 64, "views": 2}

LEXICON = {
    "Enlarged Cardiomediastinum": r"mediastin",
    "Cardiomegaly": r"cardiomegaly|\bheart\b|\bcardiac\b",
    "Lung Opacity": r"opacit|infiltrat",
    "Lung Lesion": r"nodul|\bmass(es)?\b|lesion",
    "Edema": r"edema|congestion",
    "Consolidation": r"consolidat",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelecta",
    "Pneumothorax": r"pneumothora",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"thickening",
    "Fracture": r"fracture",
    "Support Devices": r"\btubes?\b|catheter|\blines?\b|pacemaker|pacer|\bleads?\b",
}
NEG_BEFORE = re.compile(r"\b(no|not|without|negative for|free of|clear of|normal)\b")
NEG_AFTER = re.compile(r"\b(normal|unremarkable)\b")
HEDGE_BEFORE = re.compile(
    r"\b(possible|possibly|may|might|could|questionable|likely|probable|concerning for|"
    r"suspicious for|suggestive of)\b"
)
HEDGE_AFTER = re.compile(r"cannot be (excluded|ruled out)")


def mention_statuses(report: str, observation: str) -> list[str]:
    """'positive' / 'negative' / 'uncertain' for every mention of ``observation``."""
    out = []
    for sentence in re.split(r"(?<=\.)\s+", report.lower()):
        for match in re.finditer(LEXICON[observation], sentence):
            before = sentence[: match.start()]
            clause_after = re.split(r"[,;]", sentence[match.end() :])[0]
            if NEG_BEFORE.search(before) or NEG_AFTER.search(clause_after):
                out.append("negative")
            elif HEDGE_BEFORE.search(before) or HEDGE_AFTER.search(clause_after):
                out.append("uncertain")
            else:
                out.append("positive")
    return out


def load(folder: Path) -> tuple[dict, dict]:
    ann = json.loads((folder / "annotation.json").read_text())
    truth = json.loads((folder / "ground_truth.json").read_text())
    return ann, truth


def png(path: Path) -> Image.Image:
    """Open, fully load and close an image (no file handle left behind)."""
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        return img.copy()


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate_synthcxr(out, **SMALL, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """200 studies at the smallest size: enough for prevalence and variety checks."""
    out = tmp_path_factory.mktemp("synth") / "medium"
    generate_synthcxr(
        out, n_train=140, n_val=20, n_test=40, size=32, views=1, seed=11, progress=False
    )
    return out


def test_same_seed_gives_identical_bytes_with_any_worker_count(small, tmp_path):
    again = tmp_path / "again"
    generate_synthcxr(again, **SMALL, seed=3, workers=2, progress=False)
    first, second = all_files(small), all_files(again)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first), "bytes differ between runs"


def test_different_seed_gives_different_data(small, tmp_path):
    other = tmp_path / "other"
    generate_synthcxr(other, **SMALL, seed=4, progress=False)
    a, b = load(small)[0], load(other)[0]
    assert [e["report"] for e in a["train"]] != [e["report"] for e in b["train"]]
    assert (small / "images/s000000_0.png").read_bytes() != (
        other / "images/s000000_0.png"
    ).read_bytes()


def test_every_label_agrees_with_the_report_text(medium, small):
    checked = 0
    for folder in (medium, small):
        ann, truth = load(folder)
        for entry in (e for rows in ann.values() for e in rows):
            labels = truth[entry["id"]]["labels"]
            assert set(labels) == set(OBSERVATIONS)
            for obs, pattern_status in ((o, mention_statuses(entry["report"], o)) for o in LEXICON):
                label = labels[obs]
                where = f"{entry['id']} {obs}={label}: {entry['report']!r}"
                if label == 1:
                    assert "positive" in pattern_status, where
                elif label == -1:
                    assert "uncertain" in pattern_status and "positive" not in pattern_status, where
                elif label == 0:
                    assert pattern_status and set(pattern_status) == {"negative"}, where
                else:
                    assert pattern_status == [], where
                checked += 1
            abnormal = any(labels[o] in (1, -1) for o in LEXICON if o != "Support Devices")
            assert labels["No Finding"] == (None if abnormal else 1), entry["id"]
    assert checked >= 240 * 13


def test_keyphrases_mark_negation_and_uncertainty(medium):
    ann, truth = load(medium)
    reports = {e["id"]: e["report"].lower() for rows in ann.values() for e in rows}
    for sid, gt in truth.items():
        assert gt["keyphrases"] == list(dict.fromkeys(m["text"] for m in gt["mentions"]))
        for m in gt["mentions"]:
            if m["status"] == "negative":
                assert m["text"].startswith("no "), (sid, m)
            elif m["status"] == "uncertain":
                assert m["text"].startswith("possible "), (sid, m)
            for side in ("left", "right"):  # anatomy is stated in the report too
                if m["anatomy"] and side in m["anatomy"].split():
                    assert side in reports[sid], (sid, m)
            assert gt["labels"][m["observation"]] is not None


def test_prevalence_hedges_paraphrases_and_finding_variety(medium):
    ann, truth = load(medium)
    meta = json.loads((medium / "synth_meta.json").read_text())
    normal = [sid for sid, gt in truth.items() if gt["labels"]["No Finding"] == 1]
    assert 0.2 <= len(normal) / len(truth) <= 0.55
    assert meta["no_finding_share"] == pytest.approx(len(normal) / len(truth), abs=1e-3)
    reports = {e["id"]: e["report"] for rows in ann.values() for e in rows}
    assert len({reports[sid] for sid in normal}) >= 0.5 * len(
        normal
    )  # paraphrased, not one template
    assert any(v == -1 for gt in truth.values() for v in gt["labels"].values())
    types = {f["type"] for gt in truth.values() for f in gt["findings"]}
    assert len(types) >= 10, types
    assert any("prior" in r.lower() for r in reports.values())  # comparison wording on follow-ups


def test_patients_have_several_studies_and_never_cross_splits(medium):
    ann, truth = load(medium)
    assert {s: len(rows) for s, rows in ann.items()} == {"train": 140, "val": 20, "test": 40}
    patients = {s: {e["subject_id"] for e in rows} for s, rows in ann.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    per_patient: dict[str, list[dict]] = {}
    for entry in (e for rows in ann.values() for e in rows):
        assert truth[entry["id"]]["subject_id"] == entry["subject_id"]
        per_patient.setdefault(entry["subject_id"], []).append(truth[entry["id"]])
    assert sum(len(v) > 1 for v in per_patient.values()) >= 10
    for studies in per_patient.values():  # chronic findings persist over a patient's studies
        for chronic in ("cardiomegaly", "pacemaker"):
            has = [
                any(f["type"] == chronic or f.get("device") == chronic for f in gt["findings"])
                for gt in studies
            ]
            assert all(has) or not any(has)


def test_images_are_pngs_of_the_requested_size_and_views(small):
    ann, truth = load(small)
    for entry in (e for rows in ann.values() for e in rows):
        assert len(entry["image_path"]) == 2 == truth[entry["id"]]["views"]
        frontal, lateral = (png(small / p) for p in entry["image_path"])
        for img in (frontal, lateral):
            assert img.mode == "L" and img.size == (64, 64)
        assert np.abs(np.asarray(frontal, int) - np.asarray(lateral, int)).mean() > 5


@pytest.mark.parametrize(
    ("finding", "darker"),
    [
        (Finding("pleural_effusion", "moderate", "left", "lower"), False),
        (
            Finding(
                "consolidation", "moderate", "right", "middle", params={"blobs": [[0, 0, 0.1]]}
            ),
            False,
        ),
        (Finding("pneumothorax", "large", "left", "upper"), True),
        (
            Finding(
                "nodule", "medium", "right", "upper", params={"size_mm": 25, "dx": 0.0, "dy": 0.0}
            ),
            False,
        ),
    ],
)
def test_findings_are_drawn_on_the_patient_side(finding, darker):
    """Patient left is image right on a frontal film; the change must land on that side."""
    plain = render_frontal(Anatomy(), Pose(), (), 64, np.random.default_rng(0)).astype(int)
    shown = render_frontal(Anatomy(), Pose(), (finding,), 64, np.random.default_rng(0)).astype(int)
    change = (plain - shown) if darker else (shown - plain)
    image_right = change[:, 32:].clip(0).sum()
    image_left = change[:, :32].clip(0).sum()
    same, other = (image_right, image_left) if finding.side == "left" else (image_left, image_right)
    assert same > 200 and same > 5 * other


def test_cardiomegaly_widens_the_heart():
    def bright_width(ctr: float | None) -> int:
        findings = () if ctr is None else (Finding("cardiomegaly", "severe", params={"ctr": ctr}),)
        img = render_frontal(Anatomy(), Pose(), findings, 64, np.random.default_rng(0))
        row = img[int(64 * (1 + 0.22) / 2)]  # just above the diaphragm
        return int((row[8:56] > 110).sum())

    assert bright_width(0.66) > bright_width(None) + 5


@pytest.mark.slow  # matplotlib import and a figure: a few seconds
def test_cli_generates_skips_when_complete_and_draws_a_figure(tmp_path, capsys):
    out, fig = tmp_path / "cli", tmp_path / "fig.png"
    argv = ["data", "synth", "--out", str(out), "--n-train", "6", "--n-val", "2", "--n-test", "4"]
    argv += ["--size", "32", "--seed", "5", "--no-progress"]
    assert main([*argv, "--figure", str(fig), "--figure-n", "4"]) == 0
    ann, _ = load(out)
    assert [len(ann[s]) for s in ("train", "val", "test")] == [6, 2, 4]
    assert png(fig).size[0] > 400
    capsys.readouterr()
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    assert main([*argv[:-1], "--seed", "6", "--no-progress"]) == 2  # different data, no --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv[:-2], "6", "--no-progress", "--force"]) == 0
    assert main(["data", "synth", "--out", str(out), "--views", "1", "--size", "8"]) == 2
    assert "size" in capsys.readouterr().err


def test_refuses_a_foreign_folder_and_bad_settings(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_synthcxr(tmp_path, n_train=2, n_val=1, n_test=1, size=32, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="views"):
        generate_synthcxr(tmp_path / "x", n_train=2, n_val=1, n_test=1, views=3, progress=False)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_training_config_needs_every_split_but_the_generator_does_not(split, tmp_path, capsys):
    from s2d_align.config import load_config

    with pytest.raises(ConfigError, match=rf"data\.synth\.n_{split} must be >= 1"):
        load_config(None, [f"data.synth.n_{split}=0"])
    sizes = {"n_train": 3, "n_val": 2, "n_test": 2, f"n_{split}": 0}
    ann, _ = load(
        Path(generate_synthcxr(tmp_path / "api", **sizes, size=32, progress=False)).parent
    )
    assert len(ann[split]) == 0 and sum(map(len, ann.values())) == sum(sizes.values())
    flags = [x for k, v in sizes.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    argv = ["data", "synth", "--data-dir", str(tmp_path / "cli"), "--size", "32", "--no-progress"]
    assert main([*argv, *flags]) == 0
    assert (tmp_path / "cli" / "annotation.json").read_bytes() == (
        tmp_path / "api" / "annotation.json"
    ).read_bytes()


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"n_val": -1}, "data.synth.n_val"),
        ({"n_train": 0, "n_val": 0, "n_test": 0}, "n_train + n_val + n_test"),
        ({"seed": True}, "data.synth.seed"),
        ({"views": 3}, "data.synth.views"),
        ({"size": 16}, "data.synth.size"),
    ],
)
def test_bad_synth_settings_name_the_key(values, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        SynthConfig(**values)


def test_fingerprint_keeps_cache_folder_names_stable():
    """A changed fingerprint would silently regenerate every cached SynthCXR dataset."""
    from s2d_align.data.synth import synth_fingerprint

    assert synth_fingerprint(SynthConfig()) == "65e581dff7418c42"
    assert synth_fingerprint(SynthConfig(4, 0, 2, 32, 2, 3)) == "aa98bb9164f2721d"


def test_ensure_synthcxr_caches_and_redoes_an_interrupted_generation(tmp_path):
    cfg = SynthConfig(n_train=4, n_val=1, n_test=2, size=32, views=1, seed=2)
    path = ensure_synthcxr(cfg, tmp_path, progress=False)
    assert path.name == "annotation.json" and path.parent.name.startswith("synthcxr-")
    stamp = path.stat().st_mtime_ns
    assert ensure_synthcxr(cfg, tmp_path, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    (path.parent / COMPLETE_MARKER).unlink()  # as if killed before finishing
    (path.parent / "images" / "s000000_0.png").write_bytes(b"truncated")
    assert ensure_synthcxr(cfg, tmp_path, progress=False) == path
    assert png(path.parent / "images" / "s000000_0.png").size == (32, 32)
    other = ensure_synthcxr(
        SynthConfig(n_train=4, n_val=1, n_test=2, size=32, seed=3), tmp_path, progress=False
    )
    assert other != path


def test_paraphrase_states_the_same_labels_in_other_words(tmp_path):
    """oracle-paraphrase: each test report written again from its findings in another style."""
    from s2d_align.config.schema import EvalConfig
    from s2d_align.data.synth import paraphrase_reports
    from s2d_align.evaluation.labelers import get_labeler

    cfg = SynthConfig(n_train=4, n_val=2, n_test=60, size=32, views=1, seed=5)
    folder = ensure_synthcxr(cfg, tmp_path, progress=False).parent
    ann, truth = load(folder)
    original = {e["id"]: e["report"] for e in ann["test"]}
    para = paraphrase_reports(cfg, tmp_path, "test", style_seed=1)
    assert list(para) == list(original)
    ids = list(original)

    def shown(labels: dict) -> dict:  # what every CE cell sees: positive and uncertain
        return {obs: value for obs, value in labels.items() if value in (1, -1)}

    labeler = get_labeler(EvalConfig())
    before = [shown(x) for x in labeler.label([original[i] for i in ids])]
    after = [shown(x) for x in labeler.label([para[i] for i in ids])]
    assert after == before
    assert sum(bool(set(x) - {"No Finding"}) for x in before) >= 20  # findings worth keeping
    assert sum(para[i] != original[i] for i in ids) >= 0.9 * len(ids)
    assert paraphrase_reports(cfg, tmp_path, "test", style_seed=1) == para  # deterministic
    other = paraphrase_reports(cfg, tmp_path, "test", style_seed=2)
    assert sum(other[i] != para[i] for i in ids) >= 0.9 * len(ids)
    with pytest.raises(ConfigError, match="split"):
        paraphrase_reports(cfg, tmp_path, "dev")
    sick = next(i for i in ids if truth[i]["findings"])
    truth[sick]["findings"] = []  # a cache that no longer matches the generator
    (folder / "ground_truth.json").write_text(json.dumps(truth))
    with pytest.raises(DataError, match=f"study {sick}"):
        paraphrase_reports(cfg, tmp_path, "test")
