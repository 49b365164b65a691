"""Pixels: a frontal (PA/AP) and an optional lateral chest radiograph for one study.

Brightness is attenuation, as on a film: air is dark, soft tissue grey, bone and metal bright.
The frontal view is composed of body outline, lung fields (dark, with vascular markings), heart,
mediastinum and trachea, spine, ribs, clavicles and diaphragm domes; findings then change the
picture where they sit (fluid fills a costophrenic angle, a pneumothorax empties the lung edge of
markings, a consolidation whitens a zone...). All drawing is whole-array numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from s2d_align.data.synth.anatomy import (
    SIDE_SIGN,
    UNITS_PER_CM,
    Anatomy,
    Pose,
    bezier,
    body_grid,
    ellipse_f,
    gaussian,
    polyline_distance,
    ramp,
    smooth_noise,
)
from s2d_align.data.synth.findings import Finding

_ZONE_Y = {"upper": -0.42, "middle": -0.05, "lower": 0.28}
_F32 = np.float32


@dataclass
class _Frame:
    """Grids and masks of one frontal image that findings draw against."""

    x: np.ndarray
    y: np.ndarray
    edge: float  # antialiasing width (about 1.5 pixels)
    anatomy: Anatomy
    lung_f: dict[str, np.ndarray]  # implicit lung shape per side (without heart cut-out)
    lung: dict[str, np.ndarray]  # soft lung mask per side
    rng: np.random.Generator

    def sides(self, side: str | None) -> tuple[str, ...]:
        return ("right", "left") if side in (None, "bilateral") else (side,)


def _lung_f(x, y, a: Anatomy, side: str) -> np.ndarray:
    s = SIDE_SIGN[side]
    base = a.lung_base - (a.right_dome_lift if side == "right" else 0.0)
    medial, lateral = 0.05, a.thorax_half_width
    cy = (a.lung_apex + base + 0.25) / 2
    ry = (base + 0.25 - a.lung_apex) / 2
    f_ellipse = ellipse_f(x, y, s * (medial + lateral) / 2, cy, (lateral - medial) / 2, ry)
    dome_y = base - a.dome_height * (1.0 - ((x - _F32(s * 0.36)) / _F32(0.40)) ** 2)
    return np.maximum(f_ellipse, y - dome_y)


def _ribs(x, y, a: Anatomy, fractures: list[Finding], edge: float) -> np.ndarray:
    """Posterior ribs as bright curved bands, fainter anterior ribs; a fracture breaks one."""
    t = np.abs(x) - _F32(0.05)
    rib_y = y + _F32(0.10) * t - _F32(0.55) * t * t - _F32(a.rib_phase)
    phase = rib_y / _F32(a.rib_spacing)
    index = np.floor(phase)
    for fx in fractures:
        # Shift the lateral fragment of one rib (a step) and cut a gap at the break.
        s = SIDE_SIGN[fx.side or "right"]
        rib = np.floor((a.lung_apex + 0.02) / a.rib_spacing) + fx.params["rib"]
        on = (index == rib) & (x * _F32(s) > 0) & (t > _F32(fx.params["t"]))
        if fx.severity != "healed":
            phase = phase - on * _F32(0.3)
    frac = phase - np.floor(phase)
    band = np.clip(1.0 - np.abs(frac - _F32(0.5)) / _F32(0.22), 0.0, 1.0)
    for fx in fractures:
        s = SIDE_SIGN[fx.side or "right"]
        rib = np.floor((a.lung_apex + 0.02) / a.rib_spacing) + fx.params["rib"]
        near = (index == rib) & (x * _F32(s) > 0) & (np.abs(t - _F32(fx.params["t"])) < 0.04)
        # acute: a gap between displaced fragments; healed: a bright callus at the old break
        band = band * (1.0 - near) if fx.severity != "healed" else band + 0.8 * near
    in_cage = ramp(t - _F32(a.thorax_half_width + 0.05), 0.04) * (t > -0.02)
    in_cage = (
        in_cage
        * ramp(_F32(a.lung_apex - 0.08) - rib_y, 0.04)
        * ramp(rib_y - _F32(a.lung_base + 0.05), 0.04)
    )
    anterior = np.cos((y + _F32(0.45) * t) * _F32(2 * np.pi / (a.rib_spacing * 1.6))) > 0.55
    return band * in_cage + 0.35 * anterior * in_cage * (t > 0.15)


def _devices(fr: _Frame, f: Finding) -> np.ndarray:
    """Metal and tubing: bright lines and a pacemaker box."""
    x, y = fr.x, fr.y
    device = f.params["device"]
    if device == "endotracheal_tube":
        tip = -0.20 - f.params.get("tip_cm", 4) * UNITS_PER_CM
        d = polyline_distance(x, y, np.array([[0.0, -1.2], [0.005, tip]]))
        return 0.35 * ramp(d - 0.016, fr.edge)
    if device == "central_line":
        s = SIDE_SIGN[f.side or "right"]
        pts = bezier((s * 0.62, -0.82), (s * 0.10, -0.72), (-0.04, -0.18), 14)
        d = polyline_distance(x, y, pts)
        return 0.30 * ramp(d - 0.009, fr.edge)
    if device == "pacemaker":
        s = SIDE_SIGN[f.side or "left"]
        cx, cy = s * 0.52, -0.56
        box = ramp(np.maximum(np.abs(x - _F32(cx)) - 0.07, np.abs(y - _F32(cy)) - 0.045), fr.edge)
        img = 0.6 * box
        targets = [(-0.06, 0.38), (-0.16, 0.10)][: f.params.get("leads", 1)]
        for tx, ty in targets:
            pts = bezier((cx, cy), (s * 0.05, -0.55), (tx, ty), 14)
            img = np.maximum(img, 0.4 * ramp(polyline_distance(x, y, pts) - 0.007, fr.edge))
        return img
    raise ValueError(f"unknown device {device!r}")


def _lung_finding(fr: _Frame, f: Finding) -> np.ndarray:
    """Additive brightness of a parenchymal or pleural finding (0 where it does not sit)."""
    x, y, a = fr.x, fr.y, fr.anatomy
    weight = 0.6 if f.status == "uncertain" else 1.0
    out = np.zeros_like(x)
    for side in fr.sides(f.side):
        s = SIDE_SIGN[side]
        lung = fr.lung[side]
        if f.type == "pleural_effusion":
            height = {"small": 0.11, "moderate": 0.25, "large": 0.45}[f.severity]
            base = a.lung_base - (a.right_dome_lift if side == "right" else 0.0)
            lateral = np.clip((x * _F32(s) - 0.05) / _F32(a.thorax_half_width), 0.0, 1.2)
            level = _F32(base - height) - _F32(0.10 + height * 0.3) * lateral**2  # meniscus
            fluid = np.clip((y - level) / _F32(0.05), 0.0, 1.0)
            out += _F32(0.33 * weight) * fluid * lung  # hidden behind the heart, as on a film
        elif f.type == "consolidation":
            cy = _ZONE_Y[f.zone or "lower"]
            g = sum(
                gaussian(x, y, s * 0.40 + dx, cy + dy, sig, sig * 0.8)
                for dx, dy, sig in f.params["blobs"]
            )
            dense = np.clip((g - 0.35) * 2.5, 0.0, 1.0)
            sev = 0.30 if f.severity == "moderate" else 0.22
            out += _F32(sev * weight) * dense * lung
        elif f.type == "lung_opacity":
            cy = _ZONE_Y[f.zone or "lower"]
            env = gaussian(x, y, s * 0.42, cy, 0.2, 0.13)
            tex = smooth_noise(
                np.random.default_rng(f.params["texture"] + int(s > 0)), x.shape[0], 9
            )
            patchy = np.clip(env * (0.7 + 0.45 * tex), 0.0, 1.0)
            out += _F32(0.17 * weight) * patchy * lung
        elif f.type in ("nodule", "mass"):
            if side != f.side:
                continue
            r = f.params["size_mm"] / 20.0 * UNITS_PER_CM
            cx = s * (0.42 + f.params["dx"])
            cy = _ZONE_Y[f.zone or "middle"] + f.params["dy"]
            disc = ramp(ellipse_f(x, y, cx, cy, r, r * 0.92), fr.edge)
            out += _F32((0.30 if f.type == "mass" else 0.26) * weight) * disc
        elif f.type == "atelectasis":
            base = a.lung_base - (a.right_dome_lift if side == "right" else 0.0)
            cy = base - 0.17 + f.params["dy"]
            thick = 0.022 if f.params["form"] == "plate-like" else 0.013
            band = ramp(ellipse_f(x, y, s * 0.40, cy, 0.16, thick, f.params["tilt"] * s), fr.edge)
            out += _F32(0.24 * weight) * band * lung
        elif f.type == "pleural_thickening":
            # an apical cap and a lateral rim, never along the mediastinal border
            rim = (
                (fr.lung_f[side] > -0.035)
                & (y < -0.2)
                & ((x * _F32(s) > 0.35) | (y < a.lung_apex + 0.12))
            )
            out += _F32(0.16 * weight) * rim * lung
    if f.type == "edema":
        sev = {"mild": 0.10, "moderate": 0.17, "severe": 0.25}[f.severity] * weight
        haze = gaussian(np.abs(x), y, 0.18, -0.02, 0.30, 0.32)
        tex = 0.8 + 0.3 * smooth_noise(fr.rng, x.shape[0], 16)
        out += _F32(sev) * haze * tex * (fr.lung["right"] + fr.lung["left"])
    return out


def _pneumothoraces(
    x, y, a: Anatomy, lung: dict[str, np.ndarray], findings: tuple[Finding, ...], edge: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(lung masks where markings show, image change) for the study's pneumothoraces.

    The lung edge is lost and the markings stop at a visible pleural line.
    """
    markings_mask = {side: lung[side].copy() for side in lung}
    img_delta = np.zeros_like(x)
    for f in findings:
        if f.type != "pneumothorax":
            continue
        s = SIDE_SIGN[f.side or "right"]
        k = {"small": 0.13, "moderate": 0.26, "large": 0.42}[f.severity]
        ax, ay = s * 0.30, 0.35  # collapse towards the hilum and base
        shrunk = _lung_f(
            ax + (x - ax) / _F32(1 - k), ay + (y - ay) / _F32(1 - k), a, f.side or "right"
        )
        inner = ramp(shrunk, edge)
        rim = lung[f.side or "right"] * (1.0 - inner)
        markings_mask[f.side or "right"] *= inner
        line = np.clip(1.0 - np.abs(shrunk) / _F32(0.012), 0.0, 1.0) * lung[f.side or "right"]
        weight = 0.6 if f.status == "uncertain" else 1.0
        img_delta += _F32(weight) * (0.12 * line - 0.07 * rim)
    return markings_mask, img_delta


