"""Evaluation metrics for the offline protocols (paper Section IV-A, IV-E).

The paper reports the average accuracy of ten-fold subject-independent
cross-validation (IV-A) and per-database confusion matrices (IV-E, Fig. 6).
This module computes exactly those numbers from label/prediction index
arrays, plus the breakdowns this project needs on top: per-class recall, per
emotion intensity (BU-3DFE levels, synthetic intensities) and per value band
of any extra per-sample column (pose angles, lighting) that a dataset's
labels file carries. The JSON and the confusion-matrix PNG are written by
the runtime package's :func:`cmcnn_ros.atomic_io.write_json_atomic` and
:func:`cmcnn_ros.plots.plot_confusion_matrix`, which the bag evaluator shares.

Everything here is plain numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


class MetricsError(ValueError):
    """Inputs to a metric are inconsistent (shape, range, empty)."""


# ---------------------------------------------------------------------------
# Core metrics
# ---------------------------------------------------------------------------

def _as_index_array(values: Sequence[int] | np.ndarray, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricsError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise MetricsError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise MetricsError(
            f"{name} holds class indices outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    return arr


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of samples with true class ``t`` predicted as ``p``.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices, same length.
        num_classes: number of classes (matrix side).

    Raises:
        MetricsError: lengths differ, indices out of range or not integers.
    """
    if num_classes < 1:
        raise MetricsError(f"num_classes must be >= 1, got {num_classes}")
    t = _as_index_array(y_true, "y_true", num_classes)
    p = _as_index_array(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise MetricsError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions; NaN for empty input."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise MetricsError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return float(np.mean(t == p)) if t.size else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class recall (diagonal / row sum); NaN for a class with no samples."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise MetricsError(f"confusion matrix must be square, got shape {cm.shape}")
    rows = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(cm) / np.where(rows > 0, rows, 1), np.nan)


@dataclass
class GroupAccuracy:
    """Accuracy of one subgroup (an intensity level, a pose band, ...)."""

    accuracy: float
    count: int

    def to_dict(self) -> Dict[str, Any]:
        return {"accuracy": self.accuracy, "count": self.count}


@dataclass
class EvaluationMetrics:
    """All numbers of one evaluation (one fold, or one checkpoint on one set)."""

    class_names: List[str]
    accuracy: float
    count: int
    per_class: Dict[str, float]
    confusion: np.ndarray
    per_intensity: Dict[str, GroupAccuracy] = field(default_factory=dict)
    per_group: Dict[str, Dict[str, GroupAccuracy]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "count": self.count,
            "class_names": list(self.class_names),
            "per_class": dict(self.per_class),
            "per_intensity": {k: v.to_dict() for k, v in self.per_intensity.items()},
            "per_group": {col: {k: v.to_dict() for k, v in bands.items()}
                          for col, bands in self.per_group.items()},
            "confusion_matrix": np.asarray(self.confusion).tolist(),
        }


def _group_accuracy(correct: np.ndarray, keys: Sequence[Any]) -> Dict[str, GroupAccuracy]:
    out: Dict[str, GroupAccuracy] = {}
    keys_arr = np.asarray([str(k) for k in keys], dtype=object)
    for key in sorted(set(keys_arr.tolist()), key=_natural_key):
        mask = keys_arr == key
        out[key] = GroupAccuracy(float(correct[mask].mean()), int(mask.sum()))
    return out


def _natural_key(s: str) -> tuple:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


# Columns whose magnitude matters, not their sign (a 30 degree turn left is as
# hard as one to the right).
_SIGNED_ANGLE_COLUMNS = ("yaw", "pitch", "roll")


