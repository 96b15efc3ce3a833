"""Per-vertex albedo for the shape-only ICT-FaceKit model.

The Viola-Jones detector the pipeline uses (Section III-B) keys on the
contrast between dark brows/eyes/mouth and the lighter cheeks and nose
bridge; a flat-grey face is not found. The model has no texture, so this
module paints region albedo on the vertices: skin (per-subject tone, cheek
redness), brows, eyelid lash lines, sclera/iris/pupil, lips, nostrils, mouth
interior, hair with a per-subject hairline and optional beard. Region
weights are computed once on the generic neutral mesh: vertices correspond
across identities and follow the blendshapes, so a painted brow moves with
``browInnerUp``.

Colours are linear RGB in [0, 1] (pyrender multiplies vertex colour after
lighting and applies the display gamma itself).

Under the ``wide`` variation (``cmcnn-synth --variation wide``) a subject
is drawn from wider ranges (:func:`subject_appearance`): a skin ramp
extended at both ends with an olive/pink undertone, hair brightness
x0.7-1.3, lipstick on some subjects, fainter or heavier brows, receding
hairlines, more beards, a stronger or weaker orbital shadow and cavity
darkening, and a per-subject skin roughness (matte to oily). A model that
only ever saw ``classic`` skins can key on their narrow palette; these
ranges make the face's colour a nuisance to ignore rather than a cue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from .expressions import check_variation
from .facekit import (BACK_HEAD_VERTICES, EYE_SOCKET_VERTICES, EYEBALL_VERTICES, FACE_VERTICES,
                      GUMS_TONGUE_VERTICES, MOUTH_SOCKET_VERTICES, TEETH_VERTICES, load_facekit,
                      subject_rng)

RGB = Tuple[float, float, float]

# sRGB albedo anchors from very light to very dark skin; a subject's tone is
# drawn along this ramp (plus a small hue jitter).
_SKIN_RAMP_SRGB = np.array([
    [0.96, 0.80, 0.70],
    [0.90, 0.72, 0.60],
    [0.80, 0.60, 0.46],
    [0.66, 0.46, 0.33],
    [0.50, 0.33, 0.23],
    [0.36, 0.23, 0.16],
], dtype=np.float64)
_HAIR_SRGB = np.array([
    [0.08, 0.06, 0.05],   # black
    [0.20, 0.13, 0.08],   # dark brown
    [0.38, 0.25, 0.15],   # brown
    [0.62, 0.48, 0.30],   # dark blond
    [0.50, 0.22, 0.10],   # red
    [0.55, 0.53, 0.50],   # grey
], dtype=np.float64)
_HAIR_P = np.array([0.30, 0.30, 0.18, 0.09, 0.05, 0.08])
_IRIS_SRGB = np.array([
    [0.25, 0.14, 0.07], [0.40, 0.26, 0.12], [0.30, 0.42, 0.55], [0.35, 0.42, 0.28],
], dtype=np.float64)

# ``wide``: the classic ramp extended by a lighter and a darker anchor.
_SKIN_RAMP_WIDE_SRGB = np.vstack([[0.97, 0.84, 0.76], _SKIN_RAMP_SRGB, [0.25, 0.16, 0.11]])
_LIPSTICK_SRGB = np.array([[0.62, 0.10, 0.16], [0.70, 0.30, 0.35], [0.45, 0.12, 0.15]], dtype=np.float64)

_STREAM_APPEARANCE = 1
_STREAM_APPEARANCE_WIDE = 4


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to linear light (the exact piecewise curve)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@dataclass(frozen=True)
class SubjectAppearance:
    """Deterministic look of one synthetic subject (all colours sRGB in [0, 1]).

    Attributes:
        skin: base skin albedo.
        hair: hair, brow and beard colour.
        lips: lip colour.
        iris: iris colour.
        brow_strength: 0..1 opacity of the painted brows.
        brow_width_cm: half-thickness of the brow band at its inner end.
        hairline_cm: height (model y, cm) of the front hairline.
        beard: 0..1 opacity of beard/stubble (0 = clean-shaven).
        redness: 0..1 cheek/nose flush.
        roughness: material roughness of the skin (0.65 classic; lower is glossier).
    """

    skin: RGB
    hair: RGB
    lips: RGB
    iris: RGB
    brow_strength: float
    brow_width_cm: float
    hairline_cm: float
    beard: float
    redness: float
    roughness: float = 0.65


def subject_appearance(subject_id: int, variation: str = "classic") -> SubjectAppearance:
    """Draw the seeded appearance of a subject.

    Args:
        subject_id: the subject.
        variation: ``"classic"`` or ``"wide"`` (wider ranges, module docstring).

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
        ExpressionError: unknown variation.
    """
    if check_variation(variation) == "wide":
        return _wide_appearance(subject_id)
    rng = subject_rng(subject_id, _STREAM_APPEARANCE)
    t = rng.uniform(0.0, len(_SKIN_RAMP_SRGB) - 1.0)
    i = min(int(t), len(_SKIN_RAMP_SRGB) - 2)
    skin = _SKIN_RAMP_SRGB[i] * (1 - (t - i)) + _SKIN_RAMP_SRGB[i + 1] * (t - i)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair = _HAIR_SRGB[rng.choice(len(_HAIR_SRGB), p=_HAIR_P)] * rng.uniform(0.85, 1.15)
    # Brows and lashes stay darker than light skin even for blond or grey
    # hair, as in real faces (and Haar needs it).
    lips = np.clip(skin * np.array([0.86, 0.66, 0.66]) + np.array([0.04, 0.0, 0.01]), 0, 1)
    lips = lips * rng.uniform(0.85, 1.05)
    iris = _IRIS_SRGB[rng.integers(len(_IRIS_SRGB))] * rng.uniform(0.8, 1.2)
    beard = float(rng.uniform(0.25, 0.75)) if rng.random() < 0.18 else 0.0
    return SubjectAppearance(
        skin=tuple(np.clip(skin, 0, 1)), hair=tuple(np.clip(hair, 0, 1)),
        lips=tuple(np.clip(lips, 0, 1)), iris=tuple(np.clip(iris, 0, 1)),
        brow_strength=float(rng.uniform(0.65, 1.0)), brow_width_cm=float(rng.uniform(0.45, 0.7)),
        hairline_cm=float(rng.uniform(8.5, 11.0)), beard=beard, redness=float(rng.uniform(0.0, 0.6)))


def _ramp(ramp: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation along a colour ramp at position ``t`` in ``[0, len - 1]``."""
    i = min(int(t), len(ramp) - 2)
    return ramp[i] * (1 - (t - i)) + ramp[i + 1] * (t - i)


