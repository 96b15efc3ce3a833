"""Tests of the Section III-B preprocessing on real photographs (scikit-image data).

Detection and rotation rectification run OpenCV's real Haar cascades on
``skimage.data.astronaut()``; the eye centres of that photograph were
annotated by hand at the iris centres (left (203, 100.5), right (246.5,
102.5)), so the expected roll after a known rotation is computed from those
points, not from the code under test.
"""

from __future__ import annotations

import json
import math
from typing import Tuple

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.feature import local_binary_pattern

from cmcnn_ros.preprocessing import (
    FaceDetection, FacePreprocessor, Frame, HaarFaceDetector, NmsRule, PreprocessingError, PreprocessingParams,
    crop_transform, depth_array_to_metres, hog_image, lbp_default_codes, lbp_image, suppress_overlaps, warp_crop,
)
from cmcnn_ros.preprocessing.images import as_frame
from cmcnn_ros.preprocessing.model_input import at_model_precision
from cmcnn_ros.preprocessing.texture import GaborBank
from cmcnn_ros.preprocessing.params import HAAR_PAPER

EYE_LEFT = (203.0, 100.5)
EYE_RIGHT = (246.5, 102.5)
# Rotation centre for the synthetic roll: between the eyes, 25 px lower (mid-face).
FACE_CENTRE = ((EYE_LEFT[0] + EYE_RIGHT[0]) / 2.0, (EYE_LEFT[1] + EYE_RIGHT[1]) / 2.0 + 25.0)
S = 148


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def pre() -> FacePreprocessor:
    # The paper's Viola-Jones + Haar-eye path; BlazeFace + FaceMesh: test_real_faces.py.
    return FacePreprocessor(HAAR_PAPER, modalities=("grey", "lbp", "depth"))


def rotated(image: np.ndarray, angle_deg: float) -> Tuple[np.ndarray, float]:
    """Rotate ``image`` about the face centre (cv2 sense: counter-clockwise on screen).

    Returns the rotated image and the expected roll in degrees (image
    coordinates, y down) from the annotated eye centres.
    """
    m = cv2.getRotationMatrix2D(FACE_CENTRE, angle_deg, 1.0)
    out = cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)
    left = m @ np.array([*EYE_LEFT, 1.0])
    right = m @ np.array([*EYE_RIGHT, 1.0])
    return out, math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = (a - a.mean()) / (a.std() + 1e-9)
    b = (b - b.mean()) / (b.std() + 1e-9)
    return float((a * b).mean())


# --------------------------------------------------------------------- params

def test_params_round_trip_through_dict_and_json() -> None:
    p = PreprocessingParams(crop_size=128, gabor_wavelengths=(3.0, 6.0, 12.0), lbp_radius=2.0)
    d = json.loads(json.dumps(p.to_dict()))
    assert isinstance(d["gabor_wavelengths"], list)
    q = PreprocessingParams.from_dict(d)
    assert q == p
    assert q.gabor_wavelengths == (3.0, 6.0, 12.0)
    assert PreprocessingParams.from_dict({}) == PreprocessingParams()
    assert PreprocessingParams().crop_size == 148


def test_params_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(PreprocessingError, match="unknown preprocessing parameter.*crop_sise"):
        PreprocessingParams.from_dict({"crop_sise": 100})
    with pytest.raises(PreprocessingError, match="must be a mapping"):
        PreprocessingParams.from_dict([("crop_size", 100)])
    bad = {"crop_size": 0, "lbp_method": "fancy", "depth_min_m": 6.0, "depth_fill_kernel": 4,
           "face_cascade": "nope.xml", "min_depth_valid_fraction": 1.5, "scale_factor": 1.0,
           "crop_margin": float("nan"), "align": "yes", "min_face_size": 60.5}
    for key, value in bad.items():
        with pytest.raises(PreprocessingError, match=f"PreprocessingParams.{key}="):
            PreprocessingParams.from_dict({key: value})
    assert issubclass(PreprocessingError, ValueError)
    assert PreprocessingParams().replace(crop_size=96).crop_size == 96


# ------------------------------------------------------------------- detection