def band_labels(values: Sequence[Any], column: str, bands: int = 3) -> Optional[List[str]]:
    """Split the values of one extra column into named bands for a breakdown.

    Numeric columns are cut into ``bands`` quantile bands (of ``|value|`` for
    angle-like columns named yaw/pitch/roll, so the top band is the pose
    extreme); the top band's label ends with ``"(extreme)"``. Non-numeric columns
    are used as categories as they are. Missing values (empty/None/NaN) get the
    label ``"missing"``.

    Returns:
        One label per value, or None when the column carries no variation.
    """
    raw = list(values)
    nums: List[Optional[float]] = []
    numeric = True
    for v in raw:
        if v is None or (isinstance(v, str) and v.strip() == ""):
            nums.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            numeric = False
            break
        nums.append(None if math.isnan(f) else f)
    if not numeric:
        labels = ["missing" if v is None or str(v).strip() == "" else str(v) for v in raw]
        return labels if len(set(labels)) > 1 else None
    present = np.array([x for x in nums if x is not None], dtype=np.float64)
    if present.size == 0:
        return None
    use_abs = any(a in column.lower() for a in _SIGNED_ANGLE_COLUMNS)
    mag = np.abs(present) if use_abs else present
    if np.unique(mag).size < 2:
        return None
    edges = np.unique(np.quantile(mag, np.linspace(0, 1, bands + 1)))
    prefix = "|{}|".format(column) if use_abs else column
    labels = []
    n_bands = len(edges) - 1
    for x in nums:
        if x is None:
            labels.append("missing")
            continue
        m = abs(x) if use_abs else x
        i = int(np.clip(np.searchsorted(edges, m, side="right") - 1, 0, n_bands - 1))
        name = f"{prefix} in [{edges[i]:.3g}, {edges[i + 1]:.3g}]"
        if i == n_bands - 1:
            name += " (extreme)"
        labels.append(name)
    return labels


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str],
                    intensities: Optional[Sequence[Optional[int]]] = None,
                    extra_columns: Optional[Mapping[str, Sequence[Any]]] = None) -> EvaluationMetrics:
    """Accuracy, per-class recall, confusion, per intensity and per extra-column band.

    Args:
        y_true: true class indices into ``class_names``.
        y_pred: predicted class indices.
        class_names: names of the classes, index order.
        intensities: optional per-sample intensity (None/negative = unknown).
        extra_columns: optional per-sample values of extra label columns
            (e.g. ``yaw``, ``light``), each broken down by :func:`band_labels`.

    Raises:
        MetricsError: inconsistent lengths or class indices.
    """
    names = [str(c) for c in class_names]
    cm = confusion_matrix(y_true, y_pred, len(names))
    t, p = np.asarray(y_true), np.asarray(y_pred)
    correct = (t == p).astype(np.float64)
    pc = per_class_accuracy(cm)
    result = EvaluationMetrics(
        class_names=names, accuracy=accuracy(t, p), count=int(t.size),
        per_class={n: float(a) for n, a in zip(names, pc)}, confusion=cm)
    if intensities is not None:
        ints = list(intensities)
        if len(ints) != t.size:
            raise MetricsError(f"intensities has {len(ints)} entries for {t.size} samples")
        keys = ["unknown" if i is None or (isinstance(i, (int, np.integer)) and i < 0) else str(int(i))
                for i in ints]
        if any(k != "unknown" for k in keys):
            result.per_intensity = _group_accuracy(correct, keys)
    for column, values in (extra_columns or {}).items():
        vals = list(values)
        if len(vals) != t.size:
            raise MetricsError(f"extra column {column!r} has {len(vals)} entries for {t.size} samples")
        labels = band_labels(vals, column)
        if labels is not None:
            result.per_group[column] = _group_accuracy(correct, labels)
    return result


def summarise_folds(folds: Sequence[EvaluationMetrics]) -> Dict[str, Any]:
    """Mean ± std over folds (the paper's "average accuracy") and the pooled confusion.

    The std is the population std over folds (ddof=0), as usually reported for
    k-fold CV; the pooled accuracy weights every test sample equally.

    Raises:
        MetricsError: no folds, or folds with different class lists.
    """
    if not folds:
        raise MetricsError("no folds to summarise")
    names = folds[0].class_names
    for f in folds:
        if f.class_names != names:
            raise MetricsError("folds were evaluated with different class lists")
    accs = np.array([f.accuracy for f in folds], dtype=np.float64)
    pooled = np.sum([np.asarray(f.confusion) for f in folds], axis=0)
    pc = np.array([[f.per_class[n] for n in names] for f in folds], dtype=np.float64)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        per_class_mean = np.nanmean(pc, axis=0)
    total = int(pooled.sum())
    # Intensity breakdown pooled over folds: every test sample counts once.
    hits: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    for f in folds:
        for key, g in f.per_intensity.items():
            hits[key] = hits.get(key, 0.0) + g.accuracy * g.count
            counts[key] = counts.get(key, 0) + g.count
    per_intensity = {k: {"accuracy": hits[k] / counts[k], "count": counts[k]}
                     for k in sorted(counts, key=_natural_key)}
    return {
        "folds": len(folds),
        "accuracy_mean": float(np.nanmean(accs)),
        "accuracy_std": float(np.nanstd(accs)),
        "accuracy_per_fold": accs.tolist(),
        "accuracy_pooled": float(np.trace(pooled) / total) if total else float("nan"),
        "per_class_mean": {n: float(a) for n, a in zip(names, per_class_mean)},
        "per_class_pooled": {n: float(a) for n, a in zip(names, per_class_accuracy(pooled))},
        "per_intensity_pooled": per_intensity,
        "confusion_matrix_pooled": pooled.tolist(),
        "class_names": list(names),
    }


class _quiet_nanmean:
    """Silence numpy's 'Mean of empty slice' for classes absent from every fold."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
