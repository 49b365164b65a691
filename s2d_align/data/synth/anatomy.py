"""Body geometry of a synthetic chest radiograph and the vectorised shape helpers that draw it.

Coordinates are normalised: ``x`` and ``y`` run over [-1, 1] across the image, ``y`` grows
downwards. In the frontal (PA) view the patient's right side is on the image's left, as on a real
film, so "left pleural effusion" is drawn on the right half of the picture. One unit is roughly
20 cm of patient, which fixes how big a 1.5 cm nodule is.

Every helper works on whole pixel grids (numpy broadcasting); nothing loops over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: Sign of ``x`` for a patient side in the frontal view (patient right = image left).
SIDE_SIGN = {"right": -1.0, "left": 1.0}
#: Normalised units per centimetre of patient.
UNITS_PER_CM = 0.05


@dataclass(frozen=True)
class Anatomy:
    """One patient's thorax. Findings such as cardiomegaly change a copy of it."""

    thorax_half_width: float = 0.74  # midline to the lateral lung edge
    lung_apex: float = -0.72  # y of the lung apices
    lung_base: float = 0.60  # y of the costophrenic angles
    dome_height: float = 0.21  # how far the diaphragm domes rise above the angles
    right_dome_lift: float = 0.05  # the right hemidiaphragm sits higher (liver)
    heart_half_width: float = 0.33  # cardiothoracic ratio = heart / thorax half widths
    heart_center_y: float = 0.31
    heart_half_height: float = 0.30
    mediastinum_half_width: float = 0.105
    body_half_width: float = 0.93
    rib_spacing: float = 0.125
    rib_phase: float = 0.0  # shifts the rib pattern up or down

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio: maximal heart width over maximal inner thoracic width."""
        return self.heart_half_width / self.thorax_half_width

    def with_ctr(self, ctr: float) -> Anatomy:
        return replace(self, heart_half_width=ctr * self.thorax_half_width)


@dataclass(frozen=True)
class Pose:
    """Positioning of the patient on the detector: small rotation, shift and magnification."""

    angle_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    inspiration: float = 0.0  # + deeper breath: the diaphragm sits lower


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A normal thorax with patient-to-patient variation (normal CTR between 0.40 and 0.48)."""
    thorax = float(rng.uniform(0.70, 0.78))
    return Anatomy(
        thorax_half_width=thorax,
        lung_apex=float(rng.uniform(-0.76, -0.68)),
        lung_base=float(rng.uniform(0.56, 0.64)),
        dome_height=float(rng.uniform(0.18, 0.24)),
        right_dome_lift=float(rng.uniform(0.02, 0.07)),
        heart_half_width=float(rng.uniform(0.40, 0.48)) * thorax,
        heart_center_y=float(rng.uniform(0.28, 0.34)),
        heart_half_height=float(rng.uniform(0.28, 0.32)),
        mediastinum_half_width=float(rng.uniform(0.095, 0.115)),
        body_half_width=float(rng.uniform(0.88, 0.97)),
        rib_spacing=float(rng.uniform(0.118, 0.132)),
        rib_phase=float(rng.uniform(0.0, 0.12)),
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        angle_deg=float(rng.uniform(-3.5, 3.5)),
        shift_x=float(rng.uniform(-0.04, 0.04)),
        shift_y=float(rng.uniform(-0.04, 0.04)),
        scale=float(rng.uniform(0.94, 1.04)),
        inspiration=float(rng.uniform(-0.03, 0.03)),
    )


def body_grid(size: int, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates of every pixel centre: the inverse of the pose applied to the image grid.

    Drawing in body coordinates means rotation, shift and scale cost nothing and never resample.
    """
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    xi, yi = np.meshgrid(axis, axis)
    theta = np.deg2rad(pose.angle_deg)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    xs, ys = xi - np.float32(pose.shift_x), yi - np.float32(pose.shift_y)
    inv = np.float32(1.0 / pose.scale)
    return (c * xs + s * ys) * inv, (-s * xs + c * ys) * inv


def ramp(f: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask of an implicit shape (``f < 0`` inside), antialiased over ``width``."""
    return np.clip(0.5 - f / np.float32(width), 0.0, 1.0)


def ellipse_f(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, tilt_deg: float = 0.0
) -> np.ndarray:
    """Approximate signed distance to an (optionally tilted) ellipse."""
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        c, s = np.float32(np.cos(t)), np.float32(np.sin(t))
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (np.hypot(dx / np.float32(rx), dy / np.float32(ry)) - 1.0) * np.float32(min(rx, ry))


def polyline_distance(
    x: np.ndarray, y: np.ndarray, points: np.ndarray, reach: float = 0.1
) -> np.ndarray:
    """Distance from every pixel to a polyline given as a (K, 2) array of points.

    Only pixels within ``reach`` of the polyline's bounding box are measured (the others get
    ``reach``): lines are thin, and measuring the whole grid against every segment is slow.
    """
    pts = np.asarray(points, dtype=np.float32)
    (x0, y0), (x1, y1) = pts.min(axis=0) - reach, pts.max(axis=0) + reach
    near = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    out = np.full(x.shape, reach, dtype=np.float32)
    px, py = x[near], y[near]
    p0 = pts[:-1]
    seg = pts[1:] - p0
    length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
    dx = px[:, None] - p0[:, 0]
    dy = py[:, None] - p0[:, 1]
    t = np.clip((dx * seg[:, 0] + dy * seg[:, 1]) / length2, 0.0, 1.0)
    ex = dx - t * seg[:, 0]
    ey = dy - t * seg[:, 1]
    out[near] = np.minimum(np.sqrt((ex * ex + ey * ey).min(axis=-1)), reach)
    return out


def bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 12):
    """Points of a quadratic Bezier curve (tubes and leads are drawn along these)."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    a, b, c = (np.asarray(p, dtype=np.float32) for p in (p0, p1, p2))
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (zero mean, unit-ish variance): coarse noise upsampled bicubically."""
    from PIL import Image

    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def gaussian(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float):
    return np.exp(-(((x - np.float32(cx)) / sx) ** 2 + ((y - np.float32(cy)) / sy) ** 2) * 0.5)
