"""gridfit-like surface fit and scan -> registered colour/depth (cmcnn_training.datasets.scan_depth)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cmcnn_training.datasets.scan_depth import (ScanDepthError, fit_depth_surface, fit_surfaces, render_scan,
                                                 scan_to_depth_image)

RNG = np.random.default_rng(0)


def _grid_xy(h, w, bounds):
    xmin, xmax, ymin, ymax = bounds
    return np.meshgrid(np.linspace(xmin, xmax, w), np.linspace(ymin, ymax, h))


def test_plane_is_reproduced_exactly():
    x, y = RNG.uniform(-1, 1, (2, 500))
    z = 0.3 * x - 0.2 * y + 1.0
    g = fit_depth_surface(np.c_[x, y, z], (21, 31), bounds=(-1, 1, -1, 1))
    xx, yy = _grid_xy(21, 31, (-1, 1, -1, 1))
    assert g.shape == (21, 31)
    np.testing.assert_allclose(g, 0.3 * xx - 0.2 * yy + 1.0, atol=1e-9)


def test_paraboloid_within_tolerance_and_smoothness_trades_bias():
    x, y = RNG.uniform(-1, 1, (2, 4000))
    z = x ** 2 + 0.5 * y ** 2
    xx, yy = _grid_xy(25, 25, (-1, 1, -1, 1))
    truth = xx ** 2 + 0.5 * yy ** 2
    err_small = np.abs(fit_depth_surface(np.c_[x, y, z], 25, (-1, 1, -1, 1), smoothness=0.05) - truth).max()
    err_big = np.abs(fit_depth_surface(np.c_[x, y, z], 25, (-1, 1, -1, 1), smoothness=20.0) - truth).max()
    assert err_small < 0.01
    assert err_big > err_small  # the curvature penalty flattens the bowl


def test_laplacian_regularizer_and_several_values_share_one_fit():
    x, y = RNG.uniform(0, 10, (2, 3000))
    vals = np.c_[2 * x + y, x - 3 * y]
    g = fit_surfaces(np.c_[x, y], vals, (11, 11), (0, 10, 0, 10), regularizer="laplacian")
    xx, yy = _grid_xy(11, 11, (0, 10, 0, 10))
    np.testing.assert_allclose(g[:, :, 0], 2 * xx + yy, atol=1e-6)
    np.testing.assert_allclose(g[:, :, 1], xx - 3 * yy, atol=1e-6)


def test_hole_is_filled_smoothly():
    x, y = RNG.uniform(-1, 1, (2, 6000))
    hole = x ** 2 + y ** 2 < 0.4 ** 2
    x, y = x[~hole], y[~hole]
    z = 1.0 - 0.5 * (x ** 2 + y ** 2)
    g = fit_depth_surface(np.c_[x, y, z], 41, (-1, 1, -1, 1), smoothness=0.2)
    xx, yy = _grid_xy(41, 41, (-1, 1, -1, 1))
    inside = xx ** 2 + yy ** 2 < 0.35 ** 2
    assert inside.sum() > 20
    assert np.abs(g - (1.0 - 0.5 * (xx ** 2 + yy ** 2)))[inside].max() < 0.02


def _dome(n=60, m=72):
    """A face-sized dome (mm): x in [-50, 50], y in [-60, 60], peak z = 40."""
    xs, ys = np.meshgrid(np.linspace(-50, 50, n), np.linspace(-60, 60, m))
    x, y = xs.ravel(), ys.ravel()
    z = 40.0 * np.sqrt(np.clip(1 - (x / 60) ** 2 - (y / 70) ** 2, 0, 1))
    return np.c_[x, y, z]


def _patch_texture(h=200, w=200):
    tex = np.full((h, w, 3), 128, np.uint8)
    # v (bottom origin) in [0.7, 0.9] -> rows (1 - v) * h = 20..60; u in [0.6, 0.8] -> cols 120..160.
    tex[20:60, 120:160] = (0, 0, 255)  # red in BGR
    return tex


def _pixel(render, x, y):
    xmin, _, _, ymax = render.bounds
    return int(round((ymax - y) / render.pixel_size)), int(round((x - xmin) / render.pixel_size))


def test_render_registers_texture_patch_and_depth():
    pts = _dome()
    uv = np.c_[(pts[:, 0] + 50) / 100, (pts[:, 1] + 60) / 120]
    r = render_scan(pts, uv=uv, texture=_patch_texture(), size=96, margin=0.1, smoothness=0.5)
    assert r.colour.shape == (96, 96, 3) and r.depth_m.shape == (96, 96) and r.depth_m.dtype == np.float32
    # The red patch covers x in [10, 30], y in [24, 48] of the scan.
    row, col = _pixel(r, 20, 36)
    np.testing.assert_array_equal(r.colour[row, col], (0, 0, 255))
    row0, col0 = _pixel(r, 0, 0)
    np.testing.assert_array_equal(r.colour[row0, col0], (128, 128, 128))
    # Up is up: the patch (y > 0) lies in the upper half of the image.
    red_rows = np.nonzero((r.colour == (0, 0, 255)).all(axis=2))[0]
    assert red_rows.max() < 48
    # Depth: camera-like metres, nose (peak) nearest, matches the dome.
    assert r.depth_m[r.mask].min() == pytest.approx(0.8, abs=1e-6)
    for x, y in [(0, 0), (20, 30), (-30, -20)]:
        row, col = _pixel(r, x, y)
        z = 40.0 * np.sqrt(1 - (x / 60) ** 2 - (y / 70) ** 2)
        assert r.depth_m[row, col] == pytest.approx(0.8 + (40.0 - z) * 1e-3, abs=3e-4)
    # Outside the scan: no reading, black.
    assert r.depth_m[0, 0] == 0 and not r.mask[0, 0] and (r.colour[0, 0] == 0).all()
    bx, by, bw, bh = r.box
    assert r.mask[by:by + bh, bx:bx + bw].mean() > 0.9


def test_top_origin_and_auto_origin():
    pts = _dome()
    uv_top = np.c_[(pts[:, 0] + 50) / 100, 1 - (pts[:, 1] + 60) / 120]  # v measured from the top
    for origin in ("top", "auto"):
        r = render_scan(pts, uv=uv_top, texture=_patch_texture(), size=96, texture_v_origin=origin)
        row, col = _pixel(r, 20, 36)
        np.testing.assert_array_equal(r.colour[row, col], (0, 0, 255))


def test_render_fills_interior_hole_in_mask_and_depth():
    pts = _dome(80, 96)
    hole = (pts[:, 0] - 10) ** 2 + (pts[:, 1] - 5) ** 2 < 12 ** 2
    r = render_scan(pts[~hole], vertex_colours=np.full(((~hole).sum(), 3), 200.0), size=96)
    row, col = _pixel(r, 10, 5)
    assert r.mask[row, col]
    z = 40.0 * np.sqrt(1 - (10 / 60) ** 2 - (5 / 70) ** 2)
    assert r.depth_m[row, col] == pytest.approx(0.8 + (40.0 - z) * 1e-3, abs=5e-4)
    assert (r.colour[row, col] == 200).all()


def test_scan_to_depth_image_tuple_and_upsampled_fit():
    pts = _dome()
    uv = np.c_[(pts[:, 0] + 50) / 100, (pts[:, 1] + 60) / 120]
    colour, depth = scan_to_depth_image(pts, uv, image=_patch_texture(), size=(120, 100), fit_max_side=40)
    assert colour.shape == (120, 100, 3) and depth.shape == (120, 100)
    assert np.nanmax(depth) < 0.9 and (depth > 0).mean() > 0.4


def test_bad_input_errors():
    pts = _dome()
    with pytest.raises(ScanDepthError, match=r"\(N, 3\)"):
        fit_depth_surface(pts[:, :2], 10)
    with pytest.raises(ScanDepthError, match="at least 3x3"):
        fit_depth_surface(pts, (2, 10))
    with pytest.raises(ScanDepthError, match="smoothness"):
        fit_depth_surface(pts, 10, smoothness=0)
    with pytest.raises(ScanDepthError, match="at least 3"):
        fit_depth_surface(pts[:2], 10)
    with pytest.raises(ScanDepthError, match="without a texture"):
        render_scan(pts, uv=np.zeros((len(pts), 2)))
    with pytest.raises(ScanDepthError, match="uv must be"):
        render_scan(pts, uv=np.zeros((3, 2)), texture=_patch_texture())
    with pytest.raises(ScanDepthError, match="regularizer"):
        fit_depth_surface(pts, 10, regularizer="springs")


def test_35k_point_scan_is_fast():
    t = RNG.uniform(0, 2 * np.pi, 35000)
    rad = np.sqrt(RNG.uniform(0, 1, 35000))
    x, y = 70 * rad * np.cos(t), 95 * rad * np.sin(t)
    z = 60 * np.sqrt(np.clip(1 - rad ** 2, 0, 1))
    uv = np.c_[(x + 80) / 160, (y + 100) / 200]
    tex = RNG.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    r = render_scan(np.c_[x, y, z], uv=uv, texture=tex, size=256)
    elapsed = time.perf_counter() - t0
    assert r.depth_m.shape == (256, 256)
    # ~0.2 s on an idle core; generous bound for a loaded CI machine.
    assert elapsed < 5.0
