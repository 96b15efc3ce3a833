"""The paper's face detector: Viola-Jones on OpenCV's Haar cascades (Section III-B 1, ``detector: haar``).

Ni et al. (IEEE TCDS 2023) detect facial regions with the V-J detector [65].
This uses OpenCV 4.x's bundled Haar cascades (``cv2.data.haarcascades``;
OpenCV 5 ships none, see docs). To keep detection off the critical path it
runs on a downscaled grey frame (``detect_max_side``) and maps boxes back to
full-resolution pixels; overlapping boxes are pruned so every face appears
once. The eye cascade of the Haar alignment path is loaded here too
(:func:`load_cascade`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Tuple

import cv2
import numpy as np

from .detector import Box, FaceDetection, NmsRule
from .images import Image, as_frame
from .params import PreprocessingError, PreprocessingParams

logger = logging.getLogger(__name__)


def load_cascade(name: str) -> cv2.CascadeClassifier:
    """Load a Haar cascade bundled with OpenCV.

    Args:
        name: file name inside ``cv2.data.haarcascades``.

    Raises:
        PreprocessingError: the file is missing or does not load (OpenCV 5
            ships no cascades: install ``opencv-python-headless<5``).
    """
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None or not hasattr(cv2, "CascadeClassifier"):
        raise PreprocessingError(
            f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless 4.x")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise PreprocessingError(f"Haar cascade {path} not found (OpenCV {cv2.__version__})")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise PreprocessingError(f"Haar cascade {path} failed to load")
    return cascade


class HaarFaceDetector:
    """Viola-Jones face detector on a downscaled grey frame (``detector: haar``): boxes, no keypoints.

    A :class:`~.detector.FaceDetector`. Not thread-safe (OpenCV cascades keep
    state): one per thread, and no lanes (one search, no independent parts).
    """

    has_keypoints = False
    # Boxes alone take the Haar eye path, which misses the eyes of many real
    # faces: no landmark verdict to act on, so no detection is dropped by one.
    keep_unconfirmed_above = 0.0
    thread_safe = False

    def __init__(self, params: Optional[PreprocessingParams] = None, lanes: Optional[Any] = None) -> None:
        """Load the cascade named by ``params.face_cascade`` (``lanes`` unused: see the class).

        Raises:
            PreprocessingError: the cascade cannot be loaded.
        """
        self.params = params or PreprocessingParams()
        self._cascade = load_cascade(self.params.face_cascade)
        win = self._cascade.getOriginalWindowSize()
        # Faces smaller than the training window are invisible to the cascade.
        self.window = int(max(win[0], win[1])) if win[0] > 0 else 24
        # The cascade's typical duplicate is a small box nested in a larger one (IoU is low there).
        self.nms = NmsRule(self.params.nms_overlap, "smaller")

    def detection_scale(self, shape: Tuple[int, int], min_face: Optional[int] = None) -> float:
        """Downscale factor used for a frame of ``shape`` ``(h, w)``.

        ``detect_max_side / max(h, w)``, never above 1, but never so small
        that a face of ``min_face`` (default ``min_face_size``) pixels falls
        below the cascade window.
        """
        p = self.params
        min_face = p.min_face_size if min_face is None else min_face
        scale = min(1.0, p.detect_max_side / float(max(shape)))
        return min(1.0, max(scale, (self.window + 1) / float(min_face)))

    def detect(self, image: Image, roi: Optional[Box] = None,
               size_range: Optional[Tuple[float, float]] = None) -> List[FaceDetection]:
        """Find every face in ``image`` (or in the region ``roi`` of it), on its grey version.

        A tracker can keep the per-frame cost low by searching only around a
        previous box (``roi`` about twice its size) for faces of about its
        size (``size_range`` e.g. 0.7x to 1.4x): that skips most of the
        pyramid and most of the frame.

        Args:
            image: ``uint8`` BGR, BGRA or grey full-resolution frame, or a
                :class:`~.images.Frame` (its grey copy is shared).
            roi: optional ``(x, y, w, h)`` region in full-frame pixels to
                search instead of the whole frame; clipped to the frame. It is
                searched at the whole frame's detection scale.
            size_range: optional ``(min, max)`` face side in full-frame pixels
                replacing ``min_face_size`` / ``max_face_size`` (max 0 = no limit).

        Returns:
            Detections in full-frame pixels, best first, not overlapping by
            more than ``params.nms_overlap`` of the smaller box (:attr:`nms`).

        Raises:
            PreprocessingError: ``image`` is not a non-empty uint8 frame, or
                ``roi`` / ``size_range`` is malformed.
        """
        grey = as_frame(image).grey
        p = self.params
        min_face, max_face = p.min_face_size, p.max_face_size
        if size_range is not None:
            try:
                min_face, max_face = (int(round(v)) for v in size_range)
            except (TypeError, ValueError) as exc:
                raise PreprocessingError(f"size_range must be (min, max) pixels, got {size_range!r}") from exc
            if min_face < 1 or (max_face and max_face < min_face):
                raise PreprocessingError(f"size_range {size_range!r} needs 1 <= min and (max == 0 or max >= min)")
        # The scale comes from the whole frame so a ROI is not searched at a
        # finer (costlier) resolution than the frame would be.
        scale = self.detection_scale(grey.shape, min_face)
        logger.debug("detecting faces of %d..%s px at scale %.3f", min_face, max_face or "any", scale)
        ox, oy = 0, 0
        if roi is not None:
            try:
                rx, ry, rw, rh = (int(round(v)) for v in roi)
            except (TypeError, ValueError) as exc:
                raise PreprocessingError(f"roi must be (x, y, w, h), got {roi!r}") from exc
            x0, y0 = max(rx, 0), max(ry, 0)
            x1, y1 = min(rx + rw, grey.shape[1]), min(ry + rh, grey.shape[0])
            if x1 - x0 < min_face or y1 - y0 < min_face:
                return []
            grey = grey[y0:y1, x0:x1]
            ox, oy = x0, y0
        if scale < 1.0:
            small = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        else:
            small = grey
        if p.detect_equalize:
            small = cv2.equalizeHist(small)
        min_side = max(self.window, int(round(min_face * scale)))
        max_side = max(min_side, int(round(max_face * scale))) if max_face else 0
        if min(small.shape) < min_side:
            return []
        rects, neighbours = self._cascade.detectMultiScale2(
            small, scaleFactor=p.scale_factor, minNeighbors=p.min_neighbors,
            minSize=(min_side, min_side), maxSize=(max_side, max_side) if max_side else (0, 0))
        if len(rects) == 0:
            return []
        h_full, w_full = grey.shape
        boxes: List[Box] = []
        for x, y, w, h in np.asarray(rects, dtype=np.float64) / scale:
            x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
            x1, y1 = min(w_full, int(round(x + w))), min(h_full, int(round(y + h)))
            boxes.append((x0 + ox, y0 + oy, x1 - x0, y1 - y0))
        scores = [float(n) for n in np.asarray(neighbours).ravel()]
        return self.nms.suppress([FaceDetection(box=b, score=s) for b, s in zip(boxes, scores)])
