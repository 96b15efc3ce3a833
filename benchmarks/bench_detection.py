"""Face detection and eye localisation on a pose/distance sweep: BlazeFace + FaceMesh vs Haar.

What the "real people" targets ask of the detector (Section III-B 1-2 of the
paper use Viola-Jones and DRMF eyes; the package's default is BlazeFace with
FaceMesh eyes): on single-face frames from our renderer with yaw to +-40 deg,
pitch +-20, roll +-30, 0.5-3.0 m and random light and rooms,

* the share of faces found (a detection with IoU >= 0.4 with the true box),
  overall and in the target region |yaw| <= 30, |roll| <= 25, distance <= 2.5 m
  (target >= 95 %);
* false faces per 100 face-free frames: empty rendered rooms plus
  ``skimage.data`` ``coffee`` and ``chelsea`` (target <= 1). ``camera`` shows a
  real photographer's face in profile: it is reported on its own, as a true face;
* eye-centre error as a fraction of the true inter-ocular distance (target
  <= 5 %), for the faces found;
* detection + alignment milliseconds per frame.

Both detectors run in the same process on the same frames, so their figures
compare. Rendered frames are cached under ``--cache`` so a rerun (or another
detector setting) does not render again.

Usage::

    python benchmarks/bench_detection.py --frames 600 --empty 100 --json benchmarks/results/detection_cpu2.json \\
        --figure docs/detection_sweep.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.atomic_io import atomic_open
from cmcnn_ros.boxes import iou
from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.preprocessing import FacePreprocessor, PreprocessingParams
from cmcnn_ros.preprocessing.params import HAAR_PAPER

logger = logging.getLogger("bench_detection")

TARGET = {"yaw": 30.0, "roll": 25.0, "distance": 2.5}
MATCH_IOU = 0.4


def read_sweep(root: Path) -> List[Dict[str, Any]]:
    """Single-face frames of a ``cmcnn-synth`` folder with their box, eyes, pose and distance."""
    import csv

    with open(root / "labels.csv", newline="") as fh:
        boxes = {r["colour"]: [int(r[k]) for k in ("box_x", "box_y", "box_w", "box_h")] for r in csv.DictReader(fh)}
    out = []
    with open(root / "truth.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            colour = cv2.imread(str(root / r["colour"]), cv2.IMREAD_COLOR)
            nose = [float(r[k]) for k in ("nose_x_m", "nose_y_m", "nose_z_m")]
            e1 = (float(r["eye1_x"]), float(r["eye1_y"]))
            e2 = (float(r["eye2_x"]), float(r["eye2_y"]))
            out.append({"colour": colour, "box": np.array(boxes[r["colour"]]),
                        "eyes": np.array(sorted([e1, e2])), "distance": np.array(float(np.linalg.norm(nose))),
                        "pose": np.array([float(r[k]) for k in ("yaw_deg", "pitch_deg", "roll_deg")])})
    return out


def render_sweep(cache: Path, frames: int, empty: int, seed: int) -> List[Dict[str, Any]]:
    """Rendered sweep frames (cached as one .npz each): colour and the face's truth."""
    from cmcnn_synthetic.generate import RenderOptions, plan_jobs, render_job
    from cmcnn_synthetic.render import CameraSpec
    from cmcnn_synthetic.scene import PoseRange, render_frame

    cache.mkdir(parents=True, exist_ok=True)
    options = RenderOptions(camera=CameraSpec(), poses=PoseRange(yaw_deg=40.0, pitch_deg=20.0, roll_deg=30.0,
                                                                 distance_m=(0.5, 3.0)))
    jobs = plan_jobs(list(range(9000, 9040)), EXPRESSIONS_WITH_NEUTRAL, 1, frames=frames, seed=seed) \
        if frames else []
    out: List[Dict[str, Any]] = []
    for i, job in enumerate(tqdm(jobs, desc="render faces", disable=not sys.stderr.isatty())):
        path = cache / f"face_{seed}_{i:05d}.npz"
        if not path.is_file():
            fr = render_job(job, options)
            t = fr.faces[0]
            with atomic_open(path, "wb") as fh:
                np.savez_compressed(fh, colour=fr.colour, box=np.array(t.box), eyes=np.array(t.eyes),
                                    pose=np.array([t.yaw_deg, t.pitch_deg, t.roll_deg]),
                                    distance=np.array(float(np.linalg.norm(t.nose_tip_m))),
                                    in_frame=np.array(t.in_frame))
        with np.load(path) as z:
            out.append({k: z[k] for k in z.files})
    for i in tqdm(range(empty), desc="render rooms", disable=not sys.stderr.isatty()):
        path = cache / f"room_{seed}_{i:05d}.npz"
        if not path.is_file():
            fr = render_frame([], seed=seed * 100_000 + i)
            with atomic_open(path, "wb") as fh:
                np.savez_compressed(fh, colour=fr.colour)
        with np.load(path) as z:
            out.append({"colour": z["colour"], "room": np.array(True)})
    return out


