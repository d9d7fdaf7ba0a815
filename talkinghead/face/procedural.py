"""A procedural, BFM-like face model that needs no downloaded files.

:func:`make_procedural_model` builds a :class:`~talkinghead.face.morphable.MorphableModel`
with the dimensions of the BFM-in-Deng model (identity 80, expression 64, texture 80) and
the same units and placement: model units of about a decimetre, face centred near the
origin, facing +z, so that at translation 0 the project's camera (z = 10, focal 1015 px)
sees it about 2/3 of a 224 crop wide.

How it is built (all in numpy, then handed to torch):

* **Mesh.** Points are laid out in a 2-D *canonical* plane (x right, y up): a hexagonal
  lattice inside a convex face outline, 1.8 times as dense around the eyes and mouth,
  plus points on feature curves (outline, eyelid margins, iris and pupil circles, inner
  and outer lip lines) and the 68 landmarks. A Delaunay triangulation of those points
  gives one disk-shaped front surface without holes. In the canonical plane the mouth is
  a lens-shaped band between the inner lip lines; the neutral face squeezes that band
  (and only it) into a thin slit, so closed lips have all the vertices an open mouth
  needs: the band becomes the dark, recessed mouth cavity when the jaw opens.
* **Neutral shape.** A height field ``z(x, y)``: a rounded head front plus smooth bumps
  and dips (forehead, brow ridge, eye sockets, nose, cheeks, lips, chin). Inside the eye
  openings the surface is the eyeball (sclera, iris, pupil in the albedo); the lids hug
  the eyeball with a small step at the lid margin.
* **Expression basis.** Units at fixed indices (:data:`EXPRESSION_UNITS`): a coefficient
  of 1.0 is the full action (jaw fully open, lids closed, ...). They are linear fields, so
  they combine linearly. Units 7..63 are small random localised bumps (full rank).
* **Identity / texture bases.** Named smooth variations first (face width, length,
  depth, jaw, nose, chin, cheeks, eye spacing, ...; skin tone, redness, lip colour, brow
  darkness, iris colour, ...), then random smooth fields with decreasing amplitude. Only
  these random parts depend on ``seed``.

Mesh density: the coarse lattice spacing is ``1.6 / resolution`` model units (the face is
1.52 wide); the vertex count grows as about ``1.62 * resolution**2``: 64 (the default) ->
~6.8k vertices / ~13.3k triangles; 148 -> ~35k vertices / ~70k triangles (BFM size).
``target_vertices`` picks the resolution for a wanted vertex count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay, cKDTree

from talkinghead.errors import ConfigError
from talkinghead.face.coeffs import EXP_DIM, ID_DIM, TEX_DIM
from talkinghead.face.morphable import MorphableModel

#: Named expression units and their fixed index in the 64-d expression vector. A
#: coefficient of 1.0 is the full action; units combine linearly.
EXPRESSION_UNITS: dict[str, int] = {
    "jaw_open": 0,
    "lip_round": 1,
    "lip_spread": 2,
    "lip_close": 3,
    "smile": 4,
    "blink": 5,
    "brow_raise": 6,
}

#: Named identity components (index in the 80-d identity vector); the rest are random.
IDENTITY_COMPONENTS: dict[str, int] = {
    name: i
    for i, name in enumerate(
        [
            "face_width", "face_length", "face_depth", "jaw_width", "nose_length", "nose_protrusion",
            "chin_length", "cheek_fullness", "eye_spacing", "nose_width", "chin_protrusion", "brow_ridge",
            "lip_thickness", "mouth_width", "eye_size", "forehead_slope", "mouth_height", "eye_height",
            "asymmetry",
        ]
    )
}

#: Named texture components (index in the 80-d texture vector); the rest are random.
TEXTURE_COMPONENTS: dict[str, int] = {
    name: i
    for i, name in enumerate(
        [
            "skin_tone", "redness", "olive", "lip_colour", "brow_darkness", "cheek_blush", "iris_colour",
            "under_eye", "beard_shadow", "nose_redness", "forehead_light",
        ]
    )
}

#: The coarse lattice spacing is this / resolution (the face outline is 1.52 units wide).
_LATTICE_SPAN = 1.6
#: The lattice around the eyes and mouth is this many times denser (per unit length).
_DENSE_FACTOR = 1.8
#: Vertices per resolution**2 (measured; see the module docstring).
_VERTICES_PER_RES2 = 1.62


# ------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class _Layout:
    """Where the parts of the neutral face are (model units, x right, y up, z to camera)."""

    # outline: two half-superellipses (top, bottom) around (0, outline_y)
    outline_y: float = -0.05
    outline_half_width: float = 0.76
    outline_top: float = 1.0
    outline_bottom: float = 0.97
    outline_power_top: float = 2.6
    outline_power_bottom: float = 2.1
    # eyes (the subject's right eye is at -x, image left)
    eye_x: float = 0.315
    eye_y: float = 0.215
    eye_half_width: float = 0.15
    eye_upper: float = 0.05
    eye_lower: float = 0.04
    eye_tilt: float = 0.012
    eye_close_at: float = 0.3  # lids meet this far up the opening (0 = lower lid line)
    eyeball_axes: tuple = (0.19, 0.16, 0.10)  # ellipsoid cap semi-axes x, y, depth
    iris_radius: float = 0.053
    iris_lift: float = 0.004  # iris centre above the eye centre (the upper lid covers its top)
    pupil_radius: float = 0.02
    lid_thickness: float = 0.014
    # brows
    brow_y: float = 0.40
    # nose
    nasion_y: float = 0.30
    nose_tip_y: float = -0.12
    subnasale_y: float = -0.215
    # mouth
    mouth_y: float = -0.47
    mouth_half_width: float = 0.245
    mouth_band: float = 0.075  # canonical half-height of the mouth-interior band at the centre
    mouth_slit: float = 0.001  # neutral slit height / canonical band height (closed lips)
    lip_zone: float = 0.16  # canonical height above/below the band that takes up the squeeze
    lip_outer_extra: float = 0.014  # outer lip corners (48/54) lie this far beyond the inner ones
    upper_lip_height: float = 0.075
    lower_lip_height: float = 0.095
    # chin
    chin_y: float = -0.86


#: The neutral face's layout (a short name, as it is used everywhere below).
L = _Layout()


def _smoothstep(edge0, edge1, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(u, v=0.0):
    return np.exp(-0.5 * (np.square(u) + np.square(v)))


# --------------------------------------------------------------------------- outline
def _outline_radius(theta: np.ndarray) -> np.ndarray:
    """Polar radius of the convex face outline around (0, outline_y)."""
    top = np.sin(theta) >= 0
    n = np.where(top, L.outline_power_top, L.outline_power_bottom)
    b = np.where(top, L.outline_top, L.outline_bottom)
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    return 1.0 / ((c / L.outline_half_width) ** n + (s / b) ** n) ** (1.0 / n)


def _outline_point(theta: np.ndarray, inset: float = 0.0) -> np.ndarray:
    r = _outline_radius(theta) - inset
    return np.stack([r * np.cos(theta), L.outline_y + r * np.sin(theta)], -1)


def _outline_half_width(y: np.ndarray) -> np.ndarray:
    """Half width of the outline at height ``y`` (0 outside)."""
    t = y - L.outline_y
    top = t >= 0
    n = np.where(top, L.outline_power_top, L.outline_power_bottom)
    b = np.where(top, L.outline_top, L.outline_bottom)
    return L.outline_half_width * np.clip(1.0 - np.abs(t / b) ** n, 0.0, 1.0) ** (1.0 / n)


def _inside_outline(p: np.ndarray, inset: float) -> np.ndarray:
    d = p - np.array([0.0, L.outline_y])
    theta = np.arctan2(d[:, 1], d[:, 0])
    return np.hypot(d[:, 0], d[:, 1]) < _outline_radius(theta) - inset


# ------------------------------------------------------------------------------ eyes
def _lid_lines(x: np.ndarray, side: int):
    """Upper and lower lid-margin heights of eye ``side`` (-1: image left, +1: right) at
    ``x``; returns (sigma = position across the eye in [-1, 1], y_upper, y_lower)."""
    ex = side * L.eye_x
    sigma = (x - ex) / L.eye_half_width
    outer = sigma * side  # +1 at the outer corner
    shape = np.clip(1.0 - sigma * sigma, 0.0, 1.0)
    base = L.eye_y + L.eye_tilt * outer
    upper = base + L.eye_upper * (1.0 - 0.12 * outer) * shape**0.75
    lower = base - L.eye_lower * shape**0.9
    return sigma, upper, lower


def _eyeball_height(x: np.ndarray, y: np.ndarray, side: int, apex: float) -> np.ndarray:
    ax, ay, depth = L.eyeball_axes
    u = (x - side * L.eye_x) / ax
    v = (y - L.eye_y) / ay
    return apex - depth + depth * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))


def _iris_centre(side: int) -> tuple[float, float]:
    return side * L.eye_x, L.eye_y + L.iris_lift


# ----------------------------------------------------------------------------- mouth
def _band_half_height(x: np.ndarray) -> np.ndarray:
    """Canonical half-height of the mouth-interior band (0 beyond the mouth corners)."""
    return L.mouth_band * np.clip(1.0 - (x / L.mouth_half_width) ** 2, 0.0, 1.0)


def _squeeze_y(x: np.ndarray, y_canonical: np.ndarray) -> np.ndarray:
    """Canonical -> neutral height: the mouth band shrinks to a slit, the lip zone around it
    stretches to take up the difference; monotone in y, identity elsewhere."""
    h = _band_half_height(x)
    hn = L.mouth_slit * h
    d = y_canonical - L.mouth_y
    a = np.abs(d)
    zone = h + L.lip_zone
    inner = L.mouth_slit * a
    lip = hn + (a - h) * (zone - hn) / L.lip_zone
    out = np.where(a <= h, inner, np.where(a <= zone, lip, a))
    return np.where((h > 0) & (a < zone), L.mouth_y + np.sign(d) * out, y_canonical)


def _unsqueeze_y(x: np.ndarray, y_neutral: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_squeeze_y`."""
    h = _band_half_height(x)
    hn = L.mouth_slit * h
    d = y_neutral - L.mouth_y
    a = np.abs(d)
    zone = h + L.lip_zone
    inner = a / L.mouth_slit
    lip = h + (a - hn) * L.lip_zone / (zone - hn)
    out = np.where(a <= hn, inner, np.where(a <= zone, lip, a))
    return np.where((h > 0) & (a < zone), L.mouth_y + np.sign(d) * out, y_neutral)


