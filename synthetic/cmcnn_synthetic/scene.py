"""Scene API: posed expressive faces in a room -> Kinect-like RGB-D frame + ground truth.

This is the synthetic counterpart of the Kinect databases of Section IV-A
(VT-KFER, CCZU-FER): a registered colour/depth pair with faces whose
expression class, intensity (BU-3DFE levels 1-4) and subject are known.
The ground-truth box is shaped like a Viola-Jones detection (Section III-B
crops from that detector): square, from above the brows to the chin and
about ear to ear, so ground-truth crops look like detected ones.

Conventions: camera frame is OpenCV's (x right, y down, z forward, metres).
``FaceSpec.position_m`` is where the subject's nose tip goes. Pose angles
are relative to a head looking at the camera centre from where it is
(zero pose = frontal view anywhere in the image): ``yaw_deg > 0`` turns the
face towards the image right, ``pitch_deg > 0`` tilts it up, ``roll_deg >
0`` rotates it counter-clockwise in the image.

``render_frame(..., variation="wide")`` draws the faces' expressions and
looks (:mod:`.expressions`, :mod:`.appearance`), the light, the room and
the colour sensor from wider ranges; ``depth_noise="kinect"`` draws a
per-frame depth sensor (:func:`random_sensor`). Both default to
``"classic"``, which renders exactly what this module always rendered.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .appearance import model_vertex_normals, subject_albedo, subject_appearance
from .expressions import check_label_intensity, check_variation, expression_weights
from .facekit import blend_expression, identity_mesh, load_facekit
from .render import (DEPTH_NOISE_MODELS, BackgroundSpec, CameraSpec, LightSpec, MeshInstance, SensorSpec,
                     composite, rasterise, render_background, sensor_pair)

logger = logging.getLogger(__name__)

_SEED_SALT = 0x5CE7E
_NOSE_TIP = 30
# Multi-PIE landmark 27, the top of the nose bridge between the eyes: the sellion, REP-155's face frame
# origin (cmcnn_ros.inference.face_pose estimates the same point).
_SELLION = 27
_RIGHT_EYE = slice(36, 42)   # subject's right eye: appears on the image left for a frontal face
_LEFT_EYE = slice(42, 48)
# Ground-truth box geometry, calibrated against OpenCV's frontal Haar cascade
# (see face_box and docs/SYNTHETIC.md).
BOX_SCALE = 1.28
BOX_CENTRE_Y = 0.27
BROW_CHIN_TO_JAW = 1.08


class SceneError(ValueError):
    """A face or scene specification is invalid."""


@dataclass(frozen=True)
class FaceSpec:
    """One face to render.

    Attributes:
        subject_id: seeded identity (shape, skin, hair, expression style).
        label: expression class (``cmcnn_ros.classes`` names or aliases).
        intensity: 0 for neutral, 1..4 (BU-3DFE levels) otherwise.
        position_m: nose tip position in the camera frame (metres).
        yaw_deg, pitch_deg, roll_deg: head pose (see module docstring).
        expression_seed: seed of the per-frame expression jitter; fix it to
            keep a face's expression steady across the frames of a bag.
            ``None`` derives it from the frame seed and face index.
        expression_scale: 0..1 multiplier of the expression (onset/offset).
        weights: explicit ``(53,)`` blendshape weights; overrides the recipe.
    """

    subject_id: int
    label: str = "neutral"
    intensity: int = 0
    position_m: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    expression_seed: Optional[int] = None
    expression_scale: float = 1.0
    weights: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if isinstance(self.subject_id, bool) or not isinstance(self.subject_id, (int, np.integer)) \
                or self.subject_id < 0:
            raise SceneError(f"subject_id must be a non-negative int, got {self.subject_id!r}")
        try:
            label, intensity = check_label_intensity(self.label, self.intensity)
        except ValueError as exc:
            raise SceneError(f"face of subject {self.subject_id}: {exc}") from None
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "intensity", intensity)
        pos = tuple(float(c) for c in self.position_m)
        if len(pos) != 3 or not all(math.isfinite(c) for c in pos):
            raise SceneError(f"position_m must be three finite numbers, got {self.position_m!r}")
        if pos[2] <= 0.2:
            raise SceneError(f"face must be in front of the camera (z > 0.2 m), got z={pos[2]}")
        object.__setattr__(self, "position_m", pos)
        for name in ("yaw_deg", "pitch_deg", "roll_deg"):
            a = float(getattr(self, name))
            if not math.isfinite(a) or abs(a) > 90.0:
                raise SceneError(f"{name} must be within +-90 degrees, got {a}")
        if not 0.0 <= self.expression_scale <= 1.0:
            raise SceneError(f"expression_scale must be in [0, 1], got {self.expression_scale}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            n = load_facekit().num_expressions
            if w.shape != (n,) or not np.all(np.isfinite(w)):
                raise SceneError(f"weights must be {n} finite numbers, got shape {w.shape}")
            object.__setattr__(self, "weights", tuple(float(x) for x in w))


@dataclass
class FaceTruth:
    """Ground truth of one rendered face (pixel coordinates in the colour image).

    Attributes:
        subject_id, label, intensity: as requested.
        box: ``(x, y, w, h)`` square Haar-like face box (may extend past the border).
        eyes: eye centres ``((x, y), (x, y))`` ordered by image x (image-left first).
        landmarks: ``(68, 2)`` float32 projected Multi-PIE landmarks.
        nose_tip_m: nose tip in the camera frame (metres).
        sellion_m: sellion (top of the nose bridge, between the eyes: REP-155's
            face frame origin) in the camera frame (metres).
        yaw_deg, pitch_deg, roll_deg: pose as requested.
        visible_fraction: share of the 68 landmarks that are in the frame and not occluded.
        in_frame: the whole box lies inside the image.
        weights: ``(53,)`` blendshape weights actually used.
    """

    subject_id: int
    label: str
    intensity: int
    box: Tuple[int, int, int, int]
    eyes: Tuple[Tuple[float, float], Tuple[float, float]]
    landmarks: np.ndarray
    nose_tip_m: Tuple[float, float, float]
    sellion_m: Tuple[float, float, float]
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    visible_fraction: float
    in_frame: bool
    weights: np.ndarray


@dataclass
class RenderedFrame:
    """A Kinect-like frame: BGR colour, registered depth in mm, ground truth."""

    colour: np.ndarray                  # uint8 HxWx3 BGR
    depth_mm: np.ndarray                # uint16 HxW, 0 = hole
    faces: List[FaceTruth]
    camera: CameraSpec
    light: LightSpec
    background: BackgroundSpec

    @property
    def intrinsics(self) -> Tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` of both images."""
        return self.camera.intrinsics

    def depth_m(self) -> np.ndarray:
        """Depth as ``float32`` metres (0 = no reading), the pipeline's input format."""
        return self.depth_mm.astype(np.float32) * np.float32(0.001)


