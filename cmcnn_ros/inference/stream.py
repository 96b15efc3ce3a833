"""The expression stream: frame after frame of one camera -> final per-face results.

The paper (Ni et al., IEEE TCDS 2023) classifies each frame on its own
(Section III: preprocessing of III-B, network of III-C to III-E, run by
:class:`~cmcnn_ros.inference.recognizer.Recognizer`). A robot watches a
video: it needs the same id for the same person from frame to frame, scores
that do not flicker, cheap detection between full detections, and a way to
start over after a pause. :class:`ExpressionStream` owns those pieces (the
recognizer with its :class:`~cmcnn_ros.inference.recognizer.FaceFinder`, the
:class:`~cmcnn_ros.inference.tracking.FaceTracker` and its smoothing) and
returns what is published: per face a ``face_id``, the box clipped to the
image, the (smoothed) scores and the expression, confidence, valence and
arousal derived from them by :func:`cmcnn_ros.classes.describe_scores`.

The ROS node converts messages, calls :meth:`ExpressionStream.process` and
publishes the result; ``cmcnn-bag-evaluate`` scores the same results, so
offline figures measure what the node publishes. ROS-free.

Behind another face detector (a ROS4HRI robot's ``hri_face_detect``, whose ids
the rest of the robot already uses), :meth:`ExpressionStream.process_faces`
takes that detector's boxes and ids instead: no detection, no tracking, no id
of ours, but the same alignment, crops, network, smoothing and
``min_confidence`` as :meth:`~ExpressionStream.process`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..classes import describe_scores
from ..parallel import DEFAULT_LANES
from .backends import DEFAULT_BACKEND
from .face_pose import CameraIntrinsics
from .recognizer import FaceResult, PreparedFrame, Recognizer
from .tracking import (DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_MISSED, DEFAULT_REDETECT_INTERVAL, DEFAULT_SMOOTHING,
                       FaceTracker, TrackingError, smooth_scores)

Box = Tuple[int, int, int, int]

#: The node's ``min_confidence`` default: every top class is published as it is.
DEFAULT_MIN_CONFIDENCE = 0.0


def check_min_confidence(value: float) -> float:
    """``value`` as a ``min_confidence`` (a probability).

    Raises:
        TrackingError: outside [0, 1].
    """
    if not 0.0 <= value <= 1.0:
        raise TrackingError(f"min_confidence must be in [0, 1], got {value}")
    return float(value)


@dataclass
class StreamFace(FaceResult):
    """One face of one frame as the node publishes it: a :class:`FaceResult` with a track.

    Differs from the recognizer's result in three ways: ``box`` is clipped to
    the image, ``scores`` are smoothed over the track when smoothing is on
    (and ``expression``, ``confidence``, ``valence`` and ``arousal`` are
    derived from them), and the track fields below are set.

    Attributes:
        face_id: stable id of the tracked face (``face<n>``), or the other
            detector's id (:meth:`ExpressionStream.process_faces`).
        is_new: the face started a new track in this frame.
    """

    face_id: str = ""
    is_new: bool = False

    @classmethod
    def from_result(cls, result: FaceResult, **changes: Any) -> "StreamFace":
        """Every field of ``result`` (one added to :class:`FaceResult` too), then ``changes``."""
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(FaceResult)}
        return cls(**{**fields, **changes})

    def to_dict(self) -> Dict[str, object]:
        """JSON-friendly dict: the recognizer's fields plus ``face_id``."""
        return {"face_id": self.face_id, **super().to_dict()}


@dataclass
class StreamResult:
    """All faces of one frame, the ids still tracked and those retired by this frame.

    Attributes:
        faces: one :class:`StreamFace` per face found in the frame.
        tracked_ids: ids of every live track (seen now or missing for at most
            ``max_missed`` frames), the ROS4HRI ``/humans/faces/tracked`` list.
        retired_ids: ids whose track ended with this frame.
        timings: the recognizer's per-stage milliseconds.
    """

    faces: List[StreamFace]
    tracked_ids: List[str]
    retired_ids: List[str]
    timings: Dict[str, float] = field(default_factory=dict)


