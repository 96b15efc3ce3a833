"""Per-stage timing of the Section III-B preprocessing on 640x480 RGB-D frames.

Builds test frames from real photographs shipped with scikit-image (the
astronaut's face pasted once or five times onto the ``rocket`` photograph,
resized to 640x480) with a synthetic registered depth image (a 2.0 m
background plane, each face an ellipsoid at ~0.9 m, 3 % holes), then times
``FacePreprocessor.process`` with ``cv2.setNumThreads(2)`` and prints p50/p95
per stage over ``--runs`` runs, once with full-frame detection and once in
tracking mode (``*_roi``: detection only around the previous boxes, as a
tracker would do between full detections). The load average is printed
because other processes on a shared machine inflate every number. The numbers feed the real-time budget of the
recognizer (<= 33 ms p50 for one face on 2 cores).

Usage::

    python benchmarks/bench_preprocessing.py [--runs 50] [--threads 2] [--clock wall|cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.preprocessing import FacePreprocessor, PreprocessingParams, to_grey

logger = logging.getLogger("bench_preprocessing")

# Astronaut head (with hair and some margin) in skimage.data.astronaut() pixels.
_HEAD = (150, 20, 150, 190)  # x, y, w, h
STAGES = ("convert", "detect", "align", "grey", "lbp", "hog", "gabor", "depth", "total")


def make_frame(n_faces: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int, int, int]]]:
    """A 640x480 BGR frame with ``n_faces`` astronaut faces and registered depth.

    Args:
        n_faces: 1 or more faces (up to 5 positions are laid out).
        seed: seed for the depth holes.

    Returns:
        ``(colour uint8 480x640x3, depth float32 480x640 metres, pasted head rects)``.
    """
    background = cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2BGR)
    colour = cv2.resize(background, (640, 480), interpolation=cv2.INTER_AREA)
    depth = np.full((480, 640), 2.0, np.float32)
    astro = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w, h = _HEAD
    head = astro[y:y + h, x:x + w]
    if n_faces == 1:
        layout = [(245, 140, 1.0)]
    else:
        layout = [(20, 30, 0.85), (230, 20, 0.8), (450, 40, 0.85), (120, 260, 0.95), (380, 250, 1.0)][:n_faces]
    rects = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for px, py, s in layout:
        hw, hh = int(round(w * s)), int(round(h * s))
        colour[py:py + hh, px:px + hw] = cv2.resize(head, (hw, hh), interpolation=cv2.INTER_AREA)
        rects.append((px, py, hw, hh))
        # Face ellipsoid: nose tip 0.9 m, 0.1 m deep, centred on the face.
        cx, cy, rx, ry = px + 0.5 * hw, py + 0.55 * hh, 0.4 * hw, 0.5 * hh
        r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        inside = r2 < 1.0
        depth[inside] = 0.9 + 0.1 * (1.0 - np.sqrt(1.0 - r2[inside]))
    rng = np.random.default_rng(seed)
    depth[rng.random(depth.shape) < 0.03] = 0.0
    return colour, depth, rects


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    """min, p50 and p95 of ``values`` (milliseconds).

    The minimum is the run least disturbed by other processes: on a shared
    machine it is the best estimate of the unloaded cost.
    """
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def tracked_boxes(pre: FacePreprocessor, colour: np.ndarray, previous: Sequence[Tuple[int, int, int, int]]
                  ) -> List[Tuple[int, int, int, int]]:
    """What a tracker would do between full detections: search 2x around each previous box
    for faces of 0.7x..1.4x its size."""
    grey = to_grey(colour)
    boxes = []
    for x, y, w, h in previous:
        hits = pre.detector.detect(grey, roi=(x - w // 2, y - h // 2, 2 * w, 2 * h),
                                   size_range=(int(0.7 * w), int(1.4 * w)))
        boxes.extend(d.box for d in hits[:1])
    return boxes


def run_case(pre: FacePreprocessor, colour: np.ndarray, depth: np.ndarray, runs: int,
             roi_tracking: bool = False, clock: Callable[[], float] = time.perf_counter) -> Dict[str, object]:
    """Time ``runs`` calls of ``pre.process`` on one frame (after 3 warm-up calls).

    With ``roi_tracking`` the full-frame detection is replaced by
    :func:`tracked_boxes` around the boxes of a first full detection; its
    time is reported as ``detect`` and included in ``total``.
    """
    previous = [f.box for f in pre.process(colour, depth)]
    for _ in range(3):
        faces = pre.process(colour, depth)
    samples: Dict[str, List[float]] = {k: [] for k in STAGES}
    for _ in range(runs):
        t0 = clock()
        if roi_tracking:
            boxes = tracked_boxes(pre, colour, previous)
            t_detect = (clock() - t0) * 1000.0
            faces = pre.process(colour, depth, boxes=boxes)
        else:
            faces = pre.process(colour, depth)
            t_detect = pre.last_timings["detect"]
        wall = (clock() - t0) * 1000.0
        for key in STAGES:
            value = pre.last_timings.get(key, 0.0)
            samples[key].append(wall if key == "total" else t_detect if key == "detect" else value)
    return {
        "faces_found": len(faces),
        "eyes_found": sum(f.eyes_found for f in faces),
        "depth_valid": sum(f.depth_valid for f in faces),
        "stages_ms": {k: percentiles(v) for k, v in samples.items()},
    }


def main(argv: Sequence[str] = None) -> int:
    """Run the benchmark; print the table; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per case (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="cv2.setNumThreads (default 2)")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5], help="face counts (default 1 5)")
    parser.add_argument("--modalities", nargs="+", default=["grey", "lbp", "depth"])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: latency (default); cpu: process CPU time, the cost on an idle core "
                             "when run with --threads 1 (use on a shared, busy machine)")
    parser.add_argument("--json", dest="json_out", default=None, help="write results to this JSON file")
    args = parser.parse_args(argv)
    configure_logging()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    cv2.setNumThreads(args.threads)

    params = PreprocessingParams()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    pre = FacePreprocessor(params, modalities=tuple(args.modalities), clock=clock)
    stages = tuple(s for s in STAGES if s in args.modalities or s in ("convert", "detect", "align", "total"))
    results: Dict[str, object] = {}
    load_before = os.getloadavg()
    for n in args.faces:
        colour, depth, _ = make_frame(n)
        results[f"{n}_face"] = run_case(pre, colour, depth, args.runs, clock=clock)
        results[f"{n}_face_roi"] = run_case(pre, colour, depth, args.runs, roi_tracking=True, clock=clock)

    header = f"{'case':<10} {'found':>5} {'eyes':>4} " + " ".join(f"{s + ' min/p50/p95':>20}" for s in stages)
    load = os.getloadavg()
    lines = [f"640x480, {args.runs} runs, cv2 threads={args.threads}, modalities={args.modalities}, "
             f"{args.clock} clock (ms); "
             f"load average before/after {load_before[0]:.2f}/{load[0]:.2f} on {os.cpu_count()} CPUs",
             "*_roi: detection only around the previous boxes (tracking mode)", header]
    for case, r in results.items():
        cells = " ".join("{min:6.2f}/{p50:6.2f}/{p95:6.2f}".format(**r["stages_ms"][s]) for s in stages)
        lines.append(f"{case:<10} {r['faces_found']:>5} {r['eyes_found']:>4} {cells}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json_out:
        write_json_atomic(args.json_out, {
            "frame": "640x480", "runs": args.runs, "threads": args.threads, "clock": args.clock,
            "modalities": args.modalities,
            "params": params.to_dict(), "opencv": cv2.__version__, "machine": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "load_average_before_after": [load_before[0], load[0]],
            "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
