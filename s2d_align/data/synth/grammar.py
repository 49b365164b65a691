"""Reports: a findings section written from a study's findings, and the labels it implies.

The text imitates the habits of MIMIC-CXR and IU X-Ray findings sections: mostly templated
sentences about normal structures ("The lungs are clear.", "No pleural effusion or
pneumothorax."), each radiologist's favourite phrasings, variable section order, hedges for
uncertain findings, anatomical detail for positive ones and occasional comparison wording.

Labels follow CheXpert conventions and are computed from the mentions actually written, never
from the findings directly:

* an observation mentioned positively anywhere is 1; otherwise hedged anywhere is -1; otherwise
  explicitly negated ("no pneumothorax", "heart size is normal") is 0; otherwise blank (None);
* sentences that name no observation ("The lungs are clear.", "No acute osseous abnormality.")
  leave labels blank, as the CheXpert labeler does;
* "No Finding" is 1 when none of the other 13 observations except Support Devices is 1 or -1,
  and blank otherwise (it is never 0);
* there is no label hierarchy: a consolidation does not imply Lung Opacity unless the word
  "opacity" is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.data.synth.findings import Finding
from s2d_align.data.synth.mentions import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    Mention,
    Option,
    Writer,
    article,
    cap,
)
from s2d_align.data.synth.phrases import finding_options

#: Number of radiologist styles (phrasing preferences) that reports are drawn from.
N_STYLES = 7
_PARENCHYMA = ("Consolidation", "Lung Opacity", "Edema", "Atelectasis", "Lung Lesion", "Pneumonia")
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
_VALUE = {POSITIVE: 1, UNCERTAIN: -1, NEGATIVE: 0}


@dataclass(frozen=True)
class Report:
    text: str
    labels: dict[str, int | None]
    mentions: tuple[Mention, ...]

    @property
    def keyphrases(self) -> list[str]:
        """Key phrases in report order, each once."""
        return list(dict.fromkeys(m.text for m in self.mentions))


def labels_from_mentions(mentions: list[Mention]) -> dict[str, int | None]:
    """CheXpert aggregation: positive beats uncertain beats negative; No Finding derived."""
    best: dict[str, str] = {}
    for m in mentions:
        if m.observation not in best or _RANK[m.status] > _RANK[best[m.observation]]:
            best[m.observation] = m.status
    labels: dict[str, int | None] = {obs: None for obs in OBSERVATIONS}
    for obs, status in best.items():
        labels[obs] = _VALUE[status]
    abnormal = any(
        labels[obs] in (1, -1)
        for obs in OBSERVATIONS
        if obs not in ("No Finding", "Support Devices")
    )
    labels["No Finding"] = None if abnormal else 1
    return labels


def _neg(obs: str, text: str, anatomy: str | None = None) -> Mention:
    return Mention(obs, NEGATIVE, text, anatomy)


def _join(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    if len(terms) == 2:
        return f"{terms[0]} or {terms[1]}"
    return ", ".join(terms[:-1]) + f", or {terms[-1]}"


#: How absent observations are named in negative sentences, and the key phrase they give.
_NEG_TERMS = {
    "Consolidation": (
        ["focal consolidation", "consolidation", "focal airspace consolidation"],
        "no consolidation",
    ),
    "Pleural Effusion": (["pleural effusion", "effusion"], "no pleural effusion"),
    "Pneumothorax": (["pneumothorax"], "no pneumothorax"),
    "Edema": (["pulmonary edema", "edema", "pulmonary vascular congestion"], "no pulmonary edema"),
    "Lung Lesion": (["suspicious pulmonary nodules", "suspicious nodules"], "no pulmonary nodule"),
    "Lung Opacity": (["focal opacity"], "no lung opacity"),
    "Atelectasis": (["atelectasis"], "no atelectasis"),
}
#: Chance that a report states an absent observation explicitly.
_NEG_P = {
    "Pleural Effusion": 0.85,
    "Pneumothorax": 0.85,
    "Consolidation": 0.6,
    "Edema": 0.3,
    "Lung Lesion": 0.06,
    "Lung Opacity": 0.04,
    "Atelectasis": 0.03,
}
_NEG_ORDER = (
    "Consolidation",
    "Lung Opacity",
    "Atelectasis",
    "Pleural Effusion",
    "Pneumothorax",
    "Edema",
    "Lung Lesion",
)


def _negative_sentences(
    w: Writer, absent: set[str], lungs_clear: bool
) -> tuple[list[Option], bool]:
    """Sentences negating absent lung and pleural observations; also says if 'clear' was used."""
    chosen = [obs for obs in _NEG_ORDER if obs in absent and w.chance(_NEG_P[obs])]
    pneumonia = "Pneumonia" in absent and "Consolidation" in chosen and w.chance(0.12)
    out: list[Option] = []
    if pneumonia:
        chosen.remove("Consolidation")
        m = [_neg("Consolidation", "no consolidation"), _neg("Pneumonia", "no pneumonia")]
        out.append(("No focal consolidation to suggest pneumonia.", m))
    if not chosen:
        return out, False
    mentions = [_neg(obs, _NEG_TERMS[obs][1]) for obs in chosen]
    terms = [w.pick(_NEG_TERMS[obs][0]) for obs in chosen]
    if lungs_clear and chosen[0] == "Consolidation" and w.chance(0.35):
        clear = w.pick(["The lungs are clear", "Lungs are clear"])
        out.insert(0, (f"{clear} without {_join(terms)}.", mentions))
        return out, True
    if len(chosen) >= 3 and w.chance(
        0.4
    ):  # split: "No focal consolidation. No effusion or pneumothorax."
        cut = 1 if w.chance(0.5) else len(chosen) - 1
        groups = [(terms[:cut], mentions[:cut]), (terms[cut:], mentions[cut:])]
    else:
        groups = [(terms, mentions)]
    for group_terms, group_mentions in groups:
        lead = w.pick(["No", "There is no", "No evidence of", "No"])
        if lead == "There is no" and group_terms[0].endswith("s"):
            lead = "There are no"
        out.append((f"{lead} {_join(group_terms)}.", group_mentions))
    return out, False


def _heart_sentences(w: Writer, card_absent: bool, ecm_absent: bool) -> list[Option]:
    c0 = _neg("Cardiomegaly", "no cardiomegaly", "heart")
    e0 = _neg("Enlarged Cardiomediastinum", "no mediastinal widening", "mediastinum")
    heart = [
        ("Heart size is normal.", [c0]),
        ("The heart is normal in size.", [c0]),
        ("Heart size is within normal limits.", [c0]),
        ("Normal heart size.", [c0]),
    ]
    media = [
        ("The mediastinal contours are normal.", [e0]),
        ("Mediastinal contours are within normal limits.", [e0]),
        ("The mediastinum is unremarkable.", [e0]),
    ]
    if card_absent and ecm_absent:
        choice = w.pick(
            ["pair", "combined", "silhouette", "separate", "heart-only", "silhouette", "combined"]
        )
        if choice == "combined":
            return [
                w.pick(
                    [
                        ("Heart size and mediastinal contours are normal.", [c0, e0]),
                        (
                            "The cardiac and mediastinal contours are within normal limits.",
                            [c0, e0],
                        ),
                        ("Normal heart size and mediastinal contours.", [c0, e0]),
                    ]
                )
            ]
        if choice == "silhouette":
            return [
                w.pick(
                    [
                        ("The cardiomediastinal silhouette is normal.", [e0]),
                        ("The cardiomediastinal silhouette is within normal limits.", [e0]),
                        ("Normal cardiomediastinal silhouette.", [e0]),
                    ]
                )
            ]
        if choice == "heart-only":
            return [w.pick(heart)]
        return [w.pick(heart), w.pick(media)]
    if card_absent and w.chance(0.9):
        return [w.pick(heart)]
    if ecm_absent and w.chance(0.7):
        return [w.pick(media)]
    return []


def _with_change(w: Writer, f: Finding, noun_phrase: str, options: list[Option]) -> Option:
    """Follow-up wording ("Stable mild cardiomegaly.", "New ...") for a positive finding."""
    text, mentions = w.pick(options)
    if f.status != POSITIVE or not f.change or len(mentions) != 1 or not w.chance(0.5):
        return text, mentions  # hedged or multi-mention sentences keep their own wording
    if f.type == "support_device":
        if f.change == "unchanged":
            lead = w.pick(["Unchanged position of the", "Stable position of the"])
            return f"{lead} {noun_phrase}.", mentions
        return f"Interval placement of {article(noun_phrase)} {noun_phrase}.", mentions
    if f.change == "unchanged":
        lead = w.pick(["Stable", "Unchanged", "Persistent"])
        return f"{lead} {noun_phrase}.", mentions
    return f"New {noun_phrase}.", mentions


_BLOCKS = ("view", "compare", "devices", "heart", "lungs", "neg", "bones", "end")
# Section orders; each style prefers one, otherwise one is drawn.
_LAYOUTS = (
    ("view", "compare", "devices", "lungs", "neg", "heart", "bones", "end"),
    ("view", "compare", "heart", "lungs", "neg", "devices", "bones", "end"),
    ("view", "compare", "devices", "heart", "lungs", "neg", "bones", "end"),
    ("view", "compare", "lungs", "devices", "heart", "neg", "bones", "end"),
)


def write_report(
    findings: tuple[Finding, ...],
    rng: np.random.Generator,
    *,
    visit: int,
    portable: bool,
    views: int,
) -> Report:
    """Write one findings section; returns its text, labels and mentions (key phrases).

    The parts below draw from ``rng`` in a fixed order (style, comparison, findings, normal
    statements, view, comparison wording, closing, layout); changing that order changes SynthCXR.
    """
    w = Writer(rng, int(rng.integers(N_STYLES)))
    compare = visit > 0 and w.chance(0.6)
    blocks = _finding_blocks(findings, w, compare=compare, portable=portable)

    stated = {m.observation for opts in blocks.values() for _, ms in opts for m in ms}
    absent = set(OBSERVATIONS) - stated
    abnormal = bool(stated - {"Support Devices"})
    # "The lungs are clear" only when nothing is wrong in lungs or pleura; else "otherwise clear"
    lungs_abnormal = bool(stated & {*_PARENCHYMA, "Pleural Effusion", "Pneumothorax"})

    blocks["heart"] += _heart_sentences(
        w, "Cardiomegaly" in absent, "Enlarged Cardiomediastinum" in absent
    )
    blocks["neg"] = _lung_negatives(w, absent, lungs_abnormal=lungs_abnormal)
    if "Fracture" in absent:
        blocks["bones"] += _bone_negatives(w)
    blocks["view"] += _view_sentences(w, portable=portable, views=views)
    blocks["compare"] += _comparison_sentences(w, visit=visit, compare=compare)
    blocks["end"] += _closing_sentences(w, visit=visit, compare=compare, abnormal=abnormal)
    return _assemble(blocks, w)


def _finding_blocks(
    findings: tuple[Finding, ...], w: Writer, *, compare: bool, portable: bool
) -> dict[str, list[Option]]:
    """One sentence per finding, sorted into blocks; lung sentences in a drawn order."""
    blocks: dict[str, list[Option]] = {k: [] for k in _BLOCKS}
    for f in findings:
        noun_phrase, options = finding_options(f, w, portable)
        option = _with_change(w, f, noun_phrase, options) if compare else w.pick(options)
        block = {
            "support_device": "devices",
            "cardiomegaly": "heart",
            "widened_mediastinum": "heart",
        }
        blocks[block.get(f.type, "bones" if f.type == "fracture" else "lungs")].append(option)
    order = w.rng.permutation(len(blocks["lungs"]))
    blocks["lungs"] = [blocks["lungs"][i] for i in order]
    return blocks


def _lung_negatives(w: Writer, absent: set[str], *, lungs_abnormal: bool) -> list[Option]:
    """Negated observations, led by "The lungs are (otherwise) clear." when that fits."""
    negatives, said_clear = _negative_sentences(w, absent, lungs_clear=not lungs_abnormal)
    if not said_clear:
        if not lungs_abnormal and w.chance(0.65):
            clear = w.pick(
                [
                    "The lungs are clear.",
                    "Lungs are clear bilaterally.",
                    "The lungs are well expanded and clear.",
                    "The lungs are clear.",
                ]
            )
            negatives.insert(0, (clear, []))
        elif lungs_abnormal and w.chance(0.25):
            negatives.insert(0, ("The lungs are otherwise clear.", []))
    return negatives


def _bone_negatives(w: Writer) -> list[Option]:
    """At most one sentence on the bones when no fracture was found."""
    if w.chance(0.15):
        return [
            w.pick(
                [
                    ("No displaced rib fracture.", [_neg("Fracture", "no rib fracture")]),
                    ("No acute rib fracture is seen.", [_neg("Fracture", "no rib fracture")]),
                ]
            )
        ]
    if w.chance(0.4):
        return [
            (
                w.pick(
                    [
                        "No acute osseous abnormality.",
                        "The osseous structures are intact.",
                        "Visualized osseous structures are unremarkable.",
                    ]
                ),
                [],
            )
        ]
    return []


def _view_sentences(w: Writer, *, portable: bool, views: int) -> list[Option]:
    """Sometimes a sentence naming the projection and view count."""
    if not w.chance(0.3):
        return []
    if portable:
        view = w.pick(
            [
                "Single portable AP view of the chest.",
                "Portable semi-upright AP view of the chest.",
            ]
        )
    elif views == 2:
        view = w.pick(
            [
                "PA and lateral views of the chest.",
                "PA and lateral chest radiographs were obtained.",
            ]
        )
    else:
        view = w.pick(["Frontal view of the chest.", "PA view of the chest."])
    return [(view, [])]


def _comparison_sentences(w: Writer, *, visit: int, compare: bool) -> list[Option]:
    """Mention of the prior study when comparing; rarely "no prior" on a first visit."""
    if compare:
        return [
            (
                w.pick(
                    [
                        "Comparison is made to the prior study.",
                        "Prior study is available for comparison.",
                        "Comparison is made with the prior radiograph.",
                    ]
                ),
                [],
            )
        ]
    if visit == 0 and w.chance(0.04):
        return [("No prior studies are available for comparison.", [])]
    return []


def _closing_sentences(w: Writer, *, visit: int, compare: bool, abnormal: bool) -> list[Option]:
    """Sometimes a closing summary for a normal study."""
    if visit > 0 and compare and not abnormal and w.chance(0.4):
        return [("No significant interval change.", [])]
    if not abnormal and w.chance(0.15):
        return [("No acute cardiopulmonary process.", [])]
    return []


def _assemble(blocks: dict[str, list[Option]], w: Writer) -> Report:
    """Join the blocks in a layout; labels come from the mentions written."""
    layout = (
        _LAYOUTS[w.style % len(_LAYOUTS)]
        if w.chance(0.7)
        else _LAYOUTS[int(w.rng.integers(len(_LAYOUTS)))]
    )
    sentences = [opt for name in layout for opt in blocks[name]]
    text = " ".join(cap(t) for t, _ in sentences)
    mentions = [m for _, ms in sentences for m in ms]
    return Report(text=text, labels=labels_from_mentions(mentions), mentions=tuple(mentions))


__all__ = ["N_STYLES", "Report", "labels_from_mentions", "write_report"]
