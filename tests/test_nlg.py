"""NLG metrics: conformance with direct pycocoevalcap calls, golden values, Java handling.

One METEOR process of ours (run under a German JVM locale, which makes pycocoevalcap's own
wrapper crash on decimal commas) and one of pycocoevalcap's serve the whole module.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from s2d_align.evaluation import nlg
from s2d_align.evaluation.nlg import NLG_METRICS, NLGScorer, bleu_from_stats, ptb_tokenize
from s2d_align.evaluation.profiles import get_profile

pytestmark = pytest.mark.java

REFS = {
    "s1": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "s2": "Small left pleural effusion with adjacent atelectasis. Mild cardiomegaly.",
    "s3": "1. No acute cardiopulmonary process. 2. Stable 2.5 cm nodule in the right upper lobe.",
    "s4": "Endotracheal tube terminates 4 cm above the carina; NG tube in the stomach.",
    "s5": "Heart size normal, lungs clear (no focal consolidation). Bibasilar  opacities...",
    "s6": "XXXX sternotomy wires. No acute bony abnormality. Patient's spine is intact.",
    "s7": "Mediastinal contours are within normal limits.",
    "s8": "Patchy opacity at the right base may represent pneumonia; cannot exclude effusion.",
}
HYPS = {
    "s1": "Heart size is normal. Lungs are clear. No effusion or pneumothorax.",
    "s2": "There is a small left pleural effusion. The heart is mildly enlarged.",
    "s3": "No acute cardiopulmonary process. Nodule in the right upper lobe, 2.5 cm.",
    "s4": "ET tube 4 cm above the carina. NG tube in the stomach.",
    "s5": "Lungs are clear. Heart size normal.",
    "s6": "Sternotomy wires. No fracture.",
    "s7": "",
    "s8": "Right basilar opacity, possibly pneumonia.",
}

# Golden corpus values, computed once by this module's `ours` fixture (pycocoevalcap 1.2,
# METEOR 1.5, Stanford CoreNLP 3.4.1 PTBTokenizer, Java 17) and pasted here. They only change
# when a scorer, the tokenizer or a profile changes: such a change must be deliberate.
GOLDEN_RAW_V1 = {
    "BLEU_1": 0.4716853631247431,
    "BLEU_2": 0.410984865961661,
    "BLEU_3": 0.3641906198473859,
    "BLEU_4": 0.3149884388208304,
    "METEOR": 0.29424876595483074,
    "ROUGE_L": 0.46455328287857744,
    "CIDEr": 2.877373053666625,
}
GOLDEN_R2GEN_LEGACY_IU = {
    "BLEU_1": 0.5837204845065554,
    "BLEU_2": 0.4789026884458287,
    "BLEU_3": 0.414578947768129,
    "BLEU_4": 0.35405095418588783,
    "METEOR": 0.30555664186767123,
    "ROUGE_L": 0.553341899245223,
    "CIDEr": 3.0152004320217674,
}

LEGACY = get_profile("r2gen-legacy", dataset="iu_xray")


@pytest.fixture(scope="module")
def direct_meteor():
    """pycocoevalcap's own METEOR wrapper (started first: its JVM loads while ours does)."""
    meteor = Meteor()
    yield meteor
    proc = meteor.meteor_p
    proc.stdin.close()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def ours(direct_meteor):
    """Our scorer, raw-v1 and r2gen-legacy, with the JVM's default locale set to German."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
        with NLGScorer() as scorer:
            raw = scorer.score(REFS, [HYPS])[0]
            legacy = scorer.score(
                LEGACY.references(REFS), [LEGACY.predictions(HYPS)], tokenize=False
            )[0]
    return {"raw": raw, "legacy": legacy}


def _direct(gts: dict, res: dict, meteor: Meteor) -> tuple[dict, dict]:
    corpus, per_sample = {}, {}
    bleu, bleu_samples = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        corpus[f"BLEU_{k + 1}"], per_sample[f"BLEU_{k + 1}"] = bleu[k], bleu_samples[k]
    for name, scorer in (("METEOR", meteor), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        corpus[name], per_sample[name] = scorer.compute_score(gts, res)
    return corpus, per_sample


@pytest.fixture(scope="module")
def direct(direct_meteor):
    """Direct pycocoevalcap calls, the way its COCOEvalCap does them (PTB on both sides)."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": v}] for k, v in REFS.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in HYPS.items()})
    raw = _direct(gts, res, direct_meteor)
    legacy_gts = {k: [v] for k, v in LEGACY.references(REFS).items()}
    legacy_res = {k: [v] for k, v in LEGACY.predictions(HYPS).items()}
    legacy = _direct(legacy_gts, legacy_res, direct_meteor)
    return {"raw": raw, "legacy": legacy, "tokens": (gts, res)}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["raw", "legacy"])
