"""Sentence templates for each finding: what a radiologist would write when it is present.

Each writer returns the sentence options for one finding together with the mentions every option
makes, so that labels always follow the words actually written (a hedged "opacity, likely
atelectasis" states Lung Opacity and doubts Atelectasis). Hedges sit before the observation they
doubt ("possible", "may represent", "likely", "concerning for") or close its clause ("cannot be
excluded"); negations sit before what they negate. ``grammar.py`` assembles a report from these.
"""

from __future__ import annotations

from s2d_align.data.synth.findings import Finding
from s2d_align.data.synth.mentions import (
    POSITIVE,
    UNCERTAIN,
    Mention,
    Option,
    Writer,
    article,
    cap,
    nth,
    size_text,
    zone_phrase,
)


def finding_options(f: Finding, w: Writer, portable: bool) -> tuple[str, list[Option]]:
    """(noun phrase for follow-up wording, sentence options) for one finding as its status says."""
    writer = _WRITERS[f.type]
    return writer(f, w, portable)


def _effusion(f: Finding, w: Writer, portable: bool):
    side, sev = f.side or "right", f.severity
    both = side == "bilateral"
    noun = "pleural effusions" if both else "pleural effusion"
    anatomy = "bilateral pleural spaces" if both else f"{side} pleural space"
    np_ = f"{sev} {side} {noun}"
    if f.status == UNCERTAIN:
        m = [Mention("Pleural Effusion", UNCERTAIN, f"possible {np_}", anatomy)]
        angle = "both costophrenic angles" if both else f"the {side} costophrenic angle"
        return np_, [
            (f"Possible {np_}.", m),
            (f"Blunting of {angle} may represent {'small' if both else 'a small'} {noun}.", m),
            (f"{cap(np_) if both else cap(article(sev)) + ' ' + np_} cannot be excluded.", m),
        ]
    m = [Mention("Pleural Effusion", POSITIVE, np_, anatomy)]
    opts = [
        (f"{cap(np_)}.", m),
        (f"There {'are' if both else 'is'} {'' if both else article(sev) + ' '}{np_}.", m),
    ]
    if sev == "small":
        angle = "both costophrenic angles" if both else f"the {side} costophrenic angle"
        opts.append((f"Blunting of {angle} consistent with {'' if both else 'a '}{np_}.", m))
    if sev == "large" and not both:
        opts.append((f"{cap(np_)} obscuring the {side} hemidiaphragm.", m))
    if not both:
        opts.append((f"{cap(sev)} {side} effusion.", m))
    return np_, opts


def _pneumothorax(f: Finding, w: Writer, portable: bool):
    side, sev = f.side or "right", f.severity
    np_ = f"small {side} apical pneumothorax" if sev == "small" else f"{sev} {side} pneumothorax"
    anatomy = f"{side} pleural space"
    if f.status == UNCERTAIN:
        m = [Mention("Pneumothorax", UNCERTAIN, f"possible {np_}", anatomy)]
        return np_, [
            (f"Possible tiny {side} apical pneumothorax.", m),
            (f"{cap(article(np_))} {np_} cannot be excluded.", m),
            (f"Questionable {np_}.", m),
        ]
    m = [Mention("Pneumothorax", POSITIVE, np_, anatomy)]
    return np_, [
        (f"{cap(np_)}.", m),
        (f"There is {article(np_)} {np_}.", m),
        (f"{cap(side)} pneumothorax, {sev} in size.", m),
    ]


