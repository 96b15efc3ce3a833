"""Depth images from 3-D face scans by a gridfit-like surface fit (Section III-B 4).

Ni et al. (IEEE TCDS 2023) compute the facial depth image of a 3-D scan
(BU-3DFE, Bosphorus) "by fitting a surface from the 3-D point cloud in the
form of z(x, y) using the gridfit algorithm" (D'Errico, MATLAB Central 8998).
gridfit is a regularised linear least-squares problem over the nodes of a
regular grid:

* one row per data point: the bilinear interpolation of the four grid nodes
  around (x_i, y_i) should equal z_i;
* one row per interior node and axis ("gradient" regulariser, gridfit's
  default): the second difference of z along x and along y should be 0
  ("laplacian": the 5-point Laplacian should be 0);
* the regulariser is weighted by ``smoothness * ||A||_1 / ||R||_1`` exactly
  as gridfit does, so ``smoothness`` means the same as gridfit's
  ``'smoothness'`` (1 = default; larger = smoother).

The minimiser of ``||A z - b||^2 + lambda^2 ||R z||^2`` solves the normal
equations ``(A'A + lambda^2 R'R) z = A'b``: sparse, symmetric positive
definite; it is factorised once with SuperLU (symmetric mode, minimum-degree
ordering on A'+A) and solved for several right-hand sides at once, so the
texture coordinates (u, v) are fitted on the same grid with the same
factorisation and colour ends up registered to depth by construction. The
regulariser fills holes (missing scan data inside the face) smoothly.

:func:`render_scan` turns a scan into a Kinect-like pair: an orthographic,
face-frontal grid (x right, y up, z toward the viewer; row 0 is the top),
colour sampled from the texture image at the fitted (u, v), and depth in
metres as a camera at ``nearest_m`` in front of the nearest point would see
it (nearer = smaller), 0 where the scan has no data (outside the face), so
``preprocessing.depth`` treats it like a Kinect frame.

Cost: the factorisation grows super-linearly with the grid, so the surface is
fitted on a grid of at most ``fit_max_side`` nodes per side and the smooth
fields (z, u, v) are upsampled bilinearly to the output size before the
texture is sampled at full resolution.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

Bounds = Tuple[float, float, float, float]
SizeT = Union[int, Tuple[int, int]]
REGULARIZERS = ("gradient", "laplacian")
V_ORIGINS = ("bottom", "top", "auto")


class ScanDepthError(ValueError):
    """Invalid scan points, grid or texture for the surface fit."""


# ---------------------------------------------------------------------------
# gridfit
# ---------------------------------------------------------------------------

def _grid_shape(grid_shape: SizeT) -> Tuple[int, int]:
    if isinstance(grid_shape, (int, np.integer)):
        grid_shape = (int(grid_shape), int(grid_shape))
    try:
        h, w = (int(v) for v in grid_shape)
    except (TypeError, ValueError) as exc:
        raise ScanDepthError(f"grid_shape must be an int or (rows, cols), got {grid_shape!r}") from exc
    if h < 3 or w < 3:
        raise ScanDepthError(f"grid_shape must be at least 3x3 (second differences), got {(h, w)}")
    return h, w


def _second_differences(h: int, w: int, dx: float, dy: float, kind: str) -> sp.csr_matrix:
    """Regulariser rows over a row-major h x w grid (node (i, j) -> i*w + j)."""
    idx = np.arange(h * w).reshape(h, w)
    blocks = []

    def stencil(cols: Sequence[np.ndarray], coef: Sequence[float]) -> sp.csr_matrix:
        m = cols[0].size
        rows = np.repeat(np.arange(m), len(cols))
        c = np.stack([a.ravel() for a in cols], axis=1).ravel()
        v = np.tile(np.asarray(coef, dtype=np.float64), m)
        return sp.csr_matrix((v, (rows, c)), shape=(m, h * w))

    if kind == "gradient":
        blocks.append(stencil([idx[:, :-2], idx[:, 1:-1], idx[:, 2:]], np.array([1, -2, 1]) / dx ** 2))
        blocks.append(stencil([idx[:-2, :], idx[1:-1, :], idx[2:, :]], np.array([1, -2, 1]) / dy ** 2))
    elif kind == "laplacian":
        c = idx[1:-1, 1:-1]
        blocks.append(stencil([idx[1:-1, :-2], idx[1:-1, 2:], idx[:-2, 1:-1], idx[2:, 1:-1], c],
                              [1 / dx ** 2, 1 / dx ** 2, 1 / dy ** 2, 1 / dy ** 2,
                               -2 / dx ** 2 - 2 / dy ** 2]))
    else:
        raise ScanDepthError(f"unknown regularizer {kind!r}; use one of {REGULARIZERS}")
    return sp.vstack(blocks).tocsr()


def fit_surfaces(xy: np.ndarray, values: np.ndarray, grid_shape: SizeT, bounds: Optional[Bounds] = None,
                 smoothness: float = 1.0, regularizer: str = "gradient",
                 domain: Optional[np.ndarray] = None) -> np.ndarray:
    """Fit one or more smooth surfaces ``f_k(x, y)`` over a regular grid (gridfit).

    Grid convention (as gridfit): node ``(i, j)`` lies at
    ``x = xmin + j * (xmax - xmin) / (W - 1)``, ``y = ymin + i * (ymax - ymin) / (H - 1)``,
    i.e. row 0 is the *smallest* y.

    Args:
        xy: ``(N, 2)`` point positions.
        values: ``(N,)`` or ``(N, K)`` values at the points; all K columns share
            one factorisation.
        grid_shape: ``(H, W)`` nodes or an int for a square grid (>= 3).
        bounds: ``(xmin, xmax, ymin, ymax)``; default the points' bounding box.
            Points outside are ignored.
        smoothness: gridfit's smoothness (> 0; larger = smoother).
        regularizer: ``"gradient"`` (gridfit default) or ``"laplacian"``.
        domain: optional ``(H, W)`` bool (row 0 = ymin) of the nodes to solve
            for; regulariser stencils must lie wholly inside it and nodes
            outside come back NaN. The nodes around every data point are
            added to it. gridfit solves the whole grid (``None``); a domain
            around the face makes the factorisation about twice as fast and
            changes nothing inside it but the free boundary.

    Returns:
        ``(H, W)`` (or ``(H, W, K)``) float64 grid.

    Raises:
        ScanDepthError: fewer than 3 finite points inside the bounds, bad
            shapes, non-positive smoothness, degenerate bounds.
    """
    h, w = _grid_shape(grid_shape)
    xy = np.asarray(xy, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    single = vals.ndim == 1
    if single:
        vals = vals[:, None]
    if xy.ndim != 2 or xy.shape[1] != 2 or vals.ndim != 2 or vals.shape[0] != xy.shape[0]:
        raise ScanDepthError(f"xy must be (N, 2) and values (N,) or (N, K); got {xy.shape} and "
                             f"{np.shape(values)}")
    if not (np.isfinite(smoothness) and smoothness > 0):
        raise ScanDepthError(f"smoothness must be a positive number, got {smoothness!r}")
    ok = np.isfinite(xy).all(axis=1) & np.isfinite(vals).all(axis=1)
    xy, vals = xy[ok], vals[ok]
    if len(xy) < 3:
        raise ScanDepthError(f"need at least 3 finite points, got {len(xy)}")
    if bounds is None:
        bounds = (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max())
    xmin, xmax, ymin, ymax = (float(b) for b in bounds)
    if not (xmax > xmin and ymax > ymin):
        raise ScanDepthError(f"degenerate bounds {(xmin, xmax, ymin, ymax)}: the points span no area")
    inside = (xy[:, 0] >= xmin) & (xy[:, 0] <= xmax) & (xy[:, 1] >= ymin) & (xy[:, 1] <= ymax)
    xy, vals = xy[inside], vals[inside]
    if len(xy) < 3:
        raise ScanDepthError(f"need at least 3 finite points inside the bounds, got {len(xy)}")
    dx, dy = (xmax - xmin) / (w - 1), (ymax - ymin) / (h - 1)

    # Data rows: bilinear weights of the 4 surrounding nodes.
    fx, fy = (xy[:, 0] - xmin) / dx, (xy[:, 1] - ymin) / dy
    ix = np.clip(np.floor(fx).astype(np.int64), 0, w - 2)
    iy = np.clip(np.floor(fy).astype(np.int64), 0, h - 2)
    tx, ty = fx - ix, fy - iy
    n = len(xy)
    base = iy * w + ix
    cols = np.stack([base, base + 1, base + w, base + w + 1], axis=1).ravel()
    wts = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], axis=1).ravel()
    a = sp.csr_matrix((wts, (np.repeat(np.arange(n), 4), cols)), shape=(n, h * w))
    r = _second_differences(h, w, dx, dy, regularizer)
    # gridfit: Areg * (smoothness * norm(A,1) / norm(Areg,1)), norms of the full grid.
    na = abs(a).sum(axis=0).max()
    nr = abs(r).sum(axis=0).max()
    lam = smoothness * na / nr
    keep: Optional[np.ndarray] = None
    if domain is not None:
        dom = np.asarray(domain, dtype=bool)
        if dom.shape != (h, w):
            raise ScanDepthError(f"domain must be {(h, w)}, got {dom.shape}")
        dom = dom.ravel().copy()
        dom[cols] = True
        r = r[np.flatnonzero(np.asarray(abs(r) @ (~dom).astype(np.float64)).ravel() == 0)]
        # A node no data point and no whole stencil touches would make the
        # system exactly singular: leave it out (NaN).
        anchored = (np.asarray(abs(a).sum(axis=0)).ravel() > 0) | (np.asarray(abs(r).sum(axis=0)).ravel() > 0)
        keep = np.flatnonzero(dom & anchored)
        a, r = a[:, keep], r[:, keep]
    m = (a.T @ a + (lam * lam) * (r.T @ r)).tocsc()
    rhs = np.ascontiguousarray(a.T @ vals)
    try:
        lu = spla.splu(m, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                       options={"SymmetricMode": True})
    except RuntimeError as exc:  # exactly singular: cannot happen with >= 3 non-collinear points
        raise ScanDepthError(f"surface fit is singular ({exc}); are the points collinear?") from exc
    sol = lu.solve(rhs)
    if keep is not None:
        full = np.full((h * w, sol.shape[1]), np.nan)
        full[keep] = sol
        sol = full
    z = sol.reshape(h, w, -1)
    return z[:, :, 0] if single else z


def fit_depth_surface(points_xyz: np.ndarray, grid_shape: SizeT, bounds: Optional[Bounds] = None,
                      smoothness: float = 1.0, regularizer: str = "gradient") -> np.ndarray:
    """gridfit of ``z(x, y)`` from an ``(N, 3)`` point cloud (see :func:`fit_surfaces`).

    Returns:
        ``(H, W)`` float64 z grid, row 0 at ``ymin`` (gridfit convention).

    Raises:
        ScanDepthError: see :func:`fit_surfaces`; points not ``(N, 3)``.
    """
    pts = np.asarray(points_xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ScanDepthError(f"points_xyz must be (N, 3), got {pts.shape}")
    return fit_surfaces(pts[:, :2], pts[:, 2], grid_shape, bounds, smoothness, regularizer)


# ---------------------------------------------------------------------------
# Scan -> registered colour + depth
# ---------------------------------------------------------------------------

@dataclass
class ScanRender:
    """A scan rendered to a Kinect-like registered pair.

    Attributes:
        colour: ``uint8`` HxWx3 BGR (0 outside the face) or None without texture.
        depth_m: ``float32`` HxW metres, nearer = smaller, 0 = no data.
        mask: HxW bool, where the scan has data (holes inside the face filled).
        box: ``(x, y, w, h)`` bounding box of ``mask`` in pixels.
        bounds: ``(xmin, xmax, ymin, ymax)`` of the pixel centres in scan units.
        pixel_size: pixel pitch in scan units (same in x and y).
        fit_shape: grid the surface was fitted on.
        timings: milliseconds per stage.
    """

    colour: Optional[np.ndarray]
    depth_m: np.ndarray
    mask: np.ndarray
    box: Tuple[int, int, int, int]
    bounds: Bounds
    pixel_size: float
    fit_shape: Tuple[int, int]
    timings: Dict[str, float] = field(default_factory=dict)


def _output_geometry(xy: np.ndarray, h: int, w: int, margin: float) -> Tuple[Bounds, float]:
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = (hi - lo) * (1.0 + 2.0 * margin)
    pitch = max(span[0] / (w - 1), span[1] / (h - 1))
    if not pitch > 0:
        raise ScanDepthError("scan points span no area in x/y")
    cx, cy = (lo + hi) / 2.0
    half_w, half_h = pitch * (w - 1) / 2.0, pitch * (h - 1) / 2.0
    return (cx - half_w, cx + half_w, cy - half_h, cy + half_h), float(pitch)


def _data_mask(xy: np.ndarray, bounds: Bounds, pitch: float, h: int, w: int) -> np.ndarray:
    """Pixels covered by the scan (image rows top-down); interior holes filled."""
    xmin, _, _, ymax = bounds
    col = np.clip(np.rint((xy[:, 0] - xmin) / pitch).astype(np.int64), 0, w - 1)
    row = np.clip(np.rint((ymax - xy[:, 1]) / pitch).astype(np.int64), 0, h - 1)
    occ = np.zeros((h, w), np.uint8)
    occ[row, col] = 1
    # Close the gaps between scan samples: radius from the typical spacing of
    # neighbouring points relative to the pixel pitch.
    sub = xy if len(xy) <= 4000 else xy[np.random.default_rng(0).choice(len(xy), 4000, replace=False)]
    d, _ = cKDTree(xy).query(sub, k=2)
    spacing = float(np.median(d[:, 1])) if len(xy) > 1 else pitch
    radius = int(np.clip(np.ceil(1.5 * spacing / pitch), 1, max(h, w) // 8))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    padded = cv2.copyMakeBorder(occ, radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[radius:-radius, radius:-radius]
    return ndimage.binary_fill_holes(closed.astype(bool))


def _resolve_v_origin(v_origin: str, y: np.ndarray, v: np.ndarray) -> str:
    if v_origin not in V_ORIGINS:
        raise ScanDepthError(f"texture_v_origin must be one of {V_ORIGINS}, got {v_origin!r}")
    if v_origin != "auto":
        return v_origin
    # Assumes the scan's y axis points up (true for VRML and Bosphorus scans):
    # v growing with y means v is measured from the bottom of the image.
    if np.std(y) == 0 or np.std(v) == 0:
        return "bottom"
    return "bottom" if np.corrcoef(y, v)[0, 1] >= 0 else "top"


def render_scan(points: np.ndarray, uv: Optional[np.ndarray] = None, texture: Optional[np.ndarray] = None,
                vertex_colours: Optional[np.ndarray] = None, size: SizeT = 256, margin: float = 0.08,
                smoothness: float = 1.0, regularizer: str = "gradient", fit_max_side: int = 160,
                unit_m: float = 0.001, nearest_m: float = 0.8,
                texture_v_origin: str = "bottom") -> ScanRender:
    """Render a face scan to registered colour + depth on an orthographic grid.

    Args:
        points: ``(N, 3)`` scan vertices (x right, y up, z toward the viewer)
            in units of ``unit_m`` metres; non-finite rows are ignored.
        uv: ``(N, 2)`` texture coordinates in [0, 1] (with ``texture``).
        texture: ``uint8`` BGR (or grey) texture image the ``uv`` refer to.
        vertex_colours: ``(N, 3)`` per-vertex BGR colours instead of a texture.
        size: output ``(H, W)`` or an int for square.
        margin: empty border around the scan's x/y extent, as a fraction of it.
        smoothness: gridfit smoothness.
        regularizer: ``"gradient"`` or ``"laplacian"``.
        fit_max_side: largest fit-grid side; bigger outputs are upsampled.
        unit_m: metres per scan unit (BU-3DFE and Bosphorus: millimetres).
        nearest_m: camera distance of the nearest fitted point (nose tip).
        texture_v_origin: ``"bottom"`` (VRML/OpenGL: v=0 is the last image
            row), ``"top"``, or ``"auto"`` (from the sign of corr(y, v)).

    Returns:
        :class:`ScanRender`.

    Raises:
        ScanDepthError: bad shapes/values, fewer than 3 valid points, empty texture.
    """
    t0 = time.perf_counter()
    h, w = _grid_shape(size)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ScanDepthError(f"points must be (N, 3), got {pts.shape}")
    extra: Optional[np.ndarray] = None
    if uv is not None:
        if texture is None:
            raise ScanDepthError("uv given without a texture image")
        extra = np.asarray(uv, dtype=np.float64)
        if extra.shape != (len(pts), 2):
            raise ScanDepthError(f"uv must be (N, 2) = ({len(pts)}, 2), got {extra.shape}")
        if not isinstance(texture, np.ndarray) or texture.dtype != np.uint8 or texture.size == 0 \
                or texture.ndim not in (2, 3):
            raise ScanDepthError("texture must be a non-empty uint8 grey or BGR image")
    elif vertex_colours is not None:
        extra = np.asarray(vertex_colours, dtype=np.float64)
        if extra.shape != (len(pts), 3):
            raise ScanDepthError(f"vertex_colours must be (N, 3) = ({len(pts)}, 3), got {extra.shape}")
    if not (0 <= margin < 1):
        raise ScanDepthError(f"margin must be in [0, 1), got {margin}")
    if not (unit_m > 0 and nearest_m > 0):
        raise ScanDepthError(f"unit_m and nearest_m must be positive, got {unit_m}, {nearest_m}")
    ok = np.isfinite(pts).all(axis=1)
    if extra is not None:
        ok &= np.isfinite(extra).all(axis=1)
    pts = pts[ok]
    extra = extra[ok] if extra is not None else None
    if len(pts) < 3:
        raise ScanDepthError(f"scan has {len(pts)} valid points; need at least 3")

    bounds, pitch = _output_geometry(pts[:, :2], h, w, margin)
    scale = min(1.0, fit_max_side / max(h, w))
    hf, wf = max(3, int(round((h - 1) * scale)) + 1), max(3, int(round((w - 1) * scale)) + 1)
    values = pts[:, 2:3] if extra is None else np.concatenate([pts[:, 2:3], extra], axis=1)
    t1 = time.perf_counter()
    # Solve only around the scan (dilated data mask on the fit grid); the
    # image outside the face is "no reading" anyway.
    fit_pitch = max((bounds[1] - bounds[0]) / (wf - 1), (bounds[3] - bounds[2]) / (hf - 1))
    domain = cv2.dilate(_data_mask(pts[:, :2], bounds, fit_pitch, hf, wf).astype(np.uint8),
                        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)),
                        borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    fit = fit_surfaces(pts[:, :2], values, (hf, wf), bounds, smoothness, regularizer,
                       domain=np.flipud(domain))
    t2 = time.perf_counter()
    fit = np.flipud(fit).astype(np.float32)  # image rows top-down (max y first)
    if (hf, wf) != (h, w):
        mx = np.linspace(0, wf - 1, w, dtype=np.float32)[None, :].repeat(h, 0)
        my = np.linspace(0, hf - 1, h, dtype=np.float32)[:, None].repeat(w, 1)
        up = [cv2.remap(np.ascontiguousarray(fit[:, :, k]), mx, my, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE) for k in range(fit.shape[2])]
        fit = np.stack(up, axis=2)
    mask = _data_mask(pts[:, :2], bounds, pitch, h, w) & np.isfinite(fit).all(axis=2)
    fit = np.nan_to_num(fit, nan=0.0)
    t3 = time.perf_counter()

    z = fit[:, :, 0]
    depth = np.zeros((h, w), np.float32)
    if mask.any():
        z_near = float(z[mask].max())
        depth[mask] = nearest_m + (z_near - z[mask]) * unit_m
    colour: Optional[np.ndarray] = None
    if uv is not None:
        origin = _resolve_v_origin(texture_v_origin, pts[:, 1], extra[:, 1])
        th, tw = texture.shape[:2]
        u_img = fit[:, :, 1] * tw - 0.5
        v_img = (fit[:, :, 2] if origin == "top" else 1.0 - fit[:, :, 2]) * th - 0.5
        colour = cv2.remap(texture, u_img.astype(np.float32), v_img.astype(np.float32), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        if colour.ndim == 2:
            colour = cv2.cvtColor(colour, cv2.COLOR_GRAY2BGR)
    elif vertex_colours is not None:
        colour = np.clip(np.rint(fit[:, :, 1:4]), 0, 255).astype(np.uint8)
    if colour is not None:
        colour[~mask] = 0
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)) \
        if len(xs) else (0, 0, w, h)
    t4 = time.perf_counter()
    timings = {"setup_ms": (t1 - t0) * 1e3, "fit_ms": (t2 - t1) * 1e3, "mask_ms": (t3 - t2) * 1e3,
               "colour_ms": (t4 - t3) * 1e3, "total_ms": (t4 - t0) * 1e3}
    return ScanRender(colour=colour, depth_m=depth, mask=mask, box=box, bounds=bounds, pixel_size=pitch,
                      fit_shape=(hf, wf), timings=timings)


def scan_to_depth_image(points: np.ndarray, colours_or_uv: Optional[np.ndarray] = None,
                        image: Optional[np.ndarray] = None, size: SizeT = 256,
                        **kwargs: object) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """``(colour, depth_m)`` of a scan (see :func:`render_scan` for the geometry and kwargs).

    Args:
        points: ``(N, 3)`` vertices.
        colours_or_uv: ``(N, 2)`` texture coordinates when ``image`` is given,
            otherwise ``(N, 3)`` per-vertex BGR colours, or None (colour None).
        image: texture image for ``(N, 2)`` coordinates.
        size: output size.

    Raises:
        ScanDepthError: see :func:`render_scan`.
    """
    if image is not None:
        out = render_scan(points, uv=colours_or_uv, texture=image, size=size, **kwargs)  # type: ignore[arg-type]
    else:
        out = render_scan(points, vertex_colours=colours_or_uv, size=size, **kwargs)  # type: ignore[arg-type]
    return out.colour, out.depth_m
