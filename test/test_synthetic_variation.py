"""Synthetic renderer's ``--variation wide`` and ``--depth-noise kinect`` (issue 20).

What must hold: ``classic`` renders what it always rendered; ``wide`` gives
every subject its own recipe per class while the defining action units stay
and the class stays the nearest prototype; ``kinect`` depth noise grows with
distance, is spatially correlated and leaves holes mostly at silhouettes.
Only two small renders; the rest works on weights and depth arrays.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmcnn_ros.classes import BASIC_EXPRESSIONS, EXPRESSIONS_WITH_NEUTRAL
from cmcnn_synthetic import CameraSpec, FaceSpec, SensorSpec, render_frame
from cmcnn_synthetic.appearance import subject_albedo, subject_appearance
from cmcnn_synthetic.expressions import (DEFINING, DEFINING_FLOOR, INTENSITY_SCALES, RECIPES, ExpressionError,
                                         _expand, _prototype, expression_weights, wide_style)
from cmcnn_synthetic.facekit import load_facekit
from cmcnn_synthetic.generate import main as synth_main
from cmcnn_synthetic.render import _degrade_depth
from cmcnn_synthetic.scene import SceneError, kinect_depth, random_light, random_sensor

SMALL = CameraSpec().scaled(0.5)
SUBJECTS = range(60)


def _index(name: str) -> int:
    return load_facekit().expression_index(name)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------ expressions

def test_classic_weights_are_the_ones_rendered_before():
    # Values from the renderer before the variations existed (commit 0a2e991).
    w = expression_weights("happy", 3, 5, rng=np.random.default_rng(1))
    assert float(w.sum()) == pytest.approx(4.355892658233643, rel=1e-6)
    assert w[_index("cheekSquint_L")] == pytest.approx(0.983208, abs=1e-6)
    assert w[_index("cheekSquint_R")] == pytest.approx(0.533251, abs=1e-6)
    assert float(expression_weights("happy", 3, 5).sum()) == pytest.approx(4.23492956161499, rel=1e-6)
    assert float(expression_weights("angry", 4, 12, rng=np.random.default_rng(1)).sum()) == pytest.approx(
        10.271592140197754, rel=1e-6)
    assert float(expression_weights("neutral", 0, 7, rng=np.random.default_rng(1)).sum()) == pytest.approx(
        1.0392526388168335, rel=1e-6)
    assert np.array_equal(expression_weights("sad", 2, 9, variation="classic"), expression_weights("sad", 2, 9))


def test_wide_gives_each_subject_its_own_recipe():
    for label in BASIC_EXPRESSIONS:
        a, b = (expression_weights(label, 4, s, variation="wide") for s in (0, 1))
        assert np.abs(a - b).sum() > 0.5, label
        assert np.abs(a - expression_weights(label, 4, 0)).sum() > 0.5, label
    # Which secondary shapes a subject uses varies, not just their gains.
    active = {tuple(np.nonzero(expression_weights("happy", 4, s, variation="wide") > 0.02)[0]) for s in SUBJECTS}
    assert len(active) > 10
    # Subjects agree less with each other than under classic (mean pairwise cosine).
    def agreement(variation: str) -> float:
        sims = []
        for label in BASIC_EXPRESSIONS:
            w = np.stack([expression_weights(label, 4, s, variation=variation) for s in range(30)])
            w /= np.linalg.norm(w, axis=1, keepdims=True)
            sims.append((w @ w.T)[np.triu_indices(30, 1)].mean())
        return float(np.mean(sims))
    assert agreement("wide") < agreement("classic") - 0.05
    # Some recipes blend in a neighbouring class or neutral, some are asymmetric.
    blends = [wide_style(s).blends["sad"] for s in SUBJECTS]
    assert 0.25 < np.mean([b is not None for b in blends]) < 0.75
    assert all(b is None or 0.1 <= b[1] <= 0.25 for b in blends)
    smile = np.array([expression_weights("happy", 4, s, variation="wide")[[_index("mouthSmile_L"),
                                                                            _index("mouthSmile_R")]]
                      for s in SUBJECTS])
    assert np.max(np.abs(smile[:, 0] - smile[:, 1]) / smile.max(axis=1)) > 0.3


def test_wide_keeps_the_defining_action_units_and_the_class():
    protos = {c: _prototype(c) for c in BASIC_EXPRESSIONS}
    for label in BASIC_EXPRESSIONS:
        idx = np.nonzero(_expand(dict.fromkeys(DEFINING[label], 1.0)))[0]
        floor = DEFINING_FLOOR * protos[label][idx]
        for s in SUBJECTS:
            for level in (1, 4):
                for rng in (None, np.random.default_rng(s)):
                    w = expression_weights(label, level, s, rng=rng, variation="wide")
                    # Floor times the frame's intensity (>= 0.8 expressiveness x 0.7 jitter of the level).
                    assert np.all(w[idx] >= 0.56 * INTENSITY_SCALES[level] * floor - 1e-6), (label, s, level)
            w = expression_weights(label, 4, s, rng=np.random.default_rng(s + 1), variation="wide")
            nearest = max(protos, key=lambda c: _cosine(w, protos[c]))
            assert nearest == label, (label, s, nearest)


def test_wide_is_deterministic_and_levels_stay_ordered():
    a = wide_style(7)
    wide_style.cache_clear()
    b = wide_style(7)
    for label in EXPRESSIONS_WITH_NEUTRAL:
        assert np.array_equal(a.recipes[label], b.recipes[label])
    assert a.expressiveness == b.expressiveness and a.blends == b.blends
    same = [expression_weights("scared", 2, 7, rng=np.random.default_rng(3), variation="wide") for _ in range(2)]
    assert np.array_equal(*same)
    for s in range(20):
        sums = [expression_weights("surprised", lv, s, variation="wide").sum() for lv in (1, 2, 3, 4)]
        assert sums == sorted(sums) and sums[3] > 2.5 * sums[0]
        low = [expression_weights("surprised", 1, s, rng=np.random.default_rng(k), variation="wide").sum()
               for k in range(5)]
        assert max(low) < sums[2]       # a jittered level 1 never reaches level 3
    # A wide neutral is a resting face: some activity, far below an expression.
    rest = np.array([expression_weights("neutral", 0, s, variation="wide") for s in SUBJECTS])
    assert rest.max() <= 0.25 and (rest.sum(axis=1) > 0).all()


def test_unknown_variation_or_depth_noise_is_refused():
    with pytest.raises(ExpressionError, match="variation"):
        expression_weights("happy", 1, 0, variation="extreme")
    with pytest.raises(SceneError, match="variation"):
        render_frame([], camera=SMALL, variation="extreme")
    with pytest.raises(SceneError, match="depth_noise"):
        render_frame([], camera=SMALL, depth_noise="tof")


# ------------------------------------------------------------------ looks and light

def test_wide_appearance_and_light_cover_wider_ranges():
    def skin_luma(variation: str) -> np.ndarray:
        return np.array([np.dot(subject_appearance(s, variation).skin, (0.3, 0.59, 0.11)) for s in range(300)])
    classic, wide = skin_luma("classic"), skin_luma("wide")
    assert wide.min() < classic.min() - 0.03 and wide.max() > classic.max()
    assert {subject_appearance(s, "classic").roughness for s in range(20)} == {0.65}
    assert np.ptp([subject_appearance(s, "wide").roughness for s in range(50)]) > 0.25
    # Classic albedo stays what it was; wide is another look of the same subject.
    assert not np.array_equal(subject_albedo(3), subject_albedo(3, "wide"))
    lights = {v: [random_light(np.random.default_rng(k), v) for k in range(300)] for v in ("classic", "wide")}
    assert max(abs(light.azimuth_deg) for light in lights["classic"]) <= 45
    assert max(abs(light.azimuth_deg) for light in lights["wide"]) > 65
    ambient = {k: min(light.ambient for light in v) for k, v in lights.items()}
    assert ambient["wide"] < 0.1 < 0.18 <= ambient["classic"]
    assert min(light.elevation_deg for light in lights["wide"]) < -15


# ------------------------------------------------------------------ depth

def _wall_with_disc(z_wall: float, z_disc: float = 0.0, size: int = 240):
    """A flat wall, optionally with a disc nearer the camera (``fg`` mask)."""
    z = np.full((size, size * 4 // 3), np.float32(z_wall))
    fg = np.zeros(z.shape, bool)
    if z_disc:
        yy, xx = np.mgrid[:z.shape[0], :z.shape[1]]
        fg = (yy - size / 2) ** 2 + (xx - size * 2 / 3) ** 2 < (size / 4) ** 2
        z[fg] = z_disc
    return z, fg


def test_classic_sensor_is_the_fixed_default():
    assert random_sensor(np.random.default_rng(0)) == SensorSpec()
    assert random_sensor(np.random.default_rng(0), depth_noise="kinect") != SensorSpec()


def test_kinect_noise_grows_with_distance_and_is_correlated():
    cam = SMALL
    sensor = kinect_depth(np.random.default_rng(4))
    sd = {}
    for z0 in (0.8, 2.0):
        z, fg = _wall_with_disc(z0)
        d = _degrade_depth(z, fg, cam, sensor, np.random.default_rng(1)).astype(float)
        ok = d > 0
        sd[z0] = float(np.std(d[ok] - z0 * 1000))
    # Khoshelham and Elberink: ~1.5 mm at 1 m growing with z^2 (here 1.2-2.4 mm x 0.64 plus quantisation).
    assert 0.5 < sd[0.8] < 3.0
    assert sd[2.0] > 3 * sd[0.8]
    # Neighbouring errors are correlated under kinect, independent under classic.
    corr = {}
    for name, spec in (("classic", SensorSpec(quant_mm_at_1m=0.0, dropout_fraction=0.0)),
                       ("kinect", SensorSpec(quant_mm_at_1m=0.0, dropout_fraction=0.0, correlated_noise=0.6,
                                             correlation_px=3.0))):
        z, fg = _wall_with_disc(1.5)
        e = _degrade_depth(z, fg, cam, spec, np.random.default_rng(2)).astype(float) - 1500.0
        corr[name] = float(np.corrcoef(e[:, :-1].ravel(), e[:, 1:].ravel())[0, 1])
    assert abs(corr["classic"]) < 0.05 and corr["kinect"] > 0.3


def test_kinect_holes_are_zero_and_sit_at_silhouettes():
    z, fg = _wall_with_disc(3.0, 1.0)
    rates = []
    for k in range(8):
        sensor = kinect_depth(np.random.default_rng(k))
        d = _degrade_depth(z, fg, SMALL, sensor, np.random.default_rng(k))
        holes = d == 0
        assert 0.003 < holes.mean() < 0.2, (k, holes.mean())
        assert d.dtype == np.uint16 and np.median(d[fg & ~holes]) == pytest.approx(1000, abs=5)
        edge = np.zeros_like(fg)
        edge[:, 1:] |= fg[:, 1:] != fg[:, :-1]
        edge[1:, :] |= fg[1:, :] != fg[:-1, :]
        near_edge = np.zeros_like(fg)
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                near_edge |= np.roll(np.roll(edge, dy, 0), dx, 1)
        rates.append((holes[near_edge].mean(), holes[fg & ~near_edge].mean()))
    edge_rate, inner_rate = np.mean(rates, axis=0)
    assert edge_rate > 0.15 and edge_rate > 5 * inner_rate


# ------------------------------------------------------------------ renders and CLI

def test_wide_kinect_frame_renders_deterministically():
    face = [FaceSpec(5, "happy", 4, position_m=(0.0, 0.0, 1.0), expression_seed=1)]
    a = render_frame(face, camera=SMALL, seed=3, variation="wide", depth_noise="kinect")
    b = render_frame(face, camera=SMALL, seed=3, variation="wide", depth_noise="kinect")
    classic = render_frame(face, camera=SMALL, seed=3)
    assert a.colour.tobytes() == b.colour.tobytes() and a.depth_mm.tobytes() == b.depth_mm.tobytes()
    assert a.colour.tobytes() != classic.colour.tobytes()
    assert not np.array_equal(a.faces[0].weights, classic.faces[0].weights)
    u, v = np.round(a.faces[0].landmarks[30]).astype(int)
    patch = a.depth_mm[v - 2:v + 3, u - 2:u + 3].astype(float)
    assert abs(np.median(patch[patch > 0]) - 1000) < 30
    assert 0.001 < (a.depth_mm == 0).mean() < 0.3


def test_cli_switches_are_passed_through(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = synth_main(["--out", str(out), "--subjects", "1", "--classes", "6", "--intensities", "4",
                     "--size", "320x240", "--no-progress", "--variation", "wide", "--depth-noise", "kinect"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["variation"] == "wide" and summary["depth_noise"] == "kinect" and summary["frames"] == 6
    assert len((out / "labels.csv").read_text().splitlines()) == 7
    with pytest.raises(SystemExit):
        synth_main(["--out", str(out), "--variation", "extreme"])
    assert set(RECIPES) == set(EXPRESSIONS_WITH_NEUTRAL)