def _consolidation(f: Finding, w: Writer, portable: bool):
    adj, prep = zone_phrase(w, f.side or "right", f.zone or "lower")
    np_ = f"{adj} consolidation"
    pneumonia = f.params.get("pneumonia")
    if f.status == UNCERTAIN:
        m = [Mention("Consolidation", UNCERTAIN, f"possible {np_}", adj)]
        if pneumonia:
            m2 = [*m, Mention("Pneumonia", UNCERTAIN, "possible pneumonia", adj)]
            return np_, [(f"Possible {np_}, which could represent early pneumonia.", m2)]
        return np_, [
            (f"Possible {np_}.", m),
            (f"Subtle {np_} cannot be excluded.", m),
            (f"Questionable consolidation {prep}.", m),
        ]
    m = [Mention("Consolidation", POSITIVE, np_, adj)]
    core = [
        f"{cap(np_)}",
        f"There is {np_}",
        f"Focal consolidation {prep}",
        f"{cap(adj)} airspace consolidation",
    ]
    if f.severity == "moderate":
        core.append(f"Dense consolidation {prep}")
    if pneumonia == POSITIVE:
        pm = [*m, Mention("Pneumonia", POSITIVE, f"{adj} pneumonia", adj)]
        tails = [", consistent with pneumonia.", ", compatible with pneumonia."]
        return np_, [(c + t, pm) for c in core for t in tails]
    if pneumonia == UNCERTAIN:
        pm = [*m, Mention("Pneumonia", UNCERTAIN, "possible pneumonia", adj)]
        tails = [
            ", concerning for pneumonia.",
            ", which may represent pneumonia.",
            "; pneumonia cannot be excluded.",
            ", suspicious for pneumonia in the appropriate clinical setting.",
        ]
        return np_, [(c + t, pm) for c in core for t in tails]
    return np_, [(c + ".", m) for c in core]


def _opacity(f: Finding, w: Writer, portable: bool):
    adj, prep = zone_phrase(w, f.side or "right", f.zone or "lower")
    plural = f.side == "bilateral"
    np_ = f"{adj} opacities" if plural else f"{adj} opacity"
    if f.status == UNCERTAIN:
        m = [Mention("Lung Opacity", UNCERTAIN, f"possible {np_}", adj)]
        return np_, [
            (f"Possible {np_}.", m),
            (f"Questionable subtle {'opacities' if plural else 'opacity'} {prep}.", m),
            (
                f"{'Faint ' + np_ + ' cannot' if plural else 'A faint ' + np_ + ' cannot'} be excluded.",
                m,
            ),
        ]
    m = [Mention("Lung Opacity", POSITIVE, np_, adj)]
    if plural:
        return np_, [(f"Patchy {np_}.", m), (f"{cap(np_)}.", m), (f"Patchy opacities {prep}.", m)]
    return np_, [
        (f"{cap(np_)}.", m),
        (f"Patchy opacity {prep}.", m),
        (f"There is a hazy opacity {prep}.", m),
        (f"Increased opacity {prep}.", m),
    ]


def _lesion(f: Finding, w: Writer, portable: bool):
    adj, prep = zone_phrase(w, f.side or "right", f.zone or "upper")
    kind = f.type  # nodule | mass
    size = size_text(w, int(f.params["size_mm"]))
    np_ = f"{size} {adj} {kind}"
    if f.status == UNCERTAIN:
        m = [Mention("Lung Lesion", UNCERTAIN, f"possible {adj} {kind}", adj)]
        return np_, [
            (f"Possible {size} {kind} {prep}; recommend CT for further evaluation.", m),
            (f"A small {kind} {prep} cannot be excluded.", m),
            (f"Questionable small {kind} {prep}.", m),
        ]
    m = [Mention("Lung Lesion", POSITIVE, f"{adj} {kind}", adj)]
    opts = [
        (f"{cap(article(size))} {size} {kind} {prep}.", m),
        (f"There is {article(size)} {np_}.", m),
        (f"{cap(adj)} {'pulmonary ' if kind == 'nodule' else ''}{kind} measuring {size}.", m),
    ]
    if kind == "mass":
        opts.append(
            (f"Large {adj} mass measuring {size}; further evaluation with CT is recommended.", m)
        )
    return np_, opts