def test_detects_the_astronaut_face_and_nothing_else(astronaut: np.ndarray) -> None:
    det = HaarFaceDetector(HAAR_PAPER)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    faces = det.detect(grey)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    # Hand-measured face: eyes at y~101, mouth at y~143, centred at x~225.
    assert 80 <= w <= 125 and 80 <= h <= 125
    assert abs(x + w / 2 - 225) < 12 and abs(y + h / 2 - 115) < 15
    assert x <= EYE_LEFT[0] and x + w >= EYE_RIGHT[0]
    assert faces[0].score >= PreprocessingParams().min_neighbors


def test_detection_finds_none_on_a_photo_without_faces() -> None:
    det = HaarFaceDetector(HAAR_PAPER)
    for name in ("rocket", "coffee", "chelsea", "brick"):
        image = getattr(data, name)()
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        assert det.detect(grey) == [], name


def test_detection_finds_every_face_of_a_group_frame(astronaut: np.ndarray) -> None:
    canvas = cv2.resize(cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2GRAY), (640, 480))
    head = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)[20:210, 150:300]
    spots = [(20, 30, 0.85), (230, 20, 0.8), (450, 40, 0.85), (120, 260, 0.95), (380, 250, 1.0)]
    rects = []
    for px, py, s in spots:
        hw, hh = round(150 * s), round(190 * s)
        canvas[py:py + hh, px:px + hw] = cv2.resize(head, (hw, hh), interpolation=cv2.INTER_AREA)
        rects.append((px, py, hw, hh))
    faces = HaarFaceDetector(HAAR_PAPER).detect(canvas)
    assert len(faces) == 5
    for x, y, w, h in rects:
        hits = [f for f in faces if x <= f.box[0] + f.box[2] / 2 <= x + w and y <= f.box[1] + f.box[3] / 2 <= y + h]
        assert len(hits) == 1


def test_detection_in_a_region_of_interest(astronaut: np.ndarray) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    det = HaarFaceDetector(HAAR_PAPER)
    full = det.detect(grey)[0].box
    inside = det.detect(grey, roi=(130, 20, 190, 190))
    assert len(inside) == 1
    assert max(abs(a - b) for a, b in zip(inside[0].box, full)) <= 8
    assert det.detect(grey, roi=(300, 300, 200, 200)) == []
    assert det.detect(grey, roi=(0, 0, 20, 20)) == []  # smaller than min_face_size
    w = full[2]
    tracked = det.detect(grey, roi=(130, 20, 190, 190), size_range=(int(0.7 * w), int(1.4 * w)))
    assert len(tracked) == 1 and abs(tracked[0].box[2] - w) <= 0.2 * w
    assert det.detect(grey, size_range=(2 * w, 0)) == []
    with pytest.raises(PreprocessingError, match="size_range"):
        det.detect(grey, size_range=(100, 50))


def test_suppress_overlaps_drops_nested_and_keeps_separate_boxes() -> None:
    boxes = [(100, 100, 100, 100), (120, 120, 40, 40), (300, 100, 90, 90), (190, 100, 100, 100)]
    keep = suppress_overlaps(boxes, [5.0, 9.0, 3.0, 4.0], max_overlap=0.2, measure="smaller")
    # The small box has the most neighbours and wins over its container; the
    # box touching it by 10 px (10 % of the smaller) survives.
    assert keep == [1, 3, 2]


def test_nms_rule_counts_a_nested_box_as_a_duplicate_only_by_the_smaller_area() -> None:
    big, small = FaceDetection((100, 100, 100, 100), 5.0), FaceDetection((120, 120, 40, 40), 9.0)
    assert NmsRule(0.2, "smaller").suppress([big, small]) == [small]   # 1600 / 1600 of the smaller box
    assert NmsRule(0.3, "iou").suppress([big, small]) == [small, big]  # IoU 1600 / 10000
    with pytest.raises(PreprocessingError, match="measure"):
        NmsRule(0.3, "area")


