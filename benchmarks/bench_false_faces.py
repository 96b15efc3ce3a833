"""False faces: detections the landmark model rejects, on people-free pictures, the pose sweep and real faces.

Issue 20, section 3: a BlazeFace detection whose FaceMesh pass finds no
plausible face used to be kept, aligned from the detector's own eye keypoints
(``alignment: keypoints``). This script measures, in one run, that rule
("before": every such candidate kept) against the checkpoint's rule ("after":
a candidate is kept only if its detector score is above
``blazeface_keep_unconfirmed_above``), with the front end the node builds from
the shipped checkpoint (``Recognizer``: the checkpoint's preprocessing
parameters, detector, FaceMesh aligner and face finder):

* false faces on every people-free picture that ships with scikit-image
  (``skimage/data``) and matplotlib (``mpl-data/sample_data``): as one image,
  and as the node sees a still scene (``redetect_interval`` frames: a full
  detection, then local searches around what it found);
* the same pictures at 0.5-2x, mirrored and turned by +-20 deg (more
  non-faces for the score distribution; no picture is written);
* faces found on the 600-frame pose sweep of ``bench_detection.py`` (its
  frames and its IoU >= 0.4 match rule, imported from it) and the extra faces;
* optionally FER2013 test faces (``--fer2013``): real faces the mesh may reject;
* the detector scores of the mesh-rejected candidates on faces and on
  non-faces, and what each threshold would keep: what the default is chosen by.

Pictures with people in them are left out, decided by looking: see
:data:`EXCLUDED`.

Usage::

    python benchmarks/bench_false_faces.py --root data/sweep --fer2013 ../shared/data/fer2013 \\
        --json benchmarks/results/false_faces_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from bench_detection import MATCH_IOU, read_sweep  # the sweep and its match rule have one home
from cmcnn_ros.atomic_io import atomic_open
from cmcnn_ros.boxes import iou
from cmcnn_ros.inference import Recognizer
from cmcnn_ros.inference.tracking import DEFAULT_REDETECT_INTERVAL
from cmcnn_ros.model.checkpoint import load_checkpoint
from cmcnn_ros.preprocessing import PreprocessingParams
from cmcnn_ros.resources import find_checkpoint
from cmcnn_ros.tools import configure_logging

logger = logging.getLogger("bench_false_faces")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff")

#: Shipped pictures that are not people-free or cannot hold a face, decided by looking at each.
EXCLUDED: Dict[str, str] = {
    "skimage/astronaut.png": "a person: Eileen Collins' portrait (the package's real-face test picture)",
    "skimage/camera.png": "a person: the cameraman (his face is found, a true face)",
    "skimage/no_time_for_that_tiny.gif": "a person: a 24-frame, 25x14 px clip of a woman speaking",
    "skimage/multipage.tif": "two 15x10 px test pages: smaller than any face the detector looks for (24 px)",
    "skimage/multipage_rgb.tif": "two 10x10 px float test pages: smaller than any face the detector looks for",
    "matplotlib/grace_hopper.jpg": "a person: Grace Hopper's portrait",
}

#: Bars for the rejected candidates' detector score: kept when the score is above (0: all, 1: none).
THRESHOLDS = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)

#: Variants of each people-free picture: scale, mirrored, turn (deg).
VARIANT_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)
VARIANT_TURNS = (0.0, -20.0, 20.0)


def picture_files() -> List[Tuple[str, Path]]:
    """Every image file that ships with ``skimage.data`` and matplotlib's ``sample_data``, as (name, path)."""
    import matplotlib
    import skimage.data

    folders = {"skimage": Path(skimage.data.__file__).parent,
               "matplotlib": Path(matplotlib.get_data_path()) / "sample_data"}
    return [(f"{source}/{path.relative_to(folder).as_posix()}", path)
            for source, folder in folders.items() for path in sorted(folder.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES]


def read_picture(path: Path) -> np.ndarray:
    """A shipped picture as the node would get it: ``uint8`` BGR, or grey."""
    import skimage.io

    image = skimage.io.imread(path)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{path}: {image.dtype} {image.shape} is not one 8-bit picture")
    if image.ndim == 3:
        # The detector ignores a bgra8 frame's alpha too; drop it the same way.
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGR)
    return image


