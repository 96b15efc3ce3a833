"""Eye localisation and rotation rectification (Section III-B 2, eq. 1).

Ni et al. (IEEE TCDS 2023) rotate every detected face by theta, the angle
between the line joining the two eye centres and the horizontal (eq. 1); they
locate the eyes with DRMF. Two paths, chosen by what the face detector's
detections carry (:attr:`~.detector.FaceDetector.has_keypoints`,
:func:`make_aligner`):

* with keypoints (BlazeFace, the default; :class:`LandmarkAligner`): the eyes
  are the FaceMesh eye-contour centres (:mod:`.facemesh`) and the crop is
  framed by the mesh; when the mesh is implausible the detection's eye
  keypoints give the roll and its box the framing (``method="keypoints"``),
  and the preprocessing keeps such a face only above the detector's
  ``keep_unconfirmed_above`` (BlazeFace's default: never).
* boxes alone (the paper's Viola-Jones; :class:`Aligner`): OpenCV's Haar eye
  cascade on the upper part of the face box; the best left/right pair is
  chosen by geometry. When no plausible pair exists the roll falls back to 0
  and ``eyes_found`` says so.

Each :class:`Alignment` says which path its face took (``method``).

Angles follow image coordinates (x right, y *down*): ``roll`` is
``atan2(y_right - y_left, x_right - x_left)`` in radians, positive when the
face is turned clockwise on screen (its right-hand eye lower). The crop
transform rotates by ``-roll`` about the box centre, scales the square box
plus margin to ``crop_size`` and is one ``cv2.warpAffine`` per image, so the
grey and the depth crops share exactly the same geometry.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .detector import Box, FaceDetection
from .facemesh import FaceMesh, FaceMeshModel, Region
from .haar import load_cascade
from .images import Frame
from .params import PreprocessingParams

logger = logging.getLogger(__name__)

Point = Tuple[float, float]

# Upper-face band searched for eyes, as fractions of the box height. Haar
# face boxes put the eyes at ~0.35-0.4 h; the band leaves room for +-20 deg roll.
_EYE_BAND = (0.15, 0.6)
# Plausible eye distance as a fraction of the box width (measured ~0.46 for
# the default frontal cascade) and the allowed size mismatch of a pair.
_EYE_DISTANCE = (0.25, 0.7)
_EYE_DISTANCE_TYPICAL = 0.46
_EYE_MAX_SIZE_RATIO = 1.6
# Largest eye box searched, as a fraction of the box width: Haar eye boxes
# measure ~0.3 of a frontal-cascade face box; 0.38 leaves margin and costs
# ~35 % less than 0.45.
_EYE_MAX_FRACTION = 0.38
# Pupil refinement window (half-sizes as fractions of the eye box side; the
# Haar eye box also holds brow and lids), the dark-pixel percentile and the
# largest shift (fraction of the box side) accepted from it.
_PUPIL_HALF = (0.3, 0.25)
_PUPIL_PERCENTILE = 10.0
_PUPIL_MAX_SHIFT = 0.3
# A FaceMesh pass whose landmarks give nearly the region it ran on (centre
# within 5 % of the side, side within 10 %, roll within 6 deg) needs no second
# pass on that region: it would see almost the same input. Measured on the 580
# faces BlazeFace finds in the pose sweep (benchmarks/bench_detection.py):
# 24 % of the detected faces skip the second pass, the eye error stays at
# p50 4.9 % / p90 8.6 % of the eye distance (always two passes: the same; never
# two: 5.0 % / 10.1 %), and the demo bag's expressions score as with two passes
# (186 of 215 faces right). Given boxes (ground truth, the trainer's face-crop
# datasets) always get both passes, so training crops do not change.
_TRUST_SHIFT = 0.05
_TRUST_SCALE = 0.10
_TRUST_ROLL = math.radians(6.0)


@dataclass(frozen=True)
class EyePair:
    """Eye centres in full-frame pixels; ``left`` is the one on the image's left."""

    left: Point
    right: Point

    @property
    def roll(self) -> float:
        """In-plane angle of the eye line in radians (image coords, y down)."""
        return math.atan2(self.right[1] - self.left[1], self.right[0] - self.left[0])