def test_frame_checks_once_and_converts_once(astronaut: np.ndarray) -> None:
    frame = Frame(astronaut)
    assert frame.shape == (512, 512) and as_frame(frame) is frame
    assert frame.grey is frame.grey and frame.rgb is frame.rgb
    np.testing.assert_array_equal(frame.grey, cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(frame.rgb, astronaut[:, :, ::-1])
    np.testing.assert_array_equal(Frame(cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)).grey, frame.grey)
    grey = frame.grey
    assert Frame(grey).grey is grey
    np.testing.assert_array_equal(Frame(grey[:, :, None]).rgb, np.repeat(grey[:, :, None], 3, axis=2))
    with pytest.raises(PreprocessingError, match="uint8"):
        Frame(astronaut.astype(np.float32))


def test_detection_scale_honours_min_face_size() -> None:
    det = HaarFaceDetector(PreprocessingParams(detect_max_side=120, min_face_size=40))
    scale = det.detection_scale((480, 640))
    assert 40 * scale >= det.window
    assert HaarFaceDetector(HAAR_PAPER).detection_scale((100, 100)) == 1.0


# ------------------------------------------------------------------- alignment

@pytest.mark.parametrize("angle", [-12.0, -8.0, 8.0, 12.0])
def test_rectification_recovers_a_known_roll(astronaut: np.ndarray, pre: FacePreprocessor, angle: float) -> None:
    image, expected_deg = rotated(astronaut, angle)
    faces = pre.process(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.eyes_found
    assert abs(math.degrees(face.roll) - expected_deg) < 3.0
    # After rectification the eye line is horizontal: the aligned crop matches
    # the aligned crop of the unrotated photograph.
    upright = pre.process(astronaut)[0]
    assert ncc(face.crops["grey"], upright.crops["grey"]) > 0.85


def test_unrotated_roll_matches_annotation(astronaut: np.ndarray, pre: FacePreprocessor) -> None:
    face = pre.process(astronaut)[0]
    expected = math.degrees(math.atan2(EYE_RIGHT[1] - EYE_LEFT[1], EYE_RIGHT[0] - EYE_LEFT[0]))
    assert face.eyes_found
    assert abs(math.degrees(face.roll) - expected) < 1.5
    (xl, yl), (xr, yr) = face.eyes
    assert math.hypot(xl - EYE_LEFT[0], yl - EYE_LEFT[1]) < 3.0
    assert math.hypot(xr - EYE_RIGHT[0], yr - EYE_RIGHT[1]) < 3.0


def test_no_eyes_falls_back_to_zero_roll(pre: FacePreprocessor) -> None:
    flat = np.full((240, 320), 128, np.uint8)
    face = pre.process(flat, boxes=[(100, 60, 100, 100)])[0]
    assert not face.eyes_found and face.roll == 0.0 and face.eyes is None
    assert math.isnan(face.detection_score)
    off = FacePreprocessor(PreprocessingParams(align=False), modalities=("grey",))
    assert not off.process(flat, boxes=[(100, 60, 100, 100)])[0].eyes_found


def test_crop_transform_maps_box_centre_and_removes_roll() -> None:
    roll = math.radians(10.0)
    m = crop_transform((100, 50, 80, 80), roll, S, 0.1)
    centre = m @ np.array([100 + 39.5, 50 + 39.5, 1.0])
    assert np.allclose(centre, [(S - 1) / 2, (S - 1) / 2])
    # A vector along the measured eye line becomes horizontal.
    v = m[:, :2] @ np.array([math.cos(roll), math.sin(roll)])
    assert abs(v[1]) < 1e-9 and v[0] > 0
    assert math.isclose(np.linalg.norm(v), S / (80 * 1.2))


def test_large_faces_are_antialiased_not_aliased(astronaut: np.ndarray) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    big = cv2.resize(grey, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    small_crop = warp_crop(grey, crop_transform((175, 66, 97, 97), 0.0, S, 0.1), S)
    big_crop = warp_crop(big, crop_transform((700, 264, 388, 388), 0.0, S, 0.1), S)
    assert np.abs(small_crop.astype(float) - big_crop.astype(float)).mean() < 6.0


# --------------------------------------------------------------------- texture

def test_lbp_equals_scikit_image_on_the_crop(astronaut: np.ndarray, pre: FacePreprocessor) -> None:
    face = pre.process(astronaut)[0]
    grey_u8 = np.round(face.crops["grey"] * 255.0).astype(np.uint8)
    expected = local_binary_pattern(grey_u8, 8, 1, method="default") / 255.0
    np.testing.assert_array_equal(face.crops["lbp"], expected.astype(np.float32))
    assert face.crops["lbp"].min() >= 0.0 and face.crops["lbp"].max() <= 1.0


@pytest.mark.parametrize("points,radius", [(8, 1.0), (8, 2.0), (16, 2.0), (4, 1.5), (12, 3.0)])
def test_vectorised_lbp_is_bit_identical_to_scikit_image(astronaut: np.ndarray, points: int, radius: float) -> None:
    rng = np.random.default_rng(points)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    for image in (grey[60:208, 160:308], rng.integers(0, 256, (37, 53), dtype=np.uint8),
                  np.full((20, 20), 9, np.uint8), rng.integers(0, 3, (64, 64), dtype=np.uint8)):
        np.testing.assert_array_equal(lbp_default_codes(image, points, radius),
                                      local_binary_pattern(image, points, radius, method="default"))


def test_other_lbp_methods_are_scaled_to_unit_range(astronaut: np.ndarray) -> None:
    crop = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)[60:208, 160:308]
    for method in ("uniform", "ror", "nri_uniform", "var"):
        out = lbp_image(crop, PreprocessingParams(lbp_method=method))
        assert out.dtype == np.float32 and out.shape == crop.shape
        assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5
    uniform = lbp_image(crop, PreprocessingParams(lbp_method="uniform"))
    np.testing.assert_allclose(uniform, local_binary_pattern(crop, 8, 1, "uniform") / 9.0, rtol=1e-6)


def test_hog_and_gabor_images(astronaut: np.ndarray) -> None:
    pre = FacePreprocessor(HAAR_PAPER, modalities=("hog", "gabor", "grey"))
    face = pre.process(astronaut)[0]
    for name in ("hog", "gabor"):
        img = face.crops[name]
        assert img.shape == (S, S) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() == pytest.approx(1.0)
        assert img.std() > 0.05
    assert set(face.crops) == {"hog", "gabor", "grey"}
    flat = np.full((S, S), 77, np.uint8)
    assert not hog_image(flat, PreprocessingParams()).any()
    assert not GaborBank(PreprocessingParams()).magnitude(flat).any()


# ----------------------------------------------------------------------- depth

def face_depth_frame(distance_m: float, holes: float = 0.0, seed: int = 0) -> Tuple[np.ndarray, Tuple[int, int,
                                                                                                      int, int]]:
    """Depth of one synthetic face (ellipsoid + nose) at ``distance_m`` seen by a pinhole camera.

    Returns the 480x640 float32 depth and the face box, both scaling with 1/distance.
    """
    # fx makes the face box exactly 120 px at 0.8 m and 60 px at 1.6 m, and the
    # principal point is the centre of the central pixel, so integer boxes are
    # exact and the test measures the normalisation, not box rounding.
    fx, cx, cy = 120.0 * 0.8 / 0.18, 319.5, 239.5
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    x = (u - cx) / fx * distance_m
    y = (v - cy) / fx * distance_m
    r2 = (x / 0.075) ** 2 + (y / 0.10) ** 2
    z = np.full(u.shape, distance_m + 0.6)
    inside = r2 < 1.0
    z[inside] = distance_m + 0.06 * (1.0 - np.sqrt(1.0 - r2[inside]))
    z -= 0.025 * np.exp(-((x / 0.012) ** 2 + ((y - 0.01) / 0.015) ** 2) / 2.0) * inside
    depth = z.astype(np.float32) - np.float32(0.025)  # nose tip at distance_m
    if holes:
        rng = np.random.default_rng(seed)
        depth[rng.random(depth.shape) < holes] = 0.0
    side = fx * 0.18 / distance_m
    return depth, (int(round(cx + 0.5 - side / 2)), int(round(cy + 0.5 - side / 2)), int(round(side)),
                   int(round(side)))


@pytest.fixture(scope="module")
def depth_pre() -> FacePreprocessor:
    return FacePreprocessor(HAAR_PAPER, modalities=("depth", "grey"))


def test_depth_crop_is_invariant_to_distance(depth_pre: FacePreprocessor) -> None:
    grey = np.full((480, 640), 100, np.uint8)
    crops = []
    for distance in (0.8, 1.6):
        depth, box = face_depth_frame(distance)
        face = depth_pre.process(grey, depth, boxes=[box])[0]
        assert face.depth_valid and face.depth_valid_fraction == pytest.approx(1.0)
        crops.append(face.crops["depth"])
    near, far = crops
    assert near.max() == pytest.approx(1.0, abs=0.02) and near.min() == 0.0
    diff = np.abs(near - far)
    assert diff.mean() < 0.015 and np.median(diff) < 0.005  # measured 0.007 and 0.0
    # Nearer = brighter: the nose (centre) outshines the cheeks and background.
    assert near[S // 2, S // 2] > near[S // 2, S // 4] > near[2, 2]


def test_depth_holes_are_filled(depth_pre: FacePreprocessor) -> None:
    grey = np.full((480, 640), 100, np.uint8)
    clean, box = face_depth_frame(1.0)
    holey, _ = face_depth_frame(1.0, holes=0.2)
    a = depth_pre.process(grey, clean, boxes=[box])[0]
    b = depth_pre.process(grey, holey, boxes=[box])[0]
    assert b.depth_valid and 0.75 < b.depth_valid_fraction < 0.85
    assert np.abs(a.crops["depth"] - b.crops["depth"]).mean() < 0.02


def test_depth_unusable_gives_zeros_and_invalid(depth_pre: FacePreprocessor) -> None:
    grey = np.full((480, 640), 100, np.uint8)
    _, box = face_depth_frame(1.0)
    nan = np.full((480, 640), np.nan, np.float32)
    far = np.full((480, 640), 9.0, np.float32)  # beyond depth_max_m
    sparse, _ = face_depth_frame(1.0, holes=0.7)
    for depth in (nan, far, sparse, None):
        face = depth_pre.process(grey, depth, boxes=[box])[0]
        assert not face.depth_valid
        assert not face.crops["depth"].any() and face.crops["depth"].shape == (S, S)
    assert depth_pre.process(grey, nan, boxes=[box])[0].depth_valid_fraction == 0.0


def test_depth_array_to_metres() -> None:
    raw = np.array([[0, 800], [1600, 65535]], np.uint16)
    m = depth_array_to_metres(raw, "mm")
    assert m.dtype == np.float32
    np.testing.assert_allclose(m, [[0.0, 0.8], [1.6, 65.535]], rtol=1e-6)
    np.testing.assert_allclose(depth_array_to_metres(raw, 0.001), m)
    np.testing.assert_array_equal(depth_array_to_metres(raw), m)   # uint16 without a unit: millimetres
    np.testing.assert_array_equal(depth_array_to_metres(np.array([[1.25]], np.float32)), [[1.25]])   # float: metres
    f = np.array([[np.nan, 1.25]], np.float64)
    out = depth_array_to_metres(f, "m")
    assert out.dtype == np.float32 and np.isnan(out[0, 0]) and out[0, 1] == 1.25
    with pytest.raises(PreprocessingError, match="int32"):
        depth_array_to_metres(raw.astype(np.int32), "mm")
    with pytest.raises(PreprocessingError, match="uint16 depth is millimetres"):
        depth_array_to_metres(raw, "m")
    with pytest.raises(PreprocessingError, match="unknown depth unit"):
        depth_array_to_metres(raw, "inch")
    with pytest.raises(PreprocessingError, match="HxW"):
        depth_array_to_metres(np.zeros((2, 2, 2), np.uint16))


# ------------------------------------------------------------ pipeline / input

def test_process_outputs_and_tensor_order(astronaut: np.ndarray) -> None:
    pre = FacePreprocessor(HAAR_PAPER, modalities=("depth", "lbp", "grey"))
    depth = np.full(astronaut.shape[:2], 1.2, np.float32)
    faces = pre.process(astronaut, depth)
    assert len(faces) == 1
    face = faces[0]
    assert set(face.crops) == {"depth", "lbp", "grey"}
    for crop in face.crops.values():
        assert crop.dtype == np.float32 and crop.shape == (S, S)
        assert crop.min() >= 0.0 and crop.max() <= 1.0
    assert all(isinstance(v, int) for v in face.box)
    for key in ("detect", "align", "lbp", "grey", "depth"):
        assert face.timings[key] >= 0.0
    assert pre.last_timings["total"] >= pre.last_timings["detect"]
    x = pre.to_tensor(faces)
    assert x.shape == (1, 3, S, S) and x.dtype == np.float32
    # channels in the preprocessor's order, each crop at the precision training stores it in
    np.testing.assert_array_equal(x[0, 0], at_model_precision("depth", face.crops["depth"]))
    np.testing.assert_array_equal(x[0, 2], face.crops["grey"])   # grey levels are exact
    assert pre.to_tensor([]).shape == (0, 3, S, S)
    other = FacePreprocessor(HAAR_PAPER, modalities=("grey", "hog"))
    with pytest.raises(PreprocessingError, match="no 'hog' crop"):
        other.to_tensor(faces)


def test_grey_bgra_and_bgr_inputs_agree(astronaut: np.ndarray, pre: FacePreprocessor) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    ref = pre.process(astronaut)
    for frame in (grey, bgra, grey[:, :, None]):
        out = pre.process(frame)
        assert len(out) == 1 and out[0].box == ref[0].box
        np.testing.assert_array_equal(out[0].crops["grey"], ref[0].crops["grey"])


def test_given_boxes_skip_detection(astronaut: np.ndarray, pre: FacePreprocessor) -> None:
    faces = pre.process(astronaut, boxes=[(175, 66, 97, 97), (0, 300, 80.4, 80)])
    assert [f.box for f in faces] == [(175, 66, 97, 97), (0, 300, 80, 80)]
    assert faces[0].eyes_found
    assert pre.process(astronaut, boxes=[]) == []
    # A box hanging over the frame edge still gives full crops (edge replicated).
    edge = pre.process(astronaut, boxes=[(-40, -30, 120, 120)])[0]
    assert edge.crops["grey"].shape == (S, S) and edge.crops["grey"][0, 0] > 0


@pytest.mark.parametrize("colour,depth,message", [
    (np.zeros((0, 0, 3), np.uint8), None, "empty"),
    (np.zeros((48, 64, 3), np.float32), None, "uint8"),
    (np.zeros((48, 64, 2), np.uint8), None, "HxWx3 BGR"),
    (np.zeros((2, 48, 64, 3), np.uint8), None, "HxWx3 BGR"),
    ([[1, 2], [3, 4]], None, "numpy array"),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.int32), "float32 metres.*depth_array_to_metres"),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint16), "float32 metres"),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((24, 32), np.float32), "does not match colour"),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64, 3), np.float32), "HxW"),
])
def test_bad_input_raises_clear_errors(pre: FacePreprocessor, colour, depth, message: str) -> None:
    with pytest.raises(PreprocessingError, match=message):
        pre.process(colour, depth)


def test_bad_boxes_and_modalities() -> None:
    pre = FacePreprocessor(HAAR_PAPER, modalities=("grey",))
    frame = np.zeros((48, 64), np.uint8)
    for boxes, message in (([(1, 2, 3)], r"boxes\[0\]"), ([(0, 0, 0, 10)], "non-positive"),
                           ([(100, 100, 10, 10)], "outside"), ([("a", 0, 1, 1)], r"boxes\[0\]")):
        with pytest.raises(PreprocessingError, match=message):
            pre.process(frame, boxes=boxes)
    for mods, message in ((("grey", "rgb"), "unknown modality"), (("grey", "grey"), "duplicate"),
                          ((), "at least one"), ("grey", "string")):
        with pytest.raises(PreprocessingError, match=message):
            FacePreprocessor(HAAR_PAPER, modalities=mods)
    with pytest.raises(PreprocessingError, match="roi"):
        HaarFaceDetector().detect(frame, roi=(1, 2))


def test_small_grey_frame_without_faces(pre: FacePreprocessor) -> None:
    assert pre.process(np.full((30, 40), 200, np.uint8)) == []
    assert pre.last_timings["detect"] >= 0.0 and "total" in pre.last_timings