def clip_box(box: Sequence[float], shape: Tuple[int, int]) -> Box:
    """``(x, y, w, h)`` cut to an image of ``shape`` ``(h, w)`` (a box outside gets size 0)."""
    h, w = int(shape[0]), int(shape[1])
    x, y, bw, bh = (int(v) for v in box)
    x0, y0 = min(max(x, 0), w), min(max(y, 0), h)
    return x0, y0, max(0, min(x + bw, w) - x0), max(0, min(y + bh, h) - y0)


class ExpressionStream:
    """Recognizer + tracker + smoothing over consecutive frames of one camera.

    Args:
        recognizer: the per-frame recognizer (its ``face_finder`` interval sets
            how often the whole frame is searched).
        tracker: the face tracker; its ``smoothing`` is the score EMA.
        min_confidence: a face whose (smoothed) top class is less probable is
            published as ``unknown`` (:func:`~cmcnn_ros.classes.describe_scores`);
            may be changed between frames.

    Raises:
        TrackingError: ``min_confidence`` outside [0, 1].
    """

    def __init__(self, recognizer: Recognizer, tracker: Optional[FaceTracker] = None,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> None:
        self.recognizer = recognizer
        self.tracker = tracker if tracker is not None else FaceTracker()
        self.min_confidence = check_min_confidence(min_confidence)
        # The faces another detector follows (process_faces): its ids -> smoothed scores.
        self._followed: Dict[str, Optional[np.ndarray]] = {}

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: str = "auto", num_threads: Optional[int] = None,
                        redetect_interval: int = DEFAULT_REDETECT_INTERVAL,
                        iou_threshold: float = DEFAULT_IOU_THRESHOLD, max_missed: int = DEFAULT_MAX_MISSED,
                        smoothing: float = DEFAULT_SMOOTHING,
                        min_confidence: float = DEFAULT_MIN_CONFIDENCE, backend: str = DEFAULT_BACKEND,
                        preprocessing_threads: int = DEFAULT_LANES,
                        landmark_tracking: bool = False, flip_tta: bool = False) -> "ExpressionStream":
        """A stream over a checkpoint, with the node's defaults.

        Raises:
            CheckpointError, RecognizerError, BackendError: as :meth:`Recognizer.from_checkpoint`.
            TrackingError: a tracking parameter or ``min_confidence`` is out of range.
        """
        tracker = FaceTracker(iou_threshold, max_missed, smoothing)
        check_min_confidence(min_confidence)   # before the (slow) checkpoint load, like the tracker's
        recognizer = Recognizer.from_checkpoint(path, device=device, num_threads=num_threads,
                                                redetect_interval=redetect_interval, backend=backend,
                                                preprocessing_threads=preprocessing_threads,
                                                landmark_tracking=landmark_tracking, flip_tta=flip_tta)
        return cls(recognizer, tracker, min_confidence)

    @property
    def class_names(self) -> List[str]:
        return self.recognizer.class_names

    def reset(self) -> None:
        """Start over (after a pause): forget the tracks and the boxes the finder searches around.

        Ids keep counting, so an id is never reused. Followed faces
        (:meth:`process_faces`) lose their smoothed scores.
        """
        self.tracker.reset()
        self.recognizer.face_finder.reset()
        self._followed = {}

    def stop_threads(self) -> None:
        """End the recognizer's helper threads (a paused node keeps none); the next frame starts them again."""
        self.recognizer.stop_threads()

    def process(self, colour: np.ndarray, depth: Optional[np.ndarray] = None,
                depth_scale: Optional[float] = None,
                boxes: Optional[Sequence[Sequence[float]]] = None,
                intrinsics: Optional[CameraIntrinsics] = None) -> StreamResult:
        """Recognise, track and smooth one frame: :meth:`finish` of :meth:`prepare`.

        Args:
            colour, depth, depth_scale, boxes, intrinsics: as :meth:`Recognizer.recognize`.

        Raises:
            RecognizerError: the frame is malformed (nothing is tracked then).
            NonFiniteScoresError: the network gave NaN/inf scores (nothing is tracked then).
        """
        return self.finish(self.prepare(colour, depth, depth_scale=depth_scale, boxes=boxes, intrinsics=intrinsics))

    def prepare(self, colour: np.ndarray, depth: Optional[np.ndarray] = None,
                depth_scale: Optional[float] = None,
                boxes: Optional[Sequence[Sequence[float]]] = None,
                intrinsics: Optional[CameraIntrinsics] = None) -> PreparedFrame:
        """Find, align and crop the faces of the next frame (:meth:`Recognizer.prepare`).

        Frames go through :meth:`prepare` in camera order; :meth:`finish` takes
        the prepared frames in the same order and may skip some (a node that
        falls behind), on another thread.

        Raises:
            RecognizerError: the frame is malformed.
        """
        return self.recognizer.prepare(colour, depth, depth_scale=depth_scale, boxes=boxes, intrinsics=intrinsics)

    def finish(self, prepared: PreparedFrame) -> StreamResult:
        """The network, the tracks and the smoothing for a prepared frame: what is published.

        Raises:
            NonFiniteScoresError: the network gave NaN/inf scores (nothing is tracked then).
        """
        result = self.recognizer.finish(prepared)
        faces = result.faces
        tracked = self.tracker.update([f.box for f in faces], [f.scores for f in faces])
        out = [self._stream_face(face, track.face_id, track.is_new, track.scores, prepared.shape)
               for face, track in zip(faces, tracked)]   # track.scores: float32, smoothed when smoothing is on
        return StreamResult(faces=out, tracked_ids=[t.face_id for t in self.tracker.tracks],
                            retired_ids=list(self.tracker.removed), timings=dict(result.timings))

    def process_faces(self, colour: np.ndarray, faces: Sequence[Tuple[str, Sequence[float]]],
                      tracked_ids: Sequence[str], depth: Optional[np.ndarray] = None,
                      depth_scale: Optional[float] = None,
                      intrinsics: Optional[CameraIntrinsics] = None) -> StreamResult:
        """Recognise and smooth the faces another detector found in one frame, under its ids.

        Detection and tracking are that detector's: each box goes through the
        recognizer as a given box (the same alignment, crops and network as a
        detected face: FaceMesh or Haar eyes re-frame it), and keeps the id it
        came with. Scores are smoothed per id with the tracker's ``smoothing``.

        Args:
            colour, depth, depth_scale, intrinsics: as :meth:`Recognizer.recognize`.
            faces: ``(face_id, (x, y, w, h))`` of this frame, boxes inside the image.
            tracked_ids: every id the detector still tracks (its faces of this
                frame, and those it lists without a box now); an id that was
                tracked and is not any more is retired.

        Raises:
            RecognizerError: the frame or a box is malformed (nothing is followed then).
            NonFiniteScoresError: the network gave NaN/inf scores (nothing is followed then).
            TrackingError: ``faces`` repeats an id.
        """
        ids = [str(fid) for fid, _ in faces]
        if len(set(ids)) != len(ids):
            raise TrackingError(f"a face id appears twice among {ids}")
        result = self.recognizer.recognize(colour, depth, depth_scale=depth_scale, boxes=[b for _, b in faces],
                                           intrinsics=intrinsics)
        tracked = list(dict.fromkeys(list(tracked_ids) + ids))
        out: List[StreamFace] = []
        followed: Dict[str, Optional[np.ndarray]] = {fid: self._followed[fid] for fid in tracked
                                                     if fid in self._followed}
        for fid, face in zip(ids, result.faces):
            scores = smooth_scores(self._followed.get(fid), face.scores, self.tracker.smoothing)
            followed[fid] = scores
            out.append(self._stream_face(face, fid, fid not in self._followed, scores, colour.shape[:2]))
        retired = [fid for fid in self._followed if fid not in followed]
        self._followed = followed
        return StreamResult(faces=out, tracked_ids=tracked, retired_ids=retired, timings=dict(result.timings))

    def _stream_face(self, face: FaceResult, face_id: str, is_new: bool, scores: np.ndarray,
                     shape: Tuple[int, int]) -> StreamFace:
        """What is published for one face: its id, the box clipped to the image, what the scores say."""
        return StreamFace.from_result(face, face_id=face_id, is_new=is_new, box=clip_box(face.box, shape),
                                      scores=scores,
                                      **describe_scores(scores, self.class_names, self.min_confidence)._asdict())
