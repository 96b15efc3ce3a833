"""``cmcnn-bag-write``: a labelled synthetic Kinect-style RGB-D rosbag2.

CM-CNN (Ni et al., IEEE TCDS 2023) classifies the face crops of one colour
frame and its registered depth (Section III-B). To test the live node and the
offline evaluator on *sequences* without a licensed database, this tool
renders several synthetic subjects (``cmcnn_ros.synthetic``: ICT-FaceKit
identities posing EMFACS prototypes of the six basic expressions plus
neutral) whose expressions change over time, who enter and leave the view and
move slightly, and records them the way a Kinect driver would publish them.

Bag layout (rosbag2, **MCAP** storage, metadata version 9: the default
storage since ROS 2 Iron; ``ros2 bag play`` on Jazzy/Kilted and ``rosbags``
read it; ``--storage sqlite3`` writes the older format):

========================================  ===========================  =====================================
topic                                     type                         content
========================================  ===========================  =====================================
``/camera/color/image_raw``               sensor_msgs/msg/Image        ``rgb8`` 640x480 colour
``/camera/depth_registered/image_raw``    sensor_msgs/msg/Image        ``16UC1`` depth in mm registered to
                                                                       colour (0 = no reading)
``/camera/color/camera_info``             sensor_msgs/msg/CameraInfo   pinhole intrinsics (plumb_bob, no
                                                                       distortion)
``/cmcnn/ground_truth``                   std_msgs/msg/String          JSON per frame: boxes, labels,
                                                                       subject ids, intensities, eyes
========================================  ===========================  =====================================

All four messages of a frame carry the same stamp (header stamp and bag
log time), frame id ``camera_color_optical_frame``; the colour and depth
topic names are the ``fer_node`` defaults, so replaying the bag into the node
needs no remapping. The run is deterministic per ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.tools.bag_io import (CAMERA_FRAME_ID, CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, COLOUR_TOPIC, DEPTH_TOPIC,
                                    IMAGE_TYPE, LABELS_TOPIC, STRING_TYPE, FrameLabels, GroundTruthFace)

LOGGER = logging.getLogger(__name__)

# 2023-11-14T22:13:20Z: a plausible wall-clock epoch, fixed so bags are reproducible.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
STORAGES = ("mcap", "sqlite3")
# Kinect v1 colour intrinsics (the renderer's default CameraSpec); used to place faces.
_FX, _CX, _CY = 525.0, 319.5, 239.5
COLOUR_ENCODING = "rgb8"  # Kinect v1 drivers (openni) publish rgb8
DEPTH_ENCODING = "16UC1"


class BagWriteError(ValueError):
    """Bad writer options or frames (sizes, dtypes, existing output)."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the (registered) colour camera, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


