"""Clinical text analyser on hand-written MIMIC-CXR / IU X-Ray style sentences and reports."""

from __future__ import annotations

import time

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.analyser import analyse, findings_text, split_sentences

_ABBR = {
    "EC": "Enlarged Cardiomediastinum",
    "CM": "Cardiomegaly",
    "LO": "Lung Opacity",
    "LL": "Lung Lesion",
    "ED": "Edema",
    "CO": "Consolidation",
    "PN": "Pneumonia",
    "AT": "Atelectasis",
    "PTX": "Pneumothorax",
    "PE": "Pleural Effusion",
    "PO": "Pleural Other",
    "FX": "Fracture",
    "SD": "Support Devices",
    "NF": "No Finding",
}
B = None  # blank: not mentioned

# (report text, {observation: expected label}); only the listed observations are checked.
CASES: list[tuple[str, dict[str, int | None]]] = [
    # --- plain negation and lists ---
    ("No pneumothorax.", {"PTX": 0, "PE": B, "NF": 1}),
    ("There is no pleural effusion or pneumothorax.", {"PE": 0, "PTX": 0}),
    (
        "No focal consolidation, pleural effusion, or pneumothorax.",
        {"CO": 0, "PE": 0, "PTX": 0, "NF": 1},
    ),
    (
        "No pleural effusion, pneumothorax, or focal airspace consolidation is seen.",
        {"PE": 0, "PTX": 0, "CO": 0},
    ),
    (
        "The lungs are clear without focal consolidation, effusion, or edema.",
        {"LO": B, "CO": 0, "PE": 0, "ED": 0},
    ),
    ("There is no evidence of pneumothorax.", {"PTX": 0}),
    ("Lungs are free of focal consolidation.", {"CO": 0}),
    ("The lungs are clear of consolidation or effusion.", {"CO": 0, "PE": 0, "LO": B}),
    ("Negative for pneumonia.", {"PN": 0}),
    ("No acute fracture is identified.", {"FX": 0}),
    ("No displaced rib fractures.", {"FX": 0}),
    ("No pulmonary edema.", {"ED": 0}),
    ("No suspicious pulmonary nodules or masses.", {"LL": 0}),
    ("Neither pneumothorax nor pleural effusion is present.", {"PTX": 0, "PE": 0}),
    # --- post negation ---
    ("Pneumothorax is not seen.", {"PTX": 0}),
    ("Pleural effusions are absent.", {"PE": 0}),
    ("The previously seen left pleural effusion has resolved.", {"PE": 0}),
    ("Focal consolidation is not identified.", {"CO": 0}),
    ("The right pneumothorax is no longer visualized.", {"PTX": 0}),
    ("The endotracheal tube has been removed.", {"SD": 0}),
    ("Interval removal of the right chest tube.", {"SD": 0}),
    # --- scope termination ---
    ("No pneumothorax, but there is a small right pleural effusion.", {"PTX": 0, "PE": 1}),
    ("No focal consolidation; however, mild pulmonary edema is present.", {"CO": 0, "ED": 1}),
    ("No pleural effusion is seen, and the heart is enlarged.", {"PE": 0, "CM": 1}),
    ("No effusion and the heart size is mildly enlarged.", {"PE": 0, "CM": 1}),
    ("No pneumothorax although a small left apical pneumothorax cannot be excluded.", {"PTX": -1}),
    ("Small left effusion is seen and pneumothorax is not seen.", {"PE": 1, "PTX": 0}),
    ("No pneumothorax after placement of the right chest tube.", {"PTX": 0, "SD": 1}),
    ("Mild cardiomegaly without pulmonary edema.", {"CM": 1, "ED": 0}),
    ("There is a left lower lobe opacity which is not seen on the prior study.", {"LO": 1}),
    # --- uncertainty ---
    ("Possible right lower lobe pneumonia.", {"PN": -1}),
    ("Left basilar opacity may represent atelectasis.", {"LO": 1, "AT": -1}),
    ("Opacity at the right base could reflect aspiration or pneumonia.", {"LO": 1, "PN": -1}),
    ("Pneumonia cannot be excluded.", {"PN": -1}),
    ("Early pneumonia cannot be entirely ruled out.", {"PN": -1}),
    ("Cannot exclude a small left pleural effusion.", {"PE": -1}),
    ("Findings are suggestive of mild interstitial edema.", {"ED": -1}),
    ("Right upper lobe opacity concerning for pneumonia.", {"LO": 1, "PN": -1}),
    ("Bibasilar opacities, likely atelectasis.", {"LO": 1, "AT": -1}),
    ("Retrocardiac opacity, atelectasis versus pneumonia.", {"LO": 1, "AT": -1, "PN": -1}),
    ("Questionable small right pneumothorax.", {"PTX": -1}),
    ("Right basilar atelectasis or consolidation.", {"AT": -1, "CO": -1}),
    ("A small effusion is possible.", {"PE": -1}),
    ("The heart size is borderline enlarged.", {"CM": -1}),
    ("No opacity to suggest pneumonia.", {"LO": 0, "PN": 0}),
    ("No findings to suggest pneumonia.", {"PN": 0}),
    # --- pseudo-negation: change statements are not negations of the finding ---
    ("No change in the moderate left pleural effusion.", {"PE": 1}),
    ("Moderate cardiomegaly is not significantly changed.", {"CM": 1}),
    ("Small bilateral pleural effusions, unchanged.", {"PE": 1}),
    ("Left lower lobe consolidation without interval change.", {"CO": 1}),
    ("No significant interval change in the right upper lobe mass.", {"LL": 1}),
    ("No interval increase in the small right pneumothorax.", {"PTX": 1}),
    # --- normal statements ---
    ("Heart size is normal.", {"CM": 0, "NF": 1}),
    ("The heart is not enlarged.", {"CM": 0}),
    ("Normal cardiomediastinal silhouette.", {"EC": 0, "CM": 0}),
    ("The cardiomediastinal silhouette is within normal limits.", {"EC": 0, "CM": 0}),
    ("The heart size and mediastinal contours are normal.", {"CM": 0, "EC": 0}),
    ("Heart, mediastinum and hila are unremarkable.", {"CM": 0, "EC": 0}),
    # CheXpert reads no label from these normal statements (they name no observation)
    ("The lungs are clear.", {"LO": B, "NF": 1}),
    ("The osseous structures are intact.", {"FX": B}),
    ("No acute osseous abnormality.", {"FX": B, "NF": 1}),
    ("Costophrenic angles are sharp.", {"PE": B}),
    ("The mediastinal and hilar contours are normal.", {"EC": 0}),
    ("Heart size is top normal.", {"CM": 0}),
    ("Heart size is stable.", {"CM": B}),
    # --- positive findings with anatomy ---
    ("The heart is mildly enlarged.", {"CM": 1, "NF": B}),
    ("Enlargement of the cardiac silhouette.", {"CM": 1}),
    ("The mediastinum is widened.", {"EC": 1, "CM": B}),
    ("Blunting of the left costophrenic angle.", {"PE": B, "NF": B}),  # CheXpert: a finding, not PE
    ("Moderate pulmonary vascular congestion.", {"ED": 1}),
    ("Calcified granuloma in the right upper lobe.", {"LL": B, "NF": B}),
    ("A 1.5 cm nodule projects over the left mid lung.", {"LL": 1}),
    ("Right-sided PICC line terminates in the mid SVC.", {"SD": 1, "NF": 1}),
    ("Endotracheal tube tip is 4 cm above the carina.", {"SD": 1}),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.", {"SD": 1}),
    ("Healed left rib fractures.", {"FX": 1}),
    ("Mild pleural thickening at the right apex.", {"PO": 1}),
    ("Small left pericardial effusion.", {"PE": B}),
    ("Mild degenerative changes of the thoracic spine.", {"NF": B, "FX": B}),
    ("Hyperinflated lungs consistent with emphysema.", {"NF": B, "LO": B}),
    ("Pulmonary edema in the setting of CHF.", {"ED": 1, "CM": -1}),
    ("Left lower lobe collapse.", {"AT": 1}),
    ("Hydropneumothorax at the right base.", {"PTX": 1, "PE": 1}),
    ("No large pleural effusion or pneumothorax.", {"PE": 0, "PTX": 0}),
    ("Interval resolution of the right pleural effusion.", {"PE": 0}),
    ("Prior granulomatous disease.", {"LL": B, "NF": B}),
    ("Hyperexpanded lungs with flattening of the diaphragms, consistent with COPD.", {"NF": B}),
    ("Nasogastric tube has been removed. Endotracheal tube remains in place.", {"SD": 1, "NF": 1}),
    # --- multi-finding sentences ---
    (
        "Small left pleural effusion with adjacent atelectasis; no pneumothorax.",
        {"PE": 1, "AT": 1, "PTX": 0},
    ),
    (
        "Mild cardiomegaly, small bilateral effusions and mild interstitial edema.",
        {"CM": 1, "PE": 1, "ED": 1},
    ),
    (
        "Moderate right effusion and right lower lobe opacity, no pneumothorax.",
        {"PE": 1, "LO": 1, "PTX": 0},
    ),
    # --- de-identification tokens ---
    ("Heart size XXXX. No pneumothorax. XXXX XXXX are intact.", {"PTX": 0}),
    ("Findings were discussed with Dr. ___ at 10:30 a.m. on ___. Small right effusion.", {"PE": 1}),
]


