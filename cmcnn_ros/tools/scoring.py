"""Scoring predicted faces against a labelled bag's ground truth: one scorer for
``cmcnn-bag-evaluate`` (the stream run offline) and ``cmcnn-demo`` (the live
node's ``EmotionArray`` messages), so both report the same figures.

Predicted faces are matched to the ground-truth faces of a frame by box IoU
(optimal one-to-one assignment, threshold ``iou_threshold``). Reported:

* detection: ground-truth faces, matched, missed, false positives;
* accuracy over matched faces (the paper's protocol, Ni et al., IEEE TCDS
  2023, Section IV, classifies detected, aligned faces) and end-to-end
  accuracy over all ground-truth faces (a missed face counts as wrong);
* per-class accuracy and the confusion matrix (rows true, columns predicted);
* per-stage latency p50/p95 in ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.boxes import iou
from cmcnn_ros.tools.bag_io import FrameLabels, GroundTruthFace

Box = Tuple[int, int, int, int]
#: Smallest IoU between a predicted and a true box that counts as the same face.
DEFAULT_IOU = 0.3


class ScoringError(ValueError):
    """Bad scorer settings (e.g. an IoU threshold outside (0, 1])."""


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
            raise ScoringError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
        self.class_names = list(class_names)
        self._index = {c: i for i, c in enumerate(self.class_names)}
        self.iou_threshold = iou_threshold
        self.confusion = np.zeros((len(self.class_names),) * 2, dtype=np.int64)
        self.records: List[FaceRecord] = []
        self.frames = 0
        self.frames_labelled = 0
        self.false_positives = 0
        self.unknown_truth: Dict[str, int] = {}
        self.predicted_counts: Dict[str, int] = dict.fromkeys(self.class_names, 0)
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
