"""Benchmark of the synthetic RGB-D generator: rendering rate and Haar detection rate.

Two numbers matter for the rest of the package: how fast ``cmcnn-synth``
writes a training set, and how reliably the Viola-Jones detector the
pipeline uses (Section III-B) finds the rendered faces, measured with
OpenCV's ``haarcascade_frontalface_default.xml`` at scale factor 1.1 and 5
neighbours on the full grey frame (a detection counts if IoU > 0.3 with the
ground-truth box).

Usage::

    python benchmarks/bench_synthetic.py --haar-frames 200 --rate-frames 200 --workers 2

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.boxes import iou
from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_synthetic.generate import RenderOptions, generate_dataset, plan_jobs, render_job
from cmcnn_synthetic.render import CameraSpec
from cmcnn_synthetic.scene import PoseRange

logger = logging.getLogger("bench_synthetic")


def haar_rate(frames: int, poses: PoseRange, seed: int = 0) -> Dict[str, float]:
    """Detection rate of the frontal Haar cascade on random single-face frames."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    subjects = list(range(1000, 1050))
    jobs = plan_jobs(subjects, EXPRESSIONS_WITH_NEUTRAL, 1, frames=frames, seed=seed)
    options = RenderOptions(camera=CameraSpec(), poses=poses)
    hits, ious = 0, []
    per_class: Dict[str, List[int]] = {c: [0, 0] for c in EXPRESSIONS_WITH_NEUTRAL}
    for job in jobs:
        frame = render_job(job, options)
        dets = cascade.detectMultiScale(cv2.cvtColor(frame.colour, cv2.COLOR_BGR2GRAY), 1.1, 5)
        best = max((iou(frame.faces[0].box, d) for d in dets), default=0.0)
        ok = best > 0.3
        hits += ok
        per_class[job.label][0] += ok
        per_class[job.label][1] += 1
        if ok:
            ious.append(best)
    return {"frames": frames, "detection_rate": hits / frames,
            "mean_iou_of_hits": float(np.mean(ious)) if ious else 0.0,
            "per_class": {c: round(h / n, 3) for c, (h, n) in per_class.items() if n}}


def render_rate(frames: int, workers: int, seed: int = 0) -> Dict[str, float]:
    """Frames/s of the full ``cmcnn-synth`` path (render + JPEG/PNG writing)."""
    jobs = plan_jobs(list(range(frames)), EXPRESSIONS_WITH_NEUTRAL, 1, frames=frames, seed=seed)
    options = RenderOptions(camera=CameraSpec(), poses=PoseRange())
    with tempfile.TemporaryDirectory() as tmp:
        stats = generate_dataset(Path(tmp), jobs, options, workers=workers, progress=False)
    return {"frames": frames, "workers": workers, "seconds": round(stats["seconds"], 2),
            "frames_per_s": round(stats["frames_per_s"], 2)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--haar-frames", type=int, default=200)
    p.add_argument("--rate-frames", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configure_logging(quiet_level=logging.WARNING)
    result: Dict[str, object] = {}
    if args.haar_frames > 0:
        result["haar_near_frontal_0.6-1.5m"] = haar_rate(
            args.haar_frames, PoseRange(yaw_deg=10, pitch_deg=8, roll_deg=5, distance_m=(0.6, 1.5)), args.seed)
        result["haar_default_poses_0.6-2.0m"] = haar_rate(args.haar_frames, PoseRange(), args.seed)
    if args.rate_frames > 0:
        result["render_rate"] = render_rate(args.rate_frames, args.workers, args.seed)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