def _outer_lip_heights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights above / below the mouth line of the outer lip contour (vermilion border)."""
    reach = L.mouth_half_width + L.lip_outer_extra
    t = np.clip(1.0 - (x / reach) ** 2, 0.0, 1.0)
    ax = np.abs(x)
    bow = 1.0 + 0.16 * _gauss((ax - 0.065) / 0.035) - 0.16 * _gauss(ax / 0.025)  # Cupid's bow
    return L.upper_lip_height * t**0.55 * bow, L.lower_lip_height * t**0.6


# ---------------------------------------------------------------------------- height
def _nose_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Protrusion of the nose over the face (0 away from it)."""
    # profile along y: bridge rising from the nasion to the tip, falling to the subnasale
    prof_y = np.array([0.36, L.nasion_y, 0.12, -0.04, L.nose_tip_y, -0.175, L.subnasale_y, -0.26])
    prof_h = np.array([0.0, 0.035, 0.11, 0.21, 0.27, 0.18, 0.045, 0.0])
    width_h = np.array([0.05, 0.045, 0.05, 0.06, 0.075, 0.09, 0.09, 0.09])
    order = np.argsort(prof_y)
    height = np.interp(y, prof_y[order], prof_h[order])
    width = np.interp(y, prof_y[order], width_h[order])
    ridge = height * _gauss(x / width)
    tip = 0.035 * _gauss(x / 0.045, (y - L.nose_tip_y - 0.005) / 0.045)
    wings = 0.085 * _gauss((np.abs(x) - 0.085) / 0.04, (y + 0.165) / 0.045)
    return ridge + tip + wings


