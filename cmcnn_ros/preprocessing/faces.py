"""What every face detector returns, and the helpers the detectors share.

Both detectors (the paper's Viola-Jones in :mod:`.detection`, BlazeFace in
:mod:`.blazeface`; Section III-B 1 of Ni et al., IEEE TCDS 2023) report
:class:`FaceDetection` boxes in the same whole-face framing; the tracker and
the preprocessing read them without knowing which detector made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .params import PreprocessingError

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` in full-frame pixels (clipped to the frame), in
            the whole-face framing (forehead to chin) of every detector.
        score: Haar: number of merged cascade hits (``detectMultiScale2``
            ``numDetections``); BlazeFace: probability. Higher is more certain.
        keypoints: BlazeFace only: ``(6, 2)`` frame pixels: image-left eye,
            image-right eye, nose tip, mouth centre, image-left and
            image-right ear tragion.
        detector_box: BlazeFace only: the model's own (brows-to-mouth) box
            ``(x, y, w, h)`` as floats, unclipped; the landmark model's region
            is derived from it as MediaPipe derives it.
    """

    box: Box
    score: float
    keypoints: Optional[np.ndarray] = None
    detector_box: Optional[Tuple[float, float, float, float]] = None


def check_image(image: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` HxWx3 from a BGR, BGRA or grey ``uint8`` frame (detectors that want colour).

    Raises:
        PreprocessingError: not a non-empty uint8 HxW / HxWx1 / HxWx3 / HxWx4 array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        raise PreprocessingError(
            "face detection needs a non-empty uint8 BGR or grey image, got "
            + (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__))
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise PreprocessingError(f"face detection needs HxW, HxWx3 or HxWx4, got shape {image.shape}")


def size_filter(side: float, min_side: float, max_side: float) -> bool:
    """Whether a face of ``side`` pixels is within ``[min_side, max_side]`` (max 0 = no limit)."""
    return side >= min_side and (not max_side or side <= max_side)


def suppress_overlaps(boxes: Sequence[Box], scores: Sequence[float], max_overlap: float) -> List[int]:
    """Greedy non-maximum suppression by intersection over the smaller area.

    Intersection-over-minimum rather than IoU, because the cascade's typical
    duplicate is a small box nested inside a larger one (IoU is low there).

    Args:
        boxes: ``(x, y, w, h)`` boxes.
        scores: one score per box (higher wins; ties go to the larger box).
        max_overlap: a box is dropped when its intersection with a kept box
            exceeds this fraction of the smaller of the two areas.

    Returns:
        Indices of the kept boxes, best first.
    """
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], -boxes[i][2] * boxes[i][3]))
    kept: List[int] = []
    for i in order:
        xi, yi, wi, hi = boxes[i]
        ok = True
        for j in kept:
            xj, yj, wj, hj = boxes[j]
            iw = min(xi + wi, xj + wj) - max(xi, xj)
            ih = min(yi + hi, yj + hj) - max(yi, yj)
            if iw > 0 and ih > 0 and iw * ih > max_overlap * min(wi * hi, wj * hj):
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


__all__ = ["Box", "FaceDetection", "check_image", "size_filter", "suppress_overlaps"]
