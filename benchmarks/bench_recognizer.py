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
    python benchmarks/bench_recognizer.py --presets weights --faces 1 --redetect-intervals 5 \
        --lbp-bag data/demo_raw        # + what JPEG does to the LBP crops of a bag's faces

Beside the recognizer it times decoding one 640x480 frame from each format a
robot sends (raw ``sensor_msgs/Image``, image_transport's ``compressed`` JPEG /
PNG colour and ``compressedDepth`` PNG / RVL depth, ``16UC1`` and ``32FC1``)
through the node's own conversions, so the cost of a compressed stream can be
read against the recognizer's. With ``--lbp-bag`` it measures what JPEG does
to the LBP input: every face of the bag's frames is cropped from the raw
frame and from the frame after a JPEG round trip (the box found on the raw
frame, so the alignment is the node's own), and the LBP crops compared.

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


def _image(array: np.ndarray, encoding: str):
    from types import SimpleNamespace

    from cmcnn_ros.ros.conversions import array_to_image_fields

    return SimpleNamespace(**array_to_image_fields(array, encoding))


def decode_messages(colour: np.ndarray, depth_mm: np.ndarray) -> Dict[str, tuple]:
    """``name -> (kind, message)`` for one frame in every format the node reads, built as robots send them."""
    from types import SimpleNamespace

    from cmcnn_ros.ros import compressed

    def cmsg(pair):
        return SimpleNamespace(format=pair[0], data=pair[1])

    rgb = np.ascontiguousarray(colour[:, :, ::-1])
    depth_m = depth_mm.astype(np.float32) / 1000
    depth_m[depth_mm == 0] = np.nan
    return {
        "colour raw rgb8": ("colour", _image(rgb, "rgb8")),
        "colour JPEG q95 (compressed)": ("colour", cmsg(compressed.encode_colour(rgb, "rgb8", "jpeg", 95))),
        "colour JPEG q90 (compressed)": ("colour", cmsg(compressed.encode_colour(rgb, "rgb8", "jpeg", 90))),
        "colour PNG (compressed)": ("colour", cmsg(compressed.encode_colour(rgb, "rgb8", "png"))),
        "depth raw 16UC1": ("depth", _image(depth_mm, "16UC1")),
        "depth raw 32FC1": ("depth", _image(depth_m, "32FC1")),
        "depth 16UC1 PNG (compressedDepth)": ("depth", cmsg(compressed.encode_depth(depth_mm, "16UC1", "png"))),
        "depth 16UC1 RVL (compressedDepth)": ("depth", cmsg(compressed.encode_depth(depth_mm, "16UC1", "rvl"))),
        "depth 32FC1 PNG (compressedDepth)": ("depth", cmsg(compressed.encode_depth(depth_m, "32FC1", "png"))),
        "depth 32FC1 RVL (compressedDepth)": ("depth", cmsg(compressed.encode_depth(depth_m, "32FC1", "rvl"))),
    }


def time_decoding(colour: np.ndarray, depth_mm: np.ndarray, runs: int) -> List[Dict[str, object]]:
    """Decode time per 640x480 frame of each format, through the node's conversions (p50/p95 ms, size)."""
    import time

    from cmcnn_ros.ros.conversions import colour_to_bgr, depth_to_metres

    rows = []
    for name, (kind, msg) in decode_messages(colour, depth_mm).items():
        fn = colour_to_bgr if kind == "colour" else depth_to_metres
        fn(msg)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(msg)
            samples.append(1e3 * (time.perf_counter() - t0))
        rows.append({"format": name, "kB": round(len(msg.data) / 1e3, 1),
                     "decode_p50": float(np.percentile(samples, 50)),
                     "decode_p95": float(np.percentile(samples, 95))})
    return rows


def jpeg_lbp_effect(bag: Path, qualities: Sequence[int], every: int = 1) -> List[Dict[str, object]]:
    """What a JPEG round trip of the colour frame does to the LBP crops of a bag's faces.

    Every face found on the raw frame is cropped twice from the frame after a
    JPEG round trip (as the ``compressed`` transport makes it): with the raw
    frame's crop geometry (JPEG alone) and through the whole preprocessing with
    the raw frame's box (FaceMesh then also aligns on the JPEG pixels: what the
    node sees). Reports the share of LBP crop pixels whose code changed, the
    mean |code difference| (0-255) and the grey crop's mean |difference|.
    """
    import cv2

    from cmcnn_ros.preprocessing.alignment import LandmarkAligner, warp_crop
    from cmcnn_ros.preprocessing.faces import check_image
    from cmcnn_ros.preprocessing.params import PreprocessingParams
    from cmcnn_ros.preprocessing.pipeline import FacePreprocessor, to_grey
    from cmcnn_ros.preprocessing.texture import lbp_image
    from cmcnn_ros.ros import compressed
    from cmcnn_ros.tools.bag_io import decode_pair, iter_frame_pairs, open_bag, resolve_topics

    params = PreprocessingParams.from_checkpoint(load_checkpoint(DEFAULT_WEIGHTS).preprocessing)
    pre = FacePreprocessor(params, ("grey", "lbp", "depth"))
    keys = ("same_crop", "pipeline")
    stats = {(q, k): {"changed": [], "lbp": [], "grey": []} for q in qualities for k in keys}

    def crop(frame: np.ndarray, matrix: np.ndarray):
        grey = warp_crop(to_grey(frame), matrix, params.crop_size, cv2.INTER_LINEAR, 0.0, cv2.BORDER_REPLICATE)
        return grey.astype(np.float32), np.rint(lbp_image(grey, params) * 255)

    def add(q: int, key: str, a: tuple, b: tuple) -> None:
        stats[(q, key)]["changed"].append(float(np.mean(a[1] != b[1])))
        stats[(q, key)]["lbp"].append(float(np.mean(np.abs(a[1] - b[1]))))
        stats[(q, key)]["grey"].append(float(np.mean(np.abs(a[0] - b[0]))))

    faces = 0
    with open_bag(bag) as reader:
        topics = resolve_topics(reader)
        for i, pair in enumerate(iter_frame_pairs(reader, topics)):
            if i % every:
                continue
            colour, depth = decode_pair(pair, topics)
            raw_faces = pre.process(colour, depth)
            faces += len(raw_faces)
            matrices = []
            for f in raw_faces:
                aligned = (pre.aligner.align(check_image(colour), f.box) if isinstance(pre.aligner, LandmarkAligner)
                           else pre.aligner.align(to_grey(colour), f.box))
                matrices.append(aligned.matrix)
            for q in qualities:
                jpeg = compressed.decode_colour(*compressed.encode_colour(colour, "bgr8", "jpeg", q))
                for f, m, g in zip(raw_faces, matrices, pre.process(jpeg, depth, boxes=[f.box for f in raw_faces])):
                    add(q, "same_crop", crop(colour, m), crop(jpeg, m))
                    add(q, "pipeline", (f.crops["grey"] * 255, np.rint(f.crops["lbp"] * 255)),
                        (g.crops["grey"] * 255, np.rint(g.crops["lbp"] * 255)))
    return [{"jpeg_quality": q, "crop": k, "faces": faces, "lbp_codes_changed": float(np.mean(v["changed"])),
             "lbp_abs_levels": float(np.mean(v["lbp"])), "grey_abs_levels": float(np.mean(v["grey"]))}
            for (q, k), v in stats.items()]


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
    parser.add_argument("--decode-runs", type=int, default=30, help="runs per format of the decoding table")
    parser.add_argument("--lbp-bag", type=Path, default=None,
                        help="a labelled bag whose faces measure what JPEG does to the LBP crops")
    parser.add_argument("--lbp-qualities", nargs="+", type=int, default=[95, 90, 75])
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
    colour, depth = frames[min(frames)]
    decoding = time_decoding(colour, depth, args.decode_runs)
    one = [r for r in rows if r["faces"] == min(frames)]
    lines += ["", "decoding one 640x480 frame (node conversions), p50/p95 ms"
              + (f"; recognizer total for {min(frames)} face(s): "
                 + ", ".join(f"{r['model']} redetect {r['redetect_interval']} {r['total_p50']:.1f}/{r['total_p95']:.1f}"
                             for r in one) if one else ""),
              f"{'format':>36} {'kB':>7} {'decode':>12}"]
    for r in decoding:
        lines.append(f"{r['format']:>36} {r['kB']:>7.1f} " + f"{r['decode_p50']:.2f}/{r['decode_p95']:.2f}".rjust(12))
    lbp = jpeg_lbp_effect(args.lbp_bag, args.lbp_qualities) if args.lbp_bag else []
    if lbp:
        lines += ["", f"JPEG and the LBP crops ({lbp[0]['faces']} faces of {args.lbp_bag})",
                  f"{'quality':>8} {'crop':>10} {'LBP codes changed':>18} {'LBP |diff| levels':>18} "
                  f"{'grey |diff| levels':>19}"]
        for r in lbp:
            lines.append(f"{r['jpeg_quality']:>8} {r['crop']:>10} {100 * r['lbp_codes_changed']:>17.1f}% "
                         f"{r['lbp_abs_levels']:>18.1f} {r['grey_abs_levels']:>19.2f}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": rows, "decoding": decoding, "jpeg_lbp": lbp,
                                                 "torch": torch.__version__, "cv2": cv2.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