def _expand(expected: dict[str, int | None]) -> dict[str, int | None]:
    return {_ABBR[k]: v for k, v in expected.items()}


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_sentence_labels(text: str, expected: dict[str, int | None]) -> None:
    labels = analyse(text).labels
    got = {obs: labels[obs] for obs in _expand(expected)}
    assert got == _expand(expected), f"{text!r}: {got}"


def test_enough_hand_written_cases() -> None:
    assert len(CASES) >= 60


def test_labels_cover_all_14_observations_in_order() -> None:
    labels = analyse("Small left pleural effusion.").labels
    assert tuple(labels) == OBSERVATIONS
    assert all(v in (1, 0, -1, None) for v in labels.values())


# --- aggregation across mentions (CheXpert) ---
@pytest.mark.parametrize(
    ("text", "obs", "label"),
    [
        ("No pleural effusion. Small right effusion.", "PE", 1),  # positive beats negative
        ("Possible small effusion. No effusion on the left.", "PE", -1),  # uncertain beats negative
        ("Possible pneumonia. Right lower lobe pneumonia.", "PN", 1),  # positive beats uncertain
        ("No pneumothorax. No pneumothorax.", "PTX", 0),
    ],
)
def test_aggregation_across_mentions(text: str, obs: str, label: int) -> None:
    assert analyse(text).labels[_ABBR[obs]] == label


