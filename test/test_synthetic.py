"""Synthetic RGB-D expression renderer: geometry, sensor model, ground truth, CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmcnn_synthetic import (CameraSpec, FaceSpec, LightSpec, SceneError, SensorSpec, identity_coefficients,
                                 identity_mesh, render_frame)
from cmcnn_synthetic.expressions import ExpressionError, expression_weights
from cmcnn_synthetic.generate import LABELS_HEADER, main as synth_main, plan_jobs
from cmcnn_synthetic.scene import pose_face

SMALL = CameraSpec().scaled(0.5)          # 320x240, f=262.5: fast renders
LIGHT = LightSpec()


def _frontal(label="neutral", intensity=0, z=1.0, subject=3, **kw):
    return FaceSpec(subject, label, intensity, position_m=(0.0, 0.0, z), expression_seed=1, **kw)


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    faces = [_frontal("happy", 3)]
    a = render_frame(faces, camera=SMALL, seed=11)
    b = render_frame(faces, camera=SMALL, seed=11)
    c = render_frame(faces, camera=SMALL, seed=12)
    assert a.colour.tobytes() == b.colour.tobytes()
    assert a.depth_mm.tobytes() == b.depth_mm.tobytes()
    assert a.faces[0].box == b.faces[0].box
    assert a.colour.tobytes() != c.colour.tobytes()


def test_output_types_shapes_and_intrinsics():
    f = render_frame([_frontal()], camera=SMALL, seed=0)
    assert f.colour.shape == (240, 320, 3) and f.colour.dtype == np.uint8
    assert f.depth_mm.shape == (240, 320) and f.depth_mm.dtype == np.uint16
    assert f.intrinsics == (262.5, 262.5, 159.5, 119.5)
    assert np.allclose(f.depth_m()[f.depth_mm > 0], f.depth_mm[f.depth_mm > 0] / 1000.0)


@pytest.mark.parametrize("z", [0.7, 1.4])
def test_nose_tip_depth_is_the_requested_distance_in_mm(z):
    ideal = render_frame([_frontal(z=z)], camera=SMALL, sensor=SensorSpec(ideal=True), seed=0)
    u, v = np.round(ideal.faces[0].landmarks[30]).astype(int)
    assert abs(int(ideal.depth_mm[v, u]) - z * 1000) < 10          # exact geometry: within 1 cm
    noisy = render_frame([_frontal(z=z)], camera=SMALL, seed=0)
    patch = noisy.depth_mm[v - 2:v + 3, u - 2:u + 3].astype(float)
    assert abs(np.median(patch[patch > 0]) - z * 1000) < 30          # Kinect-like noise: within 3 cm
    assert noisy.faces[0].nose_tip_m[2] == pytest.approx(z, abs=1e-4)


def test_sellion_truth_is_on_the_nose_bridge_between_the_eyes():
    """REP-155's face frame origin, the truth the node's face position is measured against."""
    ideal = render_frame([_frontal(z=1.0)], camera=SMALL, sensor=SensorSpec(ideal=True), seed=0)
    t = ideal.faces[0]
    (xl, yl), (xr, yr) = t.eyes
    u, v = t.landmarks[27]
    assert xl < u < xr and v < t.landmarks[30][1]                   # between the eyes, above the nose tip
    sx, sy, sz = t.sellion_m
    assert (SMALL.fx * sx / sz + SMALL.cx, SMALL.fy * sy / sz + SMALL.cy) == pytest.approx((u, v), abs=1e-3)
    assert int(ideal.depth_mm[int(round(v)), int(round(u))]) == pytest.approx(sz * 1000, abs=5)
    assert 0.01 < sz - t.nose_tip_m[2] < 0.04                       # behind the nose tip


def test_depth_has_holes_as_zero_and_room_behind_face():
    f = render_frame([_frontal(z=1.0)], camera=SMALL, seed=5)
    d = f.depth_mm
    holes = d == 0
    assert 0.0005 < holes.mean() < 0.3
    x, y, w, h = f.faces[0].box
    face_vals = d[y + h // 3:y + 2 * h // 3, x + w // 3:x + 2 * w // 3]
    face_vals = face_vals[face_vals > 0]
    assert 900 < np.median(face_vals) < 1100
    corners = np.concatenate([d[:10, :10].ravel(), d[:10, -10:].ravel()])
    assert np.median(corners[corners > 0]) > 1500                   # wall is well behind the face


def test_noise_grows_with_distance():
    sd = []
    for z in (0.7, 1.8):
        f = render_frame([_frontal(z=z)], camera=SMALL, seed=2)
        ideal = render_frame([_frontal(z=z)], camera=SMALL, seed=2, light=f.light, background=f.background,
                             sensor=SensorSpec(ideal=True))
        face = (f.depth_mm > 0) & (ideal.depth_mm > 0) & (ideal.depth_mm < z * 1000 + 150)
        sd.append(np.std(f.depth_mm[face].astype(float) - ideal.depth_mm[face]))
    # sigma ~ z^2 plus disparity steps ~ z^2: (1.8 / 0.7)^2 = 6.6
    assert 0.5 < sd[0] < 4.0 and sd[1] > 3 * sd[0]


def test_box_and_eyes_are_inside_frame_and_on_the_face():
    f = render_frame([_frontal("surprised", 4, z=0.9)], camera=SMALL, sensor=SensorSpec(ideal=True), seed=3)
    t = f.faces[0]
    x, y, w, h = t.box
    assert t.in_frame and 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240
    assert abs(w - h) == 0 and 0.15 * 262.5 / 0.9 < w < 0.25 * 262.5 / 0.9
    (lx, ly), (rx, ry) = t.eyes
    assert lx < rx
    for ex, ey in t.eyes:
        assert x < ex < x + w and y < ey < y + h / 2
        z_eye = f.depth_mm[int(round(ey)), int(round(ex))]
        assert 900 < z_eye < 960        # eyes sit a few cm behind the nose tip
    assert t.visible_fraction > 0.95


def test_roll_rotates_eye_line_counter_clockwise():
    t = render_frame([_frontal(roll_deg=12.0)], camera=SMALL, sensor=SensorSpec(ideal=True), seed=0).faces[0]
    (lx, ly), (rx, ry) = t.eyes
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    assert angle == pytest.approx(-12.0, abs=1.5)


def test_classes_produce_different_meshes_and_levels_scale():
    meshes = {lab: pose_face(_frontal(lab, 0 if lab == "neutral" else 4)).vertices
              for lab in ("neutral", "happy", "sad", "surprised", "angry", "disgusted", "scared")}
    labs = list(meshes)
    for i, a in enumerate(labs):
        for b in labs[i + 1:]:
            diff = np.linalg.norm(meshes[a] - meshes[b], axis=1).max()
            assert diff > 0.003, (a, b, diff)       # > 3 mm somewhere on the face
    w1 = expression_weights("happy", 1, 3)
    w4 = expression_weights("happy", 4, 3)
    assert w4.sum() == pytest.approx(4 * w1.sum(), rel=0.05)


def test_subject_identity_is_reproducible_and_distinct():
    assert np.array_equal(identity_coefficients(7), identity_coefficients(7))
    assert not np.array_equal(identity_coefficients(7), identity_coefficients(8))
    assert identity_coefficients(7).shape == (100,)
    m = identity_mesh(7)
    assert not m.flags.writeable
    assert np.linalg.norm(m - identity_mesh(8), axis=1).max() > 0.3     # cm


def test_haar_detector_finds_frontal_face_at_one_metre():
    f = render_frame([FaceSpec(4, "neutral", 0, position_m=(0.0, 0.0, 1.0))], light=LIGHT, seed=4)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    dets = cascade.detectMultiScale(cv2.cvtColor(f.colour, cv2.COLOR_BGR2GRAY), 1.1, 5)
    gx, gy, gw, gh = f.faces[0].box
    ious = []
    for x, y, w, h in dets:
        ix = max(0, min(x + w, gx + gw) - max(x, gx))
        iy = max(0, min(y + h, gy + gh) - max(y, gy))
        ious.append(ix * iy / (w * h + gw * gh - ix * iy))
    assert max(ious, default=0.0) > 0.5


def test_multiple_faces_each_get_truth():
    faces = [FaceSpec(s, lab, k, position_m=(x, 0.0, z), expression_seed=s)
             for s, lab, k, x, z in ((1, "happy", 4, -0.35, 1.2), (2, "sad", 2, 0.0, 1.6), (3, "neutral", 0,
                                                                                            0.35, 1.0))]
    f = render_frame(faces, camera=SMALL, seed=9)
    assert [t.label for t in f.faces] == ["happy", "sad", "neutral"]
    centres = [t.box[0] + t.box[2] / 2 for t in f.faces]
    assert centres[0] < centres[1] < centres[2]


def test_invalid_specs_raise_clear_errors():
    with pytest.raises(SceneError, match="unknown expression"):
        FaceSpec(1, "bored", 1)
    with pytest.raises(SceneError, match="intensity"):
        FaceSpec(1, "happy", 5)
    with pytest.raises(SceneError, match="intensity 0"):
        FaceSpec(1, "neutral", 2)
    with pytest.raises(SceneError, match="in front of the camera"):
        FaceSpec(1, position_m=(0, 0, -1))
    with pytest.raises(SceneError, match="subject_id"):
        FaceSpec(-1)
    with pytest.raises(ExpressionError):
        expression_weights("happy", 0, 1)


def test_plan_balances_neutral_and_is_deterministic():
    jobs = plan_jobs([0, 1], ["happy", "neutral"], per_class=2, intensities=(1, 2, 3, 4), seed=5)
    assert sum(j.label == "neutral" for j in jobs) == sum(j.label == "happy" for j in jobs) == 16
    assert [j.seed for j in jobs] == [j.seed for j in plan_jobs([0, 1], ["happy", "neutral"], 2, seed=5)]


def test_cli_writes_generic_kinect_layout(tmp_path: Path, capsys):
    out = tmp_path / "ds"
    rc = synth_main(["--out", str(out), "--subjects", "1", "--subject-offset", "20", "--classes", "6",
                     "--intensities", "4", "--size", "320x240", "--no-progress", "--seed", "3"])
    assert rc == 0
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == LABELS_HEADER
    assert len(rows) == 7 and {r[2] for r in rows[1:]} == {"angry", "disgusted", "scared", "happy", "sad", "surprised"}
    for r in rows[1:]:
        assert r[3] == "S00020" and r[4] == "4"
        colour = cv2.imread(str(out / r[0]), cv2.IMREAD_COLOR)
        depth = cv2.imread(str(out / r[1]), cv2.IMREAD_UNCHANGED)
        assert colour.shape == (240, 320, 3) and depth.dtype == np.uint16 and depth.max() > 500
        x, y, w, h = map(int, r[5:9])
        assert w > 20 and 0 <= x and x + w <= 320
    assert "fx: 262.5" in (out / "intrinsics.yaml").read_text()
    assert not list(out.rglob("*.tmp"))
    # Refuses to overwrite an existing dataset without --overwrite.
    assert synth_main(["--out", str(out), "--subjects", "1", "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys):
    assert synth_main(["--contact-sheet", "x.png", "--size", "300x300"]) == 2
    assert "aspect" in capsys.readouterr().err