@dataclass(frozen=True)
class Alignment:
    """Result of rotation rectification for one face.

    Attributes:
        roll: radians removed by the crop transform (0 when no eyes were found).
        eyes_found: whether ``roll`` came from a detected eye pair.
        eyes: the eye pair used, if any.
        matrix: 2x3 ``float64`` affine map from frame pixels to crop pixels.
        method: where the roll and framing came from: ``"mesh"`` (FaceMesh
            eyes and extent), ``"keypoints"`` (BlazeFace eye keypoints and
            box: the mesh was implausible), ``"haar_eyes"`` (Haar eye pair),
            ``"none"`` (no eyes: roll 0, the box as given).
        box: the face box ``(x, y, w, h)`` the crop is centred on, in frame
            pixels (axis-aligned; the mesh's square on the mesh path).
        region: on the mesh path, where FaceMesh should look for this face in
            the next frame of a video (the mesh's square x
            ``landmark_roi_scale``, rotated by its roll: MediaPipe's tracking
            region); None on the other paths.
        landmarks: on the mesh path, the mesh's ``(468, 3)`` points
            (:attr:`~.facemesh.FaceMesh.points`: frame pixels, relative z), kept
            for the head pose (:mod:`cmcnn_ros.inference.face_pose`); None on
            the other paths.
    """

    roll: float
    eyes_found: bool
    eyes: Optional[EyePair]
    matrix: np.ndarray
    method: str = "none"
    box: Optional[Box] = None
    region: Optional[Region] = None
    landmarks: Optional[np.ndarray] = None