# ------------------------------------------------------------------ geometry

def pose_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float,
                  position_m: Optional[Sequence[float]] = None) -> np.ndarray:
    """Rotation from model coordinates (+y up, +z to viewer) to the OpenCV camera frame.

    Angles are relative to a head that faces the camera: with
    ``position_m`` given, zero pose looks straight at the camera centre
    from wherever the face is (a person looking at the robot), otherwise
    along the optical axis.
    """
    y, p, r = np.radians([yaw_deg, -pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    if position_m is None:
        base = np.diag([1.0, -1.0, -1.0])
    else:
        # Look-at frame: model +z towards the camera, model +y towards image up.
        f = -np.asarray(position_m, dtype=np.float64)
        f /= np.linalg.norm(f)
        right = np.cross(np.array([0.0, -1.0, 0.0]), f)
        right /= np.linalg.norm(right)
        up = np.cross(f, right)
        base = np.stack([right, up, f], axis=1)
    return base @ rz @ rx @ ry


@functools.lru_cache(maxsize=1)
def _glossy_triangles() -> np.ndarray:
    model = load_facekit()
    eye_materials = [model.material_index(n) for n in
                     ("M_ScleraLeft", "M_IrisLeft", "M_ScleraRight", "M_IrisRight")]
    mask = np.isin(model.triangle_material, eye_materials)
    mask.setflags(write=False)
    return mask


@dataclass
class PosedFace:
    """A face mesh placed in the camera frame (metres) with its weights."""

    vertices: np.ndarray
    weights: np.ndarray


def pose_face(spec: FaceSpec, frame_seed: int = 0, index: int = 0, variation: str = "classic") -> PosedFace:
    """Blend the expression and place the mesh in the camera frame.

    Args:
        variation: expression style set (``"classic"`` or ``"wide"``), unless
            ``spec.weights`` fixes the weights.

    Raises:
        SceneError: invalid spec (raised by :class:`FaceSpec` already).
    """
    if spec.weights is not None:
        weights = np.asarray(spec.weights, dtype=np.float32)
    else:
        eseed = spec.expression_seed if spec.expression_seed is not None else [_SEED_SALT, frame_seed, index]
        rng = np.random.default_rng(eseed)
        weights = expression_weights(spec.label, spec.intensity, spec.subject_id, rng=rng,
                                     scale=spec.expression_scale, variation=variation)
    base = identity_mesh(spec.subject_id)
    verts_cm = blend_expression(base, weights)
    rot = pose_rotation(spec.yaw_deg, spec.pitch_deg, spec.roll_deg, spec.position_m)
    nose = base[load_facekit().landmarks68[_NOSE_TIP]].astype(np.float64) * 0.01
    t = np.asarray(spec.position_m) - rot @ nose
    verts = verts_cm @ (0.01 * rot.T).astype(np.float32) + t.astype(np.float32)
    return PosedFace(vertices=verts.astype(np.float32, copy=False), weights=weights)


def face_box(landmarks: np.ndarray) -> Tuple[int, int, int, int]:
    """Square Haar-like box ``(x, y, w, h)`` from projected 68 landmarks.

    Calibrated on frontal renders against OpenCV's frontal cascade
    (scale 1.1, 5 neighbours): the detections had a side of 1.28 (sd 0.11)
    jaw widths (landmark 0 to 16) and their centre lay 0.27 (sd 0.03) of the
    way from the mean brow point to the chin (landmark 8). Measuring along
    the brow-chin vector and with distances keeps the box right under roll.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    brow = lm[17:27].mean(axis=0)
    chin = lm[8]
    jaw = float(np.linalg.norm(lm[16] - lm[0]))
    brow_chin = float(np.linalg.norm(chin - brow))
    # Yaw shortens the jaw, pitch the brow-chin distance: take the larger.
    size = BOX_SCALE * max(jaw, BROW_CHIN_TO_JAW * brow_chin)
    centre = brow + BOX_CENTRE_Y * (chin - brow)
    s = int(round(size))
    return int(round(centre[0] - size / 2)), int(round(centre[1] - size / 2)), s, s


def _face_truth(spec: FaceSpec, posed: PosedFace, camera: CameraSpec, z_ideal: np.ndarray) -> FaceTruth:
    model = load_facekit()
    lm3 = posed.vertices[model.landmarks68].astype(np.float64)
    lm2 = camera.project(lm3)
    u = np.round(lm2[:, 0]).astype(int)
    v = np.round(lm2[:, 1]).astype(int)
    inside = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    visible = np.zeros(68, dtype=bool)
    zs = z_ideal[v[inside], u[inside]]
    visible[inside] = (zs > 0) & (lm3[inside, 2] <= zs + 0.015)
    box = face_box(lm2)
    eye_a = tuple(float(c) for c in lm2[_RIGHT_EYE].mean(axis=0))
    eye_b = tuple(float(c) for c in lm2[_LEFT_EYE].mean(axis=0))
    eyes = (eye_a, eye_b) if eye_a[0] <= eye_b[0] else (eye_b, eye_a)
    in_frame = box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= camera.width and box[1] + box[3] <= camera.height
    nose = posed.vertices[model.landmarks68[_NOSE_TIP]].astype(float)
    sellion = posed.vertices[model.landmarks68[_SELLION]].astype(float)
    return FaceTruth(subject_id=int(spec.subject_id), label=spec.label, intensity=spec.intensity, box=box,
                     eyes=eyes, landmarks=lm2.astype(np.float32), nose_tip_m=tuple(nose.tolist()),
                     sellion_m=tuple(sellion.tolist()),
                     yaw_deg=spec.yaw_deg, pitch_deg=spec.pitch_deg, roll_deg=spec.roll_deg,
                     visible_fraction=float(visible.mean()), in_frame=bool(in_frame), weights=posed.weights)


# ------------------------------------------------------------------ random scene parts

@dataclass(frozen=True)
class _LightRanges:
    """Uniform ranges of :func:`random_light` (``warmth``: colour temperature, ``tint``: green-magenta)."""

    warmth: float
    tint: float
    azimuth_deg: float
    elevation_deg: Tuple[float, float]
    intensity: Tuple[float, float]
    ambient: Tuple[float, float]
    fill: Tuple[float, float]


# ``wide`` adds hard side and low light (one half of the face dark), dim
# rooms, warm tungsten to cold daylight and the green cast of fluorescent
# tubes; the colour camera's auto-exposure still brings the frame to a
# usable level, as a robot's camera would.
_LIGHT_RANGES = {
    "classic": _LightRanges(warmth=1.0, tint=0.0, azimuth_deg=45.0, elevation_deg=(-5.0, 45.0),
                            intensity=(2.2, 4.2), ambient=(0.18, 0.45), fill=(0.1, 0.5)),
    "wide": _LightRanges(warmth=1.8, tint=0.05, azimuth_deg=80.0, elevation_deg=(-25.0, 65.0),
                         intensity=(1.2, 5.5), ambient=(0.06, 0.6), fill=(0.0, 0.7)),
}


def random_light(rng: np.random.Generator, variation: str = "classic") -> LightSpec:
    """Indoor-like key/fill/ambient light with a random direction and colour temperature.

    Args:
        rng: randomness.
        variation: ``"classic"`` or ``"wide"`` (wider ranges, see ``_LIGHT_RANGES``).
    """
    r = _LIGHT_RANGES[check_variation(variation)]
    warmth = rng.uniform(-r.warmth, r.warmth)
    colour = np.array([1.0 + 0.06 * warmth, 1.0, 1.0 - 0.14 * warmth]) * rng.uniform(0.97, 1.03, 3)
    if r.tint > 0:
        colour[1] *= 1.0 + rng.uniform(-r.tint, r.tint)
    return LightSpec(azimuth_deg=float(rng.uniform(-r.azimuth_deg, r.azimuth_deg)),
                     elevation_deg=float(rng.uniform(*r.elevation_deg)),
                     intensity=float(rng.uniform(*r.intensity)), colour=tuple(float(c) for c in colour / colour.max()),
                     ambient=float(rng.uniform(*r.ambient)), fill=float(rng.uniform(*r.fill)))


def random_background(rng: np.random.Generator, farthest_face_m: float = 2.0,
                      variation: str = "classic") -> BackgroundSpec:
    """A random room whose wall and clutter stay behind the faces.

    Args:
        rng: randomness.
        farthest_face_m: depth of the farthest face in the frame; the wall is
            at least 0.8 m and objects at least 0.4 m behind it.
        variation: ``"wide"`` turns the wall further, allows bare to crowded
            rooms and uses the ``wide`` palette (saturated and dark walls).
    """
    wide = check_variation(variation) == "wide"
    wall = float(rng.uniform(max(2.5, farthest_face_m + 0.8), max(4.2, farthest_face_m + 1.5)))
    yaw = 40.0 if wide else 30.0
    return BackgroundSpec(seed=int(rng.integers(2**31)), wall_distance_m=wall,
                          wall_yaw_deg=float(rng.uniform(-yaw, yaw)),
                          floor_height_m=float(rng.uniform(1.0, 1.6)) if rng.random() < 0.7 else None,
                          clutter=int(rng.integers(0, 15) if wide else rng.integers(2, 10)),
                          min_object_depth_m=float(min(wall - 0.1, farthest_face_m + 0.4)),
                          palette="wide" if wide else "muted")


def check_depth_noise(depth_noise: str) -> str:
    """Validate a depth-noise model name (one of ``DEPTH_NOISE_MODELS``).

    Raises:
        SceneError: unknown name.
    """
    if depth_noise not in DEPTH_NOISE_MODELS:
        raise SceneError(f"depth_noise must be one of {DEPTH_NOISE_MODELS}, got {depth_noise!r}")
    return depth_noise


def kinect_depth(rng: np.random.Generator, base: SensorSpec = SensorSpec()) -> SensorSpec:
    """``base`` with a per-frame Kinect v1 depth degradation (``depth_noise="kinect"``).

    Noise at 1 m spans 1.2-2.4 mm (Khoshelham and Elberink 2012 measured
    ~1.5; units and temperature differ), 30-70 % of it correlated over
    1.5-4 px, lateral smoothing of 0.5-1.5 px, edge holes with probability
    0.4-0.9 in a band 0-2 px wider than the edge, grazing cut-off at
    cos 0.1-0.25 and 0.2-3 % of the image lost in blobs up to 3x the
    classic size. The disparity step and the baseline are the hardware's
    and stay fixed.
    """
    return dataclasses.replace(
        base, noise_mm_at_1m=float(rng.uniform(1.2, 2.4)), correlated_noise=float(rng.uniform(0.3, 0.7)),
        correlation_px=float(rng.uniform(1.5, 4.0)), smooth_px=float(rng.uniform(0.5, 1.5)),
        edge_hole_prob=float(rng.uniform(0.4, 0.9)), edge_band_px=int(rng.integers(0, 3)),
        grazing_cos=float(rng.uniform(0.1, 0.25)),
        dropout_fraction=float(np.exp(rng.uniform(np.log(0.002), np.log(0.03)))),
        blob_scale=float(rng.uniform(1.0, 3.0)))


def wide_colour(rng: np.random.Generator, base: SensorSpec = SensorSpec()) -> SensorSpec:
    """``base`` with a per-frame colour camera of the ``wide`` variation.

    Auto-exposure targets a mean grey of 85-150 (darker and brighter
    frames than classic's 100-135) but protects highlights (99.5th
    percentile below 250): the wide rooms include dark walls, and metering
    on the mean alone burnt light faces in them to white. Sensor noise
    1-4 levels, optics blur 0.3-1.1 px.
    """
    return dataclasses.replace(base, auto_exposure=(85.0, 150.0), highlight_percentile=99.5,
                               colour_noise=float(rng.uniform(1.0, 4.0)), colour_blur=float(rng.uniform(0.3, 1.1)))


def random_sensor(rng: np.random.Generator, variation: str = "classic", depth_noise: str = "classic") -> SensorSpec:
    """The frame's sensor: the fixed Kinect-like default, widened per the two switches."""
    sensor = SensorSpec()
    if check_variation(variation) == "wide":
        sensor = wide_colour(rng, sensor)
    if check_depth_noise(depth_noise) == "kinect":
        sensor = kinect_depth(rng, sensor)
    return sensor


@dataclass(frozen=True)
class PoseRange:
    """Half-ranges of uniformly drawn pose angles (degrees) and the distance range (metres)."""

    yaw_deg: float = 20.0
    pitch_deg: float = 15.0
    roll_deg: float = 15.0
    distance_m: Tuple[float, float] = (0.6, 2.0)


def random_face_spec(rng: np.random.Generator, subject_id: int, label: str, intensity: int,
                     camera: CameraSpec = CameraSpec(), poses: PoseRange = PoseRange(),
                     centre_px: Optional[Tuple[float, float]] = None) -> FaceSpec:
    """A face with random pose and distance placed so its box lies inside the image.

    Args:
        centre_px: desired image position of the nose tip; random if None.

    Raises:
        SceneError: invalid label/intensity/ranges.
    """
    lo, hi = poses.distance_m
    if not 0.3 < lo <= hi:
        raise SceneError(f"distance range must satisfy 0.3 < min <= max, got {poses.distance_m}")
    z = float(rng.uniform(lo, hi))
    half = 0.115 * camera.fx / z       # half box size in pixels, plus margin
    if centre_px is None:
        u_lo, u_hi = half, camera.width - half
        v_lo, v_hi = half, camera.height - half
        u = rng.uniform(u_lo, u_hi) if u_hi > u_lo else camera.cx
        v = rng.uniform(v_lo, v_hi) if v_hi > v_lo else camera.cy
    else:
        u, v = centre_px
    x = (u - camera.cx) * z / camera.fx
    y = (v - camera.cy) * z / camera.fy
    return FaceSpec(subject_id=subject_id, label=label, intensity=intensity, position_m=(x, y, z),
                    yaw_deg=float(rng.uniform(-poses.yaw_deg, poses.yaw_deg)),
                    pitch_deg=float(rng.uniform(-poses.pitch_deg, poses.pitch_deg)),
                    roll_deg=float(rng.uniform(-poses.roll_deg, poses.roll_deg)),
                    expression_seed=int(rng.integers(2**31)))


# ------------------------------------------------------------------ frame

def frame_rng(seed: int) -> np.random.Generator:
    """The generator a frame's random choices come from (salted by the seed)."""
    return np.random.default_rng([_SEED_SALT, int(seed)])


def render_frame(faces: Sequence[FaceSpec], camera: Optional[CameraSpec] = None,
                 light: Optional[LightSpec] = None, background: Optional[BackgroundSpec] = None,
                 sensor: Optional[SensorSpec] = None, seed: int = 0, variation: str = "classic",
                 depth_noise: str = "classic") -> RenderedFrame:
    """Render faces in a room as a Kinect-like RGB-D pair with ground truth.

    Same arguments and seed give byte-identical images.

    Args:
        faces: the faces (may be empty: a room without people).
        camera: intrinsics and size (default Kinect v1 640x480, f=525).
        light: lighting; random from ``seed`` if None.
        background: room; random from ``seed`` if None (placed behind the faces).
        sensor: noise model; default Kinect-like (drawn per frame under
            ``variation="wide"`` or ``depth_noise="kinect"``; a given one is used as is).
        seed: drives the random light/background (when not given), the
            expression jitter of faces without ``expression_seed`` and the sensor noise.
        variation: ``"classic"`` or ``"wide"``: ranges of the expression
            recipes, faces' looks, light, room and colour sensor.
        depth_noise: ``"classic"`` (the fixed Kinect-like model) or
            ``"kinect"`` (:func:`kinect_depth`, drawn per frame).

    Raises:
        SceneError: invalid inputs.
        RenderError: the OpenGL backend failed.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SceneError(f"seed must be an int, got {seed!r}")
    for f in faces:
        if not isinstance(f, FaceSpec):
            raise SceneError(f"faces must be FaceSpec objects, got {type(f).__name__}")
    try:
        check_variation(variation)
    except ValueError as exc:
        raise SceneError(str(exc)) from None
    check_depth_noise(depth_noise)
    camera = camera or CameraSpec()
    rng = frame_rng(seed)
    scene_rng = np.random.default_rng(rng.integers(2**63))
    noise_rng = np.random.default_rng(rng.integers(2**63))
    if sensor is None:
        classic = variation == "classic" and depth_noise == "classic"
        # A third stream only when needed, so classic frames stay byte-identical.
        sensor = SensorSpec() if classic else random_sensor(np.random.default_rng(rng.integers(2**63)),
                                                            variation, depth_noise)
    if light is None:
        light = random_light(scene_rng, variation)
    if background is None:
        far = max((f.position_m[2] for f in faces), default=1.5)
        background = random_background(scene_rng, far, variation)
    model = load_facekit()
    glossy = _glossy_triangles()
    posed = [pose_face(f, seed, i, variation) for i, f in enumerate(faces)]
    meshes = [MeshInstance(vertices=p.vertices, triangles=model.triangles,
                           albedo=subject_albedo(f.subject_id, variation),
                           normals=model_vertex_normals(p.vertices), glossy_triangles=glossy,
                           roughness=subject_appearance(f.subject_id, variation).roughness)
              for f, p in zip(faces, posed)]
    face_rgb, face_z = rasterise(meshes, camera, light)
    bg_rgb, bg_z = render_background(background, camera)
    rgb, z, fg = composite(face_rgb, face_z, bg_rgb, bg_z, light)
    colour, depth_mm = sensor_pair(rgb, z, fg, camera, sensor, noise_rng)
    truths = [_face_truth(f, p, camera, np.where(fg, z, 0.0)) for f, p in zip(faces, posed)]
    return RenderedFrame(colour=colour, depth_mm=depth_mm, faces=truths, camera=camera, light=light,
                         background=background)
