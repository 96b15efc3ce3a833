"""FaceMesh landmarks: eye centres for eq. (1) and the crop's framing.

Ni et al. (IEEE TCDS 2023, Section III-B 2) rotate each face by the angle of
its eye line (eq. 1), with eyes from DRMF landmarks. Here the landmarks are
MediaPipe's 468-point FaceMesh (``face_landmark.tflite``, 192x192 input in
[0, 1], x/y in input pixels plus a relative z). Each eye centre is the mean
of its 16 contour points; those hold under roll and yaw where the Haar eye
cascade lost the eyes beyond +-15 deg.

The mesh's input region is a square rotated by the best roll estimate
available (the detector's eye keypoints, or the mesh's own first pass):
unrotated crops of rolled faces gave -10 deg error at -20 deg roll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from .params import PreprocessingParams
from .tflite import TFLiteModel

MODEL_FILE = "face_landmark.tflite"
NUM_POINTS = 468

#: Eye contours (MediaPipe's FACEMESH_LEFT_EYE / RIGHT_EYE indices). "Image
#: left" is the subject's right eye in an unmirrored camera image.
IMAGE_LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
IMAGE_RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)

# Sanity limits of a mesh relative to its input region: a mesh that fills
# less than 35 % of the region, spills far outside it or has its eyes closer
# than 15 % of its width is not a face. The model's presence score tells a
# face from no face (logit ~47 on the astronaut, -5 to -11 on a flat or noisy
# image, a cat, coffee) but stays high on a misframed real face, so both
# checks are needed.
_MIN_EXTENT = 0.35
_MAX_OFFSET = 0.3
_MIN_EYE_FRACTION = 0.15


@dataclass(frozen=True)
class Region:
    """A square region of a frame, rotated by ``roll`` (radians, image coordinates)."""

    cx: float
    cy: float
    side: float
    roll: float

    def matrix(self, size: int) -> np.ndarray:
        """2x3 frame -> ``size`` square matrix: the region's centre to the square's centre, roll removed."""
        s = size / float(self.side)
        c, si = math.cos(self.roll) * s, math.sin(self.roll) * s
        half = size / 2.0
        return np.array([[c, si, half - c * self.cx - si * self.cy],
                         [-si, c, half + si * self.cx - c * self.cy]], dtype=np.float64)


@dataclass(frozen=True)
class FaceMesh:
    """468 landmarks of one face.

    Attributes:
        points: ``(468, 3)`` float32: x, y in frame pixels, z relative (same scale as x).
        region: the input region the mesh was computed on.
        presence: the model's face-presence probability.
        plausible: a face is present (``presence >= landmark_min_presence``)
            and the mesh passed the geometric sanity checks.
    """

    points: np.ndarray
    region: Region
    presence: float
    plausible: bool

    @property
    def eyes(self) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        """Eye centres ``(image_left, image_right)`` in frame pixels."""
        left = self.points[list(IMAGE_LEFT_EYE), :2].mean(0)
        right = self.points[list(IMAGE_RIGHT_EYE), :2].mean(0)
        return (float(left[0]), float(left[1])), (float(right[0]), float(right[1]))

    @property
    def roll(self) -> float:
        """Angle of the eye line (radians, image coordinates, y down)."""
        (xl, yl), (xr, yr) = self.eyes
        return math.atan2(yr - yl, xr - xl)

    def face_square(self) -> Region:
        """The face's square in the de-rolled frame: the mesh's extent (forehead to chin), longest side.

        The side follows the taller extent, which yaw barely changes, so a
        turned face is cropped at the same scale as a frontal one.
        """
        roll = self.roll
        c, s = math.cos(roll), math.sin(roll)
        xy = self.points[:, :2].astype(np.float64)
        # Rotate by -roll into the face's upright frame.
        u = xy[:, 0] * c + xy[:, 1] * s
        v = -xy[:, 0] * s + xy[:, 1] * c
        uc, vc = (u.min() + u.max()) / 2.0, (v.min() + v.max()) / 2.0
        side = max(u.max() - u.min(), v.max() - v.min())
        return Region(cx=uc * c - vc * s, cy=uc * s + vc * c, side=float(side), roll=roll)


class FaceMeshModel:
    """FaceMesh on a rotated square region of a frame. Thread-safe (one LiteRT interpreter per thread).

    Args:
        params: preprocessing parameters (``detector_threads``).
    """

    def __init__(self, params: Optional[PreprocessingParams] = None) -> None:
        self.params = params or PreprocessingParams()
        self.model = TFLiteModel(MODEL_FILE, self.params.detector_threads)
        self.size = self.model.input_size

    def run(self, rgb: np.ndarray, region: Region) -> FaceMesh:
        """Landmarks of the face in ``region`` of an RGB ``uint8`` frame."""
        m = region.matrix(self.size)
        scale = self.size / region.side
        if scale < 0.5:
            # A large face: shrink with area filtering first so the mesh sees no aliasing.
            f = scale / 0.8
            small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                               interpolation=cv2.INTER_AREA)
            to_small = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]])
            m_small = m @ np.linalg.inv(to_small)
            inp = cv2.warpAffine(small, m_small, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
        else:
            inp = cv2.warpAffine(rgb, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
        outputs = self.model.run(inp.astype(np.float32) * (1.0 / 255.0))
        raw = self.model.output_with_size(outputs, NUM_POINTS * 3).reshape(NUM_POINTS, 3)
        logit = float(np.clip(self.model.output_with_size(outputs, 1).ravel()[0], -100.0, 100.0))
        presence = 1.0 / (1.0 + math.exp(-logit))
        inv = cv2.invertAffineTransform(m)
        xy = raw[:, :2].astype(np.float64) @ inv[:, :2].T + inv[:, 2]
        points = np.concatenate([xy, raw[:, 2:3] / scale], axis=1).astype(np.float32)
        plausible = presence >= self.params.landmark_min_presence and _plausible(raw, self.size)
        return FaceMesh(points=points, region=region, presence=presence, plausible=plausible)


def _plausible(raw: np.ndarray, size: int) -> bool:
    """Geometric sanity of a mesh in its own input coordinates."""
    xy = raw[:, :2] / float(size)
    lo, hi = xy.min(0), xy.max(0)
    extent = float(max(hi - lo))
    centre = (lo + hi) / 2.0
    eye_l = xy[list(IMAGE_LEFT_EYE)].mean(0)
    eye_r = xy[list(IMAGE_RIGHT_EYE)].mean(0)
    eye_dist = float(np.hypot(*(eye_r - eye_l)))
    width = float(hi[0] - lo[0])
    return bool(extent >= _MIN_EXTENT and np.all(np.abs(centre - 0.5) <= _MAX_OFFSET)
                and width > 0 and eye_dist >= _MIN_EYE_FRACTION * width and eye_r[0] > eye_l[0])