def _face_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Neutral skin height z(x, y), before the eye and mouth-interior overrides."""
    # rounded head front: an ellipse across x whose width follows the outline (kept wide
    # enough near the top and bottom that the forehead and chin stay round, not ridged)
    half = _outline_half_width(y)
    floor = np.where(y > L.outline_y, 0.6, 0.35)
    across = np.clip(np.abs(x) / (np.maximum(half, floor) + 0.07), 0.0, 1.0)
    z = -0.12 + 0.62 * np.sqrt(1.0 - across**2)
    z -= 0.32 * _smoothstep(0.55, 1.0, y) ** 1.6  # forehead curving back
    z -= 0.30 * _smoothstep(-0.78, -1.08, y) ** 1.4  # under the chin
    ax = np.abs(x)
    z += 0.045 * _gauss((ax - 0.26) / 0.2, (y - L.brow_y + 0.01) / 0.06)  # brow ridge
    z += 0.02 * _gauss(x / 0.08, (y - 0.37) / 0.06)  # glabella
    z -= 0.13 * _gauss((ax - L.eye_x) / 0.14, (y - L.eye_y + 0.01) / 0.1)  # eye sockets
    z += _nose_height(x, y)
    z += 0.045 * _gauss((ax - 0.36) / 0.14, (y + 0.06) / 0.13)  # cheeks
    z += 0.03 * _gauss((ax - 0.52) / 0.1, (y - 0.06) / 0.08)  # cheekbones
    z -= 0.035 * _gauss((ax - 0.66) / 0.08, (y - 0.36) / 0.14)  # temples
    z += 0.10 * _gauss(x / 0.27, (y - L.mouth_y) / 0.22)  # muzzle
    z += 0.035 * _gauss(x / 0.19, (y - L.mouth_y - 0.045) / 0.035)  # upper lip
    z += 0.045 * _gauss(x / 0.17, (y - L.mouth_y + 0.05) / 0.04)  # lower lip
    z -= 0.01 * _gauss(x / 0.2, (y - L.mouth_y) / 0.01)  # lip line
    z -= 0.008 * _gauss(x / 0.016, (y - L.mouth_y - 0.14) / 0.05)  # philtrum
    z -= 0.03 * _gauss(x / 0.15, (y - L.mouth_y + 0.17) / 0.04)  # mentolabial sulcus
    z += 0.07 * _gauss(x / 0.14, (y - L.chin_y) / 0.11)  # chin
    return z


# --------------------------------------------------------------------------- vertices
@dataclass
class _Vertices:
    """Per-vertex positions and region tags of the generated mesh (numpy arrays, [N])."""

    X: np.ndarray  # canonical plane (mouth band open)
    Y: np.ndarray
    x: np.ndarray  # neutral position
    y: np.ndarray
    z: np.ndarray
    mouth_interior: np.ndarray  # bool: inside the mouth band (the cavity)
    r: np.ndarray  # position across the band: +1 upper inner lip, -1 lower (0 outside)
    eye_inside: np.ndarray  # bool: eyeball surface (inside an eye opening)
    lip: np.ndarray  # bool: lips (between outer contour and inner lip line)
    eye_apex: float  # z of the eyeball apex

    @property
    def n(self) -> int:
        return self.X.shape[0]


def _hex_lattice(spacing: float, half_width: float, y0: float, y1: float) -> np.ndarray:
    rows = np.arange(y0, y1 + spacing, spacing * math.sqrt(3.0) / 2.0)
    cols = np.arange(-half_width, half_width + spacing, spacing)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows))[:, None] % 2) * spacing / 2.0
    return np.stack([gx.ravel(), gy.ravel()], -1)


def _in_ellipses(p: np.ndarray, ellipses, grow: float = 0.0) -> np.ndarray:
    inside = np.zeros(len(p), dtype=bool)
    for cx, cy, ax, ay in ellipses:
        inside |= ((p[:, 0] - cx) / (ax + grow)) ** 2 + ((p[:, 1] - cy) / (ay + grow)) ** 2 < 1.0
    return inside


def _curve_points(xs: np.ndarray, ys: np.ndarray, spacing: float) -> np.ndarray:
    """Resample a dense polyline to points ``spacing`` apart (end points included)."""
    seg = np.hypot(np.diff(xs), np.diff(ys))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    count = max(int(round(arc[-1] / spacing)), 1)
    s = np.linspace(0.0, arc[-1], count + 1)
    return np.stack([np.interp(s, arc, xs), np.interp(s, arc, ys)], -1)


def _graph_points(curve, x0: float, x1: float, spacing: float) -> np.ndarray:
    """Points ``spacing`` apart (by arc length) on the graph ``y = curve(x)``, x in [x0, x1],
    lying exactly on the curve (so region tests on them are exact)."""
    xs = np.linspace(x0, x1, 2000)
    xr = _curve_points(xs, curve(xs), spacing)[:, 0]
    return np.stack([xr, curve(xr)], -1)


def _landmarks_canonical() -> np.ndarray:
    """The 68 landmark positions (iBUG order) in the canonical plane ``[68, 2]``."""
    pts = np.zeros((68, 2))
    # jaw line 0-16: just inside the outline from the image-left ear to the right one
    theta = np.deg2rad(np.linspace(172.0, 368.0, 17))
    pts[0:17] = _outline_point(theta, inset=0.045)
    # brows 17-21 (image left, outer -> inner), 22-26 (inner -> outer)
    u = np.linspace(1.0, 0.0, 5)
    bx = 0.1 + 0.4 * u
    by = _brow_line(bx)
    pts[17:22] = np.stack([-bx, by], -1)
    pts[22:27] = np.stack([bx[::-1], by[::-1]], -1)
    # nose bridge 27-30 and nostril base 31-35
    pts[27:31] = np.stack([np.zeros(4), np.linspace(L.nasion_y - 0.01, L.nose_tip_y, 4)], -1)
    pts[31:36] = np.stack([[-0.085, -0.045, 0.0, 0.045, 0.085], [-0.195, -0.208, L.subnasale_y, -0.208, -0.195]], -1)
    # eyes: 36 outer, 37 38 upper, 39 inner, 40 41 lower (image left); 42-47 right eye
    # (left to right along the upper lid, then back along the lower one, for both eyes)
    for first, side in ((36, -1), (42, 1)):
        xs = side * L.eye_x + L.eye_half_width * np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
        _, up, lo = _lid_lines(xs, side)
        ys = np.where(np.arange(6) < 3, up, lo)
        ys[0], ys[3] = up[0], up[3]  # corners: both lines meet
        pts[first:first + 6] = np.stack([xs, ys], -1)
    # outer lips 48-59: corner, upper left->right, corner, lower right->left
    reach = L.mouth_half_width + L.lip_outer_extra
    mw = L.mouth_half_width
    upper_x = np.array([-0.55, -0.27, 0.0, 0.27, 0.55]) * mw
    lower_x = upper_x[::-1]
    hu, _ = _outer_lip_heights(upper_x)
    _, hl = _outer_lip_heights(lower_x)
    outer = np.concatenate(
        [
            [[-reach, L.mouth_y]],
            np.stack([upper_x, L.mouth_y + hu], -1),
            [[reach, L.mouth_y]],
            np.stack([lower_x, L.mouth_y - hl], -1),
        ]
    )
    outer[:, 1] = _unsqueeze_y(outer[:, 0], outer[:, 1])
    pts[48:60] = outer
    # inner lips 60-67: corner, upper left->right, corner, lower right->left (canonical band)
    ix = np.array([-0.5, 0.0, 0.5]) * mw
    band = _band_half_height(ix)
    pts[60] = (-mw, L.mouth_y)
    pts[61:64] = np.stack([ix, L.mouth_y + band], -1)
    pts[64] = (mw, L.mouth_y)
    pts[65:68] = np.stack([ix[::-1], L.mouth_y - band[::-1]], -1)
    return pts


def _brow_line(ax: np.ndarray) -> np.ndarray:
    """Height of the brow centre line at |x| = ``ax`` (inner end near x = 0.1)."""
    u = np.clip((ax - 0.09) / 0.43, 0.0, 1.0)
    return L.brow_y - 0.012 + 0.055 * np.sin(np.pi * 0.85 * u) - 0.03 * u


def _feature_lines(fine: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Points on the feature lines in the canonical plane: (crisp lines, band rows).

    Crisp lines (eyelid margins, iris and pupil circles, inner and outer lip lines) get
    points ``fine / 2`` apart; as every other point stays at least ``0.6 * fine`` away, each
    segment between neighbouring line points is a Gabriel edge, hence a Delaunay edge, so no
    triangle crosses the line and colour/shape boundaries stay sharp. The band rows are
    points ``fine`` apart on curves between the inner lip lines (the mouth cavity)."""
    step = fine / 2.0
    crisp: list[np.ndarray] = []
    for side in (-1, 1):
        x0, x1 = side * L.eye_x - L.eye_half_width, side * L.eye_x + L.eye_half_width
        crisp.append(_graph_points(lambda x, s=side: _lid_lines(x, s)[1], x0, x1, step))
        crisp.append(_graph_points(lambda x, s=side: _lid_lines(x, s)[2], x0, x1, step)[1:-1])
        for radius in (L.iris_radius, L.pupil_radius):
            n = max(int(round(2 * np.pi * radius / step)), 8)
            ang = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
            cx, cy = _iris_centre(side)
            circ = np.stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)], -1)
            _, cu, cl = _lid_lines(circ[:, 0], side)
            keep = (circ[:, 1] < cu - 0.6 * fine) & (circ[:, 1] > cl + 0.6 * fine)
            crisp.append(circ[keep])
    # inner lip lines (the canonical band edges)
    mw = L.mouth_half_width
    for sign in (1.0, -1.0):
        crisp.append(_graph_points(lambda x, s=sign: L.mouth_y + s * _band_half_height(x), -mw, mw, step)[1:-1])
    # outer lip contour (designed in the neutral face, moved to the canonical plane)
    reach = mw + L.lip_outer_extra
    rim = 0.8 * fine  # a second line just outside the contour keeps the lip edge even
    for part, offset in ((0, 0.0), (1, 0.0), (0, rim), (1, rim)):
        sign = 1.0 - 2.0 * part
        pts = _graph_points(
            lambda x, p=part, s=sign, o=offset: L.mouth_y + s * (_outer_lip_heights(x)[p] + o), -reach, reach, step
        )
        pts = pts[np.abs(pts[:, 1] - L.mouth_y) > 0.6 * fine + offset]
        pts[:, 1] = _unsqueeze_y(pts[:, 0], pts[:, 1])
        crisp.append(pts)
    # rows across the mouth band, so the cavity gets regular triangles
    count = int(math.ceil(2.0 * L.mouth_band / fine)) + 1
    rows = [
        _graph_points(lambda x, r=r: L.mouth_y + r * _band_half_height(x), -mw, mw, fine)[1:-1]
        for r in np.linspace(1.0, -1.0, count)[1:-1]
    ]
    return crisp, rows


