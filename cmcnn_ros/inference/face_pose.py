"""Where a face is: its 3-D position and head orientation in the colour camera's optical frame.

REP-155 ("Face and Gaze Frames") asks a head-pose estimator to publish each
face as a TF frame ``face_<faceID>``: parent the sensor frame the pose was
estimated in, origin at the *sellion* (the deepest midline point between nose
and forehead, about the midpoint between the eyes), ``x`` out of the face,
``z`` towards the scalp, so ``y`` points to the person's left (right-handed,
REP-103). The sensor frame here is the colour camera's optical frame (REP-103,
"Suffix Frames": ``x`` right, ``y`` down, ``z`` forward), the ``frame_id`` of the
colour image, in which the registered depth is expressed too. This module
computes both halves of that pose from what the recognizer already has, ROS-free:

* **position** (:func:`face_position`): the sellion is FaceMesh landmark 168
  (1 px from the rendered sellion on frontal faces). Its depth comes from the
  registered depth under the landmarks around it (within
  :data:`VOTE_RADIUS` eye-corner distances: nose bridge, eyes, brows; 200-240
  of them), not from the one pixel (a hole there would decide it): each
  landmark's depth reading, less its own FaceMesh relative depth, votes for
  the depth of the mesh's reference plane; the median vote (robust to holes,
  the background behind a turned face's edge and sensor noise) plus the
  sellion's relative depth gives the sellion's depth, which is back-projected
  through its pixel with the pinhole intrinsics. Voting landmarks near the
  sellion measured better than all inner-face ones
  (``benchmarks/bench_face_pose.py``: FaceMesh's relative depth is less exact
  than its pixels, and it matters less where the face is flat around the
  sellion). Without landmarks (Haar-eye faces) the median depth of the
  central half of the box is back-projected through the eye midpoint (or the
  box centre): about twice the error. NaN when too few readings are valid.
* **orientation** (:func:`head_rotation`): the face axes from the FaceMesh
  points with their relative depth (the eye line, chin to forehead), which
  describe the head as seen *along the line of sight* (FaceMesh looks at an
  affine crop of the face: a face that looks at the camera from the image
  border is frontal to it), then rotated from the line of sight to the
  optical axis (:func:`line_of_sight_rotation`), so the orientation is in the
  optical frame as REP-155 asks. ``benchmarks/bench_face_pose.py`` measured
  it against the same axes without that rotation and ``cv2.solvePnP`` on a
  generic face model: yaw error p50 2.3 deg against 14.1 and 10.4 (README,
  "Where each face is").

Everything is in metres and radians; quaternions are ``(x, y, z, w)`` as in
``geometry_msgs/Quaternion``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

Box = Tuple[int, int, int, int]
Vector = Tuple[float, float, float]
Quaternion = Tuple[float, float, float, float]

NAN_POSITION: Vector = (math.nan, math.nan, math.nan)
NAN_ORIENTATION: Quaternion = (math.nan, math.nan, math.nan, math.nan)

#: FaceMesh landmark at the sellion (MediaPipe's canonical mesh: the nose bridge between the eyes).
SELLION = 168
#: Outer eye corners: their distance is the face's scale in pixels.
EYE_CORNERS = (33, 263)
#: Landmarks within this many eye-corner distances of the sellion vote for its depth.
VOTE_RADIUS = 0.6
#: The face oval (MediaPipe's FACEMESH_FACE_OVAL): at the silhouette, where a depth reading may be the
#: wall behind the face; left out of the depth votes.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
_INNER = np.setdiff1d(np.arange(468), np.array(FACE_OVAL))
#: Symmetric landmark pairs (image-left point first on a frontal face): eye outer and inner corners, brows,
#: cheekbones, nose wings, mouth corners. Their mean direction is the person's left (REP-155 ``y``).
SYMMETRIC_PAIRS = ((33, 263), (133, 362), (70, 300), (105, 334), (234, 454), (50, 280), (129, 358), (61, 291))
#: Top of the forehead and the chin: the person's up (REP-155 ``z``).
FOREHEAD, CHIN = 10, 152

# Depth readings: at least this many valid voting landmarks (about 140), or box pixels, and this
# share of them; fewer gives NaN (a face mostly over holes is not located). Votes further than
# this fraction of the median from it are outliers (background behind the face, a hand).
MIN_DEPTH_SAMPLES = 12
MIN_DEPTH_FRACTION = 0.1
_OUTLIER_FRACTION = 0.05


class IntrinsicsError(ValueError):
    """Pinhole intrinsics that cannot locate anything (zero or NaN focal length, size mismatch); says which."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the colour image (and of the depth registered to it).

    ``u = fx * X / Z + cx``, ``v = fy * Y / Z + cy`` with pixel centres at
    integer coordinates (``sensor_msgs/CameraInfo``'s ``K``, OpenCV's camera
    matrix). Lens distortion is not modelled.

    Raises:
        IntrinsicsError: a focal length that is not a finite positive number,
            a principal point that is not finite, or a non-positive size.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0.0:
                raise IntrinsicsError(f"focal length {name} is {value}; it must be a finite positive number "
                                      "of pixels (an uncalibrated camera publishes 0)")
        for name in ("cx", "cy"):
            if not math.isfinite(float(getattr(self, name))):
                raise IntrinsicsError(f"principal point {name} is {getattr(self, name)}; it must be finite")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise IntrinsicsError(f"image size {self.width}x{self.height} must be positive")

    @classmethod
    def from_matrix(cls, k: Sequence[float], width: int, height: int) -> "CameraIntrinsics":
        """From a row-major 3x3 camera matrix (``CameraInfo.k``) and the image size.

        Raises:
            IntrinsicsError: not nine numbers, or intrinsics :class:`CameraIntrinsics` refuses.
        """
        values = [float(v) for v in k]
        if len(values) != 9:
            raise IntrinsicsError(f"the camera matrix K has {len(values)} entries, not 9")
        return cls(fx=values[0], fy=values[4], cx=values[2], cy=values[5], width=int(width), height=int(height))

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> "CameraIntrinsics":
        """From a calibration file's contents.

        Two layouts: ``fx, fy, cx, cy, width, height`` (``cmcnn-synth``'s
        ``intrinsics.yaml``), or ROS ``camera_calibration``'s
        ``image_width``, ``image_height`` and ``camera_matrix: {data: [9]}``.

        Raises:
            IntrinsicsError: neither layout, or values :class:`CameraIntrinsics` refuses.
        """
        try:
            if "camera_matrix" in doc:
                return cls.from_matrix(doc["camera_matrix"]["data"], int(doc["image_width"]),
                                       int(doc["image_height"]))
            return cls(fx=float(doc["fx"]), fy=float(doc["fy"]), cx=float(doc["cx"]), cy=float(doc["cy"]),
                       width=int(doc["width"]), height=int(doc["height"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IntrinsicsError):
                raise
            raise IntrinsicsError(
                f"expected fx, fy, cx, cy, width, height or a ROS camera_calibration file (image_width, "
                f"image_height, camera_matrix.data); {type(exc).__name__}: {exc}") from exc

    def size_problem(self, shape: Sequence[int]) -> Optional[str]:
        """Why these intrinsics do not describe an image of ``shape`` ``(h, w, ...)``, or None."""
        h, w = int(shape[0]), int(shape[1])
        if (w, h) != (int(self.width), int(self.height)):
            return (f"the intrinsics are for a {self.width}x{self.height} image but the colour image is {w}x{h} "
                    "(camera_info of another stream or resolution)")
        return None

    def back_project(self, u: float, v: float, z: float) -> Vector:
        """The point at depth ``z`` (metres along the optical axis) seen at pixel ``(u, v)``."""
        return ((u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z)

    def ray(self, u: float, v: float) -> np.ndarray:
        """Unit vector of the line of sight through pixel ``(u, v)``."""
        d = np.array([(u - self.cx) / self.fx, (v - self.cy) / self.fy, 1.0])
        return d / np.linalg.norm(d)


@dataclass(frozen=True)
class FacePose:
    """Where one face is, in the colour camera's optical frame (REP-103).

    Attributes:
        position: the sellion (REP-155's face frame origin), metres; NaN when
            unknown (no intrinsics, no depth, too few valid readings).
        orientation: quaternion ``(x, y, z, w)`` of REP-155's face axes (``x``
            out of the face, ``z`` to the scalp); NaN when unknown (no landmarks
            or no intrinsics).
        depth_samples: valid depth readings the position was voted from.
    """

    position: Vector = NAN_POSITION
    orientation: Quaternion = NAN_ORIENTATION
    depth_samples: int = 0

    @property
    def has_position(self) -> bool:
        return all(math.isfinite(c) for c in self.position)

    @property
    def has_orientation(self) -> bool:
        return all(math.isfinite(c) for c in self.orientation)


def _valid_depth(values: np.ndarray, depth_min_m: float, depth_max_m: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= depth_min_m) & (values <= depth_max_m)


def _robust_median(values: np.ndarray) -> float:
    """Median, then the median of the values within ``_OUTLIER_FRACTION`` of it (the face, not the wall)."""
    first = float(np.median(values))
    near = values[np.abs(values - first) <= _OUTLIER_FRACTION * first]
    return float(np.median(near)) if len(near) else first


def face_position(depth_m: np.ndarray, intrinsics: CameraIntrinsics, box: Sequence[float],
                  landmarks: Optional[np.ndarray] = None,
                  eyes: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None,
                  depth_min_m: float = 0.3, depth_max_m: float = 5.0,
                  vote_radius: float = VOTE_RADIUS) -> Tuple[Vector, int]:
    """The sellion of one face in metres (optical frame) from the registered depth.

    Args:
        depth_m: ``float32`` HxW metres registered to the colour image (0, NaN
            or outside ``[depth_min_m, depth_max_m]`` = no reading).
        intrinsics: the colour camera's (the image must be their size).
        box: the face box ``(x, y, w, h)`` in colour pixels.
        landmarks: FaceMesh ``(468, 3)`` points (frame pixels, relative z in
            pixels, larger = further), when the face has them.
        eyes: eye centres, used without landmarks to place the sellion pixel.
        depth_min_m, depth_max_m: valid reading range (the preprocessing's).
        vote_radius: landmarks within this many eye-corner distances of the
            sellion vote (``math.inf``: every inner-face landmark).

    Returns:
        ``((x, y, z), samples)``: the position (NaN when fewer than
        :data:`MIN_DEPTH_SAMPLES` or :data:`MIN_DEPTH_FRACTION` of the readings
        are valid) and the number of valid readings.

    Raises:
        IntrinsicsError: the depth image is not the intrinsics' size.
    """
    problem = intrinsics.size_problem(depth_m.shape)
    if problem:
        raise IntrinsicsError(problem.replace("colour image", "depth image"))
    h, w = depth_m.shape[:2]
    if landmarks is not None:
        pts = np.asarray(landmarks, dtype=np.float64)
        scale_px = float(np.linalg.norm(pts[EYE_CORNERS[1], :2] - pts[EYE_CORNERS[0], :2]))
        near = np.linalg.norm(pts[_INNER, :2] - pts[SELLION, :2], axis=1) <= vote_radius * scale_px
        voters = pts[_INNER[near]]
        u = np.rint(voters[:, 0]).astype(np.int64)
        v = np.rint(voters[:, 1]).astype(np.int64)
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        readings = np.full(len(voters), np.nan)
        readings[inside] = depth_m[v[inside], u[inside]]
        ok = _valid_depth(readings, depth_min_m, depth_max_m)
        count = int(ok.sum())
        if count < max(MIN_DEPTH_SAMPLES, MIN_DEPTH_FRACTION * len(voters)):
            return NAN_POSITION, count
        # FaceMesh's z is in pixels of the frame at the face's scale, i.e. z * Z / fx metres at depth Z:
        # a reading D of landmark i says the reference plane is at D / (1 + z_i / fx).
        scale = 1.0 / intrinsics.fx
        reference = _robust_median(readings[ok] / (1.0 + voters[ok, 2] * scale))
        su, sv, sz = pts[SELLION]
        depth = reference * (1.0 + sz * scale)
        return intrinsics.back_project(float(su), float(sv), float(depth)), count
    x, y, bw, bh = (float(c) for c in box)
    x0, x1 = int(max(0, math.floor(x + bw / 4))), int(min(w, math.ceil(x + 3 * bw / 4)))
    y0, y1 = int(max(0, math.floor(y + bh / 4))), int(min(h, math.ceil(y + 3 * bh / 4)))
    patch = depth_m[y0:y1, x0:x1].astype(np.float64).ravel() if x1 > x0 and y1 > y0 else np.zeros(0)
    ok = _valid_depth(patch, depth_min_m, depth_max_m)
    count = int(ok.sum())
    if count < max(MIN_DEPTH_SAMPLES, MIN_DEPTH_FRACTION * max(len(patch), 1)):
        return NAN_POSITION, count
    if eyes is not None:
        (xl, yl), (xr, yr) = eyes
        su, sv = (xl + xr) / 2.0, (yl + yr) / 2.0
    else:
        # A whole-face box (forehead to chin) has the eyes about 40 % down.
        su, sv = x + (bw - 1) / 2.0, y + 0.4 * bh
    return intrinsics.back_project(su, sv, _robust_median(patch[ok])), count


def line_of_sight_rotation(direction: np.ndarray) -> np.ndarray:
    """The smallest rotation that turns the optical axis ``(0, 0, 1)`` onto ``direction`` (a unit vector)."""
    z = np.array([0.0, 0.0, 1.0])
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    axis = np.cross(z, d)
    s, c = float(np.linalg.norm(axis)), float(np.dot(z, d))
    if s < 1e-12:
        return np.eye(3)
    k = axis / s
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + s * kx + (1.0 - c) * (kx @ kx)


def mesh_face_axes(landmarks: np.ndarray) -> np.ndarray:
    """REP-155 face axes (columns ``x`` out of the face, ``y`` left, ``z`` up) in FaceMesh's own frame.

    FaceMesh's points are image ``x`` right, ``y`` down and a relative depth
    ``z`` away from the camera, at one scale: an orthographic view along the
    line of sight. ``y`` is the mean direction of the symmetric pairs (the
    person's left is on the image right of a face that looks at the camera),
    ``z`` the chin-to-forehead direction made orthogonal to it, ``x = y x z``.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    left = sum((pts[b] - pts[a]) / max(np.linalg.norm(pts[b] - pts[a]), 1e-9) for a, b in SYMMETRIC_PAIRS)
    y = left / np.linalg.norm(left)
    up = pts[FOREHEAD] - pts[CHIN]
    z = up - np.dot(up, y) * y
    z = z / np.linalg.norm(z)
    return np.stack([np.cross(y, z), y, z], axis=1)


def head_rotation(landmarks: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """REP-155 face axes in the optical frame (3x3, columns ``x`` out of the face, ``y`` left, ``z`` up).

    :func:`mesh_face_axes` describe the head relative to the line of sight
    through the sellion; :func:`line_of_sight_rotation` turns that line onto
    the optical axis's place, so a face at the image border that looks at the
    camera points its ``x`` axis back at the camera centre.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    view = line_of_sight_rotation(intrinsics.ray(float(pts[SELLION, 0]), float(pts[SELLION, 1])))
    return view @ mesh_face_axes(pts)


def rotation_to_quaternion(r: np.ndarray) -> Quaternion:
    """A rotation matrix as ``(x, y, z, w)`` with ``w >= 0`` (Shepperd's method: stable for every angle)."""
    m = np.asarray(r, dtype=np.float64)
    trace = float(m[0, 0] + m[1, 1] + m[2, 2])
    if trace > 0.0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    n = math.sqrt(sum(c * c for c in q))
    q = tuple(c / n for c in q)
    return q if q[3] >= 0.0 else tuple(-c for c in q)  # type: ignore[return-value]


def quaternion_to_rotation(q: Sequence[float]) -> np.ndarray:
    """``(x, y, z, w)`` as a rotation matrix."""
    x, y, z, w = (float(c) for c in q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def estimate_face_pose(depth_m: Optional[np.ndarray], intrinsics: CameraIntrinsics, box: Sequence[float],
                       landmarks: Optional[np.ndarray] = None,
                       eyes: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None,
                       depth_min_m: float = 0.3, depth_max_m: float = 5.0) -> FacePose:
    """Position (from ``depth_m``, if any) and orientation (from ``landmarks``, if any) of one face.

    Raises:
        IntrinsicsError: the depth image is not the intrinsics' size.
    """
    position, samples = NAN_POSITION, 0
    if depth_m is not None:
        position, samples = face_position(depth_m, intrinsics, box, landmarks, eyes, depth_min_m, depth_max_m)
    orientation = NAN_ORIENTATION
    if landmarks is not None:
        orientation = rotation_to_quaternion(head_rotation(landmarks, intrinsics))
    return FacePose(position=position, orientation=orientation, depth_samples=samples)
