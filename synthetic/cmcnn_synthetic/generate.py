"""``cmcnn-synth``: write the synthetic RGB-D expression benchmark to disk.

Produces the generic Kinect folder layout of ``docs/ARCHITECTURE.md``
(``labels.csv``, ``colour/``, ``depth/``, ``intrinsics.yaml``) so the same
loader serves the synthetic set and the Kinect databases of the paper's
Section IV-A. The design mirrors BU-3DFE: every subject poses every class at
four intensities (neutral once per intensity slot, so classes stay
balanced); subjects are seeded identities, so ``--subject-offset`` gives
disjoint, reproducible subject ranges for subject-independent splits.

Each frame shows one face with a random pose, distance, light and room;
frame ``i`` of a run depends only on ``--seed`` and ``i``.

Two switches widen what a training set shows (issue 20: the synthetic half
must teach expressions, not this renderer's recipes):

``--variation wide``
    per-subject expression recipes (components dropped, re-weighted and
    added, asymmetry, blends with a neighbouring class or neutral,
    intensity jitter; the defining action units kept) and wider skin, hair,
    light, room and colour-camera ranges (:mod:`.expressions`,
    :mod:`.appearance`, :mod:`.scene`).
``--depth-noise kinect``
    a Kinect v1 depth sensor drawn per frame: correlated noise growing with
    z^2, lateral smoothing, wider silhouette holes, more and larger dropout
    blobs (:func:`cmcnn_synthetic.scene.kinect_depth`).

Both default to ``classic``: the fixed recipes and the fixed Kinect-like
sensor that earlier data sets, the tests and the demo were made with (the
same flags still write byte-identical frames).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from cmcnn_ros.atomic_io import atomic_open, write_bytes_atomic
from cmcnn_ros.classes import BASIC_EXPRESSIONS, EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.tools import configure_logging

from .expressions import INTENSITY_LEVELS, VARIATIONS
from .render import DEPTH_NOISE_MODELS, CameraSpec
from .scene import FaceSpec, PoseRange, RenderedFrame, random_face_spec, render_frame

logger = logging.getLogger(__name__)

LABELS_HEADER = ("colour", "depth", "label", "subject", "intensity", "box_x", "box_y", "box_w", "box_h")
TRUTH_HEADER = ("colour", "subject", "label", "intensity", "yaw_deg", "pitch_deg", "roll_deg", "nose_x_m",
                "nose_y_m", "nose_z_m", "eye1_x", "eye1_y", "eye2_x", "eye2_y", "frame_seed",
                "light_azimuth_deg", "light_elevation_deg", "light_intensity", "ambient",
                "sellion_x_m", "sellion_y_m", "sellion_z_m")


_FILE_MODE = 0o644


class GenerateError(ValueError):
    """Invalid generator options or output location."""


@dataclass(frozen=True)
class Job:
    """One frame to render."""

    index: int
    subject_id: int
    label: str
    intensity: int
    seed: int


@dataclass(frozen=True)
class RenderOptions:
    """Settings shared by all frames of a run."""

    camera: CameraSpec
    poses: PoseRange
    image_format: str = "jpg"
    jpeg_quality: int = 95
    variation: str = "classic"
    depth_noise: str = "classic"


def subject_name(subject_id: int) -> str:
    """Subject id as written to ``labels.csv`` (stable, sortable)."""
    return f"S{subject_id:05d}"


def frame_seed(run_seed: int, index: int) -> int:
    """Seed of frame ``index`` of a run (independent of worker count and order)."""
    return int(np.random.default_rng([0x5E7, int(run_seed), int(index)]).integers(2**62))


def plan_jobs(subjects: Sequence[int], classes: Sequence[str], per_class: int,
              intensities: Sequence[int] = INTENSITY_LEVELS, frames: Optional[int] = None,
              seed: int = 0) -> List[Job]:
    """The frames of a run.

    Args:
        subjects: subject ids.
        classes: class names (``neutral`` gets ``len(intensities) * per_class``
            frames per subject, at intensity 0, so classes are balanced).
        per_class: frames per subject x class x intensity.
        intensities: levels to render (subset of 1..4).
        frames: if given, draw this many (subject, class, intensity) triples
            at random instead of the full design.
        seed: run seed.

    Raises:
        GenerateError: empty or invalid design.
    """
    if not subjects:
        raise GenerateError("no subjects to render")
    if per_class < 1:
        raise GenerateError(f"--per-class must be >= 1, got {per_class}")
    bad = [i for i in intensities if i not in INTENSITY_LEVELS]
    if bad or not intensities:
        raise GenerateError(f"intensities must be a non-empty subset of {INTENSITY_LEVELS}, got {list(intensities)}")
    unknown = [c for c in classes if c not in EXPRESSIONS_WITH_NEUTRAL]
    if unknown:
        raise GenerateError(f"unknown classes {unknown}; expected names from {EXPRESSIONS_WITH_NEUTRAL}")
    cells: List[Tuple[int, str, int]] = []
    for s in subjects:
        for c in classes:
            if c == "neutral":
                cells.extend((s, c, 0) for _ in range(len(intensities) * per_class))
            else:
                cells.extend((s, c, i) for i in intensities for _ in range(per_class))
    if frames is not None:
        if frames < 1:
            raise GenerateError(f"--frames must be >= 1, got {frames}")
        rng = np.random.default_rng([0xF2A, seed])
        picks = rng.integers(0, len(cells), frames)
        cells = [cells[int(p)] for p in picks]
    return [Job(index=i, subject_id=s, label=c, intensity=k, seed=frame_seed(seed, i))
            for i, (s, c, k) in enumerate(cells)]


def render_job(job: Job, options: RenderOptions) -> RenderedFrame:
    """Render the single-face frame of a job (random pose, distance, light, room)."""
    rng = np.random.default_rng([0x10B, job.seed])
    spec = random_face_spec(rng, job.subject_id, job.label, job.intensity, options.camera, options.poses)
    return render_frame([spec], camera=options.camera, seed=job.seed, variation=options.variation,
                        depth_noise=options.depth_noise)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, file_mode=_FILE_MODE)   # datasets are shared: readable whatever the umask


def _encode(ext: str, image: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise GenerateError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


def _write_job(job: Job, options: RenderOptions, root: Path) -> Tuple[List[str], List[str]]:
    frame = render_job(job, options)
    face = frame.faces[0]
    stem = f"{job.index:06d}_{subject_name(job.subject_id)}_{job.label}_{job.intensity}"
    if options.image_format == "jpg":
        colour_rel = f"colour/{stem}.jpg"
        data = _encode(".jpg", frame.colour, (cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality))
    else:
        colour_rel = f"colour/{stem}.png"
        data = _encode(".png", frame.colour, (cv2.IMWRITE_PNG_COMPRESSION, 3))
    depth_rel = f"depth/{stem}.png"
    _atomic_write_bytes(root / colour_rel, data)
    _atomic_write_bytes(root / depth_rel, _encode(".png", frame.depth_mm, (cv2.IMWRITE_PNG_COMPRESSION, 3)))
    x, y, w, h = face.box
    row = [colour_rel, depth_rel, job.label, subject_name(job.subject_id), str(job.intensity),
           str(x), str(y), str(w), str(h)]
    (e1x, e1y), (e2x, e2y) = face.eyes
    truth = [colour_rel, subject_name(job.subject_id), job.label, str(job.intensity),
             f"{face.yaw_deg:.2f}", f"{face.pitch_deg:.2f}", f"{face.roll_deg:.2f}",
             *(f"{c:.4f}" for c in face.nose_tip_m), f"{e1x:.2f}", f"{e1y:.2f}", f"{e2x:.2f}", f"{e2y:.2f}",
             str(job.seed),
             # the light is drawn per frame; kept so accuracy can be broken down by illumination
             f"{frame.light.azimuth_deg:.1f}", f"{frame.light.elevation_deg:.1f}", f"{frame.light.intensity:.2f}",
             f"{frame.light.ambient:.3f}",
             # REP-155's face frame origin, what the node's face position estimates
             *(f"{c:.4f}" for c in face.sellion_m)]
    return row, truth


# Worker-process state (set by the pool initializer).
_WORKER: Dict[str, object] = {}


def _init_worker(options: RenderOptions, root: str, single_thread_gl: bool) -> None:
    if single_thread_gl:
        # One llvmpipe thread per worker: N workers on N cores without
        # oversubscription (read when the first GL context is created).
        os.environ["LP_NUM_THREADS"] = "1"
    _WORKER["options"] = options
    _WORKER["root"] = Path(root)


def _worker_job(job: Job) -> Tuple[List[str], List[str]]:
    return _write_job(job, _WORKER["options"], _WORKER["root"])  # type: ignore[arg-type]


def _atomic_write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with atomic_open(path, "w", file_mode=_FILE_MODE, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_intrinsics(path: Path, camera: CameraSpec) -> None:
    """``intrinsics.yaml`` of the generic Kinect layout (atomic)."""
    text = (f"fx: {camera.fx}\nfy: {camera.fy}\ncx: {camera.cx}\ncy: {camera.cy}\n"
            f"width: {camera.width}\nheight: {camera.height}\ndepth_unit_m: 0.001\n")
    _atomic_write_bytes(path, text.encode())


def generate_dataset(root: Path, jobs: Sequence[Job], options: RenderOptions, workers: int = 1,
                     progress: bool = True) -> Dict[str, float]:
    """Render jobs into ``root`` and write ``labels.csv`` last.

    Returns:
        ``{"frames": n, "seconds": s, "frames_per_s": r}``.

    Raises:
        GenerateError: bad worker count.
    """
    if workers < 1:
        raise GenerateError(f"--workers must be >= 1, got {workers}")
    from cmcnn_ros.tools import progress_bar

    (root / "colour").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    rows: List[List[str]] = []
    truths: List[List[str]] = []
    start = time.perf_counter()
    bar = progress_bar(total=len(jobs), unit="frame", enabled=progress, desc="cmcnn-synth")
    if workers == 1:
        _init_worker(options, str(root), single_thread_gl=False)
        results: Iterator[Tuple[List[str], List[str]]] = (_worker_job(j) for j in jobs)
        for row, truth in results:
            rows.append(row)
            truths.append(truth)
            bar.update()
    else:
        # spawn: OpenGL contexts must not be inherited through fork.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(options, str(root), True)) as pool:
            for row, truth in pool.imap(_worker_job, jobs, chunksize=4):
                rows.append(row)
                truths.append(truth)
                bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    write_intrinsics(root / "intrinsics.yaml", options.camera)
    _atomic_write_csv(root / "truth.csv", TRUTH_HEADER, truths)
    # labels.csv last: a run interrupted before this point leaves no index
    # that points at missing files.
    _atomic_write_csv(root / "labels.csv", LABELS_HEADER, rows)
    return {"frames": float(len(jobs)), "seconds": seconds, "frames_per_s": len(jobs) / max(seconds, 1e-9)}


# ------------------------------------------------------------------ contact sheet

def contact_sheet(subject_id: int = 0, classes: Sequence[str] = EXPRESSIONS_WITH_NEUTRAL,
                  intensities: Sequence[int] = INTENSITY_LEVELS, tile: int = 148, seed: int = 0,
                  variation: str = "classic", depth_noise: str = "classic") -> np.ndarray:
    """One subject, every class (rows) x intensity (columns), grey crop and depth crop side by side.

    Faces are frontal at 0.8 m under one fixed light so only the expression
    changes (``variation`` picks the subject's recipes and looks,
    ``depth_noise`` the depth sensor). Crops are the ground-truth boxes, as
    the pipeline would see them.

    Returns:
        ``uint8`` grey image.
    """
    from .render import LightSpec
    light = LightSpec(azimuth_deg=20.0, elevation_deg=25.0, intensity=3.0, ambient=0.3)
    label_w = 110
    cols = 2 * len(intensities)
    sheet = np.full((28 + tile * len(classes), label_w + tile * cols), 255, np.uint8)
    for c, lv in enumerate(intensities):
        x = label_w + 2 * c * tile
        cv2.putText(sheet, f"level {lv}: grey | depth", (x + 8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1,
                    cv2.LINE_AA)
    for r, label in enumerate(classes):
        y = 28 + r * tile
        cv2.putText(sheet, label, (6, y + tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 0, 1, cv2.LINE_AA)
        levels = [0] if label == "neutral" else list(intensities)
        for c, lv in enumerate(levels):
            spec = FaceSpec(subject_id, label, lv, position_m=(0.0, 0.0, 0.8), expression_seed=seed)
            frame = render_frame([spec], light=light, seed=seed, variation=variation, depth_noise=depth_noise)
            x0, y0, w, h = frame.faces[0].box
            grey = cv2.cvtColor(frame.colour, cv2.COLOR_BGR2GRAY)[y0:y0 + h, x0:x0 + w]
            depth = frame.depth_mm[y0:y0 + h, x0:x0 + w].astype(np.float32)
            valid = depth > 0
            near = float(np.percentile(depth[valid], 2)) if valid.any() else 0.0
            # Depth shown face-relative: nearer is brighter over a 9 cm span, holes black.
            dv = np.where(valid, np.clip(1.0 - (depth - near) / 90.0, 0, 1) * 215 + 40, 0).astype(np.uint8)
            x = label_w + 2 * c * tile
            sheet[y:y + tile, x:x + tile] = cv2.resize(grey, (tile, tile), interpolation=cv2.INTER_AREA)
            sheet[y:y + tile, x + tile:x + 2 * tile] = cv2.resize(dv, (tile, tile), interpolation=cv2.INTER_NEAREST)
    return sheet


def write_contact_sheet(path: Path, subject_id: int = 0, classes: Sequence[str] = EXPRESSIONS_WITH_NEUTRAL,
                        intensities: Sequence[int] = INTENSITY_LEVELS, variation: str = "classic",
                        depth_noise: str = "classic") -> None:
    """Render :func:`contact_sheet` and save it as PNG (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(subject_id, classes, intensities, variation=variation, depth_noise=depth_noise)
    _atomic_write_bytes(path, _encode(".png", sheet, (cv2.IMWRITE_PNG_COMPRESSION, 9)))


# ------------------------------------------------------------------ CLI

def _parse_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    return w, h


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmcnn-synth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (generic Kinect layout)")
    p.add_argument("--subjects", type=int, default=10, help="number of subjects")
    p.add_argument("--subject-offset", type=int, default=0,
                   help="first subject id (disjoint ranges = disjoint subjects)")
    p.add_argument("--per-class", type=int, default=1, help="frames per subject x class x intensity")
    p.add_argument("--frames", type=int, default=None, help="draw this many frames at random from the design instead")
    p.add_argument("--classes", type=int, choices=(6, 7), default=7, help="6 basic expressions, or 7 with neutral")
    p.add_argument("--intensities", type=int, nargs="+", default=list(INTENSITY_LEVELS), help="levels 1..4")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="colour image format")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--size", type=_parse_size, default=(640, 480), help="image size WxH (intrinsics scale with it)")
    p.add_argument("--distance", type=float, nargs=2, default=(0.6, 2.0), metavar=("MIN", "MAX"),
                   help="face distance range in metres")
    p.add_argument("--yaw", type=float, default=20.0, help="max |yaw| in degrees")
    p.add_argument("--pitch", type=float, default=15.0, help="max |pitch| in degrees")
    p.add_argument("--roll", type=float, default=15.0, help="max |roll| in degrees")
    p.add_argument("--variation", choices=VARIATIONS, default="classic",
                   help="classic: every subject poses the same EMFACS recipes (gains 0.75-1.25) under the "
                        "original light/skin/room ranges; wide: per-subject recipes (secondary components "
                        "dropped/re-weighted/added, asymmetry, blends with a neighbouring class or neutral, "
                        "intensity jitter; defining action units kept) and wider skin, light, room and "
                        "colour-camera ranges, so a model learns expressions rather than the recipes")
    p.add_argument("--depth-noise", choices=DEPTH_NOISE_MODELS, default="classic",
                   help="classic: the fixed Kinect v1-like depth model (noise 1.5 mm at 1 m growing with z^2, "
                        "disparity steps, edge/shadow/grazing holes, dropouts); kinect: its parameters drawn "
                        "per frame (noise 1.2-2.4 mm at 1 m, partly spatially correlated, lateral smoothing, "
                        "wider silhouette holes, 0.2-3 %% dropout in larger blobs)")
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write a contact sheet PNG")
    p.add_argument("--contact-subject", type=int, default=None, help="subject of the contact sheet (default: first)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that has labels.csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _camera_for(size: Tuple[int, int]) -> CameraSpec:
    base = CameraSpec()
    w, h = size
    if w * base.height != h * base.width:
        raise GenerateError(f"--size must keep the 4:3 aspect of the Kinect camera, got {w}x{h}")
    return base.scaled(w / base.width)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-synth``; prints a JSON summary on success.

    Returns:
        Exit status (0 ok, 2 bad arguments).
    """
    configure_logging()
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        if args.out is None and args.contact_sheet is None:
            raise GenerateError("give --out (dataset folder) and/or --contact-sheet PNG")
        if args.subjects < 1 or args.subject_offset < 0:
            raise GenerateError("--subjects must be >= 1 and --subject-offset >= 0")
        if not 1 <= args.jpeg_quality <= 100:
            raise GenerateError(f"--jpeg-quality must be 1..100, got {args.jpeg_quality}")
        classes = EXPRESSIONS_WITH_NEUTRAL if args.classes == 7 else BASIC_EXPRESSIONS
        camera = _camera_for(args.size)
        poses = PoseRange(yaw_deg=args.yaw, pitch_deg=args.pitch, roll_deg=args.roll,
                          distance_m=(args.distance[0], args.distance[1]))
        if not 0.3 < poses.distance_m[0] <= poses.distance_m[1]:
            raise GenerateError(f"--distance must satisfy 0.3 < MIN <= MAX, got {list(args.distance)}")
        subjects = list(range(args.subject_offset, args.subject_offset + args.subjects))
        summary: Dict[str, object] = {}
        if args.out is not None:
            root: Path = args.out
            if (root / "labels.csv").exists() and not args.overwrite:
                raise GenerateError(f"{root / 'labels.csv'} exists; pass --overwrite to replace the dataset")
            jobs = plan_jobs(subjects, classes, args.per_class, args.intensities, args.frames, args.seed)
            options = RenderOptions(camera=camera, poses=poses, image_format=args.format,
                                    jpeg_quality=args.jpeg_quality, variation=args.variation,
                                    depth_noise=args.depth_noise)
            stats = generate_dataset(root, jobs, options, workers=args.workers, progress=not args.no_progress)
            summary.update(out=str(root), subjects=[subject_name(subjects[0]), subject_name(subjects[-1])],
                           classes=list(classes), workers=args.workers, variation=args.variation,
                           depth_noise=args.depth_noise, **stats)
        if args.contact_sheet is not None:
            sid = args.contact_subject if args.contact_subject is not None else subjects[0]
            write_contact_sheet(args.contact_sheet, sid, classes, args.intensities, variation=args.variation,
                                depth_noise=args.depth_noise)
            summary["contact_sheet"] = str(args.contact_sheet)
    except ValueError as exc:   # GenerateError and the package's other ValueError subclasses
        parser.print_usage(sys.stderr)
        print(f"cmcnn-synth: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