def _mesh_points(resolution: int) -> np.ndarray:
    """All mesh points in the canonical plane ``[N, 2]``; the 68 landmarks come first."""
    coarse = _LATTICE_SPAN / resolution
    fine = coarse / _DENSE_FACTOR
    dense_regions = [
        (-L.eye_x, L.eye_y, 0.22, 0.13),
        (L.eye_x, L.eye_y, 0.22, 0.13),
        (0.0, L.mouth_y, 0.34, 0.26),
    ]
    # outline boundary, evenly spaced by arc length
    theta = np.linspace(-np.pi, np.pi, 4001)
    ring = _outline_point(theta)
    boundary = _curve_points(ring[:, 0], ring[:, 1], coarse)[:-1]

    lo = L.outline_y - L.outline_bottom
    hi = L.outline_y + L.outline_top
    coarse_grid = _hex_lattice(coarse, L.outline_half_width, lo, hi)
    coarse_grid = coarse_grid[
        _inside_outline(coarse_grid, 0.5 * coarse) & ~_in_ellipses(coarse_grid, dense_regions, grow=0.3 * coarse)
    ]
    fine_grid = _hex_lattice(fine, L.outline_half_width, lo, hi)
    fine_grid = fine_grid[_in_ellipses(fine_grid, dense_regions) & _inside_outline(fine_grid, 0.5 * coarse)]
    in_band = np.abs(fine_grid[:, 1] - L.mouth_y) < _band_half_height(fine_grid[:, 0]) + 0.3 * fine
    fine_grid = fine_grid[~in_band]  # the band has its own rows of points

    # add groups in priority order; a point closer than `gap` to an accepted one is dropped
    crisp, rows = _feature_lines(fine)
    accepted = _landmarks_canonical()
    groups = [(line, 0.25 * fine) for line in crisp]
    groups += [(row, 0.6 * fine) for row in rows]
    groups += [(boundary, 0.5 * coarse), (fine_grid, 0.6 * fine), (coarse_grid, 0.55 * coarse)]
    for pts, gap in groups:
        if len(pts) == 0:
            continue
        dist, _ = cKDTree(accepted).query(pts)
        accepted = np.concatenate([accepted, pts[dist > gap]])
    return accepted


