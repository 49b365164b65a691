"""Lexicons: observation terms, anatomical subjects with their predicates, and modifiers.

Every pattern is a regular-expression fragment matched on lower-cased sentence text. Terms are
tried in list order at each position (the regex alternation is ordered), so specific phrases sit
before the generic ones they contain ("pleural scarring" before "scarring", "pericardial effusion"
before "effusion"). Mention and exclusion choices follow the CheXpert labeler's conventions where
it has one (e.g. "granuloma" and "volume loss" are findings outside the 14 that still rule out
"No Finding"; "chf" also counts as uncertain cardiomegaly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

TermKind = Literal["label", "other", "incidental", "block"]

EC = "Enlarged Cardiomediastinum"
CM = "Cardiomegaly"
LO = "Lung Opacity"
LL = "Lung Lesion"
ED = "Edema"
CO = "Consolidation"
PN = "Pneumonia"
AT = "Atelectasis"
PTX = "Pneumothorax"
PE = "Pleural Effusion"
PO = "Pleural Other"
FX = "Fracture"
SD = "Support Devices"


@dataclass(frozen=True)
class Term:
    """One lexicon entry.

    kind: ``label`` gives CheXpert labels to ``observations``; ``other`` is an abnormality outside
    the 14 that still rules out No Finding when asserted; ``incidental`` only yields a key phrase;
    ``block`` consumes text so that a generic entry cannot match inside it.
    negative_only: the entry only ever contributes a negative label ("no acute osseous
    abnormality" says no fracture; "acute osseous abnormality" alone is too vague to be one).
    """

    pattern: str
    observations: tuple[str, ...] = ()
    canonical: str = ""
    kind: TermKind = "label"
    negative_only: bool = False


def _t(pattern: str, obs: str | tuple[str, ...], canonical: str, **kw: object) -> Term:
    observations = (obs,) if isinstance(obs, str) else obs
    return Term(pattern, observations, canonical, **kw)  # type: ignore[arg-type]


_PL = r"(?:s|es)?"  # optional plural suffix

TERMS: Final[tuple[Term, ...]] = (
    # --- exclusions (consume text, give nothing) ---
    Term(r"pericardial effusions?", canonical="pericardial effusion", kind="block"),
    Term(r"mass effect", kind="block"),
    Term(r"(?:visceral )?pleural lines?|skin ?folds?|skin lines?", kind="block"),
    Term(
        r"acute (?:cardio)?(?:pulmonary|thoracic|cardiopulmonary) (?:process|abnormalit(?:y|ies)|disease|findings?)",
        kind="block",
    ),
    Term(
        r"(?:soft tissue|subcutaneous|chest wall) o?edema",
        canonical="soft tissue edema",
        kind="other",
    ),
    # --- Pleural ---
    _t(r"hydropneumothora(?:x|ces|xes)", (PTX, PE), "hydropneumothorax"),
    _t(
        r"pleural (?:thickening|plaques?|scar(?:ring|s)?|calcifications?)|fibrothorax"
        r"|pleuro-?parenchymal (?:scar(?:ring|s)?|thickening|opacit(?:y|ies))"
        r"|apical (?:pleural )?(?:thickening|cap(?:ping|s)?)|pleural-?based (?:scar(?:ring)?|thickening)",
        PO,
        "pleural thickening",
    ),
    Term(r"pleural abnormalit(?:y|ies)", kind="block"),  # CheXpert reads no label from it
    Term(r"plate-?like|plate ?like", kind="block"),  # "plate-like atelectasis" is not a plate
    _t(
        r"(?:pleural )?effusions?|pleural fluid(?: collections?)?|hydrothora(?:x|ces)"
        r"|fluid in the (?:major |minor )?fissures?|fissural fluid",
        PE,
        "pleural effusion",
    ),
    _t(
        r"(?:blunt(?:ing|ed)) of (?:the )?(?:(?:left|right|bilateral|both) )?(?:costophrenic|cp) (?:angles?|sulc(?:us|i))"
        r"|(?:costophrenic|cp) (?:angle|sulcus) blunting|(?:costophrenic|cp) (?:angles?|sulc(?:us|i)) "
        r"(?:is|are) (?:\w+ )?blunted",
        PE,
        "blunting of the costophrenic angle",
        kind="other",  # CheXpert counts "blunt" as a finding, but not as Pleural Effusion
    ),
    _t(r"pneumothora(?:x|ces|xes)|ptx", PTX, "pneumothorax"),
    # --- Heart and mediastinum (fixed compounds; predicative forms live in SUBJECTS) ---
    _t(r"cardiomegal(?:y|ic)|cardiomegally|cardiac enlargement|cardiomyopathy", CM, "cardiomegaly"),
    _t(r"(?:congestive )?(?:heart|cardiac) failure|chf", (ED,), "congestive heart failure"),
    _t(
        r"(?:enlarged |widened )cardiomediastinum|cardiomediastinal (?:enlargement|widening)"
        r"|mediastinal (?:widening|enlargement)",
        EC,
        "enlarged cardiomediastinum",
    ),
    # --- Lesions (before opacity: "nodular opacity" is a lesion and an opacity) ---
    Term(
        r"calcified (?:lymph )?nod(?:e|es|ule|ules)|(?:calcified )?granulomas?|granulomata"
        r"|granulomatous (?:disease|changes?|infection)",
        canonical="calcified granuloma",
        kind="other",
    ),
    Term(
        r"(?:lytic|sclerotic|blastic|osseous|bony|skin) lesions?",
        canonical="osseous lesion",
        kind="other",
    ),
    _t(r"nodular (?:opacit(?:y|ies)|densit(?:y|ies)|opacification)", (LL, LO), "nodular opacity"),
    _t(r"nodules?|nodular(?:ity)?", LL, "nodule"),
    _t(r"mass(?:es)?|lumps?", LL, "mass"),
    _t(
        r"(?:cavitary|cavitating|pulmonary|lung|parenchymal|spiculated|suspicious) lesions?|lesions?"
        r"|cavit(?:y|ies|ation)",
        LL,
        "lesion",
    ),
    _t(
        r"carcinomas?|cancers?|malignan(?:cy|cies|t)|neoplas(?:ms?|tic)|tumou?rs?|metasta(?:sis|ses|tic)",
        LL,
        "neoplasm",
    ),
    # --- Parenchyma ---
    _t(r"consolidat(?:ion|ions|ive|ed|ing)", CO, "consolidation"),
    _t(r"(?:broncho)?pneumonias?|pneumonitis", PN, "pneumonia"),
    _t(r"infectious (?:process|etiology|disease)|infections?|infectious", PN, "infection"),
    Term(r"aspiration", canonical="aspiration", kind="other"),
    _t(
        r"atelecta(?:sis|ses|tic)|(?:lobar |segmental |subsegmental )?collapsed?", AT, "atelectasis"
    ),
    _t(r"(?:interstitial|alveolar) (?:pulmonary )?o?edema", ED, "interstitial edema"),
    _t(r"pulmonary o?edema|o?edema(?:tous)?", ED, "pulmonary edema"),
    _t(
        r"(?:pulmonary )?(?:vascular|venous) (?:congestion|engorgement|redistribution)"
        r"|pulmonary congestion|cephali[sz]ation|kerley b?(?:-| )?lines?|fluid overload"
        r"|(?:pulmonary )?vascular (?:prominence|indistinctness)|(?:perihilar|hilar) indistinctness",
        ED,
        "vascular congestion",
    ),
    _t(r"ground[- ]?glass(?: opacit(?:y|ies)| opacification)?", LO, "ground-glass opacity"),
    _t(
        r"(?:air ?-?space|alveolar) (?:disease|process|opacit(?:y|ies)|opacification)",
        LO,
        "airspace disease",
    ),
    _t(
        r"opaci(?:ty|ties|fication|fications|fied)|infiltrat(?:e|es|ion|ive)|haziness"
        r"|(?:increased|parenchymal) densit(?:y|ies)",
        LO,
        "opacity",
    ),
    _t(
        r"(?:increased )?interstitial (?:markings?|pattern|prominence|opacit(?:y|ies)|changes?|lung disease)"
        r"|reticul(?:ar|ation|onodular)(?: (?:pattern|markings?|opacit(?:y|ies)|changes?))?"
        r"|(?:peri)?bronchial (?:wall )?thickening",
        LO,
        "interstitial opacity",
    ),
    _t(r"(?:parenchymal )?scar(?:ring|s)?", LO, "scarring"),
    # --- Bones ---
    _t(r"fractur(?:e|es|ed)|fx", FX, "fracture"),
    # "no acute osseous abnormality" says nothing CheXpert labels (no Fracture mention)
    Term(
        r"(?:acute )?(?:osseous|bony|skeletal) (?:abnormalit(?:y|ies)|injur(?:y|ies)|findings?)",
        kind="block",
    ),
    # --- Support devices ---
    _t(
        r"(?:endotracheal|et|ett) tubes?|ett|endotracheal intubation|intubated",
        SD,
        "endotracheal tube",
    ),
    _t(r"tracheostomy(?: tubes?)?|trach(?:eostomy)? tubes?", SD, "tracheostomy tube"),
    _t(r"(?:nasogastric|ng) (?:feeding )?tubes?", SD, "nasogastric tube"),
    _t(r"(?:orogastric|og) tubes?", SD, "orogastric tube"),
    _t(
        r"(?:enteric|feeding|gastric|dobb?hoff|post-?pyloric)(?: feeding)? tubes?|dobb?hoff",
        SD,
        "feeding tube",
    ),
    _t(
        r"(?:chest|thoracostomy|pleural|pigtail|mediastinal) (?:tubes?|drains?|catheters?)",
        SD,
        "chest tube",
    ),
    _t(r"picc(?: lines?)?|peripherally inserted central (?:venous )?catheters?", SD, "picc line"),
    _t(
        r"(?:central venous|central|venous|(?:internal )?jugular|ij|subclavian|dialysis|hemodialysis"
        r"|arterial|swan[- ]ganz|pulmonary artery|pa|midline) (?:lines?|catheters?)|cvc|swan[- ]ganz",
        SD,
        "central venous catheter",
    ),
    _t(
        r"(?:(?:dual|single)[- ]lead |biventricular |transvenous |cardiac )?(?:pacemakers?|pacers?)"
        r"(?: (?:leads?|wires?|generator|device))?|pacing (?:wires?|leads?|device)",
        SD,
        "pacemaker",
    ),
    _t(
        r"(?:aicd|icd|(?:cardiac )?defibrillators?)(?: (?:leads?|wires?|generator|device))?",
        SD,
        "defibrillator",
    ),
    _t(
        r"port-?a-?caths?|portacaths?|mediports?|(?:chest|power|infusion|access|venous) ports?",
        SD,
        "port",
    ),
    _t(
        r"(?:prosthetic |mechanical |bioprosthetic )?(?:(?:aortic|mitral|tricuspid) )?valve (?:replacements?|prosthes[ie]s)"
        r"|prosthetic (?:aortic |mitral )?valves?",
        SD,
        "valve replacement",
    ),
    _t(
        r"(?:intra-?aortic )?balloon pumps?|iabp|impella|lvad|ventricular assist device",
        SD,
        "cardiac assist device",
    ),
    _t(
        r"(?:ecg|ekg|monitoring|cardiac monitor(?:ing)?) (?:leads|electrodes|wires)|loop recorders?",
        SD,
        "monitoring leads",
    ),
    _t(
        r"stents?|(?:orthopedic |spinal |surgical |fixation )?hardware|arthroplast(?:y|ies)"
        r"|(?:embolization )?coils?|(?:surgical )?(?:plates?|screws?)|cannulas?",
        SD,
        "surgical hardware",
    ),
    _t(
        r"(?:support |monitoring |medical |implanted |cardiac )?devices?|(?:lines|tubes)(?: and (?:tubes|lines))?"
        r"|catheters?|drains?|tubes?",
        SD,
        "support device",
    ),
    # --- Other findings: outside the 14, but they rule out No Finding (CheXpert convention) ---
    Term(r"hyperinflat(?:ion|ed)|hyperexpan(?:sion|ded)", canonical="hyperinflation", kind="other"),
    Term(
        r"emphysema(?:tous)?|bullae|bulla|bullous|copd|chronic obstructive (?:pulmonary|lung) disease"
        r"|air trapping",
        canonical="emphysema",
        kind="other",
    ),
    Term(
        r"(?:thoracic |lumbar |thoracolumbar )?(?:scoliosis|kyphosis|kyphotic)",
        canonical="scoliosis",
        kind="other",
    ),
    Term(
        r"degenerati(?:ve|on)(?: (?:changes?|disease))?|osteophyt(?:es?|osis)|spondylosis|osteopenia"
        r"|osteodystrophy|arthropathy",
        canonical="degenerative changes",
        kind="other",
    ),
    Term(
        r"(?:vascular |aortic |mitral |coronary )?calcifi(?:ed|cations?)|atheroscleros(?:is|tic)",
        canonical="calcification",
        kind="other",
    ),
    Term(r"(?:hiatal |hiatus )?hernias?", canonical="hiatal hernia", kind="other"),
    Term(
        r"bronchiectasis|bronchitis|bronchiolitis|airways? disease|peribronchial cuffing|bronchospasm|asthma",
        canonical="airway disease",
        kind="other",
    ),
    Term(
        r"pneumomediastinum|pneumoperitoneum|free (?:intraperitoneal )?air",
        canonical="extrapulmonary air",
        kind="other",
    ),
    Term(
        r"(?:elevat(?:ed|ion) (?:of )?(?:the )?(?:left |right )?hemidiaphragms?|eventration"
        r"|hemidiaphragms? (?:is|are|remains?) (?:\w+ )?elevated)",
        canonical="elevated hemidiaphragm",
        kind="other",
    ),
    Term(
        r"volume loss|fibro(?:sis|tic)|contusions?|hemorrhage|hematomas?|deformit(?:y|ies)|pulmonary hypertension",
        canonical="other abnormality",
        kind="other",
    ),
    # --- Incidental: key phrases only ---
    Term(
        r"(?:median )?sternotomy(?: wires?)?|cerclage wires?",
        canonical="sternotomy wires",
        kind="incidental",
    ),
    Term(r"(?:surgical )?clips?", canonical="surgical clips", kind="incidental"),
    Term(
        r"tortuous (?:thoracic )?aorta|(?:aortic )?tortuosity|unfolded (?:thoracic )?aorta",
        canonical="tortuous aorta",
        kind="incidental",
    ),
)


# --------------------------------------------------------------------------------------------
# Anatomical subjects and their predicates ("heart size is normal", "widened mediastinum").
# --------------------------------------------------------------------------------------------

Polarity = Literal["abnormal", "normal", "borderline"]


@dataclass(frozen=True)
class Subject:
    """A structure that radiologists describe with a predicate.

    ``abnormal`` / ``normal`` list the observations an abnormal / normal predicate speaks for;
    the key-phrase text for each polarity is given too. ``label_normal=False`` keeps a normal
    statement as a key phrase only: CheXpert reads no label from "the lungs are clear" or "the
    osseous structures are intact". ``abnormal_kind="other"`` marks an abnormal statement that is a
    finding outside the 14 ("blunted costophrenic angles").
    """

    name: str
    pattern: str
    abnormal: tuple[str, ...]
    normal: tuple[str, ...]
    abnormal_text: str
    normal_text: str
    predicates: tuple[str, ...]  # names in PREDICATES that apply
    label_normal: bool = True
    abnormal_kind: str = "label"


SUBJECTS: Final[tuple[Subject, ...]] = (
    Subject(
        "cardiomediastinal",
        r"cardio-?mediastinal (?:silhouettes?|contours?|shadows?|size|structures|width)"
        r"|cardiomediastinum|cardiac and mediastinal (?:silhouettes?|contours?)",
        (EC,),
        (EC, CM),
        "enlarged cardiomediastinal silhouette",
        "normal cardiomediastinal silhouette",
        ("size_abnormal", "size_normal", "borderline"),
    ),
    Subject(
        "mediastinum",
        r"(?:superior )?mediastin(?:um|al (?:and hilar )?(?:silhouettes?|contours?|width|shadows?|"
        r"structures|configuration))",
        (EC,),
        (EC,),
        "widened mediastinum",
        "normal mediastinal contours",
        ("size_abnormal", "size_normal"),
    ),
    Subject(
        "heart",
        r"heart (?:size|silhouette|shadow|contours?)|heart|cardiac (?:size|silhouettes?|shadow|contours?|"
        r"diameter)|cardiac",
        (CM,),
        (CM,),
        "cardiomegaly",
        "normal heart size",
        ("size_abnormal", "size_normal", "borderline"),
    ),
    Subject("lung volumes", r"lung volumes?", (), (), "", "", ("size_normal", "size_abnormal")),
    Subject(
        "lungs",
        r"(?:both )?lungs?(?: fields?| zones?| parenchyma)?|lung fields",
        (),
        (LO,),
        "",
        "clear lungs",
        ("clear",),
        label_normal=False,
    ),
    Subject(
        "pleura",
        r"pleural (?:spaces?|surfaces?|margins?)|pleurae?",
        (),
        (PE, PTX),
        "",
        "clear pleural spaces",
        ("clear",),
        label_normal=False,
    ),
    Subject(
        "costophrenic",
        r"(?:costophrenic|cp) (?:angles?|sulc(?:us|i))",
        (PE,),
        (PE,),
        "blunting of the costophrenic angle",
        "sharp costophrenic angles",
        ("blunted", "sharp"),
        label_normal=False,
        abnormal_kind="other",
    ),
    Subject(
        "bones",
        r"(?:(?:visuali[sz]ed|included|imaged|regional|the) )?(?:osseous|bony|skeletal) (?:structures|thorax|"
        r"skeleton)|bones|bony thorax|ribs",
        (),
        (FX,),
        "",
        "intact osseous structures",
        ("intact",),
        label_normal=False,
    ),
    Subject(
        "vasculature",
        r"pulmonary (?:vasculature|vascularity|vessels|vascular markings)|vasculature|vascularity",
        (ED,),
        (ED,),
        "pulmonary vascular congestion",
        "normal pulmonary vasculature",
        ("vascular_abnormal", "size_normal"),
        label_normal=False,
    ),
    Subject(
        "hila",
        r"hil(?:a|um|ar (?:contours?|structures|silhouettes?|regions?))",
        (EC,),  # CheXpert's Enlarged Cardiomediastinum mentions include "contour"
        (EC,),
        "hilar enlargement",
        "normal hilar contours",
        ("size_normal", "size_abnormal"),
    ),
)

_SIZE_ADVERB = r"(?:(?:mildly|moderately|markedly|severely|slightly|massively|minimally|significantly|substantially) )?"

#: name -> (polarity, regex). Checked for the subject's listed predicate names only.
PREDICATES: Final[dict[str, tuple[Polarity, str]]] = {
    "borderline": ("borderline", r"borderline(?: (?:enlarged|in size|size|enlargement))?"),
    "size_abnormal": (
        "abnormal",
        _SIZE_ADVERB + r"(?:enlarged|enlargement|enlarging|widened|widening|wide|"
        r"increased(?: in size)?|large|dilated|prominent|prominence)",
    ),
    "size_normal": (
        "normal",
        r"(?:within|at the upper (?:limits?|range) of) normal (?:limits|range)"
        r"|(?:at the )?upper (?:limits?|range) of normal|top(?:-| )normal(?: in size)?|upper normal|"
        r"high normal|normal(?: in (?:size|caliber|contour|appearance))?(?: and configuration)?|wnl|unremarkable",
    ),
    "clear": ("normal", r"clear|normal|unremarkable|well (?:aerated|expanded) and clear"),
    "blunted": ("abnormal", r"blunt(?:ed|ing)"),
    "sharp": ("normal", r"sharp|clear|normal|preserved|well (?:defined|visuali[sz]ed)"),
    "intact": ("normal", r"intact|normal|unremarkable"),
    "vascular_abnormal": (
        "abnormal",
        _SIZE_ADVERB + r"(?:engorged|engorgement|congested|congestion|indistinct|"
        r"indistinctness|prominent|prominence|cephali[sz]ed|increased|redistributed|plethoric)",
    ),
}

# --------------------------------------------------------------------------------------------
# Modifiers
# --------------------------------------------------------------------------------------------

SIDE_WORDS: Final[dict[str, str]] = {
    "left": "left",
    "right": "right",
    "left-sided": "left",
    "right-sided": "right",
    "bilateral": "bilateral",
    "bilaterally": "bilateral",
    "both": "bilateral",
    "bibasilar": "bilateral",
    "bibasal": "bilateral",
    "biapical": "bilateral",
}

ZONE_WORDS: Final[dict[str, str]] = {
    "upper": "upper",
    "middle": "middle",
    "mid": "mid",
    "lower": "lower",
    "base": "basilar",
    "bases": "basilar",
    "basal": "basilar",
    "basilar": "basilar",
    "bibasilar": "basilar",
    "bibasal": "basilar",
    "apex": "apical",
    "apices": "apical",
    "apical": "apical",
    "biapical": "apical",
    "perihilar": "perihilar",
    "retrocardiac": "retrocardiac",
    "lingula": "lingular",
    "lingular": "lingular",
    "infrahilar": "infrahilar",
    "suprahilar": "suprahilar",
    "hilar": "hilar",
    "subpleural": "subpleural",
    "peripheral": "peripheral",
    "central": "central",
    "rib": "rib",
    "ribs": "rib",
    "clavicle": "clavicle",
    "clavicular": "clavicle",
}

LOBE_ABBREVIATIONS: Final[dict[str, str]] = {
    "rul": "right upper lobe",
    "rml": "right middle lobe",
    "rll": "right lower lobe",
    "lul": "left upper lobe",
    "lll": "left lower lobe",
}

SEVERITY_WORDS: Final[dict[str, str]] = {
    "minimal": "minimal",
    "minimally": "minimal",
    "trace": "trace",
    "tiny": "tiny",
    "small": "small",
    "mild": "mild",
    "mildly": "mild",
    "slight": "mild",
    "slightly": "mild",
    "subtle": "subtle",
    "moderate": "moderate",
    "moderately": "moderate",
    "large": "large",
    "severe": "severe",
    "severely": "severe",
    "marked": "marked",
    "markedly": "marked",
    "massive": "massive",
    "extensive": "extensive",
    "small-to-moderate": "small-to-moderate",
    "moderate-to-large": "moderate-to-large",
    "mild-to-moderate": "mild-to-moderate",
    "moderate-to-severe": "moderate-to-severe",
}

#: Pattern for a size in centimetres or millimetres ("1.5 cm", "8 mm").
MEASUREMENT_RE: Final = re.compile(r"\b\d+(?:\.\d+)?(?:\s*x\s*\d+(?:\.\d+)?)*\s*(?:cm|mm)\b")