def _wide_appearance(subject_id: int) -> SubjectAppearance:
    """``subject_appearance`` under the ``wide`` variation (its own subject stream)."""
    rng = subject_rng(subject_id, _STREAM_APPEARANCE_WIDE)
    skin = _ramp(_SKIN_RAMP_WIDE_SRGB, float(rng.uniform(0.0, len(_SKIN_RAMP_WIDE_SRGB) - 1.0)))
    undertone = float(rng.uniform(-0.05, 0.07))       # > 0 olive/yellow, < 0 pink
    skin = skin * np.array([1.0, 1.0 + undertone, 1.0 - undertone]) * rng.uniform(0.92, 1.08)
    skin = np.clip(skin * rng.uniform(0.97, 1.03, 3), 0, 1)
    hair = _HAIR_SRGB[rng.choice(len(_HAIR_SRGB), p=_HAIR_P)] * rng.uniform(0.7, 1.3)
    lips = np.clip(skin * np.array([0.86, 0.66, 0.66]) + np.array([0.04, 0.0, 0.01]), 0, 1)
    lips = lips * rng.uniform(0.75, 1.1)
    if rng.random() < 0.12:                           # lipstick
        paint = _LIPSTICK_SRGB[rng.integers(len(_LIPSTICK_SRGB))]
        lips = lips + float(rng.uniform(0.4, 0.8)) * (paint - lips)
    iris = _IRIS_SRGB[rng.integers(len(_IRIS_SRGB))] * rng.uniform(0.7, 1.3)
    beard = float(rng.uniform(0.15, 0.85)) if rng.random() < 0.25 else 0.0
    return SubjectAppearance(
        skin=tuple(np.clip(skin, 0, 1)), hair=tuple(np.clip(hair, 0, 1)),
        lips=tuple(np.clip(lips, 0, 1)), iris=tuple(np.clip(iris, 0, 1)),
        brow_strength=float(rng.uniform(0.5, 1.0)), brow_width_cm=float(rng.uniform(0.35, 0.8)),
        hairline_cm=float(rng.uniform(7.5, 13.5)), beard=beard, redness=float(rng.uniform(0.0, 0.75)),
        roughness=float(rng.uniform(0.45, 0.85)))