def _edema(f: Finding, w: Writer, portable: bool):
    sev = f.severity
    np_ = f"{sev} pulmonary edema"
    if f.status == UNCERTAIN:
        m = [Mention("Edema", UNCERTAIN, f"possible {np_}", "lungs")]
        return np_, [
            ("Possible mild interstitial edema.", m),
            ("Mild pulmonary edema cannot be excluded.", m),
            ("Questionable mild pulmonary vascular congestion.", m),
        ]
    m = [Mention("Edema", POSITIVE, np_, "lungs")]
    opts = {
        "mild": [
            ("Mild pulmonary edema.", m),
            ("There is mild interstitial edema.", m),
            ("Mild pulmonary vascular congestion and interstitial edema.", m),
            ("Findings are consistent with mild pulmonary edema.", m),
        ],
        "moderate": [
            ("Moderate pulmonary edema.", m),
            ("Moderate interstitial and alveolar edema with perihilar predominance.", m),
            ("There is moderate pulmonary edema.", m),
        ],
        "severe": [
            ("Severe pulmonary edema.", m),
            (
                "Diffuse bilateral perihilar opacities consistent with severe pulmonary edema.",
                [Mention("Lung Opacity", POSITIVE, "perihilar opacities", "perihilar"), *m],
            ),
        ],
    }
    return np_, opts[sev]


def _atelectasis(f: Finding, w: Writer, portable: bool):
    side = f.side or "right"
    adj = "bibasilar" if side == "bilateral" else f"{side} basilar"
    base = "both lung bases" if side == "bilateral" else f"the {side} lung base"
    form = f.params.get("form", "linear")
    np_ = f"{adj} atelectasis"
    if f.status == UNCERTAIN:
        unc = Mention("Atelectasis", UNCERTAIN, f"possible {np_}", adj)
        opac = Mention("Lung Opacity", POSITIVE, f"{adj} opacity", adj)
        return np_, [
            (f"{cap(adj)} opacity, likely atelectasis.", [opac, unc]),
            (
                f"Streaky {adj} opacities, likely atelectasis.",
                [Mention("Lung Opacity", POSITIVE, f"{adj} opacities", adj), unc],
            ),
            (f"Possible {adj} atelectasis.", [unc]),
            (
                f"{cap(adj)} opacity, likely atelectasis, though early pneumonia cannot be excluded.",
                [opac, unc, Mention("Pneumonia", UNCERTAIN, "possible pneumonia", adj)],
            ),
        ]
    m = [Mention("Atelectasis", POSITIVE, np_, adj)]
    return np_, [
        (f"{cap(adj)} {form} atelectasis.", m),
        (f"Minimal {adj} atelectasis.", m),
        (f"{cap(form)} atelectasis at {base}.", m),
        (f"Mild {adj} atelectasis.", m),
    ]


def _device(f: Finding, w: Writer, portable: bool):
    device = f.params["device"]
    if device == "endotracheal_tube":
        d = f.params.get("tip_cm", 4)
        m = [Mention("Support Devices", POSITIVE, "endotracheal tube", "trachea")]
        return "endotracheal tube", [
            (f"Endotracheal tube terminates {d} cm above the carina.", m),
            (f"An endotracheal tube is in standard position, {d} cm above the carina.", m),
            (f"ET tube tip is {d} cm above the carina.", m),
        ]
    if device == "central_line":
        side = f.side or "right"
        m = [
            Mention(
                "Support Devices", POSITIVE, f"{side} subclavian central venous catheter", "SVC"
            )
        ]
        return f"{side} subclavian central venous catheter", [
            (f"{cap(side)} subclavian central venous catheter terminates in the mid SVC.", m),
            (f"{cap(side)} subclavian line with tip in the SVC.", m),
            (f"{cap(side)}-sided central line tip projects over the SVC.", m),
        ]
    side = f.side or "left"
    m = [Mention("Support Devices", POSITIVE, f"{side} chest wall pacemaker", f"{side} chest wall")]
    if f.params.get("leads", 1) >= 2:
        opts = [
            (
                f"{cap(side)}-sided dual-chamber pacemaker with leads in the right atrium and right ventricle.",
                m,
            ),
            (f"{cap(side)} chest wall pacemaker with leads in standard position.", m),
        ]
    else:
        opts = [
            (
                f"{cap(side)} chest wall single-lead pacemaker with lead tip in the right ventricle.",
                m,
            ),
            (f"{cap(side)}-sided pacer device with a single lead in the right ventricle.", m),
        ]
    return f"{side} chest wall pacemaker", opts