def photos() -> Dict[str, np.ndarray]:
    import skimage.data as data

    out = {}
    for name in ("coffee", "chelsea", "camera"):
        im = getattr(data, name)()
        out[name] = cv2.cvtColor(im, cv2.COLOR_RGB2BGR) if im.ndim == 3 else im
    return out


def evaluate(name: str, params: PreprocessingParams, frames: List[Dict[str, Any]],
             extra: Dict[str, np.ndarray]) -> Dict[str, Any]:
    pre = FacePreprocessor(params, modalities=("grey",))
    rows = []
    false_faces, rooms = 0, 0
    ms: List[float] = []
    for fr in tqdm(frames, desc=name, disable=not sys.stderr.isatty()):
        t0 = time.perf_counter()
        faces = pre.process(fr["colour"])
        ms.append((time.perf_counter() - t0) * 1000.0)
        if "room" in fr:
            rooms += 1
            false_faces += len(faces)
            continue
        gt = [float(v) for v in fr["box"]]
        best = max(faces, key=lambda f: iou(f.box, gt), default=None)
        overlap = iou(best.box, gt) if best is not None else 0.0
        found = overlap >= MATCH_IOU
        eye_err = float("nan")
        if found and best.eyes is not None:
            (gl, gr) = fr["eyes"]
            iod = float(np.hypot(*(gr - gl)))
            err = max(math.hypot(best.eyes[0][0] - gl[0], best.eyes[0][1] - gl[1]),
                      math.hypot(best.eyes[1][0] - gr[0], best.eyes[1][1] - gr[1]))
            eye_err = err / iod if iod > 0 else float("nan")
        yaw, pitch, roll = (float(v) for v in fr["pose"])
        rows.append({"yaw": yaw, "pitch": pitch, "roll": roll, "distance": float(fr["distance"]),
                     "found": bool(found), "iou": overlap, "eye_error": eye_err,
                     "method": best.alignment if found else "missed",
                     "extra_faces": max(0, len(faces) - (1 if found else 0))})
    photo_faces = {k: len(pre.process(im)) for k, im in extra.items()}
    face_free = rooms + sum(1 for k in photo_faces if k != "camera")
    false_total = false_faces + sum(v for k, v in photo_faces.items() if k != "camera")
    return {"rows": rows, "summary": summarise(rows, ms, false_total, face_free, photo_faces)}


def _rate(rows: List[Dict[str, Any]]) -> Optional[float]:
    return round(100.0 * sum(r["found"] for r in rows) / len(rows), 1) if rows else None


