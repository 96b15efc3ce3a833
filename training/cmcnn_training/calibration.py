"""Confidence a robot can act on: temperature scaling and its measures (issue 17, section 3).

CM-CNN's scores (eq. 4, and the softmax that the focal loss of eq. 5 trains)
rank classes well but are not probabilities of being right: a network
trained with focal loss, label smoothing and an EMA is usually
under-confident, one trained with cross-entropy over-confident. Temperature
scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides the logits by one scalar ``T`` fitted on held-out faces by
minimising the negative log-likelihood; it never changes the argmax, so
accuracy is untouched. ``T`` is stored in the checkpoint's model
configuration (``ModelConfig.temperature``) and every loader of the
checkpoint (node, CLI, evaluator) publishes ``softmax(s / T)``.

Measures (plain numpy): the expected calibration error over equal-width
confidence bins (top label), the maximum bin gap, the NLL and the Brier
score; :func:`plot_reliability` draws the reliability diagram before and
after.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from cmcnn_ros.atomic_io import write_bytes_atomic

#: Equal-width confidence bins of the ECE (Guo et al. use 15).
ECE_BINS = 15
#: Search range of the temperature (log-spaced bracket); the model config accepts [0.01, 100].
T_RANGE = (0.05, 20.0)


class CalibrationError(ValueError):
    """Inputs to calibration are inconsistent (shapes, labels, too few faces)."""


@dataclass
class CalibrationReport:
    """How well confidences match accuracy on one set of faces."""

    count: int
    accuracy: float
    mean_confidence: float
    ece: float
    max_gap: float
    nll: float
    brier: float
    bin_edges: List[float]
    bin_counts: List[int]
    bin_accuracy: List[Optional[float]]
    bin_confidence: List[Optional[float]]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _check(logp: np.ndarray, labels: np.ndarray) -> None:
    if logp.ndim != 2 or labels.ndim != 1 or len(logp) != len(labels):
        raise CalibrationError(f"scores {logp.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        raise CalibrationError("no faces to calibrate on")
    if labels.min() < 0 or labels.max() >= logp.shape[1]:
        raise CalibrationError(f"labels outside [0, {logp.shape[1]})")


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities as logits: softmax is shift-invariant per row, so ``softmax(log p / T)`` is the
    temperature-scaled distribution of the logits that gave ``p`` (no need to keep the raw logits)."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-30, 1.0))


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax_t(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, 1.0))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimising the NLL of ``softmax(logits / T)`` on these faces.

    The NLL is convex in ``1/T``; a golden-section search over ``log T`` in
    :data:`T_RANGE` finds it to 1e-4 relative without an optimiser dependency.

    Raises:
        CalibrationError: shapes or labels do not match.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    _check(logits, labels)
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def calibration_report(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> CalibrationReport:
    """ECE (top label, equal-width bins), largest bin gap, NLL and Brier score of ``probs``.

    Raises:
        CalibrationError: shapes or labels do not match.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    _check(probs, labels)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    counts, accs, confs = [], [], []
    ece, gap = 0.0, 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        counts.append(n)
        if n == 0:
            accs.append(None)
            confs.append(None)
            continue
        acc_b, conf_b = float(correct[m].mean()), float(conf[m].mean())
        accs.append(acc_b)
        confs.append(conf_b)
        ece += n / len(labels) * abs(acc_b - conf_b)
        gap = max(gap, abs(acc_b - conf_b))
    onehot = np.eye(probs.shape[1])[labels]
    return CalibrationReport(
        count=int(len(labels)), accuracy=float(correct.mean()), mean_confidence=float(conf.mean()), ece=ece,
        max_gap=gap, nll=float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, 1.0)))),
        brier=float(np.mean(np.sum((probs - onehot) ** 2, axis=1))), bin_edges=edges.tolist(),
        bin_counts=counts, bin_accuracy=accs, bin_confidence=confs)


def split_for_fitting(labels: np.ndarray, fraction: float, seed: int) -> tuple:
    """Stratified split of face indices: ``(fit, report)``; ``fraction`` of every class goes to ``fit``."""
    if not 0.0 < fraction < 1.0:
        raise CalibrationError(f"fit fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    fit: List[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fit.extend(idx[: int(round(fraction * len(idx)))].tolist())
    fit_arr = np.array(sorted(fit), np.int64)
    return fit_arr, np.setdiff1d(np.arange(len(labels)), fit_arr)


def plot_reliability(before: CalibrationReport, after: CalibrationReport, path: str | os.PathLike,
                     title: str) -> None:
    """Reliability diagram (accuracy against confidence per bin) before and after, as a PNG written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2))
    for k, (name, rep) in enumerate((("before", before), ("after", after))):
        ax = fig.add_subplot(1, 2, k + 1)
        edges = np.array(rep.bin_edges)
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        acc = np.array([np.nan if a is None else a for a in rep.bin_accuracy])
        ax.bar(centres, np.nan_to_num(acc), width=width * 0.92, color="#4878a8", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        conf = np.array([np.nan if c is None else c for c in rep.bin_confidence])
        ax.plot(conf, acc, "o", color="#c44e52", ms=4, label="mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        if k == 0:
            ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {100 * rep.ece:.1f} %, NLL {rep.nll:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["CalibrationError", "CalibrationReport", "ECE_BINS", "calibration_report", "fit_temperature",
           "log_probs", "nll", "plot_reliability", "softmax_t", "split_for_fitting"]
