"""What each synthetic study shows: findings per study, sampled per patient with prevalences.

A patient carries chronic findings through all of their studies (an enlarged heart, a pacemaker,
a known nodule, an old rib fracture); acute findings (effusion, consolidation, pneumothorax...)
come and go, with some persistence from one study to the next. Prevalences are loosely those of
a mixed in- and out-patient chest radiograph population, tuned so that about a third of the
studies are "No Finding".

Everything here is cheap and runs serially in the parent process; pixels and words are made
later, per study, from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2d_align.data.synth.anatomy import Anatomy, sample_anatomy

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Finding:
    """One abnormality at an anatomical location. ``params`` are renderer details."""

    type: str  # "cardiomegaly", "pleural_effusion"...: a key of ``phrases._WRITERS``
    severity: str = ""
    side: str | None = None  # patient side: "right", "left" or "bilateral"
    zone: str | None = None  # "upper", "middle", "lower"
    status: str = "positive"  # "positive" or "uncertain" (the report hedges it)
    change: str | None = None  # follow-up studies: "new" or "unchanged" since the prior study
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "location": self.location}
        out.update(severity=self.severity or None, side=self.side, zone=self.zone)
        out.update(status=self.status, change=self.change)
        out.update(self.params)
        return out

    @property
    def location(self) -> str | None:
        parts = [p for p in (self.side, self.zone) if p]
        return " ".join(parts) or None


@dataclass(frozen=True)
class StudyPlan:
    """Everything needed to render and report one study, except its own random stream."""

    index: int  # global study index: fixes the id and the per-study random stream
    study_id: str
    subject_id: str
    split: str
    visit: int  # 0 for the patient's first study
    portable: bool  # portable AP film (ICU patients)
    anatomy: Anatomy
    findings: tuple[Finding, ...]


def _choice(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _status(rng: np.random.Generator, p_uncertain: float) -> str:
    return "uncertain" if rng.random() < p_uncertain else "positive"


@dataclass
class _Patient:
    """Chronic state of one patient, sampled once."""

    anatomy: Anatomy
    cardiomegaly: str | None
    ctr: float
    widened: float | None
    icu: bool
    pacemaker: dict[str, Any] | None
    line_only: bool
    lesion: Finding | None
    old_fracture: Finding | None
    thickening: Finding | None


def _sample_patient(rng: np.random.Generator) -> _Patient:
    anatomy = sample_anatomy(rng)
    card = _choice(rng, ("mild", "moderate", "severe"), (0.55, 0.3, 0.15))
    ctr_range = {"mild": (0.53, 0.57), "moderate": (0.58, 0.62), "severe": (0.63, 0.68)}[card]
    has_card = rng.random() < 0.15
    lesion = None
    r = rng.random()
    if r < 0.065:  # a known nodule (5%) or mass (1.5%), followed up on every film
        big = r < 0.015
        size_mm = int(rng.integers(32, 60) if big else rng.integers(9, 26))
        lesion = Finding(
            "mass" if big else "nodule",
            severity="large" if big else ("small" if size_mm < 15 else "medium"),
            side=_choice(rng, SIDES),
            zone=_choice(rng, ZONES, (0.45, 0.25, 0.30)),
            params={
                "size_mm": size_mm,
                "dx": round(float(rng.uniform(-0.1, 0.1)), 4),
                "dy": round(float(rng.uniform(-0.06, 0.06)), 4),
            },
        )
    old_fx = None
    if rng.random() < 0.03:
        old_fx = Finding(
            "fracture",
            severity="healed",
            side=_choice(rng, SIDES),
            params={"rib": int(rng.integers(4, 10)), "t": round(float(rng.uniform(0.3, 0.6)), 4)},
        )
    thick = None
    if rng.random() < 0.03:
        thick = Finding(
            "pleural_thickening",
            severity="mild",
            side=_choice(rng, (*SIDES, "bilateral")),
            zone="upper",
        )
    pacemaker = None
    if rng.random() < 0.06:
        pacemaker = {"leads": int(rng.integers(1, 3)), "side": _choice(rng, SIDES, (0.15, 0.85))}
    icu = bool(rng.random() < 0.08)
    return _Patient(
        anatomy=anatomy,
        cardiomegaly=card if has_card else None,
        ctr=float(rng.uniform(*ctr_range)),
        widened=float(rng.uniform(0.16, 0.21)) if rng.random() < 0.04 else None,
        icu=icu,
        pacemaker=pacemaker,
        line_only=bool(not icu and rng.random() < 0.04),
        lesion=lesion,
        old_fracture=old_fx,
        thickening=thick,
    )


def _acute(rng: np.random.Generator, kind: str) -> Finding:
    """A fresh acute finding of ``kind`` with its location, severity and drawing parameters."""
    if kind == "pleural_effusion":
        sev = _choice(rng, ("small", "moderate", "large"), (0.58, 0.32, 0.10))
        side = _choice(rng, ("right", "left", "bilateral"), (0.35, 0.30, 0.35))
        return Finding(kind, sev, side, "lower", _status(rng, 0.25 if sev == "small" else 0.0))
    if kind == "pneumothorax":
        sev = _choice(rng, ("small", "moderate", "large"), (0.6, 0.3, 0.1))
        return Finding(
            kind, sev, _choice(rng, SIDES), "upper", _status(rng, 0.2 if sev == "small" else 0.0)
        )
    if kind == "consolidation":
        blobs = [
            [
                round(float(v), 4)
                for v in (
                    rng.uniform(-0.09, 0.09),
                    rng.uniform(-0.07, 0.07),
                    rng.uniform(0.06, 0.11),
                )
            ]
            for _ in range(3)
        ]
        pneumonia = _choice(rng, ("uncertain", "positive", None), (0.5, 0.2, 0.3))
        return Finding(
            kind,
            _choice(rng, ("mild", "moderate"), (0.5, 0.5)),
            _choice(rng, SIDES),
            _choice(rng, ZONES, (0.2, 0.2, 0.6)),
            _status(rng, 0.1),
            params={"blobs": blobs, "pneumonia": pneumonia},
        )
    if kind == "lung_opacity":
        side = _choice(rng, ("right", "left", "bilateral"), (0.38, 0.37, 0.25))
        zone = "lower" if side == "bilateral" else _choice(rng, ZONES, (0.25, 0.25, 0.5))
        return Finding(
            kind,
            "mild",
            side,
            zone,
            _status(rng, 0.12),
            params={"texture": int(rng.integers(1 << 30))},
        )
    if kind == "edema":
        sev = _choice(rng, ("mild", "moderate", "severe"), (0.5, 0.35, 0.15))
        return Finding(kind, sev, "bilateral", None, _status(rng, 0.25 if sev == "mild" else 0.0))
    if kind == "atelectasis":
        side = _choice(rng, ("right", "left", "bilateral"), (0.3, 0.3, 0.4))
        form = _choice(rng, ("linear", "subsegmental", "plate-like"))
        return Finding(
            kind,
            "mild",
            side,
            "lower",
            _status(rng, 0.2),
            params={
                "form": form,
                "tilt": round(float(rng.uniform(-12, 12)), 3),
                "dy": round(float(rng.uniform(-0.04, 0.04)), 4),
            },
        )
    if kind == "fracture":
        return Finding(
            kind,
            "acute",
            _choice(rng, SIDES),
            None,
            _status(rng, 0.2),
            params={"rib": int(rng.integers(4, 10)), "t": round(float(rng.uniform(0.3, 0.6)), 4)},
        )
    raise ValueError(f"not an acute finding: {kind}")


#: Base per-study probability of each acute finding, before risk factors.
_ACUTE_P = {
    "pleural_effusion": 0.08,
    "pneumothorax": 0.025,
    "consolidation": 0.06,
    "lung_opacity": 0.08,
    "edema": 0.035,
    "atelectasis": 0.09,
    "fracture": 0.015,
}


def _visit_findings(
    rng: np.random.Generator, pt: _Patient, prior: dict[str, Finding]
) -> list[Finding]:
    """Findings of one study: chronic ones always, acute ones by risk and persistence.

    Devices, then chronic, then acute findings: ``rng`` is drawn from in that order.
    """
    return [
        *_device_findings(rng, pt),
        *_chronic_findings(rng, pt),
        *_acute_findings(rng, pt, prior),
    ]


def _device_findings(rng: np.random.Generator, pt: _Patient) -> list[Finding]:
    """The patient's pacemaker, and the tube and line an ICU patient has on most films."""
    out: list[Finding] = []
    if pt.pacemaker:
        out.append(
            Finding(
                "support_device",
                side=pt.pacemaker["side"],
                params={"device": "pacemaker", "leads": pt.pacemaker["leads"]},
            )
        )
    if pt.icu and rng.random() < 0.85:
        out.append(
            Finding(
                "support_device",
                params={"device": "endotracheal_tube", "tip_cm": int(rng.integers(3, 7))},
            )
        )
    if (pt.icu and rng.random() < 0.7) or pt.line_only:
        out.append(
            Finding(
                "support_device",
                side=_choice(rng, SIDES, (0.75, 0.25)),
                params={"device": "central_line"},
            )
        )
    return out