def summarise(rows: List[Dict[str, Any]], ms: List[float], false_total: int, face_free: int,
              photo_faces: Dict[str, int]) -> Dict[str, Any]:
    target = [r for r in rows if abs(r["yaw"]) <= TARGET["yaw"] and abs(r["roll"]) <= TARGET["roll"]
              and r["distance"] <= TARGET["distance"]]
    errs = np.array([r["eye_error"] for r in rows if r["found"] and math.isfinite(r["eye_error"])])
    errs_t = np.array([r["eye_error"] for r in target if r["found"] and math.isfinite(r["eye_error"])])
    bins = {}
    for key, edges in (("yaw", (0, 10, 20, 30, 40)), ("roll", (0, 10, 20, 25, 30)),
                       ("distance", (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)), ("pitch", (0, 10, 20))):
        out = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = [r for r in rows if lo <= abs(r[key]) <= hi]
            out[f"{lo}-{hi}"] = {"n": len(sel), "found_pct": _rate(sel)}
        bins[key] = out
    methods: Dict[str, int] = {}
    for r in rows:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    return {
        "faces": len(rows), "found_pct": _rate(rows),
        "target_region": {"faces": len(target), "found_pct": _rate(target), **TARGET},
        "false_faces_per_100_face_free": round(100.0 * false_total / max(face_free, 1), 2),
        "face_free_frames": face_free, "false_faces": false_total, "photo_faces": photo_faces,
        "eye_error_iod": {"n": int(len(errs)), "p50": _percentile(errs, 50), "p90": _percentile(errs, 90),
                          "within_5pct": round(100.0 * float(np.mean(errs <= 0.05)), 1) if len(errs) else None},
        "eye_error_iod_target_region": {"n": int(len(errs_t)), "p50": _percentile(errs_t, 50),
                                        "p90": _percentile(errs_t, 90),
                                        "within_5pct": round(100.0 * float(np.mean(errs_t <= 0.05)), 1)
                                        if len(errs_t) else None},
        "iou_of_found_p50": _percentile(np.array([r["iou"] for r in rows if r["found"]]), 50),
        "ms_per_frame": {"p50": _percentile(np.array(ms), 50), "p95": _percentile(np.array(ms), 95)},
        "alignment_methods": methods, "by": bins,
    }


def _percentile(a: np.ndarray, q: float) -> Optional[float]:
    return round(float(np.percentile(a, q)), 4) if len(a) else None


def figure(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, ("yaw", "roll", "distance")):
        for name, res in results.items():
            bins = res["summary"]["by"][key]
            labels = list(bins)
            ax.plot(range(len(labels)), [b["found_pct"] or 0 for b in bins.values()], marker="o", label=name)
            ax.set_xticks(range(len(labels)), labels)
        ax.axhline(95, color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, 102)
        ax.set_xlabel(f"|{key}| " + ("(m)" if key == "distance" else "(deg)"))
        ax.set_ylabel("faces found (%)")
        ax.legend(loc="lower left")
    fig.suptitle("Face detection on the rendered pose/distance sweep (IoU >= 0.4 with the true box)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="read the face frames from this cmcnn-synth folder")
    p.add_argument("--frames", type=int, default=600, help="single-face sweep frames (rendered without --root)")
    p.add_argument("--empty", type=int, default=100, help="face-free rendered rooms")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path("cache/bench_detection"))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--figure", type=Path, default=None, help="detection rate by pose/distance (PNG)")
    p.add_argument("--detectors", nargs="+", default=["blazeface", "haar"], choices=["blazeface", "haar"])
    args = p.parse_args(argv)
    configure_logging()
    cv2.setNumThreads(1)
    if args.root is not None:
        frames = read_sweep(args.root) + render_sweep(args.cache, 0, args.empty, args.seed)
    else:
        frames = render_sweep(args.cache, args.frames, args.empty, args.seed)
    extra = photos()
    configs = {"blazeface": PreprocessingParams(crop_size=64), "haar": HAAR_PAPER}
    results = {name: evaluate(name, configs[name], frames, extra) for name in args.detectors}
    summary = {name: r["summary"] for name, r in results.items()}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.json, "w") as fh:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary}, fh, indent=1)
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