# ---------------------------------------------------------------- region masks

def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distance of 2-D points ``p`` to segment ab and the position t in [0, 1] along it."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    d = np.linalg.norm(p - (a + t[:, None] * ab), axis=1)
    return d, t


def _polyline_distance(p: np.ndarray, pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distance to a 2-D polyline and arc-length fraction (0 at its first point)."""
    seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    best = np.full(len(p), np.inf)
    frac = np.zeros(len(p))
    for k in range(len(pts) - 1):
        d, t = _segment_distance(p, pts[k], pts[k + 1])
        better = d < best
        best[better] = d[better]
        frac[better] = (cum[k] + t[better] * seg_len[k]) / cum[-1]
    return best, frac


def _inside_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for 2-D points."""
    inside = np.zeros(len(p), dtype=bool)
    x, y = p[:, 0], p[:, 1]
    for k in range(len(poly)):
        x1, y1 = poly[k]
        x2, y2 = poly[(k + 1) % len(poly)]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xc)
    return inside


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class RegionMasks:
    """Soft per-vertex weights in [0, 1] of each painted region (neutral mesh)."""

    brow_dist: np.ndarray       # cm from the brow centre line (inf off the face front)
    brow_frac: np.ndarray       # 0 at the inner brow end, 1 at the outer end
    lash: np.ndarray            # upper lid lash line and lower lid rim
    lips: np.ndarray
    nostril: np.ndarray
    cheeks: np.ndarray          # flush region
    beard: np.ndarray           # jaw, chin and upper-lip beard area
    hair_height: np.ndarray     # model y minus the local hairline offset (compare to a hairline)
    cavity: np.ndarray          # 0..1 baked occlusion darkening of concave areas
    orbit: np.ndarray           # 0..1 soft orbital shadow around each eye
    mouth_inside: np.ndarray    # mouth socket, gums, tongue
    teeth: np.ndarray
    eye_socket: np.ndarray
    iris_angle: np.ndarray      # degrees off the eyeball's forward axis (eyeball vertices), else inf


def _vertex_mask(n: int, rng_: Tuple[int, int]) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[rng_[0]:rng_[1]] = True
    return m