def _chronic_findings(rng: np.random.Generator, pt: _Patient) -> list[Finding]:
    """The patient's lasting findings, each hedged afresh on every film."""
    out: list[Finding] = []
    if pt.cardiomegaly:
        p_unc = 0.25 if pt.cardiomegaly == "mild" else 0.0
        out.append(
            Finding(
                "cardiomegaly",
                pt.cardiomegaly,
                status=_status(rng, p_unc),
                params={"ctr": round(pt.ctr, 4)},
            )
        )
    if pt.widened is not None:
        out.append(
            Finding(
                "widened_mediastinum",
                "mild",
                status=_status(rng, 0.3),
                params={"half_width": round(pt.widened, 4)},
            )
        )
    for chronic in (pt.lesion, pt.old_fracture, pt.thickening):
        if chronic is not None:
            p_unc = 0.25 if chronic.type == "nodule" and chronic.severity == "small" else 0.0
            out.append(
                Finding(
                    chronic.type,
                    chronic.severity,
                    chronic.side,
                    chronic.zone,
                    _status(rng, p_unc),
                    params=chronic.params,
                )
            )
    return out


def _acute_findings(
    rng: np.random.Generator, pt: _Patient, prior: dict[str, Finding]
) -> list[Finding]:
    """Acute findings: one from the prior film may persist, a new one comes by risk."""
    out: list[Finding] = []
    risk = {
        "pleural_effusion": 0.12 * (pt.cardiomegaly is not None) + 0.12 * pt.icu,
        "edema": 0.12 * (pt.cardiomegaly is not None) + 0.05 * pt.icu,
        "consolidation": 0.08 * pt.icu,
        "atelectasis": 0.12 * pt.icu,
        "pneumothorax": 0.04 * pt.icu,
    }
    for kind, p in _ACUTE_P.items():
        before = prior.get(kind)
        if before is not None and rng.random() < 0.55:
            # Persisting finding: same place and look; its hedging is decided afresh.
            again = Finding(
                before.type,
                before.severity,
                before.side,
                before.zone,
                before.status,
                params=before.params,
            )
            out.append(again)
        elif rng.random() < p + risk.get(kind, 0.0):
            out.append(_acute(rng, kind))
    return out


