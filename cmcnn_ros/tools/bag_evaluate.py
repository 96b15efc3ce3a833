"""``cmcnn-bag-evaluate``: offline CM-CNN evaluation on a recorded RGB-D rosbag.

No ROS runtime is needed: the bag is read with ``rosbags`` (:mod:`bag_io`),
colour and depth are paired with the node's synchroniser and decoded with the
node's conversions, and every pair goes through the same
:class:`~cmcnn_ros.inference.stream.ExpressionStream` as the live node
(recognizer of Ni et al., IEEE TCDS 2023: Section III-B preprocessing,
III-C/D two-branch network with cross-modality attention fusion; plus the
node's tracking, smoothing and ``redetect_interval``), so the figures are
those of what the node publishes.

Scoring (:mod:`cmcnn_ros.tools.scoring`, shared with ``cmcnn-demo``): faces
matched to the labels topic's ground truth by box IoU; detection rate,
accuracy over matched faces, end-to-end accuracy (a missed face counts as
wrong), per-class accuracy, the confusion matrix (JSON and PNG) and per-stage
latency (decoding plus the recognizer's stages). A bag without labels (a
user's own recording) gets predictions and latency only.

Colour and depth may be raw or ``image_transport``'s compressed transports
(``compressed`` JPEG/PNG, ``compressedDepth`` PNG/RVL), as robots record them;
decoding is part of the ``decode`` latency. A message that cannot be decoded
(truncated, corrupt, unknown format) is skipped with one log line naming the
topic and the reason, and counted in the report (``bad_frames``), as the node
does live.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros import resources
from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.inference.backends import BACKENDS, DEFAULT_BACKEND
from cmcnn_ros.inference.tracking import DEFAULT_REDETECT_INTERVAL, DEFAULT_SMOOTHING
from cmcnn_ros.ros.sync import DEFAULT_SLOP_S
from cmcnn_ros.tools import configure_logging
from cmcnn_ros.ros.conversions import ImageConversionError
from cmcnn_ros.tools.bag_io import (FrameLabels, closest_stamp_gap_s, count_messages, decode_pair,
                                    iter_frame_pairs, open_bag, read_labels, resolve_topics)
from cmcnn_ros.tools.scoring import (DEFAULT_IOU, EvaluationReport, PredictedFace, Scoreboard, ScoringError,
                                     format_report)

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Bad evaluator input (options, checkpoint/bag mismatch)."""


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of :func:`evaluate_bag` (see the CLI for meanings)."""

    colour_topic: Optional[str] = None
    depth_topic: Optional[str] = None
    labels_topic: Optional[str] = None
    use_depth: bool = True
    slop_s: float = DEFAULT_SLOP_S   # the node's sync_slop default
    iou_threshold: float = DEFAULT_IOU
    gt_boxes: bool = False
    max_frames: Optional[int] = None
    every: int = 1
    progress: bool = True


def evaluate_bag(bag: "str | Path", stream: Any, options: EvaluateOptions = EvaluateOptions()) -> Tuple[
        EvaluationReport, Scoreboard]:
    """Run ``stream`` over every synchronised colour/depth pair of ``bag``, as the node would.

    Args:
        bag: rosbag2 folder or ROS 1 bag.
        stream: an :class:`~cmcnn_ros.inference.stream.ExpressionStream`; it is
            reset first, so the bag starts with no tracked face.
        options: :class:`EvaluateOptions`.

    Returns:
        ``(report, scoreboard)``; the scoreboard keeps per-face records (timeline).

    Raises:
        BagError: the bag or its topics are unusable.
        EvaluationError: bad options.
    """
    from . import progress_bar

    if options.every < 1:
        raise EvaluationError(f"--every must be >= 1, got {options.every}")
    try:
        board = Scoreboard(stream.class_names, options.iou_threshold)
    except ScoringError as exc:
        raise EvaluationError(str(exc)) from None
    stream.reset()
    with open_bag(bag) as reader:
        topics = resolve_topics(reader, options.colour_topic, options.depth_topic, options.labels_topic,
                                use_depth=options.use_depth)
        labels = read_labels(reader, topics.labels)
        if options.gt_boxes and not labels:
            raise EvaluationError("--gt-boxes needs a labels topic, and this bag has none")
        n_colour = count_messages(reader, topics.colour)
        total = n_colour if options.max_frames is None else min(n_colour, options.max_frames * options.every)
        logger.info("bag %s: colour %s (%s), depth %s (%s), labels %s (%d colour frames, %d labelled)", bag,
                    topics.colour, topics.colour_transport, topics.depth or "none", topics.depth_transport or "-",
                    topics.labels or "none", n_colour, len(labels))
        paired = unpaired = 0
        bad: Dict[str, int] = {}
        bar = progress_bar(total=total // options.every, desc="evaluating", unit="frame", enabled=options.progress)
        try:
            for i, pair in enumerate(iter_frame_pairs(reader, topics, options.slop_s, labels)):
                if i % options.every:
                    continue
                if options.max_frames is not None and board.frames >= options.max_frames:
                    break
                t0 = time.perf_counter()
                try:
                    colour, depth_m = decode_pair(pair, topics)
                except ImageConversionError as exc:
                    # As the node: one line per new reason, the frame skipped and counted.
                    reason = str(exc)
                    if reason not in bad:
                        logger.warning("skipping bad frame (stamp %.3f): %s", pair.stamp_ns / 1e9, reason)
                    bad[reason] = bad.get(reason, 0) + 1
                    bar.update(1)
                    continue
                decode_ms = 1e3 * (time.perf_counter() - t0)
                boxes = [f.box for f in pair.labels.faces] if options.gt_boxes and pair.labels else None
                if options.gt_boxes and pair.labels is None:
                    boxes = []
                t1 = time.perf_counter()
                res = stream.process(colour, depth_m, depth_scale=1.0, boxes=boxes)
                total_ms = decode_ms + 1e3 * (time.perf_counter() - t1)
                timings = {"decode": decode_ms, **{k: float(v) for k, v in res.timings.items()},
                           "decode+recognize": total_ms}
                preds = [PredictedFace(box=f.box, expression=f.expression, confidence=f.confidence,
                                       face_id=f.face_id) for f in res.faces]
                board.add_frame(pair.stamp_ns, pair.labels, preds, timings)
                paired += pair.depth is not None
                unpaired += pair.depth is None
                bar.update(1)
        finally:
            bar.close()
        if board.frames == 0:
            if bad:
                raise EvaluationError(f"nothing evaluated: all {sum(bad.values())} frames read were bad, e.g. "
                                      f"{next(iter(bad))}")
            raise EvaluationError(_nothing_evaluated(reader, topics, options, n_colour, len(labels)))
    if bad:
        logger.warning("%d frames skipped as bad (%s)", sum(bad.values()),
                       "; ".join(f"{n} x {reason}" for reason, n in bad.items()))
    if topics.depth is not None and options.every == 1 and options.max_frames is None and paired + sum(
            bad.values()) < n_colour:
        logger.warning("%d of %d colour frames found no depth partner on %s within --slop %.3f s and were "
                       "skipped", n_colour - paired - sum(bad.values()), n_colour, topics.depth, options.slop_s)
    extra = {"bag": str(bag), "topics": asdict(topics), "frames_with_depth": paired,
             "frames_without_depth": unpaired, "colour_frames_in_bag": n_colour,
             "bad_frames": sum(bad.values()), "bad_frame_reasons": dict(bad),
             "iou_threshold": options.iou_threshold, "gt_boxes": options.gt_boxes,
             "slop_s": options.slop_s}
    return board.report(extra), board


def _nothing_evaluated(reader: Any, topics: Any, options: EvaluateOptions, n_colour: int, n_labels: int) -> str:
    """Why an evaluation processed no frame, and what to change."""
    if n_colour == 0:
        return f"nothing evaluated: the colour topic {topics.colour} has no messages in this bag"
    labelled = f" (the bag has {n_labels} labelled frames)" if n_labels else ""
    if topics.depth is not None:
        gap = closest_stamp_gap_s(reader, topics)
        closest = ("the depth topic has no messages" if gap is None
                   else f"the closest colour/depth stamps are {gap:.3f} s apart")
        return (f"nothing evaluated: none of the {n_colour} colour frames on {topics.colour} found a depth "
                f"partner on {topics.depth} within --slop {options.slop_s:.3f} s ({closest}){labelled}; "
                "raise --slop (the node's sync_slop must then be raised too) or evaluate grey + LBP only "
                "with --no-depth")
    return f"nothing evaluated: no frame left after --every {options.every} / --max-frames {options.max_frames}"


def write_outputs(report: EvaluationReport, board: Scoreboard, output_dir: Path, title: str,
                  truth: Optional[Dict[int, FrameLabels]] = None) -> Dict[str, Path]:
    """Write ``report.json``, ``confusion.png`` and ``timeline.png`` into ``output_dir`` (atomically).

    Args:
        truth: all labelled frames (stamp -> labels), for the timeline's true line.
    """
    from cmcnn_ros.plots import plot_confusion_matrix
    from cmcnn_ros.tools.timeline import save_timeline_png

    output_dir.mkdir(parents=True, exist_ok=True)
    out = {"report": output_dir / "report.json"}
    write_json_atomic(out["report"], report.to_dict())
    if report.has_labels:
        out["confusion"] = output_dir / "confusion.png"
        plot_confusion_matrix(np.asarray(report.confusion), report.class_names, out["confusion"],
                              title=f"{title}: confusion (matched faces)")
        out["timeline"] = output_dir / "timeline.png"
        save_timeline_png(board.records, out["timeline"], report.class_names, title=title, truth=truth)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-bag-evaluate",
        description="Evaluate CM-CNN on a recorded RGB-D rosbag offline (no ROS runtime): accuracy, "
                    "per-class accuracy, confusion matrix and per-stage latency.")
    p.add_argument("bag", type=Path, help="rosbag2 folder (MCAP/sqlite3) or ROS 1 .bag")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"checkpoint (default: the shipped {resources.DEFAULT_MODEL})")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/bag_evaluate"),
                   help="report.json, confusion.png, timeline.png go here (default outputs/bag_evaluate)")
    p.add_argument("--colour-topic", default=None,
                   help="colour image topic (default: guessed); a base topic is read raw, else as its "
                        "image_transport 'compressed' topic (BASE/compressed)")
    p.add_argument("--depth-topic", default=None,
                   help="registered depth image topic (default: guessed); a base topic is read raw, else as "
                        "BASE/compressedDepth")
    p.add_argument("--labels-topic", default=None, help="ground-truth std_msgs/String JSON topic")
    p.add_argument("--no-depth", action="store_true", help="ignore depth (grey + LBP only)")
    p.add_argument("--slop", type=float, default=DEFAULT_SLOP_S,
                   help=f"colour/depth pairing tolerance in s (default {DEFAULT_SLOP_S}, the node's sync_slop)")
    p.add_argument("--iou", type=float, default=DEFAULT_IOU, help=f"face match IoU threshold (default {DEFAULT_IOU})")
    p.add_argument("--gt-boxes", action="store_true",
                   help="use the ground-truth boxes instead of face detection (classification only)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many processed frames")
    p.add_argument("--every", type=int, default=1, help="process every N-th frame (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--redetect-interval", type=int, default=DEFAULT_REDETECT_INTERVAL,
                   help="frames between full face detections, as the node's redetect_interval "
                        "(default: the node's, %(default)s; 1 = detect on every frame)")
    p.add_argument("--score-smoothing", type=float, default=DEFAULT_SMOOTHING,
                   help="per-face EMA weight of the previous scores, as the node's score_smoothing "
                        "(default: the node's, %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                   help="what runs the network, as the node's inference_backend (default: the node's, %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_stream(weights: Optional[Path], device: str = "auto", num_threads: Optional[int] = None,
                redetect_interval: int = DEFAULT_REDETECT_INTERVAL, smoothing: float = DEFAULT_SMOOTHING,
                backend: str = DEFAULT_BACKEND) -> Any:
    """The node's :class:`~cmcnn_ros.inference.stream.ExpressionStream` over ``weights`` (None: the default).

    Raises:
        EvaluationError: the checkpoint does not exist.
        ValueError: it is not a valid checkpoint (CheckpointError), or a bad
            device or tracking setting (RecognizerError, TrackingError).
    """
    from cmcnn_ros.inference.stream import ExpressionStream

    try:
        path = resources.find_checkpoint(weights)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    return ExpressionStream.from_checkpoint(path, device=device, num_threads=num_threads,
                                            redetect_interval=redetect_interval, smoothing=smoothing, backend=backend)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-bag-evaluate``."""
    args = get_args_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        stream = load_stream(args.weights, args.device, args.threads, args.redetect_interval, args.score_smoothing,
                             args.backend)
        opts = EvaluateOptions(colour_topic=args.colour_topic, depth_topic=args.depth_topic,
                               labels_topic=args.labels_topic, use_depth=not args.no_depth, slop_s=args.slop,
                               iou_threshold=args.iou, gt_boxes=args.gt_boxes, max_frames=args.max_frames,
                               every=args.every, progress=not args.no_progress)
        report, board = evaluate_bag(args.bag, stream, opts)
    except ValueError as exc:  # BagError, EvaluationError, CheckpointError, ImageConversionError, TrackingError...
        logger.error("%s", exc)
        return 2
    title = f"cmcnn-bag-evaluate {args.bag.name}"
    paths = write_outputs(report, board, args.output_dir, title)
    sys.stdout.write(format_report(report, title) + "\n")
    sys.stdout.write("\nwrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
