"""Where each face is: the node's face position and head orientation against rendered truth (issue 17, 2).

What ``fer_node`` publishes as ``Emotion.position`` and REP-155's ``face_<id>`` TF frame comes from
:mod:`cmcnn_ros.inference.face_pose` through the recognizer (``FaceResult.position`` /
``orientation``, with the camera's intrinsics). This script runs the recognizer (the checkpoint's
detector: BlazeFace + FaceMesh for the shipped weights) over a ``cmcnn-synth`` pose sweep and compares
with the renderer's truth, like with like:

* **position**: REP-155's face frame origin is the sellion; the renderer's ``truth.csv`` gives the
  sellion (Multi-PIE landmark 27 of the posed mesh, ``sellion_x/y/z_m``) beside the nose tip, so the
  error is the 3-D distance between the estimated and the true sellion, in the camera's optical frame.
  Targets: <= 3 cm at 1 m (faces 0.75-1.25 m away) and <= 5 % of the distance up to 3 m.
* **orientation**: the renderer's yaw/pitch/roll are relative to a head that looks at the camera
  from where it is (``cmcnn_synthetic.scene.pose_rotation``); the estimate, a rotation in the optical
  frame, is expressed in the same convention (the same look-at base, the same Z-X-Y order) before
  the angles are compared. Target: yaw within 10 deg for |yaw| <= 40 deg.

Beside the node's methods, on the same landmarks: the head orientation without the line-of-sight
correction (FaceMesh's axes taken as the optical frame's), ``cv2.solvePnP`` against a generic 6-point
face model (nose tip, chin, eye and mouth corners), the position voted by every inner-face landmark
instead of those near the sellion, and the position the box fallback gives (faces without landmarks:
median depth of the box centre through the eye midpoint).

Usage::

    cmcnn-synth --out data/pose_sweep --frames 400 --subjects 40 --subject-offset 9000 --seed 17 \\
        --yaw 40 --pitch 20 --roll 30 --distance 0.5 3.0 --depth-noise kinect
    python benchmarks/bench_face_pose.py --data data/pose_sweep --json benchmarks/results/face_pose_cpu2.json
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import yaml
from scipy.spatial.transform import Rotation

from cmcnn_ros import resources
from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.inference import Recognizer
from cmcnn_ros.inference import face_pose as fp
from cmcnn_ros.tools import configure_logging
from cmcnn_synthetic.scene import pose_rotation

logger = logging.getLogger("bench_face_pose")

#: The issue's targets.
AT_1M = (0.75, 1.25)
TARGET_CM_AT_1M = 3.0
TARGET_PCT = 5.0
TARGET_YAW_DEG = 10.0
MAX_ABS_YAW = 40.0
DISTANCE_BINS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
YAW_BINS = (0, 10, 20, 30, 40)

#: REP-155 face axes (x out of the face, y left, z up) -> the renderer's model axes (x left, y up, z out).
P_MODEL = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
#: A generic face (the model of OpenCV head-pose tutorials, millimetre-like units; x to the image
#: right of a frontal face, y up, z towards the camera: the renderer's model axes) and its FaceMesh
#: landmarks: nose tip, chin, image-left and image-right outer eye corners, mouth corners.
GENERIC_MODEL = np.array([(0, 0, 0), (0, -330, -65), (-225, 170, -135), (225, 170, -135), (-150, -150, -125),
                          (150, -150, -125)], np.float64)
GENERIC_LANDMARKS = (1, 152, 33, 263, 61, 291)


def read_sweep(root: Path) -> List[Dict[str, Any]]:
    """The frames of a ``cmcnn-synth`` folder with their truth (needs ``truth.csv``'s sellion columns)."""
    with open(root / "labels.csv", newline="") as fh:
        depth_of = {r["colour"]: r["depth"] for r in csv.DictReader(fh)}
    out = []
    with open(root / "truth.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if "sellion_x_m" not in r:
                sys.exit(f"{root}/truth.csv has no sellion columns: render it again with this cmcnn-synth")
            out.append({"colour": root / r["colour"], "depth": root / depth_of[r["colour"]],
                        "pose": np.array([float(r[k]) for k in ("yaw_deg", "pitch_deg", "roll_deg")]),
                        "nose": np.array([float(r[k]) for k in ("nose_x_m", "nose_y_m", "nose_z_m")]),
                        "sellion": np.array([float(r[k]) for k in ("sellion_x_m", "sellion_y_m", "sellion_z_m")])})
    return out


def read_intrinsics(root: Path) -> fp.CameraIntrinsics:
    with open(root / "intrinsics.yaml") as fh:
        k = yaml.safe_load(fh)
    return fp.CameraIntrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]),
                               int(k["width"]), int(k["height"]))


