"""BlazeFace full-range face detector (the default; Viola-Jones stays as ``detector: haar``).

The paper (Section III-B 1) detects faces with Viola-Jones, which misses
turned, rolled and distant faces (on our renders 2,625 of 4,480 frames). This
is MediaPipe's full-range BlazeFace (dense, 192x192 input, one anchor per
4-pixel cell: 2304 anchors), decoded as MediaPipe's SSD calculators do, with
its six keypoints (eyes, nose tip, mouth, ear tragions) and weighted
non-maximum suppression. The frame is letterboxed into the input (or a
region of interest is, for tracking), so every box maps back exactly.

Box framing: BlazeFace boxes run from the brows to the mouth. The box this
detector reports is mapped to the whole-face framing the package uses
everywhere else (forehead to chin, the landmark crop's box; measured on
renders: width x1.22, height x1.41, centre 0.055 box heights higher), so
ground-truth matching, tracking and the Haar path agree on what a face box is.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..parallel import Lanes
from .detector import Box, FaceDetection, NmsRule, size_filter
from .images import Image, as_frame
from .params import PreprocessingError, PreprocessingParams
from .tflite import TFLiteModel

MODEL_FILE = "face_detection_full_range.tflite"
#: Anchor grid of the full-range model: 48x48 cells of 4 px, fixed-size anchors.
_GRID = 48
_KEYPOINTS = 6
# Box mapping from BlazeFace framing to the whole-face framing (see module docstring).
_BOX_SCALE = (1.22, 1.41)
_BOX_SHIFT_UP = 0.055


def _anchors() -> np.ndarray:
    """Anchor centres ``(2304, 2)`` in normalised input coordinates, row-major like MediaPipe."""
    c = (np.arange(_GRID, dtype=np.float32) + 0.5) / _GRID
    cy, cx = np.meshgrid(c, c, indexing="ij")
    return np.stack([cx.ravel(), cy.ravel()], axis=1)


def _iou_matrix(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each ``(x0, y0, x1, y1)`` row of ``boxes`` with ``box``."""
    ix = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted NMS: each cluster (IoU > threshold) is averaged, weighted by score.

    Not the package's greedy :func:`~.detector.suppress_overlaps` on purpose:
    this is the decoding step of the model's raw anchors, where one face
    fires many neighbouring anchors, and MediaPipe's decoder averages them
    (box and keypoints); the box mapping (module docstring) was measured on
    its output. Detections of the whole frame and the tiles are
    then merged by the greedy rule (:attr:`BlazeFaceDetector.nms`).

    Args:
        boxes: ``(N, 4)`` ``x0, y0, x1, y1``.
        keypoints: ``(N, K, 2)``.
        scores: ``(N,)``.
        threshold: IoU above which two boxes are one face.

    Returns:
        ``[(box, keypoints, score)]`` best first; the score is the cluster's best.
    """
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = _iou_matrix(boxes, boxes[i]) > threshold
        members = np.flatnonzero(overlap & remaining)
        members = np.union1d(members, [i])
        w = scores[members][:, None]
        out.append(((boxes[members] * w).sum(0) / w.sum(), (keypoints[members] * w[:, :, None]).sum(0) / w.sum(),
                    float(scores[i])))
        remaining[members] = False
    return out


class BlazeFaceDetector:
    """Full-range BlazeFace on a letterboxed frame or a square region of it (``detector: blazeface``).

    A :class:`~.detector.FaceDetector` whose boxes come with keypoints.
    Thread-safe: LiteRT runs one interpreter per calling thread.

    Args:
        params: preprocessing parameters (``blazeface_min_score``,
            ``blazeface_nms_iou``, ``blazeface_keep_unconfirmed_above``,
            ``min_face_size``, ``max_face_size``, ``detector_threads``).
        lanes: threads a full detection's passes (whole frame, tiles) are
            shared out on; same detections for any number.
    """

    has_keypoints = True
    thread_safe = True

    def __init__(self, params: Optional[PreprocessingParams] = None, lanes: Optional[Lanes] = None) -> None:
        self.params = params or PreprocessingParams()
        self.lanes = lanes or Lanes(1)
        self.nms = NmsRule(self.params.blazeface_nms_iou, "iou")
        self.keep_unconfirmed_above = self.params.blazeface_keep_unconfirmed_above
        self.model = TFLiteModel(MODEL_FILE, self.params.detector_threads)
        self.size = self.model.input_size
        self._anchors = _anchors()
        if self.size != 4 * _GRID:
            raise PreprocessingError(f"{MODEL_FILE}: unexpected input size {self.size}, expected {4 * _GRID}")

    def _input_transform(self, shape: Tuple[int, int], roi: Optional[Box]) -> np.ndarray:
        """2x3 frame -> input matrix: the frame (or the square around ``roi``) letterboxed, centred."""
        if roi is None:
            x0, y0, w, h = 0.0, 0.0, float(shape[1]), float(shape[0])
        else:
            x0, y0, w, h = (float(v) for v in roi)
        side = max(w, h)
        s = self.size / side
        cx, cy = x0 + w / 2.0, y0 + h / 2.0
        # Pixel-edge convention: frame edge x0 maps to input edge 0.
        return np.array([[s, 0.0, self.size / 2.0 - s * cx], [0.0, s, self.size / 2.0 - s * cy]])

    def tiles(self, shape: Tuple[int, int]) -> List[Box]:
        """Overlapping square tiles of side ``detect_tile_side`` covering a frame of ``shape`` ``(h, w)``.

        Letterboxed into 192 px, a VGA frame shrinks 3.3x and a face 2.5 m
        away (brows to mouth ~28 px) falls below what the model finds; the
        tiles are searched at 0.5x as well. None for frames that are barely
        larger than a tile.
        """
        side = self.params.detect_tile_side
        h, w = shape
        if side == 0 or max(h, w) < 1.3 * side:
            return []
        def starts(length: int) -> List[int]:
            if length <= side:
                return [0]
            n = int(math.ceil(length / float(side)))
            return [int(round(v)) for v in np.linspace(0, length - side, n)]
        return [(x, y, min(side, w), min(side, h)) for y in starts(h) for x in starts(w)]

    def detect(self, image: Image, roi: Optional[Box] = None,
               size_range: Optional[Tuple[float, float]] = None) -> List[FaceDetection]:
        """Find every face in ``image`` (or in the square around ``roi``).

        Without ``roi`` the whole frame is searched, then each of
        :meth:`tiles` at a finer scale; duplicates are merged keeping the
        best-scoring box.

        Args:
            image: ``uint8`` BGR HxWx3 (best), BGRA or grey HxW frame, or a
                :class:`~.images.Frame` (its RGB copy is shared).
            roi: optional ``(x, y, w, h)`` region in frame pixels to search
                (a tracker's neighbourhood of a previous box); the square
                around it is resampled into the model input, so small faces
                are seen larger than in the whole frame.
            size_range: optional ``(min, max)`` face side in frame pixels
                replacing ``min_face_size`` / ``max_face_size`` (max 0 = any).

        Returns:
            Detections best first, in the whole-face box framing, each with
            its six keypoints in frame pixels.

        Raises:
            PreprocessingError: bad image, roi or size_range.
        """
        rgb = as_frame(image).rgb
        if roi is not None:
            try:
                roi = tuple(float(v) for v in roi)  # type: ignore[assignment]
            except (TypeError, ValueError) as exc:
                raise PreprocessingError(f"roi must be (x, y, w, h) with w, h > 0, got {roi!r}") from exc
            if len(roi) != 4 or roi[2] <= 0 or roi[3] <= 0:
                raise PreprocessingError(f"roi must be (x, y, w, h) with w, h > 0, got {roi!r}")
            return self._detect(rgb, roi, size_range)
        # The whole frame and every tile are independent passes: shared out on the lanes,
        # merged in this fixed order, so the result does not depend on their number.
        passes = self.lanes.map(lambda region: self._detect(rgb, region, size_range),
                                [None] + self.tiles(rgb.shape[:2]))
        return self.nms.suppress([d for found in passes for d in found])

    def _detect(self, rgb: np.ndarray, roi: Optional[Box],
                size_range: Optional[Tuple[float, float]]) -> List[FaceDetection]:
        h_img, w_img = rgb.shape[:2]
        m = self._input_transform((h_img, w_img), roi)  # type: ignore[arg-type]
        if m[0, 0] < 0.5:
            # warpAffine has no area filter: a large shrink aliases, so resize with INTER_AREA.
            inp = _letterbox_area(rgb, m, self.size)
        else:
            inp = cv2.warpAffine(rgb, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        x = inp.astype(np.float32) * (2.0 / 255.0) - 1.0
        outputs = self.model.run(x)
        raw = self.model.output_with_size(outputs, 16)[0]
        logits = self.model.output_with_size(outputs, 1)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
        keep = scores >= self.params.blazeface_min_score
        if not np.any(keep):
            return []
        raw, scores, anchors = raw[keep], scores[keep], self._anchors[keep]
        n = float(self.size)
        cx = raw[:, 0] / n + anchors[:, 0]
        cy = raw[:, 1] / n + anchors[:, 1]
        bw, bh = raw[:, 2] / n, raw[:, 3] / n
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * n
        kps = raw[:, 4:4 + 2 * _KEYPOINTS].reshape(-1, _KEYPOINTS, 2) / n + anchors[:, None, :]
        kps = kps * n
        inv = cv2.invertAffineTransform(m)
        dets: List[FaceDetection] = []
        lo, hi = size_range if size_range is not None else (self.params.min_face_size, self.params.max_face_size)
        for box, kp, score in weighted_nms(boxes, kps, scores, self.nms.max_overlap):
            (x0, y0), (x1, y1) = _apply(inv, np.array([[box[0], box[1]], [box[2], box[3]]]))
            kp_frame = _apply(inv, kp)
            w, h = (x1 - x0) * _BOX_SCALE[0], (y1 - y0) * _BOX_SCALE[1]
            bx, by = (x0 + x1) / 2.0, (y0 + y1) / 2.0 - _BOX_SHIFT_UP * (y1 - y0)
            side = max(w, h)
            if not size_filter(side, lo, hi):
                continue
            full = (int(round(bx - w / 2)), int(round(by - h / 2)), int(round(w)), int(round(h)))
            clipped = _clip_box(full, w_img, h_img)
            if clipped is None:
                continue
            dets.append(FaceDetection(box=clipped, score=score, keypoints=kp_frame.astype(np.float32),
                                      detector_box=(float(x0), float(y0), float(x1 - x0), float(y1 - y0))))
        return dets


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _clip_box(box: Box, w_img: int, h_img: int) -> Optional[Box]:
    x, y, w, h = box
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w_img, x + w), min(h_img, y + h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def _letterbox_area(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Letterbox by an axis-aligned scale+shift ``m`` with area filtering (large frames)."""
    s = float(m[0, 0])
    h, w = rgb.shape[:2]
    # The region of the frame that lands inside the input.
    x0 = max(0, int(math.floor(-m[0, 2] / s)))
    y0 = max(0, int(math.floor(-m[1, 2] / s)))
    x1 = min(w, int(math.ceil((size - m[0, 2]) / s)))
    y1 = min(h, int(math.ceil((size - m[1, 2]) / s)))
    out = np.zeros((size, size, 3), np.uint8)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return out
    dx0, dy0 = int(round(s * x0 + m[0, 2])), int(round(s * y0 + m[1, 2]))
    dw = max(1, min(size - dx0, int(round(s * (x1 - x0)))))
    dh = max(1, min(size - dy0, int(round(s * (y1 - y0)))))
    out[dy0:dy0 + dh, dx0:dx0 + dw] = cv2.resize(rgb[y0:y1, x0:x1], (dw, dh), interpolation=cv2.INTER_AREA)
    return out
