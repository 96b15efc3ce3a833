"""What a face detector is: the :class:`FaceDetector` protocol, its detections, its NMS rule, the factory.

Section III-B 1 of Ni et al. (IEEE TCDS 2023) starts from detected facial
regions (their Viola-Jones detector). Every detector of this package (the
paper's Viola-Jones in :mod:`.haar`, the default BlazeFace in
:mod:`.blazeface`) implements :class:`FaceDetector` and reports
:class:`FaceDetection` boxes in the same whole-face framing, so the tracker,
the aligner and the crops read them without knowing which detector made them.

The ``detector`` setting of :class:`~.params.PreprocessingParams` names one
entry of :data:`~.params.DETECTORS`; :func:`make_detector` builds it. Adding a
detector is one module, one line in that registry and its test
(docs/ARCHITECTURE.md shows an example).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from ..boxes import intersection_over_smaller, iou
from ..parallel import Lanes
from .images import Image
from .params import DETECTORS, PreprocessingError, PreprocessingParams

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` in full-frame pixels (clipped to the frame), in
            the whole-face framing (forehead to chin) of every detector.
        score: higher is more certain, on the detector's own scale (Haar:
            number of merged cascade hits; BlazeFace: probability).
        keypoints: ``(K, 2)`` frame pixels from a detector with keypoints
            (:attr:`FaceDetector.has_keypoints`): first the image-left eye,
            then the image-right eye (the roll the aligner starts from);
            BlazeFace adds nose tip, mouth centre and both ear tragions.
            ``None`` from a detector without keypoints.
        detector_box: the detector's own box ``(x, y, w, h)`` as floats,
            unclipped, when its framing differs from ``box`` (BlazeFace: brows
            to mouth); the landmark model's region is derived from it as
            MediaPipe derives it.
        alignment: an :class:`~.alignment.Alignment` already made for this
            face on this frame (the face finder's FaceMesh pass on a tracked
            face's region); the preprocessing then does not align it again.
    """

    box: Box
    score: float
    keypoints: Optional[np.ndarray] = None
    detector_box: Optional[Tuple[float, float, float, float]] = None
    alignment: Optional[Any] = None


#: How two boxes overlap, by the name an :class:`NmsRule` gives it.
OVERLAP_MEASURES: Dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "iou": iou,
    "smaller": intersection_over_smaller,
}


def suppress_overlaps(boxes: Sequence[Box], scores: Sequence[float], max_overlap: float,
                      measure: str) -> List[int]:
    """Greedy non-maximum suppression: the package's one rule for duplicate boxes.

    Args:
        boxes: ``(x, y, w, h)`` boxes.
        scores: one score per box (higher wins; ties go to the larger box).
        max_overlap: a box is dropped when its overlap with a kept box exceeds this.
        measure: a key of :data:`OVERLAP_MEASURES`: ``"iou"``, or ``"smaller"``
            (intersection over the smaller area).

    Returns:
        Indices of the kept boxes, best first.
    """
    overlap = OVERLAP_MEASURES[measure]
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], -boxes[i][2] * boxes[i][3]))
    kept: List[int] = []
    for i in order:
        if all(overlap(boxes[i], boxes[j]) <= max_overlap for j in kept):
            kept.append(i)
    return kept


@dataclass(frozen=True)
class NmsRule:
    """What one detector counts as a duplicate detection, and how many it keeps of them (one).

    Attributes:
        max_overlap: a detection overlapping a better one by more than this is dropped.
        measure: ``"iou"``, or ``"smaller"`` (intersection over the smaller
            box's area) for a detector whose typical duplicate is a small box
            nested in a larger one, where the IoU is low (the Haar cascade).
    """

    max_overlap: float
    measure: str

    def __post_init__(self) -> None:
        if self.measure not in OVERLAP_MEASURES:
            raise PreprocessingError(f"NMS measure {self.measure!r}: choose from {sorted(OVERLAP_MEASURES)}")

    def suppress(self, detections: Sequence[FaceDetection]) -> List[FaceDetection]:
        """The detections that survive, best first."""
        keep = suppress_overlaps([d.box for d in detections], [d.score for d in detections],
                                 self.max_overlap, self.measure)
        return [detections[i] for i in keep]


@runtime_checkable
class FaceDetector(Protocol):
    """What the preprocessing and the tracker's face finder need from a face detector.

    Built by :func:`make_detector` as ``cls(params, lanes)`` from the
    checkpoint's :class:`~.params.PreprocessingParams` and the caller's
    :class:`~cmcnn_ros.parallel.Lanes` (a detector whose full search splits into
    independent parts, BlazeFace's tiles, may run them on the lanes; one that
    cannot ignores them). Thread-safe only where ``thread_safe`` says so.

    Attributes:
        has_keypoints: its detections carry eye ``keypoints``. The
            preprocessing then aligns faces with FaceMesh, seeded by them (and
            by ``detector_box``); a detector of boxes alone gets the paper's
            Haar eye alignment.
        nms: its duplicate rule, also applied by the tracker's face finder to
            the faces that local searches found again.
        keep_unconfirmed_above: a detection that the landmark model rejects
            (FaceMesh found no plausible face where the keypoints pointed) is
            a candidate, not a face: the preprocessing keeps it only if its
            score, on this detector's scale, is above this. 0 keeps every one;
            a detector without keypoints gets no landmark verdict, so its
            value is unused.
        thread_safe: :meth:`detect` may be called from several threads at once
            (the face finder's searches around several faces run on the lanes).
    """

    has_keypoints: bool
    nms: NmsRule
    keep_unconfirmed_above: float
    thread_safe: bool

    def detect(self, image: Image, roi: Optional[Box] = None,
               size_range: Optional[Tuple[float, float]] = None) -> List[FaceDetection]:
        """Every face in ``image`` (a ``uint8`` BGR, BGRA or grey array, or a :class:`~.images.Frame`), best first.

        ``roi`` ``(x, y, w, h)`` limits the search to that region of the frame
        and ``size_range`` ``(min, max)`` pixels (max 0 = any) replaces
        ``min_face_size`` / ``max_face_size``: the tracker's search around a
        previous box. Raises :class:`~.params.PreprocessingError` on bad input.
        """
        ...


def size_filter(side: float, min_side: float, max_side: float) -> bool:
    """Whether a face of ``side`` pixels is within ``[min_side, max_side]`` (max 0 = no limit)."""
    return side >= min_side and (not max_side or side <= max_side)


def make_detector(params: Optional[PreprocessingParams] = None, lanes: Optional[Lanes] = None) -> FaceDetector:
    """The face detector ``params.detector`` names in :data:`~.params.DETECTORS`, built from ``params``.

    Args:
        params: the preprocessing parameters (defaults if None).
        lanes: threads the detector may run independent parts of a search on (default one: none).

    Raises:
        PreprocessingError: the detector's model or cascade file is missing or corrupt.
    """
    params = params or PreprocessingParams()
    module, _, name = DETECTORS[params.detector].partition(":")
    return getattr(importlib.import_module(module), name)(params, lanes or Lanes(1))


__all__ = ["Box", "FaceDetection", "FaceDetector", "NmsRule", "OVERLAP_MEASURES", "make_detector", "size_filter",
           "suppress_overlaps"]