def renderer_angles(face_axes: np.ndarray, nose: np.ndarray) -> np.ndarray:
    """``(yaw, pitch, roll)`` in degrees of a face rotation (REP-155 axes in the optical frame), in the
    renderer's convention: relative to a head at ``nose`` looking at the camera, ``Rz(roll) Rx(-pitch) Ry(yaw)``."""
    model = pose_rotation(0.0, 0.0, 0.0, nose).T @ face_axes @ P_MODEL.T
    roll, minus_pitch, yaw = np.degrees(Rotation.from_matrix(model).as_euler("ZXY"))
    return np.array([yaw, -minus_pitch, roll])


def generic_pnp(landmarks: np.ndarray, k: fp.CameraIntrinsics) -> Optional[np.ndarray]:
    """REP-155 face axes from ``cv2.solvePnP`` of the generic model on six FaceMesh pixels (None if it fails)."""
    camera = np.array([[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]], np.float64)
    ok, rvec, _ = cv2.solvePnP(GENERIC_MODEL, landmarks[list(GENERIC_LANDMARKS), :2].astype(np.float64), camera,
                               None, flags=cv2.SOLVEPNP_ITERATIVE)
    return cv2.Rodrigues(rvec)[0] @ P_MODEL if ok else None


def evaluate(rec: Recognizer, frames: Sequence[Dict[str, Any]], k: fp.CameraIntrinsics) -> List[Dict[str, Any]]:
    rows = []
    for i, fr in enumerate(frames):
        colour = cv2.imread(str(fr["colour"]), cv2.IMREAD_COLOR)
        depth_mm = cv2.imread(str(fr["depth"]), cv2.IMREAD_UNCHANGED)
        prepared = rec.prepare(colour, depth_mm, intrinsics=k)
        result = rec.finish(prepared)
        sel = fr["sellion"]
        u, v = k.fx * sel[0] / sel[2] + k.cx, k.fy * sel[1] / sel[2] + k.cy
        inside = [j for j, f in enumerate(result.faces)
                  if f.box[0] <= u <= f.box[0] + f.box[2] and f.box[1] <= v <= f.box[1] + f.box[3]]
        distance = float(np.linalg.norm(sel))
        row: Dict[str, Any] = {"frame": i, "yaw": float(fr["pose"][0]), "pitch": float(fr["pose"][1]),
                               "roll": float(fr["pose"][2]), "distance_m": round(distance, 4), "found": bool(inside)}
        rows.append(row)
        if not inside:
            continue
        j = min(inside, key=lambda j: math.hypot(result.faces[j].box[0] + result.faces[j].box[2] / 2 - u,
                                                 result.faces[j].box[1] + result.faces[j].box[3] / 2 - v))
        face, crops = result.faces[j], prepared.faces[j]
        row["alignment"] = face.alignment
        depth_m = depth_mm.astype(np.float32) * np.float32(0.001)
        t0 = time.perf_counter()
        fp.estimate_face_pose(depth_m, k, crops.box, crops.landmarks, crops.eyes)
        row["pose_ms"] = (time.perf_counter() - t0) * 1000.0
        positions = {"landmark votes (node)": face.position,
                     "all inner-face landmark votes": fp.face_position(depth_m, k, crops.box, crops.landmarks,
                                                                       vote_radius=math.inf)[0]
                     if crops.landmarks is not None else fp.NAN_POSITION,
                     "box median (no landmarks)": fp.face_position(depth_m, k, crops.box, None, crops.eyes)[0]}
        for name, pos in positions.items():
            err = np.subtract(pos, sel)
            row[f"position {name}"] = ([round(float(c), 5) for c in err] if np.all(np.isfinite(err)) else None)
        if crops.landmarks is None or not all(math.isfinite(c) for c in face.orientation):
            continue
        rotations = {"mesh axes, line of sight (node)": fp.quaternion_to_rotation(face.orientation),
                     "mesh axes, optical axis": fp.mesh_face_axes(crops.landmarks),
                     "solvePnP, generic 6-point model": generic_pnp(crops.landmarks, k)}
        truth = pose_rotation(*fr["pose"], fr["nose"]) @ P_MODEL
        for name, rot in rotations.items():
            if rot is None:
                row[f"angles {name}"] = None
                continue
            err = renderer_angles(rot, fr["nose"]) - fr["pose"]
            err = (err + 180.0) % 360.0 - 180.0
            geodesic = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rot.T @ truth) - 1.0) / 2.0))))
            row[f"angles {name}"] = [round(float(e), 3) for e in err] + [round(geodesic, 3)]
        if (i + 1) % 50 == 0:
            logger.info("%d / %d frames", i + 1, len(frames))
    return rows