def render_frontal(
    anatomy: Anatomy, pose: Pose, findings: tuple[Finding, ...], size: int, rng: np.random.Generator
) -> np.ndarray:
    """The frontal view as uint8 (size x size)."""
    a = anatomy
    by_type = {f.type: f for f in findings}
    if "cardiomegaly" in by_type:
        a = a.with_ctr(by_type["cardiomegaly"].params["ctr"])
    a = replace(a, lung_base=a.lung_base + pose.inspiration)
    x, y = body_grid(size, pose)
    edge = max(3.0 / size, 0.02)  # organ borders are soft on a film

    shoulder_top = -0.80 + 0.22 * np.maximum(np.abs(x) - 0.3, 0.0) ** 2
    trunk = np.maximum(ellipse_f(x, y, 0.0, 0.12, a.body_half_width, 1.25), shoulder_top - y)
    neck = np.abs(x) - 0.23
    body = ramp(np.minimum(trunk, neck), edge * 2)
    thickness = (
        0.85 + 0.15 * np.clip(np.abs(x) / a.body_half_width, 0, 1) ** 4 + 0.1 * np.clip(y, 0, 1)
    )

    med_w = a.mediastinum_half_width
    if "widened_mediastinum" in by_type:
        med_w = by_type["widened_mediastinum"].params["half_width"]
    knob = 0.05 * gaussian(x, y, 0.12, -0.30, 0.06, 0.07)
    upper = y < a.heart_center_y - 0.2
    mediastinum = ramp(np.abs(x - 0.01) - _F32(med_w) - knob, edge) * upper
    hcx = a.heart_half_width * 0.33  # a third right of the midline, two thirds left
    heart = ramp(
        ellipse_f(x, y, hcx, a.heart_center_y, a.heart_half_width, a.heart_half_height, -16), edge
    )

    lung_f = {side: _lung_f(x, y, a, side) for side in ("right", "left")}
    keep = (1.0 - heart) * (1.0 - mediastinum)
    lung = {side: ramp(f, edge) * keep for side, f in lung_f.items()}

    markings_mask, img_delta = _pneumothoraces(x, y, a, lung, findings, edge)

    hila = gaussian(np.abs(x), y, 0.16, -0.05, 0.35, 0.40)
    vessels = np.clip(smooth_noise(rng, size, max(8, size // 6)), -1.0, 2.0)
    markings = (0.45 + 0.55 * hila) * (0.55 + 0.45 * vessels)
    lungs = lung["right"] + lung["left"]
    marked = markings_mask["right"] + markings_mask["left"]

    spine = ramp(np.abs(x) - 0.065, edge) * (0.75 + 0.25 * np.cos(y * _F32(2 * np.pi / 0.105)))
    trachea = ramp(np.abs(x) - 0.032, edge) * ramp(y - _F32(-0.16), edge) * (y > -1.1)
    fractures = [f for f in findings if f.type == "fracture"]
    ribs = _ribs(x, y, a, fractures, edge)
    u = np.abs(x) - _F32(0.07)  # clavicles: gentle S from the sternum to the shoulders
    clav_y = _F32(-0.66) - _F32(0.25) * u + _F32(0.22) * u * u
    clavicles = ramp(np.abs(y - clav_y) - 0.026, edge) * (u > 0) * ramp(u - _F32(0.62), edge)
    bubble = ramp(ellipse_f(x, y, 0.36, a.lung_base + 0.08, 0.10, 0.055), edge * 2)

    # Lungs are darkest at the periphery and upper zones, where the least tissue overlaps.
    lucency = 0.30 + 0.06 * np.clip(-y, 0, 1) + 0.04 * (1.0 - hila)
    img = 0.05 + 0.50 * body * thickness + 0.03 * heart + 0.05 * mediastinum
    img = img - lucency * lungs + 0.10 * marked * markings + img_delta
    img = img + 0.06 * spine * body - 0.10 * trachea + 0.13 * clavicles - 0.10 * bubble * body
    img = img + 0.10 * ribs * (0.35 + 0.65 * lungs) * body
    for f in findings:
        if f.type == "support_device":
            img = img + _devices(_Frame(x, y, edge, a, lung_f, lung, rng), f)
        elif f.type not in ("cardiomegaly", "widened_mediastinum", "pneumothorax", "fracture"):
            img = img + _lung_finding(_Frame(x, y, edge, a, lung_f, lung, rng), f)
    return _finish(img, rng, size)


def render_lateral(
    anatomy: Anatomy, pose: Pose, findings: tuple[Finding, ...], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A simpler lateral view: anterior on the left, spine on the right, one lung field."""
    a = anatomy
    by_type = {f.type: f for f in findings}
    ctr = by_type["cardiomegaly"].params["ctr"] if "cardiomegaly" in by_type else a.ctr
    x, y = body_grid(size, pose)
    edge = 3.0 / size
    base = a.lung_base + pose.inspiration
    body = ramp(ellipse_f(x, y, 0.02, 0.12, 0.80, 1.08), edge * 2)
    lung_f = np.maximum(
        ellipse_f(x, y, 0.05, -0.02, 0.62, 0.70),
        y - (base - 0.14 * (1 - ((x - 0.05) / 0.7) ** 2)),
    )
    heart = ramp(ellipse_f(x, y, -0.24, base - 0.18, 0.66 * ctr, 0.32, 25), edge)
    lung = ramp(lung_f, edge) * (1 - heart)
    spine_x = 0.62
    vertebra = np.cos(y * _F32(2 * np.pi / 0.12)) > -0.6
    spine = ramp(np.abs(x - spine_x) - 0.08, edge) * vertebra
    sternum = ramp(np.abs(x + 0.70 + 0.05 * y) - 0.02, edge) * (np.abs(y + 0.25) < 0.45)
    vessels = smooth_noise(rng, size, max(8, size // 6))
    img = 0.05 + 0.48 * body - 0.30 * lung + 0.05 * lung * (0.6 + 0.4 * vessels)
    img = img + 0.04 * heart + 0.18 * spine * body + 0.10 * sternum
    for f in findings:
        weight = 0.6 if f.status == "uncertain" else 1.0
        if f.type == "pleural_effusion":
            height = {"small": 0.06, "moderate": 0.2, "large": 0.38}[f.severity]
            level = base - height - 0.25 * np.clip(x, 0.0, 1.0) ** 2  # posterior sulcus first
            img = img + _F32(0.30 * weight) * np.clip((y - level) / 0.05, 0, 1) * lung
        elif f.type in ("consolidation", "lung_opacity"):
            cy = _ZONE_Y[f.zone or "lower"]
            blob = gaussian(x, y, 0.15, cy, 0.18, 0.11)
            img = img + _F32((0.22 if f.type == "consolidation" else 0.12) * weight) * blob * lung
        elif f.type in ("nodule", "mass"):
            r = f.params["size_mm"] / 20.0 * UNITS_PER_CM
            cy = _ZONE_Y[f.zone or "middle"] + f.params["dy"]
            img = img + _F32(0.24 * weight) * ramp(
                ellipse_f(x, y, 0.1 + f.params["dx"], cy, r, r), edge
            )
        elif f.type == "edema":
            img = img + _F32(0.12 * weight) * gaussian(x, y, 0.05, -0.05, 0.35, 0.35) * lung
        elif f.type == "atelectasis":
            band = ramp(ellipse_f(x, y, 0.15, base - 0.16, 0.25, 0.014, 8), edge)
            img = img + _F32(0.2 * weight) * band * lung
        elif f.type == "support_device" and f.params["device"] == "endotracheal_tube":
            tip = -0.2 - f.params.get("tip_cm", 4) * UNITS_PER_CM
            d = polyline_distance(x, y, np.array([[-0.05, -1.2], [0.0, tip]]))
            img = img + 0.3 * ramp(d - 0.015, edge)
        elif f.type == "support_device" and f.params["device"] == "pacemaker":
            box = ramp(np.maximum(np.abs(x + 0.55) - 0.05, np.abs(y + 0.5) - 0.06), edge)
            img = img + 0.55 * box
    return _finish(img, rng, size)


def _finish(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Detector look: exposure and gamma jitter, low-frequency mottle and quantum noise."""
    img = img + 0.025 * smooth_noise(rng, size, 4)
    img = img * _F32(rng.uniform(0.92, 1.08)) + _F32(rng.uniform(-0.03, 0.03))
    img = np.clip(img, 0.0, 1.0) ** _F32(rng.uniform(0.85, 1.15))
    img = img + rng.normal(0.0, rng.uniform(0.012, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
