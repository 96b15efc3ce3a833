"""Recognizer and cmcnn-recognize: checkpoint-driven inference on real pixels.

The network here is randomly initialised (tiny preset): these tests check the
plumbing -- batching, the missing-depth path, bad input, the command line --
not accuracy, which the trained default weights are tested for elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.inference import Recognizer, RecognizerError
from cmcnn_ros.model.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> Recognizer:
    return Recognizer.from_checkpoint(checkpoint, device="cpu")


def _plane_depth_mm(shape, metres: float = 1.0) -> np.ndarray:
    return np.full(shape[:2], int(metres * 1000), np.uint16)


def test_recognizes_the_astronaut_face(recognizer, astronaut_frame):
    result = recognizer.recognize(astronaut_frame, _plane_depth_mm(astronaut_frame.shape))
    assert len(result.faces) >= 1
    face = result.faces[0]
    x, y, w, h = face.box
    # the face is around (236..336, 60..170) in this frame
    assert 200 < x + w / 2 < 370 and 60 < y + h / 2 < 180
    assert face.scores.shape == (7,)
    assert abs(float(face.scores.sum()) - 1.0) < 1e-5
    assert face.expression == EXPRESSIONS_WITH_NEUTRAL[int(np.argmax(face.scores))]
    assert face.confidence == pytest.approx(float(face.scores.max()))
    assert -1.0 <= face.valence <= 1.0 and -1.0 <= face.arousal <= 1.0
    assert face.depth_valid and face.depth_valid_fraction > 0.9
    for stage in ("detect", "align", "grey", "lbp", "depth", "preprocess", "network", "total"):
        assert result.timings[stage] >= 0.0
    assert result.timings["total"] >= result.timings["network"]


def test_batch_equals_one_face_at_a_time(recognizer, astronaut_frame):
    depth = _plane_depth_mm(astronaut_frame.shape)
    boxes = [(230, 70, 110, 110), (400, 250, 120, 120)]
    batched = recognizer.recognize(astronaut_frame, depth, boxes=boxes)
    singles = [recognizer.recognize(astronaut_frame, depth, boxes=[b]).faces[0] for b in boxes]
    # The mesh re-frames a given box (same face box whichever way it was found).
    assert [f.box for f in batched.faces] == [f.box for f in singles] and len(singles) == 2
    for a, b in zip(batched.faces, singles):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_missing_depth_answers_from_grey_and_lbp(recognizer, astronaut_frame):
    boxes = [(230, 70, 110, 110)]
    no_depth = recognizer.recognize(astronaut_frame, None, boxes=boxes).faces[0]
    nan_depth = recognizer.recognize(astronaut_frame, np.full((480, 640), np.nan, np.float32), boxes=boxes).faces[0]
    zero_depth = recognizer.recognize(astronaut_frame, np.zeros((480, 640), np.uint16), boxes=boxes).faces[0]
    good = recognizer.recognize(astronaut_frame, _plane_depth_mm((480, 640)), boxes=boxes).faces[0]
    for face in (no_depth, nan_depth, zero_depth):
        assert not face.depth_valid
        assert face.depth_valid_fraction == pytest.approx(0.0) or face is no_depth
        # all three feed the same all-zero depth channel
        np.testing.assert_allclose(face.scores, no_depth.scores, atol=1e-6)
    assert good.depth_valid
    assert not np.allclose(good.scores, no_depth.scores, atol=1e-7)


def test_metres_and_millimetres_agree(recognizer, astronaut_frame):
    boxes = [(230, 70, 110, 110)]
    mm = recognizer.recognize(astronaut_frame, _plane_depth_mm((480, 640), 1.2), boxes=boxes).faces[0]
    metres = recognizer.recognize(astronaut_frame, np.full((480, 640), 1.2, np.float32), boxes=boxes).faces[0]
    np.testing.assert_allclose(mm.scores, metres.scores, atol=1e-5)


def test_no_face_gives_empty_result(recognizer):
    blank = np.full((480, 640, 3), 127, np.uint8)
    result = recognizer.recognize(blank, _plane_depth_mm(blank.shape))
    assert result.faces == []
    assert result.timings["network"] >= 0.0


@pytest.mark.parametrize("colour, depth, needle", [
    (np.zeros((0, 0, 3), np.uint8), None, "empty"),
    (np.zeros((480, 640, 3), np.float32), None, "dtype"),
    (np.zeros((480, 640, 3), np.uint8), np.zeros((240, 320), np.uint16), "does not match"),
    (np.zeros((480, 640, 3), np.uint8), np.zeros((480, 640), np.int32), "dtype"),
])
def test_bad_input_raises_clear_error(recognizer, colour, depth, needle):
    with pytest.raises(RecognizerError) as info:
        recognizer.recognize(colour, depth)
    assert needle in str(info.value).lower()


def test_grey_only_frame_works(recognizer, astronaut_frame):
    grey = cv2.cvtColor(astronaut_frame, cv2.COLOR_BGR2GRAY)
    result = recognizer.recognize(grey, None)
    assert len(result.faces) >= 1 and not result.faces[0].depth_valid


@pytest.mark.parametrize("device, needle", [("bogus", "unknown device"), ("tpu", "unknown device")])
def test_bad_device_is_rejected(checkpoint, device, needle):
    with pytest.raises(RecognizerError, match=needle):
        Recognizer.from_checkpoint(checkpoint, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_gpu_is_a_clear_error(checkpoint):
    with pytest.raises(RecognizerError, match="CUDA is not available"):
        Recognizer.from_checkpoint(checkpoint, device="cuda")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist|not found|missing"):
        Recognizer.from_checkpoint(tmp_path / "nope.pt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmcnn_ros.tools.recognize_cli", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_prints_json_per_face_and_annotates(tmp_path, checkpoint, astronaut_frame):
    image, depth, out = tmp_path / "frame.png", tmp_path / "depth.png", tmp_path / "annotated.png"
    cv2.imwrite(str(image), astronaut_frame)
    cv2.imwrite(str(depth), _plane_depth_mm(astronaut_frame.shape))
    run = _cli(str(image), "--depth", str(depth), "--checkpoint", str(checkpoint), "--annotate", str(out))
    assert run.returncode == 0, run.stderr
    faces = json.loads(run.stdout)
    assert len(faces) >= 1
    assert faces[0]["expression"] in EXPRESSIONS_WITH_NEUTRAL
    assert len(faces[0]["scores"]) == 7 and faces[0]["depth_valid"] is True
    annotated = cv2.imread(str(out))
    assert annotated.shape == astronaut_frame.shape
    assert np.any(annotated != astronaut_frame)  # boxes were drawn


def test_cli_without_model_and_without_face(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 127, np.uint8))
    run = _cli(str(blank), "--no-model")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []


def test_cli_reports_corrupt_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    run = _cli(str(bad), "--no-model")
    assert run.returncode == 2
    assert "could not be decoded" in run.stderr and "Traceback" not in run.stderr


def _shifted(frame: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(frame, dx, axis=1)


@pytest.mark.parametrize("landmark_tracking", [False, True])
def test_face_finder_tracks_between_full_detections(checkpoint, astronaut_frame, landmark_tracking):
    """Between full detections the detector searches around the face (default), or FaceMesh follows it."""
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu", redetect_interval=4,
                                     landmark_tracking=landmark_tracking)
    full = Recognizer.from_checkpoint(checkpoint, device="cpu")
    calls = {"full": 0, "roi": 0, "mesh": 0}
    detect = rec.face_finder.detector.detect
    mesh_run = rec.preprocessor.aligner.mesh.run

    def counting_detect(grey, roi=None, size_range=None):
        calls["roi" if roi is not None else "full"] += 1
        return detect(grey, roi=roi, size_range=size_range)

    def counting_mesh(rgb, region):
        calls["mesh"] += 1
        return mesh_run(rgb, region)

    rec.face_finder.detector.detect = counting_detect
    rec.preprocessor.aligner.mesh.run = counting_mesh
    meshes_per_frame = []
    for step in range(8):
        frame = _shifted(astronaut_frame, 3 * step)
        before = calls["mesh"]
        tracked = rec.recognize(frame, None).faces
        meshes_per_frame.append(calls["mesh"] - before)
        reference = full.recognize(frame, None).faces
        assert len(tracked) == 1 and len(reference) >= 1
        assert tracked[0].alignment == "mesh"
        tx, ty, tw, th = tracked[0].box
        rx, ry, rw, rh = reference[0].box
        # the local search lands on the same face as a full detection
        assert abs((tx + tw / 2) - (rx + rw / 2)) < 0.2 * rw and abs(tw - rw) < 0.3 * rw
    assert calls["full"] == 2  # frames 0 and 4 run the full detector
    assert all(1 <= n <= 2 for n in meshes_per_frame)
    if landmark_tracking:
        # The mesh follows the face: no detector search; a face that moved 3 px is where its
        # landmarks said, so one mesh pass (the region is trusted).
        assert calls["roi"] == 0
        assert [meshes_per_frame[i] for i in (1, 2, 3, 5, 6, 7)] == [1] * 6
    else:
        assert calls["roi"] == 6


def test_face_finder_redetects_after_losing_a_face(checkpoint, astronaut_frame):
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu", redetect_interval=10)
    assert len(rec.recognize(astronaut_frame, None).faces) == 1
    blank = np.full_like(astronaut_frame, 90)
    assert rec.recognize(blank, None).faces == []       # local search fails, full detection: nothing there
    assert rec.recognize(blank, None).faces == []
    assert len(rec.recognize(astronaut_frame, None).faces) == 1  # back at once: a full detection ran
    # A known face that jumps outside its search region is found in the same frame.
    assert len(rec.recognize(astronaut_frame, None).faces) == 1
    assert len(rec.recognize(np.roll(astronaut_frame, -200, axis=1), None).faces) == 1


def test_bad_redetect_interval(checkpoint):
    with pytest.raises(RecognizerError, match="redetect_interval"):
        Recognizer.from_checkpoint(checkpoint, device="cpu", redetect_interval=0)


def test_cli_never_prints_a_non_finite_score(tmp_path, overflowing_checkpoint, astronaut_frame):
    """Issue 10.7: a model that answers NaN gives a clear error and exit 2, not invalid JSON."""
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), astronaut_frame)
    run = _cli(str(image), "--checkpoint", str(overflowing_checkpoint), "--device", "cpu")
    assert run.returncode == 2, run.stdout
    assert "NaN" not in run.stdout and "Traceback" not in run.stderr
    assert "non-finite scores for 1 of 1 faces" in run.stderr and "numerically broken" in run.stderr


def test_cli_locates_faces_with_a_calibration_file_and_refuses_a_bad_one(tmp_path, checkpoint, astronaut_frame):
    """``--intrinsics`` gives the node's position and orientation; both calibration layouts read alike."""
    image, depth = tmp_path / "frame.png", tmp_path / "depth.png"
    cv2.imwrite(str(image), astronaut_frame)
    cv2.imwrite(str(depth), _plane_depth_mm(astronaut_frame.shape, 1.5))
    h, w = astronaut_frame.shape[:2]
    synth = tmp_path / "intrinsics.yaml"   # cmcnn-synth's layout
    synth.write_text(f"fx: 500.0\nfy: 500.0\ncx: {(w - 1) / 2}\ncy: {(h - 1) / 2}\nwidth: {w}\nheight: {h}\n")
    ros = tmp_path / "camera.yaml"         # ROS camera_calibration's layout
    ros.write_text(f"image_width: {w}\nimage_height: {h}\ncamera_name: head\ncamera_matrix:\n  rows: 3\n  cols: 3\n"
                   f"  data: [500.0, 0.0, {(w - 1) / 2}, 0.0, 500.0, {(h - 1) / 2}, 0.0, 0.0, 1.0]\n")
    found = []
    for calib in (synth, ros):
        run = _cli(str(image), "--depth", str(depth), "--checkpoint", str(checkpoint), "--intrinsics", str(calib))
        assert run.returncode == 0, run.stderr
        face = json.loads(run.stdout)[0]
        found.append(face["position_m"])
        x, y, z = face["position_m"]
        bx, by, bw, bh = face["box"]
        assert 1.3 < z < 1.6                                       # on the wall 1.5 m away, nose bridge forward
        u, v = 500.0 * x / z + (w - 1) / 2, 500.0 * y / z + (h - 1) / 2
        assert bx < u < bx + bw and by < v < by + bh               # projects back into the face's box
        assert face["orientation_xyzw"] is not None and abs(np.linalg.norm(face["orientation_xyzw"]) - 1) < 1e-3
    assert found[0] == found[1]
    no_calib = json.loads(_cli(str(image), "--depth", str(depth), "--checkpoint", str(checkpoint)).stdout)[0]
    assert no_calib["position_m"] is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"fx: 0.0\nfy: 500.0\ncx: 1.0\ncy: 1.0\nwidth: {w}\nheight: {h}\n")
    run = _cli(str(image), "--checkpoint", str(checkpoint), "--intrinsics", str(bad))
    assert run.returncode == 2 and "focal length fx is 0.0" in run.stderr and str(bad) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
