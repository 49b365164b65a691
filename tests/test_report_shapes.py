"""Real report shapes the ``rules`` labeler must read: MIMIC-style multi-section reports with the
headers radiologists actually write, wet reads, numbered impressions, one finding per line,
all-caps headers with times and dates, "No X." sentences, hedges, negation across conjunctions,
devices and comparisons.

Every report here is written for this file. Each case states all 14 labels that the CheXpert
labeler's conventions give (an observation left out of ``labels`` is blank):

- a mention under a hedge is uncertain (-1): "may reflect", "cannot be excluded", "concerning
  for", "likely", "suggestive of", "suggestion of", "possible", "question of", "not clearly
  seen", "correlate clinically for", "X versus Y" and "X or Y";
- a negated mention is 0; "no change in X" and "interval increase in X" still assert X;
  "has resolved" and "has been removed" negate;
- Support Devices never rules out No Finding; No Finding is 1 when nothing else is positive or
  uncertain, and blank otherwise (never 0);
- text under a section that states no finding of this study (indication, history, comparison,
  technique, examination, notification, recommendation) is not read; every other section is,
  whatever its header says. A report with nothing left to read is "no text": all 14 blank.

Two CheXpert rules are not followed, and no case below uses them: "vascular congestion" is
uncertain Edema in CheXpert but positive here (SynthCXR's labels, and every result computed on
them, rest on that reading), and "no new X" is uncertain in CheXpert but negative here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.evaluation.analyser import SectionCounts, analyse, count_sections, select_sections
from s2d_align.evaluation.analyser.lexicon import AT, CM, CO, EC, ED, FX, LL, LO, PE, PN, PTX, SD
from s2d_align.evaluation.labelers.rules import RulesLabeler, comparability_note

NF = "No Finding"


@dataclass(frozen=True)
class Shape:
    """One report and the labels CheXpert's conventions give it (unlisted observations blank)."""

    name: str
    text: str
    labels: dict[str, int] = field(default_factory=dict)
    no_text: bool = False  # nothing left to read once non-finding sections are dropped

    def expected(self) -> dict[str, int | None]:
        return {obs: self.labels.get(obs) for obs in OBSERVATIONS}