class RgbdBagWriter:
    """Writes colour/depth/camera-info/ground-truth frames into a rosbag2 with ``rosbags``.

    Args:
        path: output bag folder (must not exist unless ``overwrite``).
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        overwrite: replace an existing folder.

    Raises:
        BagWriteError: the output exists (without ``overwrite``) or the storage is unknown.
    """

    def __init__(self, path: "str | Path", storage: str = "mcap", overwrite: bool = False) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise BagWriteError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists():
            if not overwrite:
                raise BagWriteError(f"{self.path} exists; pass --overwrite to replace it")
            if not (self.path / "metadata.yaml").exists():
                raise BagWriteError(f"{self.path} exists and is not a bag; refusing to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary folder and moved into place on close, so a
        # crash never leaves a half-written bag under the final name.
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._ts = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmpdir / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        self._conns = {
            "colour": self._writer.add_connection(COLOUR_TOPIC, IMAGE_TYPE, typestore=self._ts),
            "depth": self._writer.add_connection(DEPTH_TOPIC, IMAGE_TYPE, typestore=self._ts),
            "info": self._writer.add_connection(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, typestore=self._ts),
            "labels": self._writer.add_connection(LABELS_TOPIC, STRING_TYPE, typestore=self._ts),
        }
        self.frames = 0
        self._closed = False

    def __enter__(self) -> "RgbdBagWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def _header(self, stamp_ns: int) -> Any:
        t = self._ts.types
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                        frame_id=CAMERA_FRAME_ID)

    def _image(self, stamp_ns: int, array: np.ndarray, encoding: str) -> bytes:
        from cmcnn_ros.ros.conversions import array_to_image_fields

        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        msg = self._ts.types[IMAGE_TYPE](header=self._header(stamp_ns), **fields)
        return self._ts.serialize_cdr(msg, IMAGE_TYPE)

    def _camera_info(self, stamp_ns: int, k: CameraIntrinsics) -> bytes:
        t = self._ts.types
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = t[CAMERA_INFO_TYPE](
            header=self._header(stamp_ns), height=k.height, width=k.width, distortion_model="plumb_bob",
            d=np.zeros(5, np.float64),
            k=np.array([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1], np.float64),
            r=np.eye(3, dtype=np.float64).reshape(-1),
            p=np.array([k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0], np.float64),
            binning_x=0, binning_y=0, roi=roi)
        return self._ts.serialize_cdr(msg, CAMERA_INFO_TYPE)

    def write_frame(self, stamp_ns: int, colour_bgr: np.ndarray, depth_mm: np.ndarray, labels: FrameLabels,
                    intrinsics: Optional[CameraIntrinsics] = None) -> None:
        """Write one frame: colour, depth, camera info (optional) and ground truth, all at ``stamp_ns``.

        Args:
            stamp_ns: header stamp and log time (ns).
            colour_bgr: ``uint8 HxWx3`` BGR (stored as ``rgb8``).
            depth_mm: ``uint16 HxW`` millimetres, registered to colour (0 = hole).
            labels: the frame's ground truth; its ``stamp_ns`` must equal ``stamp_ns``.
            intrinsics: camera model; no CameraInfo message when None.

        Raises:
            BagWriteError: wrong dtype/shape, sizes differ, or label stamp mismatch.
        """
        c, d = np.asarray(colour_bgr), np.asarray(depth_mm)
        if c.dtype != np.uint8 or c.ndim != 3 or c.shape[2] != 3:
            raise BagWriteError(f"colour must be uint8 HxWx3 BGR, got {c.dtype} {c.shape}")
        if d.dtype != np.uint16 or d.ndim != 2:
            raise BagWriteError(f"depth must be uint16 HxW millimetres, got {d.dtype} {d.shape}")
        if d.shape != c.shape[:2]:
            raise BagWriteError(f"depth {d.shape} is not registered to colour {c.shape[:2]}")
        if labels.stamp_ns != stamp_ns:
            raise BagWriteError(f"labels stamp {labels.stamp_ns} != frame stamp {stamp_ns}")
        w = self._writer
        w.write(self._conns["colour"], stamp_ns, self._image(stamp_ns, c[:, :, ::-1], COLOUR_ENCODING))
        w.write(self._conns["depth"], stamp_ns, self._image(stamp_ns, d, DEPTH_ENCODING))
        if intrinsics is not None:
            w.write(self._conns["info"], stamp_ns, self._camera_info(stamp_ns, intrinsics))
        w.write(self._conns["labels"], stamp_ns,
                self._ts.serialize_cdr(self._ts.types[STRING_TYPE](data=labels.to_json()), STRING_TYPE))
        self.frames += 1

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml) and move it to :attr:`path`."""
        if self._closed:
            return
        self._writer.close()
        self._closed = True
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmpdir / self.path.name, self.path)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def abort(self) -> None:
        """Stop writing and delete the partial bag."""
        if not self._closed:
            try:
                self._writer.close()
            finally:
                self._closed = True
        shutil.rmtree(self._tmpdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# The scripted sequence: who is in view, posing what, where
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpressionSegment:
    """From ``start_s`` on (until the next segment) the face poses ``label`` at ``intensity``."""

    start_s: float
    label: str
    intensity: int


@dataclass(frozen=True)
class FaceTrackPlan:
    """One subject's presence, expressions and motion over the sequence.

    Attributes:
        subject_id: synthetic identity (``cmcnn_ros.synthetic``).
        enter_s / leave_s: the face is in view for ``enter_s <= t < leave_s``.
        x_m, y_m, z_m: rest position of the head centre (OpenCV camera frame, metres).
        segments: expression changes, sorted by ``start_s``; the first starts at ``enter_s``.
        sway_m: amplitude of the slow lateral/vertical sway.
        yaw_deg, roll_deg: amplitudes of the slow head turn and tilt.
        phase: motion phase (radians), so faces do not move in lockstep.
        period_s: period of the sway.
    """

    subject_id: int
    enter_s: float
    leave_s: float
    x_m: float
    y_m: float
    z_m: float
    segments: Tuple[ExpressionSegment, ...]
    sway_m: float = 0.02
    yaw_deg: float = 10.0
    roll_deg: float = 6.0
    phase: float = 0.0
    period_s: float = 4.0

    def visible(self, t: float) -> bool:
        return self.enter_s <= t < self.leave_s

    def expression_at(self, t: float) -> ExpressionSegment:
        current = self.segments[0]
        for seg in self.segments:
            if seg.start_s <= t:
                current = seg
        return current

    def pose_at(self, t: float) -> Dict[str, float]:
        """Head position (m) and yaw/pitch/roll (degrees) at time ``t``: slow smooth sway."""
        w = 2 * np.pi * t / self.period_s + self.phase
        return {"x": self.x_m + self.sway_m * float(np.sin(w)),
                "y": self.y_m + 0.5 * self.sway_m * float(np.sin(0.7 * w + 1.0)),
                "z": self.z_m + self.sway_m * float(np.sin(0.5 * w + 2.0)),
                "yaw": self.yaw_deg * float(np.sin(0.8 * w + 0.5)),
                "pitch": 0.5 * self.yaw_deg * float(np.sin(0.6 * w + 2.5)),
                "roll": self.roll_deg * float(np.sin(0.9 * w + 1.5))}


@dataclass(frozen=True)
class SequencePlan:
    """A scripted multi-face sequence (what :func:`plan_sequence` returns)."""

    duration_s: float
    fps: float
    seed: int
    faces: Tuple[FaceTrackPlan, ...]
    start_ns: int = DEFAULT_START_NS

    @property
    def num_frames(self) -> int:
        return int(round(self.duration_s * self.fps))

    def frame_time(self, index: int) -> float:
        return index / self.fps

    def stamp_ns(self, index: int) -> int:
        return self.start_ns + int(round(index * 1e9 / self.fps))


def plan_sequence(duration_s: float = 10.0, fps: float = 10.0, num_faces: int = 3, seed: int = 0,
                  min_segment_s: float = 1.2, max_segment_s: float = 2.5,
                  labels: Sequence[str] = (), first_subject: int = 1000) -> SequencePlan:
    """Script a deterministic sequence: faces side by side, expressions changing, entries and exits.

    The first face is in view all the time; every other face enters after up
    to 30 % of the sequence and/or leaves in its last 30 %, so the node sees
    faces appear and disappear. Each face holds an expression for
    ``min_segment_s``-``max_segment_s`` then switches to a different one
    (drawn from ``labels``, default the six basic expressions plus neutral;
    intensities 2-4, as low intensity 1 is barely visible).

    Args:
        duration_s: sequence length (> 0).
        fps: frame rate (> 0).
        num_faces: faces at once, 1..4 (they stand side by side).
        seed: everything is drawn from this seed.
        min_segment_s, max_segment_s: expression hold times.
        labels: classes to draw from.
        first_subject: subject ids are ``first_subject + k`` (k = 0..num_faces-1) offset by the seed,
            away from the ids the training set uses by default.

    Raises:
        BagWriteError: an argument is out of range.
    """
    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name

    if not duration_s > 0 or not fps > 0:
        raise BagWriteError(f"duration and fps must be > 0, got {duration_s} s at {fps} fps")
    if not 1 <= num_faces <= 4:
        raise BagWriteError(f"num_faces must be 1..4 (side by side in a 640x480 view), got {num_faces}")
    if not 0 < min_segment_s <= max_segment_s:
        raise BagWriteError(f"need 0 < min_segment_s <= max_segment_s, got {min_segment_s}, {max_segment_s}")
    try:
        pool = [canonical_name(c) for c in (labels or EXPRESSIONS_WITH_NEUTRAL)]
    except ValueError as exc:
        raise BagWriteError(str(exc)) from exc
    rng = np.random.default_rng(seed)
    # Side by side without overlap: centres spaced across the 640 px view, and
    # far enough that a face box (~0.13 m wide) fits between neighbours with a margin.
    spacing_px = min(190.0, 600.0 / num_faces)
    z_lo = max(0.6, 0.13 * _FX / (spacing_px - 40.0))
    faces = []
    for k in range(num_faces):
        if k == 0:
            enter, leave = 0.0, duration_s
        else:
            enter = float(rng.uniform(0.0, 0.3) * duration_s) if rng.random() < 0.7 else 0.0
            leave = float(rng.uniform(0.7, 1.0) * duration_s) if rng.random() < 0.7 else duration_s
        segs: List[ExpressionSegment] = []
        t, prev = enter, None
        while t < leave:
            label = str(rng.choice([c for c in pool if c != prev] or pool))
            intensity = 0 if label == "neutral" else int(rng.integers(2, 5))
            segs.append(ExpressionSegment(round(t, 6), label, intensity))
            prev = label
            t += float(rng.uniform(min_segment_s, max_segment_s))
        z = float(rng.uniform(z_lo, z_lo + 0.15))
        u = _CX + (k - (num_faces - 1) / 2) * spacing_px + float(rng.uniform(-8, 8))
        v = _CY - 10.0 + float(rng.uniform(-15, 15))
        faces.append(FaceTrackPlan(
            subject_id=first_subject + 7 * seed + k, enter_s=enter, leave_s=leave,
            x_m=(u - _CX) * z / _FX, y_m=(v - _CY) * z / _FX, z_m=z,
            segments=tuple(segs), sway_m=float(rng.uniform(0.008, 0.018)),
            yaw_deg=float(rng.uniform(4, 10)), roll_deg=float(rng.uniform(3, 8)),
            phase=float(rng.uniform(0, 2 * np.pi)), period_s=float(rng.uniform(3, 6))))
    return SequencePlan(duration_s=float(duration_s), fps=float(fps), seed=int(seed), faces=tuple(faces))


# ---------------------------------------------------------------------------
# Rendering the plan and writing the bag
# ---------------------------------------------------------------------------

ONSET_S = 0.25  # expressions build up over this long after a change (scale 0.5 -> 1)


def face_specs_at(plan: SequencePlan, index: int) -> List[Any]:
    """The renderer's ``FaceSpec`` of every face in view at frame ``index``."""
    from cmcnn_ros.synthetic.scene import FaceSpec

    t = plan.frame_time(index)
    specs = []
    for k, face in enumerate(plan.faces):
        if not face.visible(t):
            continue
        seg = face.expression_at(t)
        seg_i = face.segments.index(seg)
        pose = face.pose_at(t)
        onset = min(1.0, 0.5 + 0.5 * (t - seg.start_s) / ONSET_S) if seg.label != "neutral" else 1.0
        specs.append(FaceSpec(
            subject_id=face.subject_id, label=seg.label, intensity=seg.intensity,
            position_m=(pose["x"], pose["y"], pose["z"]), yaw_deg=pose["yaw"], pitch_deg=pose["pitch"],
            roll_deg=pose["roll"],
            # Same jitter for the whole segment: the face holds one expression, it does not flicker.
            expression_seed=(plan.seed * 1_000_003 + k * 10_007 + seg_i) % (2 ** 31),
            expression_scale=float(onset)))
    return specs