def people_free_pictures() -> Dict[str, np.ndarray]:
    files = picture_files()
    pictures = {}
    for name, path in files:
        if name in EXCLUDED:
            logger.info("left out %s: %s", name, EXCLUDED[name])
        else:
            pictures[name] = read_picture(path)
    missing = sorted(set(EXCLUDED) - {name for name, _ in files})
    if missing:
        logger.warning("excluded pictures this install does not ship: %s", missing)
    return pictures


def variants(pictures: Dict[str, np.ndarray]) -> Iterator[Tuple[str, np.ndarray]]:
    """Each picture scaled, mirrored and turned (reflected borders: no straight edge is added)."""
    for name, image in pictures.items():
        for scale in VARIANT_SCALES:
            scaled = cv2.resize(image, None, fx=scale, fy=scale,
                                interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            for mirror in (False, True):
                flipped = np.ascontiguousarray(scaled[:, ::-1]) if mirror else scaled
                for turn in VARIANT_TURNS:
                    h, w = flipped.shape[:2]
                    out = flipped if not turn else cv2.warpAffine(
                        flipped, cv2.getRotationMatrix2D((w / 2.0, h / 2.0), turn, 1.0), (w, h),
                        borderMode=cv2.BORDER_REFLECT)
                    yield f"{name} x{scale:g}{' mirrored' if mirror else ''} turned {turn:g}", out


def face_records(faces: Sequence[Any], truth: Optional[Sequence[float]] = None) -> List[Dict[str, Any]]:
    """One record per kept face: detector score, alignment path and, given a true box, the IoU with it."""
    out = []
    for f in faces:
        rec: Dict[str, Any] = {"score": round(float(f.detection_score), 4), "alignment": f.alignment,
                               "box": [int(v) for v in f.box]}
        if truth is not None:
            rec["iou"] = round(float(iou(f.box, truth)), 3)
        out.append(rec)
    return out


def run_images(recognizers: Dict[str, Recognizer], images: Iterator[Tuple[str, np.ndarray]],
               video: Optional[Dict[str, Recognizer]] = None) -> Dict[str, Any]:
    """Faces each rule keeps on face-free images: as one image and, with ``video``, as a still scene."""
    out: Dict[str, Any] = {}
    for name, image in images:
        row: Dict[str, Any] = {rule: face_records(rec.preprocessor.process(image))
                               for rule, rec in recognizers.items()}
        for rule, rec in (video or {}).items():
            rec.face_finder.reset()
            # A full detection, then the local searches around what it kept: a still scene on the node.
            row[f"{rule}_video_faces_per_frame"] = [len(rec.recognize(image).faces)
                                                    for _ in range(rec.face_finder.interval)]
        out[name] = row
    return out


def run_sweep(recognizers: Dict[str, Recognizer], frames: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per sweep frame, each rule's kept faces with their IoU against the true box."""
    rows = []
    t0 = time.perf_counter()
    for i, fr in enumerate(frames):
        truth = [float(v) for v in fr["box"]]
        rows.append({rule: face_records(rec.preprocessor.process(fr["colour"]), truth)
                     for rule, rec in recognizers.items()})
        if (i + 1) % 100 == 0:
            logger.info("sweep: %d / %d frames, %.0f s", i + 1, len(frames), time.perf_counter() - t0)
    return rows


def run_real_faces(recognizers: Dict[str, Recognizer], root: Path, usage: str, limit: int) -> List[Dict[str, Any]]:
    """Per FER2013 face, framed as the trainer frames it, each rule's kept detections and which is the face.

    A FER2013 picture holds one face filling the 48 px crop, so a detection
    whose centre lies in the crop's box is that face (``iou`` 1, else 0): the
    crop's box (hair, background) is no detector framing to match by IoU.
    """
    from cmcnn_training.datasets import load_dataset

    data = load_dataset("fer2013", root, usage=usage)
    n = min(len(data), limit) if limit else len(data)
    rows = []
    t0 = time.perf_counter()
    for i in range(n):
        sample = data[i]
        x, y, w, h = sample.box
        row = {}
        for rule, rec in recognizers.items():
            faces = face_records(rec.preprocessor.process(sample.colour))
            for f in faces:
                cx, cy = f["box"][0] + f["box"][2] / 2.0, f["box"][1] + f["box"][3] / 2.0
                f["iou"] = 1.0 if (x <= cx <= x + w and y <= cy <= y + h) else 0.0
            row[rule] = faces
        rows.append(row)
        if (i + 1) % 1000 == 0:
            logger.info("FER2013 %s: %d / %d faces, %.0f s", usage, i + 1, n, time.perf_counter() - t0)
    return rows


def _is_face(f: Dict[str, Any]) -> bool:
    return f["iou"] >= MATCH_IOU


def _kept(f: Dict[str, Any], bar: float) -> bool:
    """Whether the old rule's face ``f`` survives the bar ``bar`` (the preprocessing's own test)."""
    return f["alignment"] != "keypoints" or f["score"] > bar


def faces_summary(rows: List[Dict[str, Any]], rule: str) -> Dict[str, Any]:
    found = sum(any(_is_face(f) for f in r[rule]) for r in rows)
    paths: Dict[str, int] = {}
    for r in rows:
        for f in r[rule]:
            paths[f["alignment"]] = paths.get(f["alignment"], 0) + 1
    return {"frames": len(rows), "faces_found": found, "found_pct": round(100.0 * found / max(len(rows), 1), 2),
            "extra_faces": sum(not _is_face(f) for r in rows for f in r[rule]), "alignment_of_kept": paths}


def false_summary(images: Dict[str, Any], rule: str) -> Dict[str, Any]:
    per = {name: [f["alignment"] for f in row[rule]] for name, row in images.items() if row[rule]}
    out = {"images": len(images), "false_faces": sum(len(v) for v in per.values()), "false_faces_by_image": per}
    key = f"{rule}_video_faces_per_frame"
    if any(key in row for row in images.values()):
        out["video_frames"] = sum(len(row[key]) for row in images.values())
        out["video_false_faces"] = sum(sum(row[key]) for row in images.values())
        out["video_false_faces_by_image"] = {name: row[key] for name, row in images.items() if any(row[key])}
    return out


def _scores(scores: List[float]) -> Dict[str, Any]:
    a = np.sort(np.array(scores))
    return {"n": int(len(a)), **({"min": float(a[0]), "p50": round(float(np.median(a)), 4), "max": float(a[-1])}
                                 if len(a) else {})}


def candidates(non_faces: Dict[str, Dict[str, Any]], faces: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """The old rule's mesh-rejected detections on faces and non-faces, their scores, and what each bar keeps."""
    rejected_non_faces = {src: sorted(({"where": name, "score": f["score"]} for name, row in rows.items()
                                       for f in row["before"] if f["alignment"] == "keypoints"),
                                      key=lambda c: c["score"]) for src, rows in non_faces.items()}
    rejected_faces, extra_rejected, confirmed = {}, {}, {}
    for src, rows in faces.items():
        rejected_faces[src] = sorted(({"where": f"{src} {i}", "score": f["score"], "iou": f["iou"]}
                                      for i, r in enumerate(rows) for f in r["before"]
                                      if f["alignment"] == "keypoints" and _is_face(f)), key=lambda c: c["score"])
        extra_rejected[src] = sorted(f["score"] for r in rows for f in r["before"]
                                     if f["alignment"] == "keypoints" and not _is_face(f))
        confirmed[src] = _scores([f["score"] for r in rows for f in r["before"]
                                  if f["alignment"] != "keypoints" and _is_face(f)])
    table = []
    for bar in THRESHOLDS:
        row: Dict[str, Any] = {"keep_above": bar}
        for src, rows in non_faces.items():
            row[f"false_faces_{src}"] = sum(_kept(f, bar) for r in rows.values() for f in r["before"])
        for src, rows in faces.items():
            row[f"faces_found_{src}"] = sum(any(_is_face(f) and _kept(f, bar) for f in r["before"]) for r in rows)
            row[f"extra_faces_{src}"] = sum(not _is_face(f) and _kept(f, bar) for r in rows for f in r["before"])
        table.append(row)
    return {"rejected_by_mesh_on_non_faces": rejected_non_faces,
            "rejected_by_mesh_on_non_faces_scores": _scores([c["score"] for v in rejected_non_faces.values()
                                                             for c in v]),
            "rejected_by_mesh_on_faces": rejected_faces,
            "rejected_by_mesh_on_faces_scores": _scores([c["score"] for v in rejected_faces.values() for c in v]),
            "rejected_by_mesh_beside_the_face": extra_rejected,
            "mesh_confirmed_face_scores": confirmed,
            "by_bar": table}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="weights whose preprocessing is measured (default: the shipped models/cmcnn_default.pt)")
    p.add_argument("--root", type=Path, default=Path("data/sweep"),
                   help="the pose sweep, a cmcnn-synth folder (README: Benchmarks, face detection)")
    p.add_argument("--frames", type=int, default=0, help="only the first N sweep frames (0 = all)")
    p.add_argument("--fer2013", type=Path, default=None,
                   help="also FER2013 faces (fer2013.csv[.gz] or its folder): real faces the mesh may reject")
    p.add_argument("--fer-usage", default="PublicTest", help="FER2013 Usage rows to run")
    p.add_argument("--fer-limit", type=int, default=0, help="only the first N FER2013 faces (0 = all)")
    p.add_argument("--no-variants", action="store_true", help="skip the scaled, mirrored and turned pictures")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    cv2.setNumThreads(1)
    path = find_checkpoint(args.checkpoint)
    loaded = load_checkpoint(path, map_location="cpu")
    after = PreprocessingParams.from_checkpoint(loaded.preprocessing)
    rules = {"before": after.replace(blazeface_keep_unconfirmed_above=0.0), "after": after}
    logger.info("%s: detector %s, blazeface_min_score %.2f; a mesh-rejected detection is kept above score %.2f "
                "(before: 0, every one)", path, after.detector, after.blazeface_min_score,
                after.blazeface_keep_unconfirmed_above)

    def build(params: PreprocessingParams, interval: int) -> Recognizer:
        # What Recognizer.from_checkpoint builds, with the rule under test in its preprocessing.
        return Recognizer(loaded.model, loaded.class_names, params, device="cpu", source=str(path),
                          redetect_interval=interval)

    single = {rule: build(params, 1) for rule, params in rules.items()}
    video = {rule: build(params, DEFAULT_REDETECT_INTERVAL) for rule, params in rules.items()}
    t0 = time.perf_counter()
    pictures = people_free_pictures()
    non_faces = {"pictures": run_images(single, iter(pictures.items()), video)}
    if not args.no_variants:
        non_faces["picture_variants"] = run_images(single, variants(pictures))
    logger.info("people-free pictures: %.0f s", time.perf_counter() - t0)
    frames = read_sweep(args.root)
    faces = {"sweep": run_sweep(single, frames[: args.frames] if args.frames else frames)}
    if args.fer2013 is not None:
        faces["fer2013"] = run_real_faces(single, args.fer2013, args.fer_usage, args.fer_limit)
    summary = {
        "checkpoint": os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path),
        "blazeface_min_score": after.blazeface_min_score,
        "blazeface_keep_unconfirmed_above": {"before": 0.0, "after": after.blazeface_keep_unconfirmed_above},
        "excluded_pictures": EXCLUDED,
        "people_free": {src: {rule: false_summary(rows, rule) for rule in rules} for src, rows in non_faces.items()},
        "faces": {src: {rule: faces_summary(rows, rule) for rule in rules} for src, rows in faces.items()},
        "candidates": candidates(non_faces, faces),
    }
    logger.info("results:\n%s", json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.json, "w") as fh:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                       "pictures": non_faces["pictures"]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