def _with_change(findings: list[Finding], previous: list[Finding], visit: int) -> list[Finding]:
    if visit == 0:
        return findings
    seen = {(f.type, f.side, f.params.get("device")) for f in previous}
    out = []
    for f in findings:
        change = "unchanged" if (f.type, f.side, f.params.get("device")) in seen else "new"
        out.append(Finding(f.type, f.severity, f.side, f.zone, f.status, change, f.params))
    return out


def plan_studies(n_train: int, n_val: int, n_test: int, seed: int) -> list[StudyPlan]:
    """Patients with 1-5 studies each, filled into train, val and test in turn (no overlap).

    A patient's random stream depends only on ``(seed, patient index)``.
    """
    plans: list[StudyPlan] = []
    patient = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        remaining = n
        while remaining > 0:
            rng = np.random.default_rng(np.random.SeedSequence([seed, patient, 0x5EED]))
            n_visits = min(remaining, 1 + int(rng.choice(5, p=(0.36, 0.26, 0.18, 0.12, 0.08))))
            pt = _sample_patient(rng)
            anatomy = pt.anatomy
            previous: list[Finding] = []
            prior_acute: dict[str, Finding] = {}
            for visit in range(n_visits):
                findings = _with_change(_visit_findings(rng, pt, prior_acute), previous, visit)
                index = len(plans)
                plans.append(
                    StudyPlan(
                        index=index,
                        study_id=f"s{index:06d}",
                        subject_id=f"p{patient:05d}",
                        split=split,
                        visit=visit,
                        portable=pt.icu,
                        anatomy=anatomy,
                        findings=tuple(findings),
                    )
                )
                previous = findings
                prior_acute = {f.type: f for f in findings if f.type in _ACUTE_P}
            remaining -= n_visits
            patient += 1
    return plans