def render_plan(plan: SequencePlan, progress: bool = False) -> Iterator[Tuple[int, Any]]:
    """Render every frame of ``plan``: yields ``(frame index, RenderedFrame)``.

    Light and room are drawn once from the plan's seed so they stay put over
    the sequence; the per-frame seed only changes the sensor noise.
    """
    from tqdm import tqdm

    from cmcnn_ros.synthetic.scene import random_background, random_light, render_frame

    scene_rng = np.random.default_rng([0xBA6, plan.seed])
    light = random_light(scene_rng)
    background = random_background(scene_rng, max(f.z_m for f in plan.faces) + 0.1)
    for i in tqdm(range(plan.num_frames), desc="rendering", unit="frame", disable=not progress):
        yield i, render_frame(face_specs_at(plan, i), light=light, background=background,
                              seed=plan.seed * 100_003 + i)


def frame_labels(plan: SequencePlan, index: int, frame: Any) -> FrameLabels:
    """Ground truth of a rendered frame (subjects as strings, boxes/eyes from the renderer)."""
    faces = tuple(
        GroundTruthFace(subject=str(ft.subject_id), label=ft.label, box=tuple(int(v) for v in ft.box),  # type: ignore[misc]
                        intensity=int(ft.intensity),
                        eyes=tuple((float(e[0]), float(e[1])) for e in ft.eyes),  # type: ignore[arg-type]
                        visible_fraction=round(float(ft.visible_fraction), 3))
        for ft in frame.faces)
    return FrameLabels(stamp_ns=plan.stamp_ns(index), frame_index=index, faces=faces)


