"""Stable face ids across frames (greedy IoU tracking) and per-face score smoothing.

The paper (Ni et al., IEEE TCDS 2023) classifies each frame independently
(Section III); a robot needs to follow the same person over time, so the node
associates each frame's face boxes with the previous tracks by
intersection-over-union, greedily from the best-overlapping pair down, and
optionally smooths each track's class scores with an exponential moving
average (EMA) to damp frame-to-frame flicker of the class probabilities.
ROS-free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..boxes import iou


#: Frames between full-frame detections on video: the node's ``redetect_interval``
#: default, which the bag evaluator shares so offline figures measure what the node
#: publishes (on a 30 s bag, every 5th frame kept 99.4 % detection and 95.0 % accuracy
#: against 100 % and 95.8 % when detecting on every frame).
DEFAULT_REDETECT_INTERVAL = 5
#: The node's tracking defaults (``tracking_iou_threshold``, ``tracking_max_missed``,
#: ``score_smoothing``), shared with the offline stream users the same way.
DEFAULT_IOU_THRESHOLD = 0.3
DEFAULT_MAX_MISSED = 5
DEFAULT_SMOOTHING = 0.0

Box = Tuple[int, int, int, int]


class TrackingError(ValueError):
    """Bad tracker parameters or inputs."""


@dataclass
class Track:
    """One followed face."""

    face_id: str
    box: Box
    scores: Optional[np.ndarray]
    hits: int = 1
    missed: int = 0


@dataclass(frozen=True)
class TrackedFace:
    """Result for one detection of the current frame."""

    face_id: str
    box: Box
    scores: Optional[np.ndarray]  # smoothed when smoothing > 0
    is_new: bool


class FaceTracker:
    """Greedy IoU tracker with optional EMA score smoothing.

    Args:
        iou_threshold: smallest IoU (0..1] that links a box to a track.
        max_missed: frames a track survives without a matching box.
        smoothing: EMA weight of the previous scores in [0, 1); 0 = off.
            ``s_t = smoothing * s_{t-1} + (1 - smoothing) * raw_t``.
        id_prefix: prefix of generated ids (ids are ``<prefix><n>``).

    Raises:
        TrackingError: a parameter is out of range.
    """

    def __init__(self, iou_threshold: float = DEFAULT_IOU_THRESHOLD, max_missed: int = DEFAULT_MAX_MISSED,
                 smoothing: float = DEFAULT_SMOOTHING, id_prefix: str = "face") -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise TrackingError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed < 0:
            raise TrackingError(f"max_missed must be >= 0, got {max_missed}")
        if not 0.0 <= smoothing < 1.0:
            raise TrackingError(f"smoothing must be in [0, 1), got {smoothing}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.smoothing = float(smoothing)
        self.id_prefix = id_prefix
        self.tracks: List[Track] = []
        self._ids = itertools.count(1)
        self.removed: List[str] = []  # ids dropped by the last update

    def reset(self) -> None:
        """Forget all tracks (ids keep counting, so they stay unique)."""
        self.removed = [t.face_id for t in self.tracks]
        self.tracks = []

    def update(self, boxes: Sequence[Box],
               scores: Optional[Sequence[np.ndarray]] = None) -> List[TrackedFace]:
        """Associate this frame's boxes with the tracks.

        Args:
            boxes: ``(x, y, w, h)`` per detected face.
            scores: per-face class scores (same order), or None.

        Returns:
            One :class:`TrackedFace` per box, in the order of ``boxes``.

        Raises:
            TrackingError: ``scores`` length differs from ``boxes``, or a score
                vector's length changes within a track.
        """
        if scores is not None and len(scores) != len(boxes):
            raise TrackingError(f"{len(boxes)} boxes but {len(scores)} score vectors")
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        track_of: dict = {}
        used_tracks: set = set()
        for value, ti, bi in pairs:
            if value < self.iou_threshold:
                break
            if ti in used_tracks or bi in track_of:
                continue
            track_of[bi] = ti
            used_tracks.add(ti)

        out: List[TrackedFace] = []
        new_tracks: List[Track] = []
        for bi, box in enumerate(boxes):
            box = tuple(int(v) for v in box)
            raw = None if scores is None else np.asarray(scores[bi], dtype=np.float32)
            if bi in track_of:
                track = self.tracks[track_of[bi]]
                track.box, track.hits, track.missed = box, track.hits + 1, 0
                track.scores = self._smooth(track.scores, raw)
                out.append(TrackedFace(track.face_id, box, track.scores, False))
            else:
                track = Track(f"{self.id_prefix}{next(self._ids)}", box, raw)
                new_tracks.append(track)
                out.append(TrackedFace(track.face_id, box, raw, True))
        self.removed = []
        kept: List[Track] = []
        for ti, track in enumerate(self.tracks):
            if ti not in used_tracks:
                track.missed += 1
                if track.missed > self.max_missed:
                    self.removed.append(track.face_id)
                    continue
            kept.append(track)
        self.tracks = kept + new_tracks
        return out

    def _smooth(self, prev: Optional[np.ndarray], raw: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return smooth_scores(prev, raw, self.smoothing)


def smooth_scores(prev: Optional[np.ndarray], raw: Optional[np.ndarray], smoothing: float) -> Optional[np.ndarray]:
    """One EMA step of a face's scores: ``smoothing * prev + (1 - smoothing) * raw`` (``raw`` when either is None).

    The one score smoothing of the package: the tracker's tracks and the faces
    another detector follows (:meth:`ExpressionStream.process_faces`) use it alike.

    Raises:
        TrackingError: the score length changed within a face.
    """
    if raw is None or prev is None or smoothing == 0.0:
        return raw
    if prev.shape != raw.shape:
        raise TrackingError(f"score length changed from {prev.shape} to {raw.shape}")
    return (smoothing * prev + (1.0 - smoothing) * raw).astype(np.float32)