def test_no_finding_logic() -> None:
    # normal study: 1; any positive or uncertain pathology: blank (never 0)
    assert analyse("The lungs are clear. No effusion.").labels["No Finding"] == 1
    assert analyse("Possible small effusion.").labels["No Finding"] is None
    assert analyse("Large right pneumothorax.").labels["No Finding"] is None
    # support devices do not count as a finding
    assert (
        analyse("Right IJ central venous catheter tip in the SVC. Lungs clear.").labels[
            "No Finding"
        ]
        == 1
    )
    # other abnormalities outside the 14 rule it out, as in CheXpert
    assert analyse("Hyperinflation. No focal consolidation.").labels["No Finding"] is None


# --- whole reports ---
MIMIC_REPORT = """
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough and fever, evaluate for pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 Heart size is mildly enlarged.  The mediastinal and hilar contours are
 unremarkable.  There is a new opacity in the right lower lobe concerning for
 pneumonia.  Small right pleural effusion.  No pneumothorax.  No acute osseous
 abnormality.

 IMPRESSION:

 1.  Right lower lobe opacity, concerning for pneumonia.
 2.  Small right pleural effusion.
"""

IU_REPORT = (
    "The cardiomediastinal silhouette is within normal limits for size and contour. The lungs are "
    "normally inflated without evidence of focal airspace disease, pleural effusion, or pneumothorax. "
    "Stable calcified granuloma within the right upper lung. XXXX are intact."
)