def _cavity(verts: np.ndarray, tris: np.ndarray, iterations: int = 12) -> np.ndarray:
    """Concavity from the offset of each vertex against its smoothed neighbourhood.

    A cheap stand-in for ambient occlusion: eye sockets, the sides of the
    nose and the mouth corners are darker in real photographs.
    """
    n = len(verts)
    normals = vertex_normals(verts, tris)
    i = np.concatenate([tris[:, 0], tris[:, 1], tris[:, 2], tris[:, 1], tris[:, 2], tris[:, 0]])
    j = np.concatenate([tris[:, 1], tris[:, 2], tris[:, 0], tris[:, 0], tris[:, 1], tris[:, 2]])
    deg = np.bincount(i, minlength=n).astype(np.float64)
    deg[deg == 0] = 1
    smooth = verts.astype(np.float64).copy()
    for _ in range(iterations):
        acc = np.stack([np.bincount(i, weights=smooth[j, c], minlength=n) for c in range(3)], 1)
        smooth = 0.5 * smooth + 0.5 * acc / deg[:, None]
    depth = np.einsum("ij,ij->i", smooth - verts, normals)   # > 0: vertex lies below its surroundings
    return np.clip(depth / 0.6, 0.0, 1.0)


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` float32."""
    v0, v1, v2 = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    fn = np.cross(v1 - v0, v2 - v0)
    n = len(verts)
    idx = tris.reshape(-1)
    out = np.empty((n, 3), dtype=np.float64)
    for c in range(3):
        out[:, c] = np.bincount(idx, weights=np.repeat(fn[:, c], 3), minlength=n)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    norm[norm == 0] = 1
    return (out / norm).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _model_incidence():
    """Sparse ``(V, 3F)`` vertex-corner incidence of the model's triangles."""
    from scipy import sparse
    model = load_facekit()
    tris = model.triangles
    n_f = len(tris)
    rows = tris.reshape(-1)
    cols = np.repeat(np.arange(n_f), 3)
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(model.num_vertices, n_f))


def model_vertex_normals(verts: np.ndarray) -> np.ndarray:
    """Vertex normals of a posed model mesh (same topology as the model), fast path."""
    tris = load_facekit().triangles
    v = verts.astype(np.float32, copy=False)
    v0 = v[tris[:, 0]]
    fn = np.cross(v[tris[:, 1]] - v0, v[tris[:, 2]] - v0)
    out = _model_incidence() @ fn
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    norm[norm == 0] = 1
    return (out / norm).astype(np.float32)


@functools.lru_cache(maxsize=1)
def region_masks() -> RegionMasks:
    """Compute the region weights once from the generic neutral mesh."""
    model = load_facekit()
    v = model.neutral.astype(np.float64)
    n = len(v)
    lm = v[model.landmarks68]
    xy = v[:, :2]
    face = _vertex_mask(n, FACE_VERTICES)
    front = face & (v[:, 2] > 4.0)

    # Brows: a band along landmarks 17-21 / 22-26 (Multi-PIE marks the upper
    # brow edge, so the band centre sits a little below them).
    brow_dist = np.full(n, np.inf)
    brow_frac = np.zeros(n)
    for ids, _inner_first in ((list(range(21, 16, -1)), True), (list(range(22, 27)), True)):
        pts = lm[ids, :2] + np.array([0.0, -0.25])
        # Extend the outer end down and outward the way brows taper.
        d, f = _polyline_distance(xy, pts)
        sel = front & (d < brow_dist)
        brow_dist[sel] = d[sel]
        brow_frac[sel] = f[sel]

    # Lash line along the upper lids (36-39, 42-45) and a fainter lower rim.
    lash = np.zeros(n)
    for upper, lower in (([36, 37, 38, 39], [39, 40, 41, 36]), ([42, 43, 44, 45], [45, 46, 47, 42])):
        du, _ = _polyline_distance(xy, lm[upper, :2] + np.array([0.0, 0.05]))
        dl, _ = _polyline_distance(xy, lm[lower, :2])
        lash = np.maximum(lash, 1.0 - _smoothstep(0.12, 0.32, du))
        lash = np.maximum(lash, 0.45 * (1.0 - _smoothstep(0.05, 0.2, dl)))
    lash[~front] = 0.0

    # Lips: inside the outer lip contour 48-59, softened at the border.
    outer = lm[48:60, :2]
    dl, _ = _polyline_distance(xy, np.vstack([outer, outer[:1]]))
    lips = np.where(_inside_polygon(xy, outer), 1.0 - 0.6 * (1 - _smoothstep(0.0, 0.15, dl)), 0.0)
    lips[~front] = 0.0

    # Nostrils: the undersides beside 31-35, facing down.
    nostril = np.zeros(n)
    for a, b in ((31, 32), (34, 35)):
        c = 0.5 * (lm[a] + lm[b]) + np.array([0.0, 0.15, -0.5])
        d = np.linalg.norm((v - c) * np.array([1.0, 1.6, 1.0]), axis=1)
        nostril = np.maximum(nostril, 1.0 - _smoothstep(0.25, 0.6, d))
    nostril[~face] = 0.0

    # Cheek flush: two soft discs under the eyes plus the nose tip.
    cheeks = np.zeros(n)
    for c, r in ((np.array([-4.2, -0.5]), 2.4), (np.array([4.2, -0.5]), 2.4), (lm[30, :2], 1.0)):
        cheeks = np.maximum(cheeks, 1.0 - _smoothstep(0.3 * r, r, np.linalg.norm(xy - c, axis=1)))
    cheeks[~front] = 0.0

    # Beard: moustache under the nose, then the jaw and chin below a line
    # from the sideburns to the mouth corners; not on lips, not down the neck.
    ax = np.abs(v[:, 0])
    top = np.where(ax < 2.8, -1.3, -3.2 + (ax - 2.8) * 1.1)
    beard = (1.0 - _smoothstep(top - 0.6, top + 0.2, v[:, 1])) * _smoothstep(-9.5, -8.0, v[:, 1])
    beard *= 1.0 - _smoothstep(6.2, 7.4, ax)
    beard *= _smoothstep(1.0, 3.5, v[:, 2])
    beard = beard * (lips == 0) * face

    # Hair: compare model y with a hairline that drops towards the back of
    # the head and leaves the ears and sideburn area free.
    head = face | _vertex_mask(n, BACK_HEAD_VERTICES)
    back = np.clip((6.0 - v[:, 2]) / 12.0, 0.0, 1.0)             # 0 at the forehead, 1 behind
    side = np.clip((np.abs(v[:, 0]) - 5.5) / 3.0, 0.0, 1.0)      # temples
    hair_height = v[:, 1] + 9.0 * back * back + 2.5 * side
    hair_height[~head] = -np.inf

    cavity = _cavity(model.neutral, model.triangles)

    # Orbital shadow: real eye regions are darker than cheeks and the nose
    # bridge (the contrast the Haar features measure); the lids and the
    # socket above them are shaded by the brow ridge.
    orbit = np.zeros(n)
    for ids in (slice(36, 42), slice(42, 48)):
        c = lm[ids, :2].mean(axis=0) + np.array([0.0, 0.35])
        r = np.linalg.norm((xy - c) / np.array([2.1, 1.4]), axis=1)
        orbit = np.maximum(orbit, 1.0 - _smoothstep(0.45, 1.0, r))
    orbit[~front] = 0.0

    mouth_inside = (_vertex_mask(n, MOUTH_SOCKET_VERTICES) | _vertex_mask(n, GUMS_TONGUE_VERTICES)).astype(float)
    teeth = _vertex_mask(n, TEETH_VERTICES).astype(float)
    eye_socket = _vertex_mask(n, EYE_SOCKET_VERTICES).astype(float)

    iris_angle = np.full(n, np.inf)
    eb = _vertex_mask(n, EYEBALL_VERTICES)
    for side_mask in (eb & (v[:, 0] > 0), eb & (v[:, 0] < 0)):
        pts = v[side_mask]
        centre = 0.5 * (pts.min(0) + pts.max(0))
        rel = pts - centre
        cosang = rel[:, 2] / np.maximum(np.linalg.norm(rel, axis=1), 1e-9)
        iris_angle[side_mask] = np.degrees(np.arccos(np.clip(cosang, -1, 1)))

    return RegionMasks(brow_dist=brow_dist, brow_frac=brow_frac, lash=lash, lips=lips, nostril=nostril,
                       cheeks=cheeks, beard=beard, hair_height=hair_height, cavity=cavity, orbit=orbit,
                       mouth_inside=mouth_inside, teeth=teeth, eye_socket=eye_socket, iris_angle=iris_angle)


def _mix(base: np.ndarray, colour: Sequence[float], w: np.ndarray) -> np.ndarray:
    w = np.clip(w, 0.0, 1.0)[:, None]
    return base * (1.0 - w) + np.asarray(colour, dtype=np.float64)[None, :] * w


def _shading_extras(subject_id: int, variation: str) -> Tuple[float, float, float]:
    """``(orbital shadow, cavity darkening, sclera brightness)`` of a subject's albedo."""
    if variation == "wide":
        rng = subject_rng(subject_id, _STREAM_APPEARANCE_WIDE + 100)
        return float(rng.uniform(0.05, 0.4)), float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.8, 1.0))
    rng = subject_rng(subject_id, _STREAM_APPEARANCE + 100)
    orbit = float(rng.uniform(0.12, 0.3))              # drawn before the sclera, as always
    return orbit, 0.45, float(rng.uniform(0.9, 1.0))


@functools.lru_cache(maxsize=64)
def subject_albedo(subject_id: int, variation: str = "classic") -> np.ndarray:
    """Linear-RGB per-vertex albedo ``(V, 3)`` float32 of a subject, cached (read-only).

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
        ExpressionError: unknown variation.
    """
    app = subject_appearance(subject_id, variation)
    m = region_masks()
    n = len(m.lash)
    app_orbit, cavity, sclera_level = _shading_extras(subject_id, variation)
    skin = np.asarray(app.skin, dtype=np.float64)
    col = np.tile(skin, (n, 1))
    # Flush and baked cavity darkening.
    col = _mix(col, skin * np.array([1.0, 0.78, 0.78]), app.redness * m.cheeks)
    col *= (1.0 - cavity * m.cavity)[:, None]
    col *= (1.0 - app_orbit * m.orbit)[:, None]
    # Beard stubble before brows/hair so those paint over it.
    if app.beard > 0:
        col = _mix(col, np.asarray(app.hair) * 0.8, app.beard * m.beard)
    # Hair above the subject's hairline with a soft 0.8 cm edge.
    hair = _smoothstep(app.hairline_cm - 0.4, app.hairline_cm + 0.4, m.hair_height)
    col = _mix(col, app.hair, hair)
    # Brows: thicker at the inner end, tapering outward.
    width = app.brow_width_cm * (1.0 - 0.45 * m.brow_frac)
    brow = app.brow_strength * (1.0 - _smoothstep(0.7 * width, width, m.brow_dist))
    brow_col = np.minimum(np.asarray(app.hair), skin * 0.35)
    col = _mix(col, brow_col, brow)
    col = _mix(col, skin * 0.18, 0.9 * m.lash)
    col = _mix(col, app.lips, m.lips)
    col = _mix(col, skin * 0.15, m.nostril)
    col = _mix(col, np.array([0.35, 0.12, 0.12]), m.mouth_inside)
    col = _mix(col, np.array([0.88, 0.86, 0.78]), m.teeth)
    col = _mix(col, skin * np.array([0.55, 0.35, 0.35]), m.eye_socket)
    # Eyeballs: sclera, iris disc, pupil.
    sclera = np.array([0.90, 0.86, 0.82]) * sclera_level
    eye = np.isfinite(m.iris_angle)
    col[eye] = sclera
    iris_w = 1.0 - _smoothstep(24.0, 28.0, m.iris_angle[eye])
    col[eye] = _mix(col[eye], app.iris, iris_w)
    pupil_w = 1.0 - _smoothstep(9.0, 11.0, m.iris_angle[eye])
    col[eye] = _mix(col[eye], np.array([0.02, 0.02, 0.02]), pupil_w)
    out = srgb_to_linear(np.clip(col, 0.0, 1.0)).astype(np.float32)
    out.setflags(write=False)
    return out