def _triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``[F, 3]``, counter-clockwise in the (x right, y up) plane."""
    tri = Delaunay(points).simplices.astype(np.int64)
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    tri = np.where((area < 0)[:, None], tri[:, [0, 2, 1]], tri)
    return tri[np.abs(area) > 1e-12]


def _build_vertices(points: np.ndarray) -> _Vertices:
    """Neutral positions and region tags of the canonical-plane points."""
    X, Y = points[:, 0], points[:, 1]
    x = X.copy()
    y = _squeeze_y(X, Y)
    z = _face_height(x, y)
    n = len(X)

    # mouth interior: the canonical band (its edge points belong to the lips)
    band = _band_half_height(X)
    d = Y - L.mouth_y
    mouth_interior = np.abs(d) < band - 1e-9
    r = np.where(mouth_interior, d / np.maximum(band, 1e-12), 0.0)
    slit_z = _face_height(x, np.full(n, L.mouth_y))
    z = np.where(mouth_interior, slit_z, z)  # closed: flush with the lips (the slit has no area)
    hu, hl = _outer_lip_heights(x)
    lip = (
        ~mouth_interior
        & (y <= L.mouth_y + hu + 1e-9)
        & (y >= L.mouth_y - hl - 1e-9)
        & (np.abs(x) <= L.mouth_half_width + L.lip_outer_extra)
    )

    # eyes: the eyeball inside the opening, lids hugging it outside
    apex = float(_face_height(np.array([L.eye_x]), np.array([L.eye_y]))[0]) + 0.005
    eye_inside = np.zeros(n, dtype=bool)
    dense = np.linspace(-1.0, 1.0, 600)
    for side in (-1, 1):
        sigma, up, lo = _lid_lines(x, side)
        inside = (np.abs(sigma) < 1.0) & (y < up - 1e-7) & (y > lo + 1e-7)
        eye_inside |= inside
        cx = side * L.eye_x + dense * L.eye_half_width
        _, cu, cl = _lid_lines(cx, side)
        curve = np.concatenate([np.stack([cx, cu], -1), np.stack([cx, cl], -1)])
        dist, _ = cKDTree(curve).query(np.stack([x, y], -1))
        eyeball = _eyeball_height(x, y, side, apex)
        lid = eyeball + L.lid_thickness + 0.3 * dist
        weight = 1.0 - _smoothstep(0.0, 0.075, dist)
        near = (np.abs(x - side * L.eye_x) < 0.4) & ~inside
        z = np.where(inside, eyeball, np.where(near, z + weight * (lid - z), z))
    return _Vertices(X, Y, x, y, z, mouth_interior, r, eye_inside, lip, apex)


def _cavity_profile(r: np.ndarray) -> np.ndarray:
    """Depth profile across the mouth band: 0 at the inner lips, 1 in the middle."""
    return 1.0 - _smoothstep(0.2, 1.0, np.abs(r))


# ------------------------------------------------------------------- expression units
def _mouth_taper(X: np.ndarray) -> np.ndarray:
    """1 at the middle of the mouth, falling to 0 at the corners."""
    return np.clip(1.0 - (X / L.mouth_half_width) ** 2, 0.0, 1.0) ** 0.6


def _jaw_spread(X: np.ndarray) -> np.ndarray:
    """Height over which the jaw weight goes from 0 to 1 (besides the mouth band): nothing in
    the middle of the mouth, more toward the corners (so the opening is lens-shaped) and a
    lot on the cheeks beyond them (the skin stretches smoothly)."""
    return (
        0.25 * (1.0 - _mouth_taper(X))
        + 0.6 * _smoothstep(L.mouth_half_width - 0.03, L.mouth_half_width + 0.35, np.abs(X))
        + 1e-4
    )


def _opening_profile(X: np.ndarray) -> np.ndarray:
    """Fraction of the full lip separation at ``X``: 1 in the middle, 0 at the corners (the
    lens shape of an opening mouth; the same for every unit so that they cancel cleanly)."""
    band = _band_half_height(X)
    return 2.0 * band / (2.0 * band + _jaw_spread(X))


def _mouth_opening(v: _Vertices, up: float, down: float, depth: float) -> np.ndarray:
    """Inner lips part vertically (upper lip +up, lower lip -down, tapering to the corners);
    the band between them stretches and recedes by ``depth`` (the cavity)."""
    taper = _opening_profile(v.X)
    band = _band_half_height(v.X)
    d = v.Y - L.mouth_y
    upper = 1.0 - _smoothstep(0.0, 0.12, d - band)
    lower = 1.0 - _smoothstep(0.0, 0.14, -d - band)
    across = (v.r + 1.0) / 2.0
    dy = np.where(v.mouth_interior, -down + (up + down) * across, np.where(d > 0, up * upper, -down * lower))
    dz = np.where(v.mouth_interior, -depth * _cavity_profile(v.r), 0.0)
    out = np.zeros((v.n, 3))
    out[:, 1] = taper * dy
    out[:, 2] = taper * dz
    return out


def _jaw_weight(v: _Vertices) -> np.ndarray:
    """How much each vertex follows the jaw: 1 below the mouth, 0 above; the step is sharp
    across the mouth band and widens toward the cheeks."""
    band = _band_half_height(v.X)
    return np.clip(0.5 - (v.Y - L.mouth_y) / (2.0 * band + _jaw_spread(v.X)), 0.0, 1.0)


def _unit_jaw_open(v: _Vertices) -> np.ndarray:
    angle = 0.2  # radians of jaw rotation for a fully open mouth
    pivot = np.array([0.0, -0.15, -0.9])
    w = _jaw_weight(v)
    rel = np.stack([v.x, v.y, v.z], -1) - pivot
    out = np.zeros((v.n, 3))
    out[:, 1] = -angle * rel[:, 2] * w
    out[:, 2] = angle * rel[:, 1] * w
    taper = _mouth_taper(v.X)
    out[:, 2] += np.where(v.mouth_interior, -0.2 * taper * _cavity_profile(v.r), 0.0)
    return out


def _unit_lip_round(v: _Vertices) -> np.ndarray:
    d = v.y - L.mouth_y
    out = _mouth_opening(v, up=0.018, down=0.03, depth=0.06)
    out[:, 0] += -0.5 * v.x * _gauss(v.x / 0.42, d / 0.2)
    out[:, 2] += 0.08 * _gauss(v.x / 0.22, d / 0.13)
    return out


def _unit_lip_spread(v: _Vertices) -> np.ndarray:
    d = v.y - L.mouth_y
    out = _mouth_opening(v, up=0.008, down=0.022, depth=0.04)
    w = _gauss(v.x / 0.45, d / 0.18)
    out[:, 0] += 0.3 * v.x * w
    out[:, 1] += 0.012 * w * _smoothstep(0.05, 0.25, np.abs(v.x))
    out[:, 2] += -0.025 * _gauss(v.x / 0.3, d / 0.15)
    return out


def _unit_lip_close(v: _Vertices) -> np.ndarray:
    """Lips pressed together: the inner lips move toward each other (closing a gap of about
    0.046, i.e. jaw_open ~0.15), the lower lip tucks under the upper one."""
    out = _mouth_opening(v, up=-0.014, down=-0.032, depth=0.0)
    d = v.Y - L.mouth_y
    near = _gauss(v.x / 0.25, (v.y - L.mouth_y) / 0.1)
    out[:, 2] += np.where(d < 0, -0.02, -0.008) * near
    return out


def _unit_smile(v: _Vertices) -> np.ndarray:
    out = _mouth_opening(v, up=0.012, down=0.028, depth=0.05)
    d = v.y - L.mouth_y
    for side in (-1.0, 1.0):
        w = _gauss((v.x - side * L.mouth_half_width) / 0.13, d / 0.11)
        out[:, 0] += side * 0.065 * w
        out[:, 1] += 0.07 * w
        out[:, 2] += -0.035 * w
    cheeks = _gauss((np.abs(v.x) - 0.33) / 0.12, (v.y + 0.12) / 0.11)
    out[:, 1] += 0.035 * cheeks
    out[:, 2] += 0.03 * cheeks
    for side in (-1, 1):  # the cheeks push the skin under the lower lids up (a Duchenne smile)
        sigma, _, lo = _lid_lines(v.x, side)
        below = lo - v.y  # >= 0 under the lower lid; the lid margin itself stays put
        bulge = _smoothstep(0.0, 0.025, below) * (1.0 - _smoothstep(0.03, 0.1, below))
        bulge *= np.clip(1.0 - sigma**2, 0.0, 1.0) * (below >= 0)
        out[:, 1] += 0.01 * bulge
        out[:, 2] += 0.008 * bulge
    return out


def _unit_blink(v: _Vertices) -> np.ndarray:
    """Upper and lower lids meet at ``eye_close_at`` of the opening; the eyeball surface
    between them shrinks to that line and the lid skin slides over the eyeball."""
    out = np.zeros((v.n, 3))
    for side in (-1, 1):
        sigma, up, lo = _lid_lines(v.x, side)
        within = np.abs(sigma) < 1.0
        close = lo + L.eye_close_at * (up - lo)
        above = v.y >= up - 1e-7
        below = v.y <= lo + 1e-7
        f_up = 1.0 - _smoothstep(0.0, 0.1, v.y - up)
        f_lo = 1.0 - _smoothstep(0.0, 0.06, lo - v.y)
        ball_close = _eyeball_height(v.x, close, side, v.eye_apex)
        dy = np.where(above, (close - up) * f_up, np.where(below, (close - lo) * f_lo, close - v.y))
        dz = np.where(
            above,
            f_up * (ball_close - _eyeball_height(v.x, up, side, v.eye_apex)),
            np.where(below, f_lo * (ball_close - _eyeball_height(v.x, lo, side, v.eye_apex)), ball_close - 0.004 - v.z),
        )
        out[:, 1] += np.where(within, dy, 0.0)
        out[:, 2] += np.where(within, dz, 0.0)
    return out


def _unit_brow_raise(v: _Vertices) -> np.ndarray:
    rise = _smoothstep(L.eye_y + 0.06, L.brow_y, v.y) * (1.0 - 0.6 * _smoothstep(L.brow_y + 0.05, 0.95, v.y))
    across = 0.4 + 0.6 * _gauss((np.abs(v.x) - 0.3) / 0.25)
    out = np.zeros((v.n, 3))
    out[:, 1] = 0.065 * rise * across
    out[:, 2] = 0.01 * rise * across
    return out


_UNIT_FIELDS = {
    "jaw_open": _unit_jaw_open,
    "lip_round": _unit_lip_round,
    "lip_spread": _unit_lip_spread,
    "lip_close": _unit_lip_close,
    "smile": _unit_smile,
    "blink": _unit_blink,
    "brow_raise": _unit_brow_raise,
}


def _random_bumps(
    v: _Vertices, rng: np.random.Generator, count: int, radius: tuple, amplitude: np.ndarray
) -> np.ndarray:
    """``count`` smooth localised displacement fields ``[N, 3, count]``."""
    pos = np.stack([v.x, v.y, v.z], -1)
    centres = pos[rng.integers(0, v.n, size=count)]
    radii = rng.uniform(*radius, size=count)
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dist2 = ((pos[:, None, :2] - centres[None, :, :2]) ** 2).sum(-1)  # [N, count]
    weight = np.exp(-0.5 * dist2 / radii**2)
    return weight[:, None, :] * (dirs.T * amplitude)[None]


def _expression_basis(v: _Vertices, rng: np.random.Generator) -> np.ndarray:
    basis = np.zeros((v.n, 3, EXP_DIM))
    for name, index in EXPRESSION_UNITS.items():
        basis[:, :, index] = _UNIT_FIELDS[name](v)
    extra = EXP_DIM - len(EXPRESSION_UNITS)
    basis[:, :, len(EXPRESSION_UNITS):] = _random_bumps(v, rng, extra, (0.06, 0.16), np.full(extra, 0.01))
    return basis


# -------------------------------------------------------------------- identity basis
def _identity_basis(v: _Vertices, rng: np.random.Generator) -> np.ndarray:
    x, y, z = v.x, v.y, v.z
    ax, sx = np.abs(x), np.sign(x)
    zero = np.zeros(v.n)
    mouth = _gauss(x / 0.35, (y - L.mouth_y) / 0.15)
    named = {
        "face_width": (0.045 * x / 0.76, zero, zero),
        "face_length": (zero, 0.05 * y, zero),
        "face_depth": (zero, zero, 0.06 * (z - 0.3)),
        "jaw_width": (0.04 * x / 0.5 * (1.0 - _smoothstep(-0.6, -0.05, y)), zero, zero),
        "nose_length": (zero, -0.025 * _gauss(x / 0.13, (y + 0.12) / 0.1), zero),
        "nose_protrusion": (zero, zero, 0.13 * _nose_height(x, y)),
        "chin_length": (zero, -0.035 * (1.0 - _smoothstep(-0.95, -0.6, y)) * _gauss(x / 0.4), zero),
        "cheek_fullness": (0.012 * sx * _gauss((ax - 0.4) / 0.13, (y + 0.2) / 0.15), zero,
                           0.025 * _gauss((ax - 0.4) / 0.13, (y + 0.2) / 0.15)),
        "eye_spacing": (0.015 * sx * _gauss((ax - L.eye_x) / 0.15, (y - L.eye_y) / 0.12), zero, zero),
        "nose_width": (0.02 * x / 0.1 * _gauss(x / 0.12, (y + 0.15) / 0.07), zero, zero),
        "chin_protrusion": (zero, zero, 0.03 * _gauss(x / 0.15, (y - L.chin_y) / 0.12)),
        "brow_ridge": (zero, zero, 0.022 * _gauss((ax - 0.25) / 0.18, (y - L.brow_y) / 0.06)),
        "lip_thickness": (zero, 0.18 * (y - L.mouth_y) * _gauss(x / 0.25, (y - L.mouth_y) / 0.1), zero),
        "mouth_width": (0.1 * x * mouth, zero, zero),
        "eye_size": None,
        "forehead_slope": (zero, zero, -0.04 * _smoothstep(0.4, 0.95, y)),
        "mouth_height": (zero, 0.02 * _gauss(x / 0.35, (y - L.mouth_y) / 0.2), zero),
        "eye_height": (zero, 0.015 * _gauss((ax - L.eye_x) / 0.2, (y - L.eye_y) / 0.15), zero),
        "asymmetry": (zero, 0.012 * x / 0.76, 0.015 * x / 0.76),
    }
    eye = np.zeros((v.n, 3))
    for side in (-1, 1):
        w = 0.08 * _gauss((x - side * L.eye_x) / 0.17, (y - L.eye_y) / 0.12)
        eye[:, 0] += w * (x - side * L.eye_x)
        eye[:, 1] += w * (y - L.eye_y)
    named["eye_size"] = tuple(eye.T)
    basis = np.zeros((v.n, 3, ID_DIM))
    for name, index in IDENTITY_COMPONENTS.items():
        basis[:, :, index] = np.stack(named[name], -1)
    extra = ID_DIM - len(IDENTITY_COMPONENTS)
    amplitude = np.geomspace(0.02, 0.006, extra)
    basis[:, :, len(IDENTITY_COMPONENTS):] = _random_bumps(v, rng, extra, (0.12, 0.35), amplitude)
    return basis


# --------------------------------------------------------------------------- albedo
_SKIN = np.array([0.80, 0.60, 0.50])
_LIP = np.array([0.72, 0.38, 0.38])
_LIP_LINE = np.array([0.55, 0.27, 0.27])
_BROW = np.array([0.30, 0.22, 0.17])
_SCLERA = np.array([0.93, 0.91, 0.88])
_IRIS = np.array([0.36, 0.23, 0.13])
_PUPIL = np.array([0.03, 0.03, 0.03])
_LASH = np.array([0.12, 0.09, 0.08])
_CAVITY = np.array([0.10, 0.035, 0.035])
_TEETH = np.array([0.88, 0.85, 0.78])
_TONGUE = np.array([0.55, 0.22, 0.22])


def _mix(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return base + np.clip(weight, 0.0, 1.0)[:, None] * (colour - base)


def _on_outer_lip_line(v: _Vertices) -> np.ndarray:
    """1.0 for vertices on the outer lip contour (the vermilion border), else 0.0."""
    hu, hl = _outer_lip_heights(v.x)
    d = v.y - L.mouth_y
    gap = np.minimum(np.abs(d - hu), np.abs(d + hl))
    return (v.lip & (gap < 1e-7) & (np.abs(d) > 1e-6)).astype(float)


def _region_weights(v: _Vertices) -> dict[str, np.ndarray]:
    x, y = v.x, v.y
    ax = np.abs(x)
    brow_d = np.abs(y - _brow_line(ax))
    brow_u = np.clip((ax - 0.09) / 0.43, 0.0, 1.0)
    brow_half = 0.026 - 0.01 * brow_u
    along = _smoothstep(0.07, 0.11, ax) * (1.0 - _smoothstep(0.5, 0.56, ax))  # inner end to tail
    brow = (1.0 - _smoothstep(brow_half * 0.4, brow_half * 1.5, brow_d)) * along
    skin = (~v.eye_inside & ~v.mouth_interior).astype(float)
    return {"brow": brow * skin, "skin": skin}


def _mean_albedo(v: _Vertices) -> np.ndarray:
    x, y, n = v.x, v.y, v.n
    ax = np.abs(x)
    albedo = np.tile(_SKIN, (n, 1))
    albedo += np.array([0.04, -0.015, -0.01]) * _gauss((ax - 0.36) / 0.13, (y + 0.08) / 0.12)[:, None]  # cheeks
    albedo += np.array([0.035, -0.01, -0.01]) * _gauss(x / 0.06, (y - L.nose_tip_y) / 0.06)[:, None]  # nose tip
    albedo += np.array([0.02, 0.02, 0.02]) * _smoothstep(0.3, 0.8, y)[:, None]  # lighter forehead
    half = np.maximum(_outline_half_width(y), 0.05)
    albedo -= np.array([0.05, 0.05, 0.04]) * _smoothstep(0.75, 1.0, ax / half)[:, None]  # face edge
    regions = _region_weights(v)
    albedo = _mix(albedo, _BROW, regions["brow"])
    # lips: full colour inside the vermilion border, part colour on it (a soft, even edge)
    lip = np.where(v.lip, 1.0, 0.0) - 0.4 * _on_outer_lip_line(v)
    albedo = _mix(albedo, _LIP, lip)
    inner_edge = v.lip & (np.abs(np.abs(v.Y - L.mouth_y) - _band_half_height(v.X)) < 1e-9)
    albedo = _mix(albedo, _LIP_LINE, inner_edge.astype(float))  # the line where the lips meet
    # eyes: lashes along the margins, sclera / iris / pupil inside
    for side in (-1, 1):
        sigma, up, lo = _lid_lines(x, side)
        within = np.abs(sigma) < 1.0
        lash_up = (1.0 - _smoothstep(0.004, 0.016, y - up)) * (y >= up - 1e-7) * within
        lash_up *= 1.0 - _smoothstep(0.9, 1.0, np.abs(sigma))
        lash_lo = 0.35 * (1.0 - _smoothstep(0.002, 0.01, lo - y)) * (y <= lo + 1e-7) * within
        lash_lo *= 1.0 - _smoothstep(0.75, 0.95, np.abs(sigma))
        albedo = _mix(albedo, _LASH, lash_up + lash_lo)
        inside = v.eye_inside & (np.sign(x) == side)
        rad = np.hypot(x - side * L.eye_x, y - _iris_centre(side)[1])
        eye = np.tile(_SCLERA, (n, 1))
        eye = _mix(eye, np.array([0.8, 0.6, 0.58]), _smoothstep(0.55, 0.95, np.abs(sigma)))  # pink corners
        eye = _mix(eye, np.array([0.6, 0.52, 0.5]), 0.6 * (1.0 - _smoothstep(0.0, 0.02, up - y)))  # lid shadow
        iris = _IRIS * (1.0 - 0.35 * _smoothstep(0.6, 1.0, rad / L.iris_radius))[:, None]
        eye = np.where((rad <= L.iris_radius + 1e-9)[:, None], iris, eye)
        eye = np.where((rad <= L.pupil_radius + 1e-9)[:, None], _PUPIL, eye)
        albedo = np.where(inside[:, None], eye, albedo)
    # mouth cavity: dark, upper teeth under the upper lip, tongue low in the middle
    r = v.r
    cavity = np.tile(_CAVITY, (n, 1))
    teeth = _smoothstep(0.3, 0.45, r) * (1.0 - _smoothstep(0.9, 0.98, r)) * _mouth_taper(x) ** 0.5
    cavity = _mix(cavity, _TEETH, teeth)
    cavity = _mix(cavity, _TONGUE, 0.6 * _gauss((r + 0.55) / 0.2) * _mouth_taper(x))
    albedo = np.where(v.mouth_interior[:, None], cavity, albedo)
    # nostrils
    nostril = _gauss((ax - 0.045) / 0.02, (y + 0.198) / 0.012)
    albedo = _mix(albedo, np.array([0.25, 0.12, 0.1]), nostril)
    return np.clip(albedo, 0.0, 1.0)


def _texture_basis(v: _Vertices, rng: np.random.Generator) -> np.ndarray:
    x, y = v.x, v.y
    ax = np.abs(x)
    regions = _region_weights(v)
    skin = regions["skin"]
    hu, hl = _outer_lip_heights(x)
    d = y - L.mouth_y
    lip = ((d <= hu) & (d >= -hl) & ~v.mouth_interior).astype(float)
    iris = np.zeros(v.n)
    under_eye = np.zeros(v.n)
    for side in (-1, 1):
        rad = np.hypot(x - side * L.eye_x, y - _iris_centre(side)[1])
        iris += (v.eye_inside & (rad <= L.iris_radius) & (rad > L.pupil_radius)).astype(float)
        under_eye += _gauss((x - side * L.eye_x) / 0.1, (y - L.eye_y + 0.08) / 0.035)
    lower_face = (1.0 - _smoothstep(-0.45, -0.2, y)) * (1.0 - lip) * skin
    lower_face += _gauss(x / 0.2, (y - L.mouth_y - 0.14) / 0.05) * (1.0 - lip)  # moustache area
    named = {
        "skin_tone": (skin, [0.08, 0.07, 0.06]),
        "redness": (skin, [0.035, -0.01, -0.015]),
        "olive": (skin, [0.0, 0.012, -0.02]),
        "lip_colour": (lip, [0.06, -0.04, -0.02]),
        "brow_darkness": (regions["brow"], [-0.08, -0.07, -0.06]),
        "cheek_blush": (_gauss((ax - 0.36) / 0.12, (y + 0.08) / 0.12) * skin, [0.04, -0.01, -0.01]),
        "iris_colour": (iris, [-0.12, 0.02, 0.14]),
        "under_eye": (under_eye * skin, [-0.035, -0.035, -0.02]),
        "beard_shadow": (np.clip(lower_face, 0, 1), [-0.05, -0.04, -0.03]),
        "nose_redness": (_gauss(x / 0.09, (y + 0.08) / 0.1) * skin, [0.03, -0.01, -0.01]),
        "forehead_light": (_smoothstep(0.2, 0.9, y) * skin, [0.025, 0.025, 0.025]),
    }
    basis = np.zeros((v.n, 3, TEX_DIM))
    for name, index in TEXTURE_COMPONENTS.items():
        weight, colour = named[name]
        basis[:, :, index] = weight[:, None] * np.asarray(colour)
    extra = TEX_DIM - len(TEXTURE_COMPONENTS)
    pos = np.stack([x, y], -1)
    centres = pos[rng.integers(0, v.n, size=extra)]
    radii = rng.uniform(0.08, 0.3, size=extra)
    colours = rng.normal(size=(extra, 3)) * 0.25 + rng.normal(size=(extra, 1))  # mostly brightness
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    amplitude = np.geomspace(0.012, 0.003, extra)
    weight = np.exp(-0.5 * ((pos[:, None] - centres[None]) ** 2).sum(-1) / radii**2) * skin[:, None]  # [N, extra]
    basis[:, :, len(TEXTURE_COMPONENTS):] = weight[:, None, :] * (colours.T * amplitude)[None]
    return basis


# ---------------------------------------------------------------------------- public
def resolution_for_vertices(target_vertices: int) -> int:
    """The ``resolution`` that gives about ``target_vertices`` vertices."""
    return max(8, int(round(math.sqrt(target_vertices / _VERTICES_PER_RES2))))


def make_procedural_model(seed: int = 0, resolution: int = 64, target_vertices: int | None = None) -> MorphableModel:
    """Build the procedural face model (deterministic for a given ``seed`` and density).

    Args:
        seed: seeds the random identity, expression (units 7..63) and texture components.
        resolution: mesh density; about ``1.62 * resolution**2`` vertices (64 -> ~6.8k,
            148 -> ~35k).
        target_vertices: if given, overrides ``resolution`` to get about this many vertices.
    """
    if target_vertices is not None:
        resolution = resolution_for_vertices(int(target_vertices))
    if int(resolution) < 8:
        raise ConfigError(f"procedural face model: resolution must be at least 8, got {resolution}; use e.g. 64")
    if int(seed) < 0:
        raise ConfigError(f"procedural face model: seed must be a non-negative integer, got {seed}")
    points = _mesh_points(int(resolution))
    triangles = _triangulate(points)
    v = _build_vertices(points)
    mean_shape = np.stack([v.x, v.y, v.z], -1)
    exp_basis = _expression_basis(v, np.random.default_rng([seed, 1]))
    id_basis = _identity_basis(v, np.random.default_rng([seed, 2]))
    tex_basis = _texture_basis(v, np.random.default_rng([seed, 3]))
    mouth = np.nonzero(v.lip | v.mouth_interior)[0]
    skin_mask = ~(v.eye_inside | v.mouth_interior)
    return MorphableModel(
        mean_shape=mean_shape,
        id_basis=id_basis.reshape(v.n * 3, ID_DIM),
        exp_basis=exp_basis.reshape(v.n * 3, EXP_DIM),
        mean_albedo=_mean_albedo(v),
        tex_basis=tex_basis.reshape(v.n * 3, TEX_DIM),
        triangles=triangles,
        landmark_indices=np.arange(68),
        skin_mask=skin_mask,
        mouth_indices=mouth,
        name="procedural",
        metadata={
            "source": "procedural",
            "seed": int(seed),
            "resolution": int(resolution),
            "expression_units": EXPRESSION_UNITS,
        },
    )
