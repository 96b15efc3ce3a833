"""``cmcnn-bag-evaluate``: offline CM-CNN evaluation on a recorded RGB-D rosbag.

No ROS runtime is needed: the bag is read with ``rosbags`` (:mod:`bag_io`),
colour and depth are paired with the node's synchroniser and decoded with the
node's conversions, and every pair goes through the same
:class:`~cmcnn_ros.inference.recognizer.Recognizer` as the live node
(Ni et al., IEEE TCDS 2023: Section III-B preprocessing, III-C/D
two-branch network with cross-modality attention fusion, eq. 4 scores).

Predicted faces are matched to the ground-truth faces of the labels topic by
box IoU (optimal one-to-one assignment, threshold ``--iou``). Reported:

* detection: ground-truth faces, matched, missed, false positives;
* accuracy over matched faces (the paper's protocol classifies detected,
  aligned faces) and end-to-end accuracy over all ground-truth faces;
* per-class accuracy and the confusion matrix (rows true, columns
  predicted; JSON and PNG);
* per-stage latency p50/p95 in ms (decoding plus the Recognizer's stages).

A bag without labels (a user's own recording) gets predictions and latency
only. :class:`Scoreboard` is shared with ``cmcnn-demo``, which scores the live
node's ``EmotionArray`` messages the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.inference.tracking import DEFAULT_REDETECT_INTERVAL
from cmcnn_ros.tools import configure_logging
from cmcnn_ros import resources
from cmcnn_ros.inference.tracking import iou
from cmcnn_ros.ros.sync import DEFAULT_SLOP_S
from cmcnn_ros.tools.bag_io import (FrameLabels, GroundTruthFace, closest_stamp_gap_s, count_messages,
                                    decode_pair, iter_frame_pairs, open_bag, read_labels, resolve_topics)

LOGGER = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]
DEFAULT_IOU = 0.3


class EvaluationError(ValueError):
    """Bad evaluator input (options, checkpoint/bag mismatch)."""


@dataclass(frozen=True)
class PredictedFace:
    """The parts of a prediction the scorer needs (from a ``FaceResult`` or an ``Emotion`` message)."""

    box: Box
    expression: str
    confidence: float = 0.0
    face_id: str = ""


@dataclass(frozen=True)
class FaceRecord:
    """One ground-truth face of one frame and what was predicted for it (None = missed)."""

    stamp_ns: int
    subject: str
    true_label: str
    predicted: Optional[str]
    confidence: Optional[float]
    iou: float


def match_faces(truth: Sequence[GroundTruthFace], preds: Sequence[PredictedFace],
                iou_threshold: float = DEFAULT_IOU) -> List[Tuple[int, int, float]]:
    """One-to-one matching of predictions to ground truth by box IoU.

    Maximises the total IoU (Hungarian assignment) and keeps pairs with
    IoU >= ``iou_threshold``.

    Returns:
        ``(truth index, prediction index, IoU)`` triples.
    """
    if not truth or not preds:
        return []
    from scipy.optimize import linear_sum_assignment

    m = np.array([[iou(t.box, p.box) for p in preds] for t in truth], dtype=np.float64)
    rows, cols = linear_sum_assignment(-m)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols) if m[r, c] >= iou_threshold]


def percentile_summary(values_ms: Sequence[float]) -> Dict[str, float]:
    """``{"n", "p50", "p95", "mean", "max"}`` of latencies in ms."""
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "mean": float(v.mean()), "max": float(v.max())}


@dataclass
class EvaluationReport:
    """Everything :class:`Scoreboard` measured; ``to_dict`` is the JSON report."""

    class_names: List[str]
    frames: int
    frames_labelled: int
    gt_faces: int
    matched: int
    missed: int
    false_positives: int
    correct: int
    accuracy: Optional[float]
    end_to_end_accuracy: Optional[float]
    detection_rate: Optional[float]
    per_class: Dict[str, Dict[str, Any]]
    confusion: List[List[int]]
    unknown_truth_labels: Dict[str, int]
    predicted_counts: Dict[str, int]
    latency_ms: Dict[str, Dict[str, float]]
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return self.frames_labelled > 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Scoreboard:
    """Accumulates per-frame matches, the confusion matrix and latencies.

    Args:
        class_names: the model's classes (confusion matrix order).
        iou_threshold: smallest IoU that counts as the same face.
    """

    def __init__(self, class_names: Sequence[str], iou_threshold: float = DEFAULT_IOU) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise EvaluationError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
        self.class_names = list(class_names)
        self._index = {c: i for i, c in enumerate(self.class_names)}
        self.iou_threshold = iou_threshold
        self.confusion = np.zeros((len(self.class_names),) * 2, dtype=np.int64)
        self.records: List[FaceRecord] = []
        self.frames = 0
        self.frames_labelled = 0
        self.false_positives = 0
        self.unknown_truth: Dict[str, int] = {}
        self.predicted_counts: Dict[str, int] = {c: 0 for c in self.class_names}
        self.latency: Dict[str, List[float]] = {}

    def add_latency(self, timings_ms: Dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.latency.setdefault(stage, []).append(float(ms))

    def add_frame(self, stamp_ns: int, truth: Optional[FrameLabels], preds: Sequence[PredictedFace],
                  timings_ms: Optional[Dict[str, float]] = None) -> List[FaceRecord]:
        """Score one processed frame.

        Args:
            stamp_ns: the colour frame's stamp.
            truth: its ground truth, or None for an unlabelled frame.
            preds: faces predicted in it.
            timings_ms: per-stage latency of this frame.

        Returns:
            the :class:`FaceRecord` of every ground-truth face of the frame.
        """
        self.frames += 1
        if timings_ms:
            self.add_latency(timings_ms)
        for p in preds:
            self.predicted_counts[p.expression] = self.predicted_counts.get(p.expression, 0) + 1
        if truth is None:
            return []
        self.frames_labelled += 1
        matches = match_faces(truth.faces, preds, self.iou_threshold)
        by_truth = {ti: (pi, v) for ti, pi, v in matches}
        self.false_positives += len(preds) - len(matches)
        out = []
        for ti, face in enumerate(truth.faces):
            pi, v = by_truth.get(ti, (None, 0.0))
            pred = None if pi is None else preds[pi]
            rec = FaceRecord(stamp_ns=stamp_ns, subject=face.subject, true_label=face.label,
                             predicted=None if pred is None else pred.expression,
                             confidence=None if pred is None else float(pred.confidence), iou=v)
            out.append(rec)
            if pred is None:
                continue
            if face.label not in self._index:
                # e.g. "neutral" truth for a six-class model: not scorable, but counted.
                self.unknown_truth[face.label] = self.unknown_truth.get(face.label, 0) + 1
            elif pred.expression in self._index:
                self.confusion[self._index[face.label], self._index[pred.expression]] += 1
        self.records.extend(out)
        return out

    def report(self, extra: Optional[Dict[str, Any]] = None) -> EvaluationReport:
        gt = len(self.records)
        matched = sum(r.predicted is not None for r in self.records)
        scorable = int(self.confusion.sum())
        correct = int(np.trace(self.confusion))
        per_class = {}
        for i, c in enumerate(self.class_names):
            support = int(self.confusion[i].sum())
            per_class[c] = {"support": support, "correct": int(self.confusion[i, i]),
                            "accuracy": float(self.confusion[i, i] / support) if support else None,
                            "gt_faces": sum(r.true_label == c for r in self.records)}
        return EvaluationReport(
            class_names=self.class_names, frames=self.frames, frames_labelled=self.frames_labelled,
            gt_faces=gt, matched=matched, missed=gt - matched, false_positives=self.false_positives,
            correct=correct, accuracy=correct / scorable if scorable else None,
            end_to_end_accuracy=correct / gt if gt else None,
            detection_rate=matched / gt if gt else None, per_class=per_class,
            confusion=self.confusion.tolist(), unknown_truth_labels=dict(self.unknown_truth),
            predicted_counts=dict(self.predicted_counts),
            latency_ms={k: percentile_summary(v) for k, v in self.latency.items()},
            extra=dict(extra or {}))


def _fmt(x: Optional[float], pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.1f}"


def format_report(rep: EvaluationReport, title: str = "CM-CNN evaluation") -> str:
    """A plain-text table of a report (the CLI's and the demo's console output)."""
    lines = [title, "=" * len(title), f"frames processed: {rep.frames} (labelled: {rep.frames_labelled})"]
    if rep.has_labels:
        lines += [
            f"ground-truth faces: {rep.gt_faces}  matched: {rep.matched}  missed: {rep.missed}  "
            f"false positives: {rep.false_positives}  (detection rate {_fmt(rep.detection_rate)})",
            "",
            f"{'expression':<12}{'gt faces':>10}{'matched':>10}{'correct':>10}{'accuracy':>10}",
        ]
        for c in rep.class_names:
            pc = rep.per_class[c]
            if pc["gt_faces"] == 0 and pc["support"] == 0:
                continue
            lines.append(f"{c:<12}{pc['gt_faces']:>10}{pc['support']:>10}{pc['correct']:>10}"
                         f"{_fmt(pc['accuracy']):>10}")
        scorable = sum(rep.per_class[c]["support"] for c in rep.class_names)
        lines.append(f"{'all':<12}{rep.gt_faces:>10}{scorable:>10}{rep.correct:>10}{_fmt(rep.accuracy):>10}")
        lines.append(f"end-to-end accuracy (missed faces count as wrong): {_fmt(rep.end_to_end_accuracy)}")
        if rep.unknown_truth_labels:
            lines.append(f"ground-truth labels the model cannot output (not scored): {rep.unknown_truth_labels}")
    else:
        lines.append("no ground-truth labels in this bag: predictions and latency only")
        lines.append("predicted: " + ", ".join(f"{k} {v}" for k, v in rep.predicted_counts.items() if v))
    if rep.latency_ms:
        lines += ["", f"{'latency (ms)':<22}{'p50':>8}{'p95':>8}{'mean':>8}{'n':>7}"]
        for stage, s in rep.latency_ms.items():
            lines.append(f"{stage:<22}{_fmt(s['p50'], False):>8}{_fmt(s['p95'], False):>8}"
                         f"{_fmt(s['mean'], False):>8}{s['n']:>7}")
    return "\n".join(lines)


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


def evaluate_bag(bag: "str | Path", recognizer: Any, options: EvaluateOptions = EvaluateOptions()) -> Tuple[
        EvaluationReport, Scoreboard]:
    """Run ``recognizer`` over every synchronised colour/depth pair of ``bag``.

    Args:
        bag: rosbag2 folder or ROS 1 bag.
        recognizer: a :class:`~cmcnn_ros.inference.recognizer.Recognizer`.
        options: :class:`EvaluateOptions`.

    Returns:
        ``(report, scoreboard)``; the scoreboard keeps per-face records (timeline).

    Raises:
        BagError: the bag or its topics are unusable.
        EvaluationError: bad options.
    """
    from tqdm import tqdm

    if options.every < 1:
        raise EvaluationError(f"--every must be >= 1, got {options.every}")
    board = Scoreboard(recognizer.class_names, options.iou_threshold)
    with open_bag(bag) as reader:
        topics = resolve_topics(reader, options.colour_topic, options.depth_topic, options.labels_topic,
                                use_depth=options.use_depth)
        labels = read_labels(reader, topics.labels)
        if options.gt_boxes and not labels:
            raise EvaluationError("--gt-boxes needs a labels topic, and this bag has none")
        n_colour = count_messages(reader, topics.colour)
        total = n_colour if options.max_frames is None else min(n_colour, options.max_frames * options.every)
        LOGGER.info("bag %s: colour %s, depth %s, labels %s (%d colour frames, %d labelled)", bag, topics.colour,
                    topics.depth or "none", topics.labels or "none", n_colour, len(labels))
        paired = unpaired = 0
        bar = tqdm(total=total // options.every, desc="evaluating", unit="frame", disable=not options.progress)
        try:
            for i, pair in enumerate(iter_frame_pairs(reader, topics, options.slop_s, labels)):
                if i % options.every:
                    continue
                if options.max_frames is not None and board.frames >= options.max_frames:
                    break
                t0 = time.perf_counter()
                colour, depth_m = decode_pair(pair)
                decode_ms = 1e3 * (time.perf_counter() - t0)
                boxes = [f.box for f in pair.labels.faces] if options.gt_boxes and pair.labels else None
                if options.gt_boxes and pair.labels is None:
                    boxes = []
                t1 = time.perf_counter()
                res = recognizer.recognize(colour, depth_m, depth_scale=1.0, boxes=boxes)
                total_ms = decode_ms + 1e3 * (time.perf_counter() - t1)
                timings = {"decode": decode_ms, **{k: float(v) for k, v in res.timings.items()},
                           "decode+recognize": total_ms}
                preds = [PredictedFace(box=tuple(int(v) for v in f.box), expression=f.expression,  # type: ignore[misc]
                                       confidence=float(f.confidence)) for f in res.faces]
                board.add_frame(pair.stamp_ns, pair.labels, preds, timings)
                paired += pair.depth is not None
                unpaired += pair.depth is None
                bar.update(1)
        finally:
            bar.close()
        if board.frames == 0:
            raise EvaluationError(_nothing_evaluated(reader, topics, options, n_colour, len(labels)))
    if topics.depth is not None and options.every == 1 and options.max_frames is None and paired < n_colour:
        LOGGER.warning("%d of %d colour frames found no depth partner on %s within --slop %.3f s and were "
                       "skipped", n_colour - paired, n_colour, topics.depth, options.slop_s)
    extra = {"bag": str(bag), "topics": asdict(topics), "frames_with_depth": paired,
             "frames_without_depth": unpaired, "colour_frames_in_bag": n_colour,
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
    from cmcnn_training.metrics import plot_confusion_matrix, write_json_atomic

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-bag-evaluate",
        description="Evaluate CM-CNN on a recorded RGB-D rosbag offline (no ROS runtime): accuracy, "
                    "per-class accuracy, confusion matrix and per-stage latency.")
    p.add_argument("bag", type=Path, help="rosbag2 folder (MCAP/sqlite3) or ROS 1 .bag")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"checkpoint (default: the shipped {resources.DEFAULT_MODEL})")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/bag_evaluate"),
                   help="report.json, confusion.png, timeline.png go here (default outputs/bag_evaluate)")
    p.add_argument("--colour-topic", default=None, help="colour image topic (default: guessed)")
    p.add_argument("--depth-topic", default=None, help="registered depth image topic (default: guessed)")
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
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_recognizer(weights: Path, device: str = "auto", num_threads: Optional[int] = None,
                    redetect_interval: int = 1) -> Any:
    """Load a Recognizer, turning a missing file into an actionable error.

    Raises:
        EvaluationError: the checkpoint does not exist.
        cmcnn_ros.model.checkpoint.CheckpointError: it is not a valid checkpoint.
    """
    from cmcnn_ros.inference.recognizer import Recognizer

    try:
        path = resources.find_checkpoint(weights)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    return Recognizer.from_checkpoint(path, device=device, num_threads=num_threads,
                                      redetect_interval=redetect_interval)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-bag-evaluate``."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        rec = load_recognizer(args.weights, args.device, args.threads, args.redetect_interval)
        opts = EvaluateOptions(colour_topic=args.colour_topic, depth_topic=args.depth_topic,
                               labels_topic=args.labels_topic, use_depth=not args.no_depth, slop_s=args.slop,
                               iou_threshold=args.iou, gt_boxes=args.gt_boxes, max_frames=args.max_frames,
                               every=args.every, progress=not args.no_progress)
        report, board = evaluate_bag(args.bag, rec, opts)
    except ValueError as exc:  # BagError, EvaluationError, CheckpointError, ImageConversionError...
        LOGGER.error("%s", exc)
        return 2
    title = f"cmcnn-bag-evaluate {args.bag.name}"
    paths = write_outputs(report, board, args.output_dir, title)
    sys.stdout.write(format_report(report, title) + "\n")
    sys.stdout.write("\nwrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