@dataclass
class BagSummary:
    """What :func:`write_synthetic_bag` wrote."""

    path: Path
    frames: int
    duration_s: float
    fps: float
    faces_per_frame: float
    labels: Dict[str, int]
    subjects: List[str]
    storage: str
    size_mb: float
    wall_s: float

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def write_synthetic_bag(path: "str | Path", duration_s: float = 10.0, fps: float = 10.0, num_faces: int = 3,
                        seed: int = 0, storage: str = "mcap", overwrite: bool = False,
                        progress: bool = False, with_camera_info: bool = True) -> BagSummary:
    """Render a scripted multi-face sequence (:func:`plan_sequence`) into a labelled bag.

    Raises:
        BagWriteError: bad options or an existing output without ``overwrite``.
    """
    import time

    t0 = time.monotonic()
    plan = plan_sequence(duration_s=duration_s, fps=fps, num_faces=num_faces, seed=seed)
    counts: Dict[str, int] = {}
    n_faces = 0
    with RgbdBagWriter(path, storage=storage, overwrite=overwrite) as writer:
        for i, frame in render_plan(plan, progress=progress):
            labels = frame_labels(plan, i, frame)
            cam = frame.camera
            k = CameraIntrinsics(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) if with_camera_info else None
            writer.write_frame(labels.stamp_ns, frame.colour, frame.depth_mm, labels, k)
            for f in labels.faces:
                counts[f.label] = counts.get(f.label, 0) + 1
            n_faces += len(labels.faces)
    out = Path(path)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    return BagSummary(path=out, frames=plan.num_frames, duration_s=plan.duration_s, fps=plan.fps,
                      faces_per_frame=n_faces / max(1, plan.num_frames), labels=dict(sorted(counts.items())),
                      subjects=[str(f.subject_id) for f in plan.faces], storage=storage, size_mb=round(size, 1),
                      wall_s=round(time.monotonic() - t0, 2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-bag-write",
        description="Write a labelled synthetic Kinect-style RGB-D rosbag2 (several subjects, changing "
                    "expressions, faces entering and leaving). Deterministic per --seed.")
    p.add_argument("out", type=Path, help="output bag folder")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--frames", type=int, default=None, help="number of frames (overrides --duration)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate (default 10)")
    p.add_argument("--faces", type=int, default=3, help="faces at once, 1-4 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage (default mcap)")
    p.add_argument("--no-camera-info", action="store_true", help="leave out sensor_msgs/CameraInfo")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-bag-write``; prints a JSON summary."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    duration = args.duration if args.frames is None else args.frames / args.fps if args.fps > 0 else 0.0
    try:
        summary = write_synthetic_bag(args.out, duration_s=duration, fps=args.fps, num_faces=args.faces,
                                      seed=args.seed, storage=args.storage, overwrite=args.overwrite,
                                      progress=not args.no_progress, with_camera_info=not args.no_camera_info)
    except ValueError as exc:  # BagWriteError, SceneError, ...
        LOGGER.error("%s", exc)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