SHAPES: tuple[Shape, ...] = (
    # --- MIMIC-style multi-section reports ---
    Shape(
        "mimic-final-report-normal",
        """
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough and fever, evaluate for pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The cardiomediastinal silhouette is within normal limits.  The lungs are clear
 without focal consolidation.  No pleural effusion or pneumothorax is present.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
        {EC: 0, CM: 0, CO: 0, PE: 0, PTX: 0, NF: 1},
    ),
    Shape(
        "wet-read-and-portable-header",
        """WET READ: ___ ___ 9:41 PM
  Right lower lobe opacity concerning for pneumonia.  No pneumothorax.
______________________________________________________________________________
                                 FINAL REPORT
 INDICATION:  Fever and hypoxia.

 PORTABLE AP CHEST RADIOGRAPH:  Heart size is normal.  There is a new opacity in the
 right lower lobe, concerning for pneumonia.  No pleural effusion or pneumothorax.
""",
        {CM: 0, LO: 1, PN: -1, PE: 0, PTX: 0},
    ),
    Shape(
        "portable-header-run-on-after-indication",
        "INDICATION: Intubated patient, evaluate tube position. PORTABLE AP CHEST RADIOGRAPH: "
        "Endotracheal tube terminates 4 cm above the carina. Nasogastric tube courses below the "
        "diaphragm. Mild pulmonary edema. Small bilateral pleural effusions.",
        {SD: 1, ED: 1, PE: 1},
    ),
    Shape(
        "pa-and-lateral-header-on-its-own-line",
        """CLINICAL INDICATION: Shortness of breath.
COMPARISON: Chest radiograph ___.
PA AND LATERAL CHEST RADIOGRAPH:
The heart is moderately enlarged. There is mild interstitial edema. Small right pleural
effusion with adjacent atelectasis. No pneumothorax.
""",
        {CM: 1, ED: 1, PE: 1, AT: 1, PTX: 0},
    ),
    Shape(
        "chest-portable-title-line-with-time",
        """INDICATION: ___ year old man after CABG, assess for pneumothorax.
CHEST PORTABLE, ___ AT 06:15
Left chest tube in place. Tiny left apical pneumothorax. Left basilar atelectasis.
""",
        {SD: 1, PTX: 1, AT: 1},
    ),
    Shape(
        "all-caps-headers-with-times-and-dates",
        """EXAM: CHEST, SINGLE AP UPRIGHT PORTABLE VIEW.
CLINICAL HISTORY: Fever, rule out pneumonia.
COMPARISON: ___ at 04:30.
FINDINGS AS OF 14:20 ON ___:
Right IJ line terminates in the mid SVC. Patchy left lower lobe consolidation. No pneumothorax.
IMPRESSION:
Left lower lobe consolidation, may reflect pneumonia.
""",
        {SD: 1, CO: 1, PN: -1, PTX: 0},
    ),
    Shape(
        "findings-after-comparison-without-header",
        """INDICATION: Chest pain.

COMPARISON: ___.

The heart is enlarged. There is a small left pleural effusion.
""",
        {CM: 1, PE: 1},
    ),
    Shape(
        "recommendation-and-notification-dropped",
        """FINDINGS: 6 mm nodule in the right upper lobe. No consolidation.
RECOMMENDATION(S): Repeat radiograph after treatment to exclude an underlying pneumonia.
NOTIFICATION: The findings were discussed with Dr. ___ by telephone at 10:05 on ___.
""",
        {LL: 1, CO: 0},
    ),
    Shape(
        "sentence-case-study-header",
        """Indication: Fever.
Portable chest radiograph: There is a new right lower lobe opacity.
""",
        {LO: 1},
    ),
    Shape(
        "header-then-blank-line-then-text",
        """INDICATION:

___ year old man with fever, evaluate for pneumonia.

The lungs are clear. No pleural effusion.
""",
        {PE: 0, NF: 1},
    ),
    Shape(
        "history-on-one-line-then-findings",
        "Exam: Chest x-ray\nHistory: cough\nThe lungs are clear. No pleural effusion.",
        {PE: 0, NF: 1},
    ),
    Shape(
        "indication-request-on-next-line",
        "INDICATION: 65M with fever.\nEvaluate for pneumonia.\nFINDINGS: No focal consolidation.",
        {CO: 0, NF: 1},
    ),
    Shape(
        "colon-inside-indication-is-not-a-header",
        """INDICATION: ___M WITH SOB. R/O CHF: PLEASE EVALUATE.
PMH: CHF, COPD.
FINDINGS: No pleural effusion.
""",
        {PE: 0, NF: 1},
    ),
    Shape(
        "title-only-and-indication",
        """                                 FINAL REPORT
 INDICATION:  Cough.
 COMPARISON:  None.
""",
        {},
        no_text=True,
    ),
    Shape(
        "only-non-finding-sections",
        "INDICATION: Cough, evaluate for pneumonia. COMPARISON: None. "
        "TECHNIQUE: PA and lateral views of the chest.",
        {},
        no_text=True,
    ),
    Shape(
        "all-caps-report",
        "FINDINGS: THE HEART IS NOT ENLARGED. THERE IS NO PLEURAL EFFUSION OR PNEUMOTHORAX. "
        "IMPRESSION: NO ACUTE DISEASE.",
        {CM: 0, PE: 0, PTX: 0, NF: 1},
    ),
    # --- numbered impressions, one finding per line ---
    Shape(
        "numbered-impression",
        """FINDINGS: Lines and tubes as described below. The heart is mildly enlarged.
IMPRESSION:
1. Endotracheal tube 3 cm above the carina.
2. Left subclavian line with tip in the SVC.
3. Worsening left retrocardiac opacity, likely atelectasis, though pneumonia cannot be excluded.
4. No pneumothorax.
""",
        {SD: 1, CM: 1, LO: 1, AT: -1, PN: -1, PTX: 0},
    ),
    Shape(
        "one-finding-per-line",
        """FINDINGS:
Cardiomegaly
Small left pleural effusion
No pneumothorax
Right PICC tip in the lower SVC
""",
        {CM: 1, PE: 1, PTX: 0, SD: 1},
    ),
    Shape(
        "dashed-list",
        """IMPRESSION:
- No pneumothorax
- Unchanged small right pleural effusion
""",
        {PTX: 0, PE: 1},
    ),
    # --- "No X." sentences, IU X-Ray style ---
    Shape(
        "no-x-sentences",
        "FINDINGS: No focal consolidation. No pleural effusion. No pneumothorax. No pulmonary "
        "edema. Heart size is normal. IMPRESSION: No acute cardiopulmonary process.",
        {CO: 0, PE: 0, PTX: 0, ED: 0, CM: 0, NF: 1},
    ),
    Shape(
        "iu-normal",
        "Heart size normal. Lungs are clear. XXXX are normal. No pneumonia, effusions, edema, "
        "pneumothorax, adenopathy, nodules or masses.",
        {CM: 0, PN: 0, PE: 0, ED: 0, PTX: 0, LL: 0, NF: 1},
    ),
    Shape(
        "r2gen-cleaned",
        "the heart is normal in size . no pleural effusion or pneumothorax .",
        {CM: 0, PE: 0, PTX: 0, NF: 1},
    ),
    # --- hedges ---
    Shape("may-reflect", "Bibasilar opacities may reflect atelectasis.", {LO: 1, AT: -1}),
    Shape("cannot-be-excluded", "Right upper lobe pneumonia cannot be excluded.", {PN: -1}),
    Shape("cannot-exclude", "Cannot exclude a small right pleural effusion.", {PE: -1}),
    Shape("likely", "Patchy opacity at the left base, likely atelectasis.", {LO: 1, AT: -1}),
    Shape("is-likely", "Left basilar opacity is likely atelectasis.", {LO: 1, AT: -1}),
    Shape("suggestive-of", "Hazy opacities suggestive of mild pulmonary edema.", {LO: 1, ED: -1}),
    Shape(
        "concerning-for",
        "Ill-defined right lower lobe opacity concerning for pneumonia.",
        {LO: 1, PN: -1},
    ),
    Shape("probable", "Probable right lower lobe pneumonia.", {PN: -1}),
    Shape("question-of", "Question of a small left apical pneumothorax.", {PTX: -1}),
    Shape("x-or-y", "Left basilar atelectasis or consolidation.", {AT: -1, CO: -1}),
    Shape(
        "could-represent",
        "Retrocardiac opacity could represent atelectasis or pneumonia in the appropriate "
        "clinical setting.",
        {LO: 1, AT: -1, PN: -1},
    ),
    Shape(
        "versus",
        "Right basilar opacity, atelectasis versus early pneumonia.",
        {LO: 1, AT: -1, PN: -1},
    ),
    Shape("not-excluded", "Superimposed pneumonia is not excluded.", {PN: -1}),
    Shape(
        "cannot-be-entirely-excluded",
        "A small left pleural effusion cannot be entirely excluded.",
        {PE: -1},
    ),
    Shape(
        "differential",
        "Differential considerations include edema and atelectasis.",
        {ED: -1, AT: -1},
    ),
    Shape("possibly", "Left basilar opacity, possibly atelectasis.", {LO: 1, AT: -1}),
    Shape(
        "likely-reflect",
        "Increased bibasilar opacities likely reflect atelectasis.",
        {LO: 1, AT: -1},
    ),
    Shape(
        "concern-for",
        "Increasing right upper lobe opacity raises concern for pneumonia.",
        {LO: 1, PN: -1},
    ),
    Shape("possible-trace", "Possible trace left pleural effusion.", {PE: -1}),
    Shape("suggestion-of", "Suggestion of a small left pleural effusion.", {PE: -1}),
    Shape(
        "not-clearly-seen",
        "Possible tiny left apical pneumothorax, not clearly seen on the lateral view.",
        {PTX: -1},
    ),
    Shape("likely-present", "A small left pleural effusion is likely present.", {PE: -1}),
    Shape(
        "correlate-clinically",
        "Right lower lobe opacity; correlate clinically for pneumonia.",
        {LO: 1, PN: -1},
    ),
    Shape(
        "compatible-with",
        "Left lower lobe consolidation, compatible with pneumonia.",
        {CO: 1, PN: 1},
    ),
    # --- negation across conjunctions ---
    Shape(
        "negated-list",
        "No pleural effusion, pneumothorax, or focal consolidation.",
        {PE: 0, PTX: 0, CO: 0, NF: 1},
    ),
    Shape(
        "negation-stops-at-but",
        "There is no pneumothorax, but a small left pleural effusion is present.",
        {PTX: 0, PE: 1},
    ),
    Shape(
        "negation-stops-at-new-clause",
        "No evidence of pneumothorax or pleural effusion, and the heart is enlarged.",
        {PTX: 0, PE: 0, CM: 1},
    ),
    Shape(
        "neither-nor",
        "Neither pleural effusion nor pneumothorax is seen.",
        {PE: 0, PTX: 0, NF: 1},
    ),
    Shape("without-or", "Without focal consolidation or edema.", {CO: 0, ED: 0, NF: 1}),
    Shape("no-definite", "No definite pneumothorax.", {PTX: 0, NF: 1}),
    Shape(
        "hard-wrapped-negation",
        """FINDINGS:
 There is no focal consolidation, pleural
 effusion or pneumothorax.  Heart size is
 normal.
""",
        {CO: 0, PE: 0, PTX: 0, CM: 0, NF: 1},
    ),
    # --- devices ---
    Shape(
        "tubes-and-lines",
        "NG tube tip in the stomach. ET tube 4 cm above the carina. Right IJ line tip at the "
        "cavoatrial junction. Lungs are clear.",
        {SD: 1, NF: 1},
    ),
    Shape(
        "pacemaker-leads",
        "Left-sided pacemaker leads terminate in the right atrium and right ventricle. "
        "No pleural effusion.",
        {SD: 1, PE: 0, NF: 1},
    ),
    Shape("picc", "Left PICC with tip in the distal SVC.", {SD: 1, NF: 1}),
    Shape(
        "organ-system-headers",
        """LUNGS: Clear.
PLEURA: No effusion or pneumothorax.
HEART: Mildly enlarged.
LINES/TUBES: None.
""",
        {PE: 0, PTX: 0, CM: 1, SD: 0},
    ),
    Shape(
        "device-removed",
        "The endotracheal tube has been removed. No pneumothorax.",
        {SD: 0, PTX: 0, NF: 1},
    ),
    # --- comparisons ---
    Shape("unchanged", "Unchanged small left pleural effusion.", {PE: 1}),
    Shape("resolved", "Previously seen right pneumothorax has resolved.", {PTX: 0, NF: 1}),
    Shape("interval-increase", "Interval increase in right pleural effusion.", {PE: 1}),
    Shape("no-change-in", "No significant change in moderate cardiomegaly.", {CM: 1}),
    Shape("improved", "Interval improvement in pulmonary edema.", {ED: 1}),
    Shape(
        "interval-resolution", "Interval resolution of the left pleural effusion.", {PE: 0, NF: 1}
    ),
    Shape("not-recurred", "The right pneumothorax has not recurred.", {PTX: 0, NF: 1}),
    Shape("no-longer-seen", "Right pneumothorax is no longer seen.", {PTX: 0, NF: 1}),
    Shape("decreased", "Decreased right pleural effusion.", {PE: 1}),
    Shape(
        "stable-with-persistent",
        "Stable appearance of the chest with persistent bibasilar atelectasis.",
        {AT: 1},
    ),
    Shape(
        "rib-fracture-unchanged",
        "Healing right posterior rib fractures are unchanged. No pneumothorax.",
        {FX: 1, PTX: 0},
    ),
)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_shape_labels(shape: Shape) -> None:
    got = analyse(shape.text).labels
    wrong = {obs: (got[obs], want) for obs, want in shape.expected().items() if got[obs] != want}
    assert not wrong, f"{shape.name}: (got, expected) per observation: {wrong}"


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_no_text_is_never_a_silent_no_finding(shape: Shape) -> None:
    a = analyse(shape.text)
    assert a.no_text is shape.no_text
    if shape.no_text:
        assert all(v is None for v in a.labels.values())
        assert a.dropped_sections  # it says what was dropped


def test_labeler_agrees_with_the_analyser_on_every_shape() -> None:
    labels = RulesLabeler().label([s.text for s in SHAPES])
    assert labels == [analyse(s.text).labels for s in SHAPES]


def test_sections_are_kept_by_exclusion() -> None:
    """Only indication-like sections are dropped; unknown headers are read, titles are not."""
    sel = select_sections(SHAPES[1].text)  # wet read + final report
    assert sel.kept == ("wet read", "portable ap chest radiograph")
    assert sel.dropped == ("indication",)
    assert "fever" not in sel.text.lower() and "FINAL REPORT" not in sel.text
    organ = select_sections("INDICATION: Dyspnea.\nLINES/TUBES: None.\nHEART: Mildly enlarged.")
    assert organ.text == "LINES/TUBES: None.\n\nHEART: Mildly enlarged."


def test_rules_labeler_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    labeler = RulesLabeler()
    texts = ["No pneumothorax.", "INDICATION: Cough.\nFINDINGS: Clear lungs.", "HISTORY: Fever."]
    with caplog.at_level(logging.WARNING, logger="s2d_align.evaluation.labelers.rules"):
        labels = labeler.label(texts)
    assert labeler.last_sections == SectionCounts(reports=3, dropped=2, no_text=1)
    assert "1 of 3 reports" in caplog.text and "(reports 2)" in caplog.text
    assert labels[2] == dict.fromkeys(OBSERVATIONS)
    assert labels[0][NF] == 1  # a report without headers is read as before


def test_rules_on_real_data_says_ce_is_not_comparable_with_chexbert_papers() -> None:
    note = comparability_note(RulesLabeler.signature, "mimic_cxr")
    assert note is not None and "CheXbert" in note and RulesLabeler.signature in note
    assert comparability_note(RulesLabeler.signature, "synthcxr") is None
    assert comparability_note("chexbert-sha256:ab+vocab:cd", "iu_xray") is None


def test_count_sections_over_the_corpus() -> None:
    counts = count_sections(analyse(s.text) for s in SHAPES)
    assert counts.reports == len(SHAPES)
    assert counts.no_text == sum(s.no_text for s in SHAPES) == 2
    assert "2 had no findings text left" in counts.describe()