def test_scores_equal_direct_pycocoevalcap_calls(ours, direct, profile):
    result = ours[profile]
    corpus, per_sample = direct[profile]
    assert list(result.corpus) == list(NLG_METRICS)
    for name in NLG_METRICS:
        assert result.corpus[name] == pytest.approx(float(corpus[name]), abs=1e-9, rel=0), name
        expected = np.asarray(per_sample[name], dtype=float)
        np.testing.assert_allclose(result.per_sample[name], expected, atol=1e-9, rtol=0)


@pytest.mark.slow
def test_tokenized_text_equals_pycocoevalcap_tokenizer(ours, direct):
    gts, res = direct["tokens"]
    assert ours["raw"].tokenized_references == [gts[k][0] for k in REFS]
    assert ours["raw"].tokenized_hypotheses == [res[k][0] for k in REFS]


@pytest.mark.slow
def test_golden_values_raw_v1(ours):
    for name, value in GOLDEN_RAW_V1.items():
        assert ours["raw"].corpus[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.slow
def test_golden_values_r2gen_legacy(ours):
    for name, value in GOLDEN_R2GEN_LEGACY_IU.items():
        assert ours["legacy"].corpus[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.slow
def test_profiles_give_different_numbers(ours):
    # R2Gen scores full stops as tokens: a user comparing against old tables must see the gap
    assert ours["legacy"].corpus["BLEU_4"] != pytest.approx(ours["raw"].corpus["BLEU_4"], abs=1e-3)


@pytest.mark.slow
def test_bleu_statistics_reproduce_corpus_bleu(ours):
    """The per-sample statistics used for bootstrap and paired tests give the exact corpus BLEU."""
    for result in ours.values():
        recomputed = bleu_from_stats(result.bleu_stats.sum(0, keepdims=True))[0]
        expected = [result.corpus[f"BLEU_{k}"] for k in range(1, 5)]
        np.testing.assert_allclose(recomputed, expected, rtol=1e-12, atol=1e-15)


def test_line_breaks_inside_a_text_do_not_shift_the_others():
    # pycocoevalcap replaces only "\n": a "\r" would split a caption over two output lines
    texts = ["Left effusion.\rRight clear.", "Heart\u2028normal.", "No pneumothorax."]
    assert ptb_tokenize(texts) == ["left effusion right clear", "heart normal", "no pneumothorax"]


def test_tokenizer_writes_its_temp_file_outside_the_package(monkeypatch, tmp_path):
    calls = []
    real_run = subprocess.run

    def spy(cmd, **kwargs):
        calls.append((list(cmd), kwargs.get("cwd")))
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(nlg.subprocess, "run", spy)
    monkeypatch.setattr(nlg.tempfile, "tempdir", str(tmp_path))
    package_dir = nlg.PTB_JAR.parent
    before = set(package_dir.iterdir())
    assert ptb_tokenize(["The heart, is NORMAL."]) == ["the heart is normal"]
    ((cmd, cwd),) = calls
    assert Path(cmd[-1]).is_relative_to(tmp_path)
    assert not Path(cwd).is_relative_to(package_dir)
    assert set(package_dir.iterdir()) == before
    assert "-Duser.language=en" in cmd and "-Duser.country=US" in cmd


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda _name: None)
    with pytest.raises(nlg.JavaError, match="java not found"):
        ptb_tokenize(["no effusion"])
    with pytest.raises(nlg.JavaError, match="java not found"), NLGScorer():
        pass
