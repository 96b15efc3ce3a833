"""Per-stage latency of the whole Recognizer on Kinect-sized frames.

Renders 640x480 synthetic RGB-D frames with one and with five faces, then
times ``Recognizer.recognize`` stage by stage (detect, align, grey, lbp,
depth, network, total) over repeated runs and prints p50/p95 in ms.

Targets (issue "CM-CNN core"): on 2 CPU cores the whole recognizer <= 33 ms
p50 for one face; on a GPU <= 5 ms p50. The paper reports 15 ms network +
28 ms preprocessing on a GTX-1080 (Section IV-D).

    python benchmarks/bench_recognizer.py                       # default weights or default preset
    python benchmarks/bench_recognizer.py --presets default paper --json out.json
    python benchmarks/bench_recognizer.py --device cuda

These machines are noisy: compare figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmcnn_ros.tools import configure_logging  # noqa: E402
from cmcnn_ros.atomic_io import write_text_atomic  # noqa: E402
from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL  # noqa: E402
from cmcnn_ros.inference import Recognizer  # noqa: E402
from cmcnn_ros.model import cmcnn  # noqa: E402
from cmcnn_ros.model.checkpoint import load_checkpoint  # noqa: E402
from cmcnn_ros.preprocessing.params import PreprocessingParams  # noqa: E402
from cmcnn_synthetic.scene import FaceSpec, render_frame  # noqa: E402

logger = logging.getLogger("bench_recognizer")
DEFAULT_WEIGHTS = REPO / "models" / "cmcnn_default.pt"
STAGES = ("detect", "align", "grey", "lbp", "depth", "preprocess", "network", "total")
LABELS = ("happy", "surprised", "angry", "sad", "neutral")


def make_frame(num_faces: int, seed: int = 7):
    """A 640x480 colour + 16-bit depth frame with ``num_faces`` frontal faces in a row."""
    if num_faces == 1:
        positions = [(0.0, 0.0, 1.0)]
    else:
        # Two rows (3 + 2) at 1.3 m so every face is ~95 px wide and none overlap.
        slots = [(-0.42, -0.2), (0.0, -0.2), (0.42, -0.2), (-0.21, 0.2), (0.21, 0.2), (0.63, 0.2)]
        positions = [(x, y, 1.3) for x, y in slots[:num_faces]]
    faces = [FaceSpec(subject_id=100 + i, label=LABELS[i % len(LABELS)],
                      intensity=0 if LABELS[i % len(LABELS)] == "neutral" else 4,
                      position_m=pos, expression_seed=i) for i, pos in enumerate(positions)]
    frame = render_frame(faces, seed=seed)
    return frame.colour, frame.depth_mm


def time_recognizer(rec: Recognizer, colour: np.ndarray, depth: np.ndarray, runs: int, warmup: int,
                    desc: str) -> Dict[str, object]:
    for _ in range(warmup):
        rec.recognize(colour, depth)
    samples: Dict[str, List[float]] = {s: [] for s in STAGES}
    faces_found: List[int] = []
    for _ in tqdm(range(runs), desc=desc, leave=False):
        if rec.device.type == "cuda":
            torch.cuda.synchronize()
        result = rec.recognize(colour, depth)
        faces_found.append(len(result.faces))
        for s in STAGES:
            samples[s].append(result.timings.get(s, 0.0))
    row: Dict[str, object] = {"faces_found_median": int(np.median(faces_found))}
    for s in STAGES:
        row[f"{s}_p50"] = float(np.percentile(samples[s], 50))
        row[f"{s}_p95"] = float(np.percentile(samples[s], 95))
    return row


def build_recognizers(presets: Sequence[str], device: str, threads: int,
                      redetect_interval: int = 1) -> Dict[str, Recognizer]:
    out: Dict[str, Recognizer] = {}
    for preset in presets:
        if preset in ("weights", "weights-haar"):
            if not DEFAULT_WEIGHTS.is_file():
                logger.warning("no %s; skipping the trained weights", DEFAULT_WEIGHTS)
                continue
            rec = Recognizer.from_checkpoint(DEFAULT_WEIGHTS, device=device, num_threads=threads,
                                             redetect_interval=redetect_interval)
            if preset == "weights-haar":
                # Same network and crop size, the paper's Viola-Jones + Haar-eye front end:
                # what the detector choice costs, in the same run.
                fresh = load_checkpoint(DEFAULT_WEIGHTS)
                haar = rec.params.replace(detector="haar", min_face_size=60)
                rec = Recognizer(fresh.model, fresh.class_names, haar, device=device, num_threads=threads,
                                 redetect_interval=redetect_interval)
            out[preset] = rec
        else:
            # Untrained weights time exactly like trained ones of the same shape.
            model = cmcnn(preset=preset, num_classes=len(EXPRESSIONS_WITH_NEUTRAL))
            out[preset] = Recognizer(model, EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams(), device=device,
                                     num_threads=threads, redetect_interval=redetect_interval)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["weights", "weights-haar", "default", "paper"],
                        help="'weights' (models/cmcnn_default.pt), 'weights-haar' (the same network "
                             "behind the Viola-Jones front end) and/or model presets (148 px crops)")
    parser.add_argument("--faces", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--redetect-intervals", nargs="+", type=int, default=[1, 5],
                        help="frames between full detections (1 = every frame; >1 = video mode, "
                             "local search around previous faces in between)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    configure_logging()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)

    frames = {n: make_frame(n) for n in args.faces}
    rows = []
    for interval in args.redetect_intervals:
        for name, rec in build_recognizers(args.presets, args.device, args.threads, interval).items():
            for n, (colour, depth) in frames.items():
                rec.face_finder.reset()
                row = time_recognizer(rec, colour, depth, args.runs, args.warmup,
                                      f"{name} {n} face(s) redetect {interval}")
                row.update(model=name, faces=n, device=str(rec.device), threads=args.threads,
                           redetect_interval=interval, params=rec.model.num_parameters(include_fen_heads=False))
                rows.append(row)

    header = (f"{'model':>12} {'dev':>5} {'redet':>5} {'faces':>5} {'found':>5} "
              + " ".join(f"{s:>12}" for s in STAGES))
    lines = ["per-stage latency, p50/p95 in ms", header]
    for r in rows:
        cells = " ".join(f"{r[f'{s}_p50']:.1f}/{r[f'{s}_p95']:.1f}".rjust(12) for s in STAGES)
        lines.append(f"{r['model']:>12} {r['device']:>5} {r['redetect_interval']:>5} {r['faces']:>5} "
                     f"{r['faces_found_median']:>5} {cells}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": rows, "torch": torch.__version__, "cv2": cv2.__version__},
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
