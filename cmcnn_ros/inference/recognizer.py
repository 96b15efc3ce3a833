"""Recognizer: one colour frame + registered depth -> per-face expressions.

Ties the preprocessing of Section III-B (detection, rectification by eq. 1,
grey/LBP/depth crops) to the CM-CNN of Sections III-C/III-D. Everything
the recognizer needs to reproduce training-time preprocessing (modalities,
crop size, detector and depth parameters) and to name its outputs (class
names) comes from the checkpoint, so training, evaluation, the command line
and the ROS node all see identical inputs.

All faces of a frame go through the network as one batch. A face whose depth
is unusable gets an all-zero depth channel -- the missing-depth convention the
trainer teaches with depth-modality dropout -- and ``depth_valid=False``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..classes import describe_scores
from ..device import DeviceError, resolve_device
from ..model.checkpoint import LoadedCheckpoint, load_checkpoint
from ..model.cmcnn import CMCNN
from ..parallel import Lanes
from ..preprocessing.alignment import Alignment
from ..preprocessing.depth import depth_array_to_metres
from ..preprocessing.detector import FaceDetection, FaceDetector
from ..preprocessing.facemesh import Region
from ..preprocessing.images import Frame, Image, as_frame
from ..preprocessing.params import PreprocessingError, PreprocessingParams
from ..preprocessing.pipeline import FaceCrops, FacePreprocessor
from .backends import DEFAULT_BACKEND, make_backend
from .face_pose import NAN_ORIENTATION, NAN_POSITION, CameraIntrinsics, FacePose, IntrinsicsError, estimate_face_pose

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]


class RecognizerError(ValueError):
    """The recognizer cannot be built or cannot process an input; the message says why."""


class NonFiniteScoresError(RecognizerError):
    """The network answered NaN or inf for a face: the checkpoint is numerically broken.

    Raised instead of returning such scores, so no caller can publish or
    print them.
    """


@dataclass
class FaceResult:
    """Recognition result for one face.

    Attributes:
        box: ``(x, y, w, h)`` in colour-image pixels.
        roll: in-plane rotation removed by alignment, radians.
        eyes_found: the roll came from detected eyes (else it is 0).
        expression: top class name (ROS4HRI spelling).
        confidence: probability of ``expression``.
        scores: class probabilities in ``Recognizer.class_names`` order.
        valence: circumplex valence in [-1, 1] (see ``cmcnn_ros.classes``).
        arousal: circumplex arousal in [-1, 1].
        depth_valid: the depth crop was usable and fed to the network.
        depth_valid_fraction: fraction of valid depth readings on the face.
        alignment: which path the roll and framing took (``"mesh"``,
            ``"keypoints"``, ``"haar_eyes"`` or ``"none"``).
        position: REP-155's face frame origin (the sellion) in metres in the
            colour camera's optical frame (:mod:`~cmcnn_ros.inference.face_pose`);
            NaN without camera intrinsics, depth or enough valid depth readings.
        orientation: quaternion ``(x, y, z, w)`` of REP-155's face axes (``x``
            out of the face, ``z`` to the scalp) in the same frame; NaN without
            intrinsics or FaceMesh landmarks.
    """

    box: Box
    roll: float
    eyes_found: bool
    expression: str
    confidence: float
    scores: np.ndarray
    valence: float
    arousal: float
    depth_valid: bool
    depth_valid_fraction: float
    alignment: str = "none"
    position: Tuple[float, float, float] = NAN_POSITION
    orientation: Tuple[float, float, float, float] = NAN_ORIENTATION

    def to_dict(self) -> Dict[str, object]:
        """JSON-friendly dict (used by the command line and the bag evaluator)."""
        return {
            "box": [int(v) for v in self.box],
            "roll_deg": round(float(np.degrees(self.roll)), 2),
            "eyes_found": bool(self.eyes_found),
            "expression": self.expression,
            "confidence": round(float(self.confidence), 4),
            "scores": [round(float(s), 4) for s in self.scores],
            "valence": round(float(self.valence), 4),
            "arousal": round(float(self.arousal), 4),
            "depth_valid": bool(self.depth_valid),
            "depth_valid_fraction": round(float(self.depth_valid_fraction), 3),
            "alignment": self.alignment,
            # strict JSON has no NaN: an unknown position or orientation is null
            "position_m": _finite_or_none(self.position, 4),
            "orientation_xyzw": _finite_or_none(self.orientation, 4),
        }


def _finite_or_none(values: Sequence[float], digits: int) -> Optional[List[float]]:
    return [round(float(v), digits) for v in values] if all(np.isfinite(values)) else None


@dataclass
class RecognitionResult:
    """All faces of one frame plus per-stage timings in milliseconds.

    ``timings`` keys: ``detect``, ``align``, one per modality (``grey``,
    ``lbp``, ``depth``...), ``preprocess`` (all of the above plus
    conversions), ``network`` and ``total``.
    """

    faces: List[FaceResult]
    timings: Dict[str, float] = field(default_factory=dict)


class FaceFinder:
    """The face detector on the whole frame every few frames, the known faces followed in between.

    Full-frame detection dominates the per-frame cost (BlazeFace on the frame
    and four tiles: five model runs; Section III-B's V-J detector: ~10 ms of
    CPU for 640x480 even downscaled). On video a face moves little between
    frames, so between full detections each known face is looked for only
    where it was:

    * by default the detector searches a region twice the previous box for
      faces of 0.7x-1.4x its size (one model run per face, then the usual
      alignment);
    * with a ``tracker`` (``landmark_tracking``: FaceMesh alignment only),
      the landmark model runs on the region the face's previous landmarks
      give (:meth:`~cmcnn_ros.preprocessing.alignment.LandmarkAligner.track`,
      as MediaPipe's face mesh tracks a face): one model run per face that
      also aligns it, so the preprocessing does not align it again; the
      detector searches only for a face the mesh lost. Cheaper, but the
      crops differ slightly from the detector-seeded ones (README: measured
      accuracy of both).

    When a known face is not found again, the whole frame is searched at
    once (it may have moved far, or left); new faces are picked up at the
    next full detection, at most ``interval`` frames later. The faces are
    followed on ``lanes`` (one job per face) when the detector is thread-safe.

    Args:
        detector: the preprocessing's face detector.
        interval: frames between full detections; 1 detects on every frame
            (stateless, what single images and training use).
        tracker: ``(frame, region) -> Alignment or None``, the aligner's
            landmark pass on a region (None: detector searches only).
        lanes: threads for the per-face jobs (default one).
    """

    def __init__(self, detector: FaceDetector, interval: int = 1,
                 tracker: Optional[Callable[[Frame, Region], Optional[Alignment]]] = None,
                 lanes: Optional[Lanes] = None) -> None:
        if int(interval) < 1:
            raise RecognizerError(f"redetect_interval must be >= 1, got {interval}")
        self.detector = detector
        self.interval = int(interval)
        self.tracker = tracker
        self.lanes = lanes or Lanes(1)
        self._found: List[FaceDetection] = []
        self._regions: List[Optional[Region]] = []   # FaceMesh region of each of _found, for the next frame
        self._frames_since_full = 0

    def reset(self) -> None:
        """Forget previous boxes (next frame runs a full detection)."""
        self._found, self._regions = [], []
        self._frames_since_full = 0

    def find(self, image: Image) -> List[FaceDetection]:
        """Face detections of this frame (colour BGR or grey, or a checked frame), best first."""
        if self.interval == 1 or not self._found or self._frames_since_full >= self.interval:
            return self._full(image)
        frame = as_frame(image)
        jobs = list(zip(self._found, self._regions))
        if self.detector.thread_safe and len(jobs) > 1:
            _ = frame.rgb   # made once here, not raced for by the lanes
            found = self.lanes.map(lambda job: self._again(frame, *job), jobs)
        else:
            found = [self._again(frame, *job) for job in jobs]
        if any(det is None for det in found):
            # Moved far, left or occluded: a full detection now rather than a frame without it.
            return self._full(frame)
        # Two searches can find the same face: the detector's own rule drops the duplicate.
        self._found = self.detector.nms.suppress(found)  # type: ignore[arg-type]
        self._regions = [None] * len(self._found)
        self._frames_since_full += 1
        return list(self._found)

    def observe(self, faces: Sequence[FaceCrops]) -> None:
        """After the preprocessing of the detections :meth:`find` returned: where each face's mesh was.

        ``faces`` are the preprocessing's results for those detections, in
        their order; their ``track_region`` is where the next frame's
        landmark pass looks.
        """
        if len(faces) == len(self._found):
            self._regions = [face.track_region for face in faces]

    def _again(self, frame: Frame, det: FaceDetection, region: Optional[Region]) -> Optional[FaceDetection]:
        """The known face ``det`` in this frame: by its landmarks' region, else by a detector search; None if gone."""
        if region is not None and self.tracker is not None:
            alignment = self.tracker(frame, region)
            if alignment is not None:
                return FaceDetection(box=alignment.box, score=det.score, alignment=alignment)
        x, y, w, h = det.box
        roi = (x - w // 2, y - h // 2, 2 * w, 2 * h)
        hits = self.detector.detect(frame, roi=roi, size_range=(0.7 * w, 1.4 * w))
        return hits[0] if hits else None

    def _full(self, image: Image) -> List[FaceDetection]:
        self._found = list(self.detector.detect(image))
        self._regions = [None] * len(self._found)
        self._frames_since_full = 1
        return list(self._found)


@dataclass
class PreparedFrame:
    """One frame's faces found, aligned and cropped: everything :meth:`Recognizer.finish` needs.

    The split lets the node overlap the preparation of one frame (detection,
    landmarks, crops) with the network of the one before (two threads).

    Attributes:
        faces: the preprocessing's crops, one per face.
        inputs: the stacked model input ``(B, M, S, S)`` of ``faces``.
        shape: ``(h, w)`` of the colour frame.
        timings: per-stage milliseconds so far.
        started: ``time.perf_counter()`` when the preparation began.
        poses: where each face is (:class:`~.face_pose.FacePose`), one per
            face when camera intrinsics were given, else empty.
    """

    faces: List[FaceCrops]
    inputs: np.ndarray
    shape: Tuple[int, int]
    timings: Dict[str, float]
    started: float
    poses: List[FacePose] = field(default_factory=list)


class Recognizer:
    """CM-CNN facial expression recognizer over NumPy frames.

    Not thread-safe (the preprocessor holds OpenCV cascades, the face finder
    the previous frame's faces): one caller at a time. The one exception is the
    pair :meth:`prepare` / :meth:`finish`: one thread may prepare frame N + 1
    while another finishes frame N (they share no mutable state). Within a
    call, one frame's independent jobs run on ``preprocessing_threads`` lanes.

    Attributes:
        class_names: output class order.
        params: preprocessing parameters from the checkpoint.
        modalities: model input channel order.
        device: torch device the network runs on.
        backend: what runs the network (:mod:`~cmcnn_ros.inference.backends`:
            ``torch`` or ``onnxruntime``; ``backend.description`` says which and how).
        model: the fused PyTorch network (the reference every backend is checked against).
    """

    def __init__(self, model: CMCNN, class_names: Sequence[str], params: PreprocessingParams,
                 device: Union[str, torch.device] = "auto", num_threads: Optional[int] = None,
                 source: Optional[str] = None, redetect_interval: int = 1,
                 backend: str = DEFAULT_BACKEND, preprocessing_threads: int = 1,
                 landmark_tracking: bool = False, flip_tta: bool = False) -> None:
        """Wrap a network and its preprocessing.

        Args:
            model: a CM-CNN (any modality subset).
            class_names: names of the model outputs, in order.
            params: the preprocessing parameters the model was trained with.
            device: "auto", "cpu", "cuda" or "cuda:N".
            num_threads: torch intra-op threads on CPU (None leaves torch's default).
            source: where the model came from (for logs and diagnostics).
            redetect_interval: frames between full-frame face detections on
                video (see :class:`FaceFinder`); 1 = every frame, stateless.
            backend: ``auto``, ``torch`` or ``onnxruntime`` (see
                :func:`~cmcnn_ros.inference.backends.make_backend`).
            preprocessing_threads: lanes for one frame's independent jobs
                (BlazeFace's tiles, each face's landmarks and crops); the
                results are the same for any number. One by default: on a
                single image (Grace Hopper, 2 cores) a second lane measured
                18.0 vs 19.6 ms p50 (benchmarks/bench_fer.py); on video with
                several faces two do better (the stream's and node's default).
            landmark_tracking: between full detections, follow faces with
                FaceMesh on their previous landmarks instead of searching
                with the detector (see :class:`FaceFinder`); FaceMesh path only.
            flip_tta: average each face's scores with those of its mirror
                image (horizontal-flip test-time averaging, as the trainer's
                ``tta_flip`` validates): the network runs on twice the batch.

        Raises:
            RecognizerError: inconsistent classes, bad device or thread count.
            BackendError: the backend cannot run here (``onnxruntime`` missing...).
        """
        if len(class_names) != model.num_classes:
            raise RecognizerError(
                f"{len(class_names)} class names for a model with {model.num_classes} outputs")
        if int(params.crop_size) != int(model.config.input_size):
            raise RecognizerError(
                f"preprocessing crop_size {params.crop_size} does not match the model input size "
                f"{model.config.input_size}; the checkpoint is inconsistent: retrain or re-export it")
        if num_threads is not None:
            if int(num_threads) < 1:
                raise RecognizerError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(int(num_threads))
        try:
            self.device = resolve_device(device)
        except DeviceError as exc:
            raise RecognizerError(str(exc)) from exc
        self.class_names: List[str] = list(class_names)
        self.params = params
        self.modalities = tuple(model.modalities)
        self.source = source or "<in-memory model>"
        try:
            lanes = Lanes(preprocessing_threads, name="cmcnn_lane")
        except ValueError as exc:
            raise RecognizerError(f"preprocessing_threads: {exc}") from exc
        self.preprocessor = FacePreprocessor(params, self.modalities, lanes=lanes)
        aligner = self.preprocessor.aligner
        tracker = getattr(aligner, "track", None) if landmark_tracking else None
        self.face_finder = FaceFinder(self.preprocessor.detector, redetect_interval, tracker=tracker, lanes=lanes)
        self.backend = make_backend(model, self.device, backend, num_threads)
        self.model = self.backend.model
        self.flip_tta = bool(flip_tta)

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Union[str, torch.device] = "auto",
                        num_threads: Optional[int] = None, redetect_interval: int = 1,
                        backend: str = DEFAULT_BACKEND, preprocessing_threads: int = 1,
                        landmark_tracking: bool = False, flip_tta: bool = False) -> "Recognizer":
        """Build from a checkpoint written by ``cmcnn-train``.

        Raises:
            CheckpointError: missing, truncated or inconsistent file (says what to fix).
            RecognizerError: bad device, or preprocessing parameters that do not validate.
            BackendError: the backend cannot run here.
        """
        loaded: LoadedCheckpoint = load_checkpoint(path, map_location="cpu")
        try:
            params = PreprocessingParams.from_checkpoint(loaded.preprocessing)
        except (PreprocessingError, TypeError, ValueError) as exc:
            raise RecognizerError(f"checkpoint {path}: invalid preprocessing parameters: {exc}") from exc
        return cls(loaded.model, loaded.class_names, params, device=device, num_threads=num_threads,
                   source=str(path), redetect_interval=redetect_interval, backend=backend,
                   preprocessing_threads=preprocessing_threads, landmark_tracking=landmark_tracking,
                   flip_tta=flip_tta)

    # ------------------------------------------------------------------ API
    def recognize(self, colour: np.ndarray, depth: Optional[np.ndarray] = None,
                  depth_scale: Optional[float] = None,
                  boxes: Optional[Sequence[Sequence[float]]] = None,
                  intrinsics: Optional[CameraIntrinsics] = None) -> RecognitionResult:
        """Recognise the expression of every face in a frame.

        Args:
            colour: ``uint8`` BGR HxWx3, BGRA HxWx4 or grey HxW.
            depth: registered depth, ``uint16`` (raw units, millimetres by
                default) or ``float32`` metres; None when there is no depth.
            depth_scale: metres per depth unit; default 0.001 for ``uint16``
                and 1.0 for float depth.
            boxes: optional face boxes ``(x, y, w, h)`` that replace detection.
                Without them, faces are found by :attr:`face_finder` (full
                detection, or a local search between full detections when
                ``redetect_interval`` > 1).
            intrinsics: the colour camera's pinhole intrinsics; with them each
                face gets its ``position`` (from ``depth``) and ``orientation``
                (from its landmarks), else both stay NaN.

        Returns:
            A :class:`RecognitionResult`; ``faces`` is empty when no face is found.

        Raises:
            RecognizerError: the frame or depth is malformed, or ``intrinsics``
                are for another image size (message says how).
            NonFiniteScoresError: the network gave NaN/inf scores for a face.
        """
        return self.finish(self.prepare(colour, depth, depth_scale=depth_scale, boxes=boxes, intrinsics=intrinsics))

    def prepare(self, colour: np.ndarray, depth: Optional[np.ndarray] = None,
                depth_scale: Optional[float] = None,
                boxes: Optional[Sequence[Sequence[float]]] = None,
                intrinsics: Optional[CameraIntrinsics] = None) -> PreparedFrame:
        """The first half of :meth:`recognize`: find, align and crop the faces, stack the model input.

        Call it for every frame in order (the face finder follows faces from
        one call to the next); :meth:`finish` may then run on another thread.
        Arguments and errors as :meth:`recognize` (without the network's).
        """
        t_start = time.perf_counter()
        try:
            depth_m = None
            if depth is not None:
                depth_m = depth_array_to_metres(depth, depth_scale)
            frame = as_frame(colour)  # checked and converted once for the finder and the crops
            detect_ms = None
            detections = None
            if boxes is None and self.face_finder.interval > 1:
                t0 = time.perf_counter()
                detections = self.face_finder.find(frame)
                detect_ms = (time.perf_counter() - t0) * 1000.0
            faces = self.preprocessor.process(frame, depth_m, boxes=boxes, detections=detections)
            if detections is not None:
                self.face_finder.observe(faces)
            inputs = self.preprocessor.to_tensor(faces)
            if self.flip_tta and faces:
                # One batch: the mirror images ride behind the faces, averaged in finish().
                inputs = np.concatenate([inputs, self.preprocessor.to_tensor(faces, mirrored=True)])
            poses = self._poses(faces, frame.shape, depth_m, intrinsics) if intrinsics is not None else []
        except (PreprocessingError, IntrinsicsError) as exc:
            raise RecognizerError(str(exc)) from exc
        timings = {k: v for k, v in self.preprocessor.last_timings.items() if k != "total"}
        if detect_ms is not None:
            timings["detect"] = detect_ms
        timings["preprocess"] = (time.perf_counter() - t_start) * 1000.0
        return PreparedFrame(faces=faces, inputs=inputs, shape=frame.shape, timings=timings, started=t_start,
                             poses=poses)

    def _poses(self, faces: Sequence[FaceCrops], shape: Tuple[int, int], depth_m: Optional[np.ndarray],
               intrinsics: CameraIntrinsics) -> List[FacePose]:
        """Where each face is (:func:`~.face_pose.estimate_face_pose`), with the depth range the crops use.

        Raises:
            IntrinsicsError: the intrinsics are for another image size.
        """
        problem = intrinsics.size_problem(shape)
        if problem:
            raise IntrinsicsError(problem)
        p = self.params
        return [estimate_face_pose(depth_m, intrinsics, face.box, face.landmarks, face.eyes,
                                   p.depth_min_m, p.depth_max_m) for face in faces]

    def finish(self, prepared: PreparedFrame) -> RecognitionResult:
        """The second half of :meth:`recognize`: all faces through the network in one batch, scores, results.

        ``timings["total"]`` runs from the start of :meth:`prepare`, so it
        includes any wait between the two halves.

        Raises:
            NonFiniteScoresError: the network gave NaN/inf scores for a face.
        """
        faces, timings = prepared.faces, dict(prepared.timings)
        t0 = time.perf_counter()
        probs = self.classify(prepared.inputs) if faces else np.zeros((0, 0))
        if self.flip_tta and faces:
            probs = 0.5 * (probs[:len(faces)] + probs[len(faces):])
        timings["network"] = (time.perf_counter() - t0) * 1000.0
        broken = int(np.sum(~np.all(np.isfinite(probs), axis=1))) if len(probs) else 0
        if broken:
            raise NonFiniteScoresError(
                f"the model gave non-finite scores for {broken} of {len(faces)} faces; the checkpoint "
                f"{self.source} is numerically broken: re-train or re-save it")
        poses = prepared.poses or [FacePose()] * len(faces)
        results = [self._face_result(face, p, pose) for face, p, pose in zip(faces, probs, poses)]
        timings["total"] = (time.perf_counter() - prepared.started) * 1000.0
        return RecognitionResult(faces=results, timings=timings)

    def stop_threads(self) -> None:
        """End the preprocessing's helper threads (a paused node keeps none); the next frame starts them again."""
        self.preprocessor.lanes.stop()

    def classify(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities for a stacked input ``(B, M, S, S)`` (all faces of a frame: one batch).

        A face whose depth is unusable already carries an all-zero depth
        channel (the preprocessing's missing-depth convention, the same input
        depth dropout trains on), so nothing is special-cased here.
        """
        return self.backend(inputs)

    def _face_result(self, face: FaceCrops, probs: np.ndarray, pose: FacePose) -> FaceResult:
        """The one place a face's crops, scores and pose become its result (what the stream and node pass on)."""
        return FaceResult(box=face.box, roll=face.roll, eyes_found=face.eyes_found, scores=probs.astype(np.float32),
                          depth_valid=bool(face.depth_valid and "depth" in self.modalities),
                          depth_valid_fraction=float(face.depth_valid_fraction), alignment=face.alignment,
                          position=pose.position, orientation=pose.orientation,
                          **describe_scores(probs, self.class_names)._asdict())
