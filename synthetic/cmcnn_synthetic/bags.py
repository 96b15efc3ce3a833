"""``cmcnn-bag-write``: a labelled synthetic Kinect-style RGB-D rosbag2.

Renders a scripted sequence (:func:`cmcnn_synthetic.scenarios.plan_sequence`:
several subjects, changing expressions, faces entering and leaving) with the
ICT-FaceKit renderer and records it the way a Kinect driver would publish it,
with the ground truth of every frame, through
:class:`cmcnn_ros.tools.bag_writer.RgbdBagWriter` (the bag layout is
documented there). The run is deterministic per ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.tools.bag_io import FrameLabels, GroundTruthFace
from cmcnn_ros.tools.bag_writer import STORAGES, CameraIntrinsics, RgbdBagWriter, Transports

from .scene import FaceSpec, random_background, random_light, render_frame
from .scenarios import SequencePlan, plan_sequence

logger = logging.getLogger(__name__)

ONSET_S = 0.25  # expressions build up over this long after a change (scale 0.5 -> 1)


def face_specs_at(plan: SequencePlan, index: int) -> List[FaceSpec]:
    """The renderer's ``FaceSpec`` of every face in view at frame ``index``."""
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
    from cmcnn_ros.tools import progress_bar

    scene_rng = np.random.default_rng([0xBA6, plan.seed])
    light = random_light(scene_rng)
    background = random_background(scene_rng, max(f.z_m for f in plan.faces) + 0.1)
    for i in progress_bar(range(plan.num_frames), desc="rendering", unit="frame", enabled=progress):
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
    transports: str
    size_mb: float
    wall_s: float

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def write_synthetic_bag(path: "str | Path", duration_s: float = 10.0, fps: float = 10.0, num_faces: int = 3,
                        seed: int = 0, storage: str = "mcap", overwrite: bool = False,
                        progress: bool = False, with_camera_info: bool = True,
                        transports: Transports = Transports()) -> BagSummary:
    """Render a scripted multi-face sequence (:func:`plan_sequence`) into a labelled bag.

    ``transports`` chooses raw images (default) or image_transport's compressed
    topics, encoded as a robot's recording holds them.

    Raises:
        BagWriteError: bad options or an existing output without ``overwrite``.
    """
    t0 = time.monotonic()
    plan = plan_sequence(duration_s=duration_s, fps=fps, num_faces=num_faces, seed=seed)
    counts: Dict[str, int] = {}
    n_faces = 0
    with RgbdBagWriter(path, storage=storage, overwrite=overwrite, transports=transports) as writer:
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
                      subjects=[str(f.subject_id) for f in plan.faces], storage=storage,
                      transports=("raw" if transports == Transports() else
                                  f"colour {transports.colour} ({transports.colour_codec}"
                                  + (f" q{transports.jpeg_quality}" if transports.colour_codec == "jpeg" else "")
                                  + f"), depth {transports.depth} ({transports.depth_codec})"),
                      size_mb=round(size, 1),
                      wall_s=round(time.monotonic() - t0, 2))


def get_args_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--compressed", action="store_true",
                   help="write image_transport's compressed topics instead of raw images, as a robot records "
                        "them: BASE/compressed (JPEG) and BASE/compressedDepth (PNG)")
    p.add_argument("--jpeg-quality", type=int, default=95,
                   help="with --compressed: JPEG quality of the colour (default 95, the plugin's default)")
    p.add_argument("--colour-codec", choices=("jpeg", "png"), default="jpeg", help="compressed colour codec")
    p.add_argument("--depth-codec", choices=("png", "rvl"), default="png",
                   help="compressedDepth codec (png: the plugin's default; rvl: newer distributions)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-bag-write``; prints a JSON summary."""
    args = get_args_parser().parse_args(argv)
    configure_logging(args.verbose)
    duration = args.duration if args.frames is None else args.frames / args.fps if args.fps > 0 else 0.0
    transports = (Transports("compressed", "compressedDepth", args.colour_codec, args.jpeg_quality, args.depth_codec)
                  if args.compressed else Transports())
    try:
        summary = write_synthetic_bag(args.out, duration_s=duration, fps=args.fps, num_faces=args.faces,
                                      seed=args.seed, storage=args.storage, overwrite=args.overwrite,
                                      progress=not args.no_progress, with_camera_info=not args.no_camera_info,
                                      transports=transports)
    except ValueError as exc:  # BagWriteError, SceneError, ...
        logger.error("%s", exc)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
