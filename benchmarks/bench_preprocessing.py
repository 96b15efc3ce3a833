"""Per-stage timing of the Section III-B preprocessing on 640x480 RGB-D frames.

Builds test frames from real photographs shipped with scikit-image (the
astronaut's face pasted once or five times onto the ``rocket`` photograph,
resized to 640x480) with a synthetic registered depth image (a 2.0 m
background plane, each face an ellipsoid at ~0.9 m, 3 % holes), then times
``FacePreprocessor.process`` with ``cv2.setNumThreads(2)`` and prints p50/p95
per stage over ``--runs`` runs. The numbers feed the real-time budget of the
recognizer (<= 33 ms p50 for one face on 2 cores).

Usage::

    python benchmarks/bench_preprocessing.py [--runs 50] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cmcnn_ros.preprocessing import FacePreprocessor, PreprocessingParams  # noqa: E402

LOGGER = logging.getLogger("bench_preprocessing")

# Astronaut head (with hair and some margin) in skimage.data.astronaut() pixels.
_HEAD = (150, 20, 150, 190)  # x, y, w, h
STAGES = ("convert", "detect", "align", "grey", "lbp", "depth", "total")


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
    """p50 and p95 of ``values`` (milliseconds)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def run_case(pre: FacePreprocessor, colour: np.ndarray, depth: np.ndarray, runs: int) -> Dict[str, object]:
    """Time ``runs`` calls of ``pre.process`` on one frame (after 3 warm-up calls)."""
    for _ in range(3):
        faces = pre.process(colour, depth)
    samples: Dict[str, List[float]] = {k: [] for k in STAGES}
    for _ in range(runs):
        t0 = time.perf_counter()
        faces = pre.process(colour, depth)
        wall = (time.perf_counter() - t0) * 1000.0
        for key in STAGES:
            samples[key].append(wall if key == "total" else pre.last_timings.get(key, 0.0))
    return {
        "faces_found": len(faces),
        "eyes_found": sum(f.eyes_found for f in faces),
        "depth_valid": sum(f.depth_valid for f in faces),
        "stages_ms": {k: percentiles(v) for k, v in samples.items()},
    }


def write_json_atomic(path: str, payload: Dict[str, object]) -> None:
    """Write JSON via a temp file + os.replace so readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Sequence[str] = None) -> int:
    """Run the benchmark; print the table; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per case (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="cv2.setNumThreads (default 2)")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5], help="face counts (default 1 5)")
    parser.add_argument("--modalities", nargs="+", default=["grey", "lbp", "depth"])
    parser.add_argument("--json", dest="json_out", default=None, help="write results to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    cv2.setNumThreads(args.threads)

    params = PreprocessingParams()
    pre = FacePreprocessor(params, modalities=tuple(args.modalities))
    results: Dict[str, object] = {}
    for n in args.faces:
        colour, depth, _ = make_frame(n)
        results[f"{n}_face"] = run_case(pre, colour, depth, args.runs)

    header = f"{'case':<8} {'found':>5} {'eyes':>4} " + " ".join(f"{s + ' p50/p95':>17}" for s in STAGES)
    lines = [f"640x480, {args.runs} runs, cv2 threads={args.threads}, modalities={args.modalities} (ms)",
             header]
    for case, r in results.items():
        cells = " ".join(f"{r['stages_ms'][s]['p50']:8.2f}/{r['stages_ms'][s]['p95']:8.2f}" for s in STAGES)
        lines.append(f"{case:<8} {r['faces_found']:>5} {r['eyes_found']:>4} {cells}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json_out:
        write_json_atomic(args.json_out, {
            "frame": "640x480", "runs": args.runs, "threads": args.threads, "modalities": args.modalities,
            "params": params.to_dict(), "opencv": cv2.__version__, "machine": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
