"""Face-box geometry shared by detection, tracking, evaluation and the benchmarks.

Boxes are ``(x, y, w, h)`` in image pixels everywhere in the package.
"""

from __future__ import annotations

from typing import Sequence


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when disjoint)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0