def _stats(values: Sequence[float], digits: int = 2) -> Dict[str, Any]:
    a = np.asarray(values, float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50": round(float(np.percentile(a, 50)), digits),
            "p90": round(float(np.percentile(a, 90)), digits), "max": round(float(a.max()), digits)}


def summarise_position(rows: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    found = [r for r in rows if r["found"]]
    located = [r for r in found if r.get(key) is not None]
    err_cm = np.array([100.0 * np.linalg.norm(r[key]) for r in located])
    dist = np.array([r["distance_m"] for r in located])
    pct = 100.0 * err_cm / 100.0 / np.maximum(dist, 1e-9)
    at1 = (dist >= AT_1M[0]) & (dist <= AT_1M[1])
    bins = {}
    for lo, hi in zip(DISTANCE_BINS[:-1], DISTANCE_BINS[1:]):
        sel = (dist >= lo) & (dist < hi if hi < DISTANCE_BINS[-1] else dist <= hi)
        bins[f"{lo}-{hi} m"] = {"error_pct_of_distance": _stats(pct[sel]), "error_cm": _stats(err_cm[sel], 1),
                                "within_5pct_share": round(float(np.mean(pct[sel] <= TARGET_PCT)), 3)
                                if sel.any() else None}
    signed = np.array([r[key] for r in located]) * 100.0 if located else np.zeros((0, 3))
    return {
        "faces_found": len(found), "without_position": len(found) - len(located),
        "at_1m": {"range_m": list(AT_1M), "error_cm": _stats(err_cm[at1], 2),
                  "within_3cm_share": round(float(np.mean(err_cm[at1] <= TARGET_CM_AT_1M)), 3) if at1.any() else None},
        "by_distance": bins,
        "all": {"error_cm": _stats(err_cm, 2), "error_pct_of_distance": _stats(pct, 2),
                "within_5pct_share": round(float(np.mean(pct <= TARGET_PCT)), 3) if len(pct) else None},
        "signed_mean_cm_xyz": [round(float(c), 2) for c in signed.mean(0)] if len(signed) else None,
        "target_met": bool(at1.any() and err_cm[at1].max() <= TARGET_CM_AT_1M and len(pct)
                           and pct.max() <= TARGET_PCT),
    }


def summarise_angles(rows: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    have = [r for r in rows if r.get(key) is not None and abs(r["yaw"]) <= MAX_ABS_YAW]
    e = np.array([r[key] for r in have]) if have else np.zeros((0, 4))
    yaw_abs = np.abs([r["yaw"] for r in have])
    by = {}
    for lo, hi in zip(YAW_BINS[:-1], YAW_BINS[1:]):
        sel = (yaw_abs >= lo) & (yaw_abs <= hi)
        by[f"|yaw| {lo}-{hi}"] = {**_stats(np.abs(e[sel, 0]), 1),
                                  "within_10deg_share": round(float(np.mean(np.abs(e[sel, 0]) <= TARGET_YAW_DEG)), 3)
                                  if sel.any() else None}
    return {
        "yaw_abs_error_deg": {**_stats(np.abs(e[:, 0]), 1),
                              "within_10deg_share": round(float(np.mean(np.abs(e[:, 0]) <= TARGET_YAW_DEG)), 3)
                              if len(e) else None,
                              "signed_mean": round(float(e[:, 0].mean()), 2) if len(e) else None},
        "by_abs_yaw": by,
        "pitch_abs_error_deg": {**_stats(np.abs(e[:, 1]), 1),
                                "signed_mean": round(float(e[:, 1].mean()), 2) if len(e) else None},
        "roll_abs_error_deg": {**_stats(np.abs(e[:, 2]), 1),
                               "signed_mean": round(float(e[:, 2].mean()), 2) if len(e) else None},
        "rotation_angle_error_deg": _stats(e[:, 3], 1),
        "target_met": bool(len(e) and np.abs(e[:, 0]).max() <= TARGET_YAW_DEG),
    }


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when inside it (results name files, not machines)."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a cmcnn-synth folder (truth.csv with sellion columns)")
    ap.add_argument("--checkpoint", default="", help="weights (their detector); empty: the shipped default")
    ap.add_argument("--limit", type=int, default=0, help="first N frames only (0: all)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--rows", action="store_true", help="also write every face's errors into the JSON")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    frames = read_sweep(args.data)
    if args.limit:
        frames = frames[:args.limit]
    k = read_intrinsics(args.data)
    checkpoint = resources.find_checkpoint(args.checkpoint)
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu")
    t0 = time.perf_counter()
    rows = evaluate(rec, frames, k)
    found = [r for r in rows if r["found"]]
    methods = sorted({key[len("angles "):] for r in rows for key in r if key.startswith("angles ")})
    positions = sorted({key[len("position "):] for r in rows for key in r if key.startswith("position ")})
    poses = np.array([fr["pose"] for fr in frames])
    distances = np.array([np.linalg.norm(fr["sellion"]) for fr in frames])
    out: Dict[str, Any] = {
        "command": "python benchmarks/bench_face_pose.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": str(args.data), "checkpoint": _shown(checkpoint), "frames": len(rows),
        "sweep": {"max_abs_yaw_deg": round(float(np.abs(poses[:, 0]).max()), 1),
                  "max_abs_pitch_deg": round(float(np.abs(poses[:, 1]).max()), 1),
                  "max_abs_roll_deg": round(float(np.abs(poses[:, 2]).max()), 1),
                  "distance_m": [round(float(distances.min()), 2), round(float(distances.max()), 2)]},
        "faces_found": len(found), "found_pct": round(100.0 * len(found) / max(len(rows), 1), 1),
        "alignment": {m: sum(r.get("alignment") == m for r in found) for m in {r.get("alignment") for r in found}},
        "targets": {"position_cm_at_1m": TARGET_CM_AT_1M, "position_pct_of_distance_to_3m": TARGET_PCT,
                    "yaw_deg": TARGET_YAW_DEG, "for_abs_yaw_up_to_deg": MAX_ABS_YAW},
        "position": {name: summarise_position(rows, f"position {name}") for name in positions},
        "orientation": {name: summarise_angles(rows, f"angles {name}") for name in methods},
        "pose_ms_per_face": _stats([r["pose_ms"] for r in found], 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(yaml.safe_dump(out, sort_keys=False, width=120))
    if args.rows:
        out["rows"] = rows
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