def crop_transform(box: Box, roll: float, crop_size: int, margin: float) -> np.ndarray:
    """Affine map from frame pixels to an aligned ``crop_size`` square crop.

    Implements eq. (1) about the box centre: rotate by ``-roll`` (undoing the
    measured roll), scale the square of side ``max(w, h) * (1 + 2 margin)``
    to ``crop_size`` and put the box centre at the crop centre.

    Args:
        box: ``(x, y, w, h)`` face box in frame pixels.
        roll: measured roll in radians (image coordinates, y down).
        crop_size: output side in pixels.
        margin: fraction of the box side added on each side.

    Returns:
        2x3 ``float64`` matrix for ``cv2.warpAffine`` (frame -> crop).
    """
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    scale = crop_size / float(side)
    # Pixel-centre convention: pixel i covers [i - 0.5, i + 0.5].
    cx, cy = x + (w - 1) / 2.0, y + (h - 1) / 2.0
    c, s = math.cos(roll) * scale, math.sin(roll) * scale
    half = (crop_size - 1) / 2.0
    return np.array([[c, s, half - c * cx - s * cy],
                     [-s, c, half + s * cx - c * cy]], dtype=np.float64)


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR,
              border_value: float = 0.0, border_mode: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Resample ``image`` into a ``size`` square through ``matrix`` (frame -> crop).

    Bilinear warping aliases when it shrinks by more than 2x (a 400 px face
    from a 1080p Kinect v2 frame into 148 px), so the source region is first
    reduced with ``INTER_AREA``; nearest-neighbour warps (depth) skip that.

    Args:
        image: 2-D source image.
        matrix: 2x3 frame -> crop affine matrix.
        size: output side in pixels.
        interpolation: ``cv2.INTER_LINEAR`` or ``cv2.INTER_NEAREST``.
        border_value: value outside the frame (``BORDER_CONSTANT``).
        border_mode: OpenCV border mode; the grey crop of a face at the frame
            edge uses ``BORDER_REPLICATE`` so LBP does not see a false edge.

    Returns:
        ``size x size`` array of ``image``'s dtype.
    """
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if interpolation != cv2.INTER_NEAREST and scale < 0.5:
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], float)
        src = corners @ inv.T
        x0 = max(0, int(math.floor(src[:, 0].min())) - 2)
        y0 = max(0, int(math.floor(src[:, 1].min())) - 2)
        x1 = min(image.shape[1], int(math.ceil(src[:, 0].max())) + 3)
        y1 = min(image.shape[0], int(math.ceil(src[:, 1].max())) + 3)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            f = scale / 0.8  # leaves the final warp a mild 0.8x shrink
            sub_w, sub_h = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
            sub = cv2.resize(image[y0:y1, x0:x1], (sub_w, sub_h), interpolation=cv2.INTER_AREA)
            fx, fy = sub_w / float(x1 - x0), sub_h / float(y1 - y0)
            # sub pixel q <- frame pixel (q + 0.5) / f - 0.5 + origin
            to_frame = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5 + x0],
                                 [0.0, 1.0 / fy, 0.5 / fy - 0.5 + y0],
                                 [0.0, 0.0, 1.0]])
            matrix = matrix @ to_frame
            image = sub
    return cv2.warpAffine(image, matrix, (size, size), flags=interpolation,
                          borderMode=border_mode, borderValue=border_value)


def refine_pupil(grey: np.ndarray, centre: Point, size: float) -> Point:
    """Move an eye-cascade centre onto the dark iris/pupil blob.

    Haar eye boxes come in coarse scale steps, so their centres are a few
    pixels off and the eye-line angle errs by up to ~3-5 degrees at 15
    degrees of roll. The darkness-weighted centroid of the darkest
    ``_PUPIL_PERCENTILE`` % of a lightly blurred window around the centre
    lands on the iris (measured on the rotated astronaut photograph: roll
    error 2.7 -> 0.5 degrees). A shift larger than ``_PUPIL_MAX_SHIFT`` of the
    box (e.g. a dark brow or frame) is not trusted.

    Args:
        grey: ``uint8`` HxW frame.
        centre: eye-cascade centre ``(x, y)`` in frame pixels.
        size: eye box side in frame pixels.

    Returns:
        The refined centre, or ``centre`` when refinement is not trusted.
    """
    x0 = max(0, int(round(centre[0] - _PUPIL_HALF[0] * size)))
    x1 = min(grey.shape[1], int(round(centre[0] + _PUPIL_HALF[0] * size)) + 1)
    y0 = max(0, int(round(centre[1] - _PUPIL_HALF[1] * size)))
    y1 = min(grey.shape[0], int(round(centre[1] + _PUPIL_HALF[1] * size)) + 1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return centre
    region = cv2.GaussianBlur(grey[y0:y1, x0:x1].astype(np.float32), (0, 0), max(0.8, size / 16.0))
    weight = np.percentile(region, _PUPIL_PERCENTILE) - region
    np.clip(weight, 0.0, None, out=weight)
    total = float(weight.sum())
    if total <= 0.0:
        return centre
    ys, xs = np.mgrid[y0:y1, x0:x1]
    refined = (float((weight * xs).sum() / total), float((weight * ys).sum() / total))
    if math.hypot(refined[0] - centre[0], refined[1] - centre[1]) > _PUPIL_MAX_SHIFT * size:
        return centre
    return refined


class EyeLocator:
    """Both eye centres of a face from the Haar eye cascade."""

    def __init__(self, params: Optional[PreprocessingParams] = None) -> None:
        """Load ``params.eye_cascade``.

        Raises:
            PreprocessingError: the cascade cannot be loaded.
        """
        self.params = params or PreprocessingParams()
        self._cascade = load_cascade(self.params.eye_cascade)
        win = self._cascade.getOriginalWindowSize()
        self.window = int(max(win[0], win[1])) if win[0] > 0 else 20

    def candidates(self, grey: np.ndarray, box: Box) -> List[Tuple[float, float, float]]:
        """Eye-cascade hits in the upper face as ``(cx, cy, size)`` in frame pixels."""
        x, y, w, h = box
        y0 = max(0, int(round(y + _EYE_BAND[0] * h)))
        y1 = min(grey.shape[0], int(round(y + _EYE_BAND[1] * h)))
        x0, x1 = max(0, x), min(grey.shape[1], x + w)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        region = grey[y0:y1, x0:x1]
        # A fixed working width makes the cost per face constant and puts
        # eyes (~0.27 of the box) just above the cascade window.
        scale = self.params.eye_region_width / float(w)
        new_size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        region = cv2.resize(region, new_size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if min(region.shape) < self.window:
            return []
        max_side = max(self.window, int(_EYE_MAX_FRACTION * self.params.eye_region_width))
        hits = self._cascade.detectMultiScale(
            region, scaleFactor=self.params.eye_scale_factor, minNeighbors=self.params.eye_min_neighbors,
            minSize=(self.window, self.window), maxSize=(max_side, max_side))
        return [(x0 + (ex + ew / 2.0) / scale - 0.5, y0 + (ey + eh / 2.0) / scale - 0.5, ew / scale)
                for ex, ey, ew, eh in (hits if len(hits) else [])]

    def locate(self, grey: np.ndarray, box: Box) -> Optional[EyePair]:
        """The most plausible eye pair of the face in ``box``, or ``None``.

        A pair must straddle the box's vertical centre line, be between
        0.25 and 0.7 box widths apart, have similar sizes and a slope within
        ``max_roll_deg``; among such pairs the one most symmetric about the
        centre line, closest in size and nearest the typical eye distance
        wins; its centres are then refined onto the pupils (``eye_refine``).

        Args:
            grey: ``uint8`` HxW frame.
            box: ``(x, y, w, h)`` face box in frame pixels.
        """
        x, _, w, _ = box
        centre = x + (w - 1) / 2.0
        max_slope = math.radians(self.params.max_roll_deg)
        best: Optional[Tuple[float, Tuple[float, float, float], Tuple[float, float, float]]] = None
        for a, b in itertools.permutations(self.candidates(grey, box), 2):
            if not a[0] < centre < b[0]:
                continue
            dist = math.hypot(b[0] - a[0], b[1] - a[1])
            if not _EYE_DISTANCE[0] * w <= dist <= _EYE_DISTANCE[1] * w:
                continue
            if abs(math.atan2(b[1] - a[1], b[0] - a[0])) > max_slope:
                continue
            ratio = max(a[2], b[2]) / min(a[2], b[2])
            if ratio > _EYE_MAX_SIZE_RATIO:
                continue
            cost = (abs((a[0] + b[0]) / 2.0 - centre) / w + math.log(ratio)
                    + abs(dist / w - _EYE_DISTANCE_TYPICAL))
            if best is None or cost < best[0]:
                best = (cost, a, b)
        if best is None:
            return None
        _, a, b = best
        left, right = (a[0], a[1]), (b[0], b[1])
        if self.params.eye_refine:
            left, right = refine_pupil(grey, left, a[2]), refine_pupil(grey, right, b[2])
            if abs(math.atan2(right[1] - left[1], right[0] - left[0])) > max_slope:
                left, right = (a[0], a[1]), (b[0], b[1])
        return EyePair(left=left, right=right)


class Aligner:
    """Rotation rectification of a face box (eq. 1) into a crop transform.

    Not thread-safe (OpenCV's eye cascade): the preprocessing runs its faces one after another.
    """

    thread_safe = False

    def __init__(self, params: Optional[PreprocessingParams] = None) -> None:
        """Build the eye locator when ``params.align`` is on.

        Raises:
            PreprocessingError: the eye cascade cannot be loaded.
        """
        self.params = params or PreprocessingParams()
        self.eyes = EyeLocator(self.params) if self.params.align else None

    def align(self, frame: Frame, box: Box, detection: Optional[FaceDetection] = None) -> Alignment:
        """Measure the roll of the face in ``box`` and build its crop transform.

        Args:
            frame: the frame (its grey copy is searched).
            box: ``(x, y, w, h)`` face box in frame pixels.
            detection: the detection of ``box``, if any (a box is all this path reads).
        """
        pair = self.eyes.locate(frame.grey, box) if self.eyes is not None else None
        if pair is None and self.eyes is not None:
            logger.debug("no plausible eye pair in face box %s: roll 0", box)
        roll = pair.roll if pair is not None else 0.0
        matrix = crop_transform(box, roll, self.params.crop_size, self.params.crop_margin)
        return Alignment(roll=roll, eyes_found=pair is not None, eyes=pair, matrix=matrix,
                         method="haar_eyes" if pair is not None else "none", box=tuple(box))


class LandmarkAligner:
    """Rotation rectification and framing from FaceMesh landmarks (BlazeFace path).

    A detection brings its eye keypoints: the mesh first runs on the region
    MediaPipe derives from them (the detector box x ``landmark_roi_scale``,
    rotated by the keypoints' roll). A given box (ground truth, a dataset's
    face crop) has no roll estimate: the first pass runs on the box's square x
    ``box_roi_scale`` at roll 0. The mesh then runs again on the region its
    first landmarks give (mesh square x ``landmark_roi_scale``, rotated by the
    mesh's eye line), unless for a detection that region already agrees with
    the first (:func:`trusted`). On video, :meth:`track` can run the mesh on the
    region the previous frame's landmarks give, as MediaPipe's face mesh
    tracks a face (the face finder's ``landmark_tracking``), once when the
    landmarks confirm that region.
    The crop is the mesh's square (forehead to chin) plus ``crop_margin``,
    rotated by the eye line (eq. 1), so every source of boxes yields the same
    framing for the same face.

    Thread-safe (LiteRT keeps one interpreter per thread): the preprocessing
    aligns the faces of a frame on its lanes.
    """

    thread_safe = True

    def __init__(self, params: Optional[PreprocessingParams] = None) -> None:
        self.params = params or PreprocessingParams()
        self.mesh = FaceMeshModel(self.params) if self.params.align else None

    def align(self, frame: Frame, box: Box, detection: Optional[FaceDetection] = None) -> Alignment:
        """Landmarks, roll and crop transform of one face.

        Args:
            frame: the frame (its RGB copy feeds the mesh).
            box: the face box ``(x, y, w, h)`` (whole-face framing).
            detection: the detection of ``box``, when it came from the
                detector; its eye keypoints and ``detector_box`` seed the mesh.
        """
        p = self.params
        rgb = frame.rgb
        key_roll = None
        if detection is not None and detection.keypoints is not None:
            key_roll = keypoint_roll(detection.keypoints)
        if self.mesh is None:
            return self._from_box(box, 0.0, False, None, "none")
        x, y, w, h = (float(v) for v in box)
        seeded = detection is not None and detection.detector_box is not None and key_roll is not None
        if seeded:
            dx, dy, dw, dh = detection.detector_box  # type: ignore[union-attr]
            region = Region(dx + dw / 2.0, dy + dh / 2.0, p.landmark_roi_scale * max(dw, dh), key_roll)
        else:
            region = Region(x + w / 2.0, y + h / 2.0, p.box_roi_scale * max(w, h), 0.0)
        mesh = self.mesh.run(rgb, region)
        if mesh.plausible and not (seeded and trusted(region, self._next_region(mesh))):
            # Second pass on the region the first landmarks give (MediaPipe's tracking
            # region): eye error p90 10.1 -> 8.6 % of the eye distance on the sweep, and
            # detected and given boxes end on the same kind of region.
            mesh = self.mesh.run(rgb, self._next_region(mesh))
        if not mesh.plausible:
            logger.debug("implausible face mesh for box %s", box)
            if key_roll is not None:
                kp = detection.keypoints  # type: ignore[union-attr]
                pair = EyePair(left=(float(kp[0][0]), float(kp[0][1])), right=(float(kp[1][0]), float(kp[1][1])))
                return self._from_box(box, key_roll, True, pair, "keypoints")
            return self._from_box(box, 0.0, False, None, "none")
        return self._from_mesh(mesh)

    def track(self, frame: Frame, region: Region) -> Optional[Alignment]:
        """The face FaceMesh finds in ``region`` (the previous frame's :attr:`Alignment.region`), or None.

        One mesh pass when the landmarks confirm the region (:func:`trusted`),
        a second on the region they give when the face moved; None when no
        plausible face is there any more (it left, turned away or moved too
        far: the caller searches with the detector).
        """
        if self.mesh is None:
            return None
        rgb = frame.rgb
        mesh = self.mesh.run(rgb, region)
        if mesh.plausible and not trusted(region, self._next_region(mesh)):
            mesh = self.mesh.run(rgb, self._next_region(mesh))
        return self._from_mesh(mesh) if mesh.plausible else None

    def _next_region(self, mesh: FaceMesh) -> Region:
        sq = mesh.face_square()
        return Region(sq.cx, sq.cy, self.params.landmark_roi_scale * sq.side, sq.roll)

    def _from_mesh(self, mesh: FaceMesh) -> Alignment:
        p = self.params
        left, right = mesh.eyes
        sq = mesh.face_square()
        side = sq.side
        matrix = crop_transform_centre((sq.cx, sq.cy), side, sq.roll, p.crop_size, p.crop_margin)
        face_box = (int(round(sq.cx - side / 2.0)), int(round(sq.cy - side / 2.0)), int(round(side)),
                    int(round(side)))
        return Alignment(roll=sq.roll, eyes_found=True, eyes=EyePair(left=left, right=right), matrix=matrix,
                         method="mesh", box=face_box, region=self._next_region(mesh), landmarks=mesh.points)

    def _from_box(self, box: Box, roll: float, eyes_found: bool, eyes: Optional[EyePair],
                  method: str) -> Alignment:
        matrix = crop_transform(box, roll, self.params.crop_size, self.params.crop_margin)
        return Alignment(roll=roll, eyes_found=eyes_found, eyes=eyes, matrix=matrix, method=method,
                         box=tuple(int(v) for v in box))


def trusted(used: Region, given: Region) -> bool:
    """Whether a FaceMesh pass on ``used`` needs no second pass on ``given``, the region its landmarks give.

    True when the two agree: centres within ``_TRUST_SHIFT`` of the side,
    sides within ``_TRUST_SCALE``, rolls within ``_TRUST_ROLL`` (see there
    for the measurement).
    """
    shift = math.hypot(given.cx - used.cx, given.cy - used.cy) / max(given.side, 1e-6)
    scale = abs(given.side / max(used.side, 1e-6) - 1.0)
    turn = abs(math.remainder(given.roll - used.roll, 2.0 * math.pi))
    return shift <= _TRUST_SHIFT and scale <= _TRUST_SCALE and turn <= _TRUST_ROLL


def crop_transform_centre(centre: Point, side: float, roll: float, crop_size: int, margin: float) -> np.ndarray:
    """Like :func:`crop_transform` for a square of ``side`` around a continuous ``centre``."""
    scale = crop_size / float(side * (1.0 + 2.0 * margin))
    cx, cy = centre
    c, s = math.cos(roll) * scale, math.sin(roll) * scale
    half = (crop_size - 1) / 2.0
    return np.array([[c, s, half - c * cx - s * cy],
                     [-s, c, half + s * cx - c * cy]], dtype=np.float64)


def keypoint_roll(keypoints: Sequence[Sequence[float]]) -> float:
    """Roll (radians, image coordinates) of the line from keypoint 0 (image-left eye) to 1 (image-right eye)."""
    (x0, y0), (x1, y1) = keypoints[0], keypoints[1]
    return math.atan2(y1 - y0, x1 - x0)


def make_aligner(params: PreprocessingParams, has_keypoints: bool) -> Union[Aligner, LandmarkAligner]:
    """The aligner for a detector's faces: FaceMesh when its detections carry eye keypoints, else Haar eyes.

    Chosen by what the detections carry, not by the detector's name, so a new
    detector needs no change here. Given boxes (ground truth, dataset crops)
    take the same path as the detector's faces, as in training.
    """
    return LandmarkAligner(params) if has_keypoints else Aligner(params)