def _fracture(f: Finding, w: Writer, portable: bool):
    side, rib = f.side or "right", nth(int(f.params["rib"]))
    healed = f.severity == "healed"
    if f.status == UNCERTAIN:
        m = [Mention("Fracture", UNCERTAIN, f"possible {side} rib fracture", f"{side} {rib} rib")]
        return f"{side} {rib} rib fracture", [
            (f"Possible nondisplaced fracture of the {side} {rib} rib.", m),
            (f"A subtle {side} {rib} rib fracture cannot be excluded.", m),
        ]
    key = f"healed {side} rib fracture" if healed else f"{side} rib fracture"
    m = [Mention("Fracture", POSITIVE, key, f"{side} {rib} rib")]
    if healed:
        return f"healed {side} {rib} rib fracture", [
            (f"Old healed {side} {rib} rib fracture.", m),
            (f"Healed fracture deformity of the {side} {rib} rib.", m),
        ]
    return f"{side} {rib} rib fracture", [
        (f"Acute fracture of the {side} {rib} rib.", m),
        (f"Nondisplaced fracture of the {side} {rib} posterior rib.", m),
        (f"There is a minimally displaced {side} {rib} rib fracture.", m),
    ]


def _mediastinum(f: Finding, w: Writer, portable: bool):
    if f.status == UNCERTAIN:
        m = [
            Mention(
                "Enlarged Cardiomediastinum",
                UNCERTAIN,
                "possible widened mediastinum",
                "mediastinum",
            )
        ]
        return "mediastinal widening", [
            ("Possible mild mediastinal widening.", m),
            ("Questionable widening of the mediastinum.", m),
            ("Mediastinal widening cannot be excluded.", m),
        ]
    m = [Mention("Enlarged Cardiomediastinum", POSITIVE, "widened mediastinum", "mediastinum")]
    return "mediastinal widening", [
        ("The mediastinum is widened.", m),
        ("Widening of the superior mediastinum.", m),
        ("The mediastinal silhouette is enlarged.", m),
        ("Mediastinal widening is noted.", m),
    ]


def _cardiomegaly(f: Finding, w: Writer, portable: bool):
    sev = f.severity
    np_ = f"{sev} cardiomegaly"
    if f.status == UNCERTAIN:
        m = [Mention("Cardiomegaly", UNCERTAIN, f"possible {np_}", "heart")]
        opts = [
            ("Possible mild cardiomegaly.", m),
            ("Questionable mild enlargement of the cardiac silhouette.", m),
        ]
        if portable:
            opts.append(("Mild cardiomegaly cannot be excluded given the AP technique.", m))
        return np_, opts
    m = [Mention("Cardiomegaly", POSITIVE, np_, "heart")]
    adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[sev]
    lead = {"mild": "Mild", "moderate": "Moderate", "severe": "Marked"}[sev]
    return np_, [
        (f"{lead} cardiomegaly.", m),
        (f"The heart is {adverb} enlarged.", m),
        (f"The cardiac silhouette is {adverb} enlarged.", m),
        (f"{lead} enlargement of the cardiac silhouette.", m),
    ]


def _thickening(f: Finding, w: Writer, portable: bool):
    side = f.side or "right"
    np_ = (
        "biapical pleural thickening"
        if side == "bilateral"
        else f"{side} apical pleural thickening"
    )
    m = [Mention("Pleural Other", POSITIVE, np_, "pleura")]
    return np_, [(f"{cap(np_)}.", m), (f"Mild {np_}.", m), (f"There is {np_}.", m)]


_WRITERS = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "lung_opacity": _opacity,
    "nodule": _lesion,
    "mass": _lesion,
    "edema": _edema,
    "atelectasis": _atelectasis,
    "support_device": _device,
    "fracture": _fracture,
    "widened_mediastinum": _mediastinum,
    "cardiomegaly": _cardiomegaly,
    "pleural_thickening": _thickening,
}