def test_mimic_report_sections_and_labels() -> None:
    a = analyse(MIMIC_REPORT)
    lab = a.labels
    assert lab["Cardiomegaly"] == 1
    assert lab["Enlarged Cardiomediastinum"] == 0
    assert lab["Lung Opacity"] == 1
    assert lab["Pneumonia"] == -1  # the indication's "evaluate for pneumonia" is not read
    assert lab["Pleural Effusion"] == 1
    assert lab["Pneumothorax"] == 0
    assert lab["Fracture"] is None  # "no acute osseous abnormality" names no fracture
    assert lab["No Finding"] is None
    assert "indication" not in a.text and "cough" not in a.text
    texts = a.keyphrase_texts
    assert "small right pleural effusion" in texts
    assert "right lower lobe opacity" in texts
    assert "no pneumothorax" in texts


def test_iu_report() -> None:
    a = analyse(IU_REPORT)
    lab = a.labels
    assert lab["Enlarged Cardiomediastinum"] == 0 and lab["Cardiomegaly"] == 0
    assert lab["Lung Opacity"] == 0  # "without evidence of focal airspace disease"
    assert lab["Pleural Effusion"] == 0 and lab["Pneumothorax"] == 0
    assert lab["Lung Lesion"] is None  # calcified granuloma is not a lesion label (CheXpert)
    assert lab["No Finding"] is None  # ... but it is a finding
    assert "xxxx" in a.text


# --- key phrases ---
@pytest.mark.parametrize(
    ("text", "phrase", "observation", "anatomy", "status"),
    [
        (
            "Small left pleural effusion.",
            "small left pleural effusion",
            "Pleural Effusion",
            "left",
            "positive",
        ),
        ("No pneumothorax.", "no pneumothorax", "Pneumothorax", None, "negative"),
        (
            "Possible right lower lobe pneumonia.",
            "possible right lower lobe pneumonia",
            "Pneumonia",
            "right lower lobe",
            "uncertain",
        ),
        (
            "There is an opacity in the left lower lobe.",
            "left lower lobe opacity",
            "Lung Opacity",
            "left lower lobe",
            "positive",
        ),
        (
            "Mild bibasilar atelectasis.",
            "mild bibasilar atelectasis",
            "Atelectasis",
            "bibasilar",
            "positive",
        ),
        ("Moderate cardiomegaly.", "moderate cardiomegaly", "Cardiomegaly", None, "positive"),
        ("The heart is mildly enlarged.", "mild cardiomegaly", "Cardiomegaly", None, "positive"),
        ("Heart size is normal.", "normal heart size", "Cardiomegaly", None, "negative"),
        (
            "RLL consolidation.",
            "right lower lobe consolidation",
            "Consolidation",
            "right lower lobe",
            "positive",
        ),
        (
            "Large effusion on the right.",
            "large right pleural effusion",
            "Pleural Effusion",
            "right",
            "positive",
        ),
        (
            "Small bilateral pleural effusions.",
            "small bilateral pleural effusion",
            "Pleural Effusion",
            "bilateral",
            "positive",
        ),
        ("Lungs are well expanded and clear.", "clear lungs", "Lung Opacity", None, "negative"),
        (
            "Small pleural effusions bilaterally.",
            "small bilateral pleural effusion",
            "Pleural Effusion",
            "bilateral",
            "positive",
        ),
        (
            "Moderate to large right pleural effusion.",
            "moderate-to-large right pleural effusion",
            "Pleural Effusion",
            "right",
            "positive",
        ),
        (
            "Normal cardiomediastinal silhouette.",
            "normal cardiomediastinal silhouette",
            "Enlarged Cardiomediastinum",
            None,
            "negative",
        ),
        (
            "Right IJ catheter tip in the SVC.",
            "right central venous catheter",
            "Support Devices",
            "right",
            "positive",
        ),
        (
            "Blunting of the left costophrenic angle.",
            "blunting of the left costophrenic angle",
            "Pleural Effusion",
            "left",
            "positive",
        ),
    ],
)
def test_keyphrases(
    text: str, phrase: str, observation: str, anatomy: str | None, status: str
) -> None:
    kps = {k.text: k for k in analyse(text).keyphrases}
    assert phrase in kps, f"{text!r} -> {list(kps)}"
    kp = kps[phrase]
    assert (kp.observation, kp.anatomy, kp.status) == (observation, anatomy, status)


