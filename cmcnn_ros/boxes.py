"""Face-box geometry shared by detection, tracking, evaluation and the benchmarks.

Boxes are ``(x, y, w, h)`` in image pixels everywhere in the package.
"""

from __future__ import annotations

from typing import Sequence


def intersection(a: Sequence[float], b: Sequence[float]) -> float:
    """Area shared by two ``(x, y, w, h)`` boxes (0 when disjoint)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when disjoint)."""
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def intersection_over_smaller(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection of two ``(x, y, w, h)`` boxes over the smaller one's area (1 when one holds the other)."""
    smaller = min(a[2] * a[3], b[2] * b[3])
    return float(intersection(a, b) / smaller) if smaller > 0 else 0.0