def test_keyphrases_are_deduplicated_and_ordered() -> None:
    a = analyse("No pneumothorax. Small left effusion. No pneumothorax is seen.")
    assert a.keyphrase_texts == ["no pneumothorax", "small left pleural effusion"]


# --- sentence handling ---
def test_sentence_splitting_survives_numbers_and_abbreviations() -> None:
    text = "A 1.5 cm nodule is seen, approx. 2 cm from the pleura. Atelectasis vs. pneumonia. Dr. ___ was paged."
    assert split_sentences(text) == [
        "A 1.5 cm nodule is seen, approx. 2 cm from the pleura",
        "Atelectasis vs. pneumonia",
        "Dr. ___ was paged",
    ]


def test_numbered_list_and_r2gen_cleaned_text() -> None:
    assert split_sentences("1. Small effusion. 2. No pneumothorax.") == [
        "Small effusion",
        "No pneumothorax",
    ]
    cleaned = "the heart is normal in size . no pleural effusion . small right pneumothorax ."
    assert split_sentences(cleaned) == [
        "the heart is normal in size",
        "no pleural effusion",
        "small right pneumothorax",
    ]
    labels = analyse(cleaned).labels
    assert (labels["Cardiomegaly"], labels["Pleural Effusion"], labels["Pneumothorax"]) == (0, 0, 1)


def test_findings_text_drops_indication_and_keeps_impression() -> None:
    text = findings_text(
        "INDICATION: r/o pneumonia. FINDINGS: Clear lungs. IMPRESSION: Normal chest."
    )
    assert "pneumonia" not in text
    assert "Clear lungs" in text and "Normal chest" in text


def test_empty_and_bad_input() -> None:
    a = analyse("")
    assert a.keyphrases == [] and all(v is None for k, v in a.labels.items() if k != "No Finding")
    with pytest.raises(TypeError):
        analyse(None)  # type: ignore[arg-type]


def test_returned_containers_are_independent() -> None:
    a = analyse("Small left pleural effusion.")
    a.labels["Pleural Effusion"] = 0
    a.keyphrases.clear()
    b = analyse("Small left pleural effusion.")
    assert b.labels["Pleural Effusion"] == 1 and b.keyphrases


@pytest.mark.slow
def test_speed_1000_reports() -> None:
    """1,000 reports of 6 distinct sentences each (no cache hits) in a few seconds at most."""
    import random

    from s2d_align.evaluation.analyser.analyse import _analyse_cached, _sentence_mentions

    rng = random.Random(0)
    pool = [text.rstrip(".") for text, _ in CASES]
    reports = [
        " ".join(f"{rng.choice(pool)} in study {i} part {j}." for j in range(6))
        for i in range(1000)
    ]
    _analyse_cached.cache_clear()
    _sentence_mentions.cache_clear()
    start = time.perf_counter()
    for r in reports:
        analyse(r)
    elapsed = time.perf_counter() - start
    # ~1 s on an idle 2-core machine; the bound only catches pathological slow-downs
    assert elapsed < 10.0, f"1000 reports took {elapsed:.2f}s"


def test_scanner_matches_plain_regex_alternation() -> None:
    """The first-character dispatch is only a speed-up: same matches as one big alternation."""
    import re

    from s2d_align.evaluation.analyser.lexicon import TERMS
    from s2d_align.evaluation.analyser.mentions import find_terms

    alternation = re.compile(
        "|".join(f"(?P<t{i}>(?<!\\w)(?:{t.pattern})(?!\\w))" for i, t in enumerate(TERMS))
    )
    sentences = [s.lower() for text, _ in CASES for s in split_sentences(text)]
    sentences += [s.lower() for s in split_sentences(MIMIC_REPORT + " " + IU_REPORT)]
    for sentence in sentences:
        expected = [
            (int(m.lastgroup[1:]), m.start(), m.end()) for m in alternation.finditer(sentence)
        ]
        got = [(TERMS.index(t), s, e) for t, s, e in find_terms(sentence)]
        assert got == expected, sentence
