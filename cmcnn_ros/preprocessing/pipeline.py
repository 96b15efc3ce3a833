"""FacePreprocessor: one colour (+ depth) frame -> per-face crops (Section III-B).

The order follows Ni et al. (IEEE TCDS 2023), Section III-B and Fig. 2:
face detection (BlazeFace by default, V-J as the paper's option),
rotation rectification from the eye line (eq. 1),
grey-scale conversion, LBP (eq. 2) and the facial depth image, each a
``crop_size`` square (148 px in the paper, 48 in the default weights). HOG and Gabor images are available for the
ablation rows of Tables II/III. Only the requested modalities are computed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..modalities import DEPTH_MODALITIES, modality_problem
from ..parallel import Lanes
from .alignment import make_aligner, warp_crop
from .depth import face_depth_crop
from .detector import Box, FaceDetection, make_detector
from .facemesh import Region
from .images import Frame, Image, as_frame
from .model_input import build_model_input, mirror_images
from .params import PreprocessingError, PreprocessingParams
from .texture import TextureImages

logger = logging.getLogger(__name__)


@dataclass
class FaceCrops:
    """Everything the model needs about one face.

    Attributes:
        box: ``(x, y, w, h)`` ints in colour-frame pixels.
        roll: radians removed by the alignment (image coordinates, y down;
            positive = face turned clockwise on screen); 0 without eyes.
        eyes_found: whether the roll came from a detected eye pair.
        crops: modality name -> ``float32`` SxS image in [0, 1].
        depth_valid: depth usable for this face (else its crop is all zeros).
        depth_valid_fraction: fraction of valid depth readings in the central
            face region (0 when no depth was given).
        timings: per-stage milliseconds; ``detect`` (and ``convert``) are the
            frame's shared cost, the others this face's own.
        eyes: eye centres ``((xl, yl), (xr, yr))`` in frame pixels, if found.
        detection_score: the detector's score (``nan`` for given boxes).
        alignment: which path the roll and framing took: ``"mesh"``,
            ``"keypoints"``, ``"haar_eyes"`` or ``"none"`` (see
            :class:`~cmcnn_ros.preprocessing.alignment.Alignment`).
        track_region: where FaceMesh should look for this face in the next
            frame (:attr:`~cmcnn_ros.preprocessing.alignment.Alignment.region`);
            None off the mesh path.
        landmarks: the FaceMesh points ``(468, 3)`` (frame pixels, relative
            z) on the mesh path, what the head pose is estimated from; None
            off it.
    """

    box: Tuple[int, int, int, int]
    roll: float
    eyes_found: bool
    crops: Dict[str, np.ndarray]
    depth_valid: bool
    depth_valid_fraction: float
    timings: Dict[str, float] = field(default_factory=dict)
    eyes: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None
    detection_score: float = float("nan")
    alignment: str = "none"
    track_region: Optional[Region] = None
    landmarks: Optional[np.ndarray] = None


def check_modalities(modalities: Iterable[str]) -> Tuple[str, ...]:
    """Validate a modality list.

    Raises:
        PreprocessingError: empty, duplicated or unknown names.
    """
    problem = modality_problem(modalities)
    if problem:
        raise PreprocessingError(problem)
    return tuple(modalities)


def _check_depth(depth_m: np.ndarray, frame_shape: Tuple[int, int]) -> np.ndarray:
    if not isinstance(depth_m, np.ndarray):
        raise PreprocessingError(f"depth_m must be a numpy array or None, got {type(depth_m).__name__}")
    if depth_m.ndim == 3 and depth_m.shape[2] == 1:
        depth_m = depth_m[:, :, 0]
    if depth_m.ndim != 2:
        raise PreprocessingError(f"depth_m must be HxW, got shape {depth_m.shape}")
    if depth_m.dtype == np.float64:
        depth_m = depth_m.astype(np.float32)
    elif depth_m.dtype != np.float32:
        raise PreprocessingError(
            f"depth_m must be float32 metres, got dtype {depth_m.dtype}; decode raw depth with "
            "cmcnn_ros.preprocessing.depth_array_to_metres(depth, unit='mm')")
    if depth_m.shape != frame_shape:
        raise PreprocessingError(
            f"depth {depth_m.shape[1]}x{depth_m.shape[0]} does not match colour "
            f"{frame_shape[1]}x{frame_shape[0]}: depth must be registered to the colour frame")
    return depth_m


def _check_boxes(boxes: Sequence[Sequence[float]], frame_shape: Tuple[int, int]) -> List[Box]:
    out: List[Box] = []
    for i, b in enumerate(boxes):
        try:
            x, y, w, h = (int(round(float(v))) for v in b)
        except (TypeError, ValueError) as exc:
            raise PreprocessingError(f"boxes[{i}] must be (x, y, w, h), got {b!r}") from exc
        if w <= 0 or h <= 0:
            raise PreprocessingError(f"boxes[{i}]={tuple(b)} has a non-positive size")
        if x >= frame_shape[1] or y >= frame_shape[0] or x + w <= 0 or y + h <= 0:
            raise PreprocessingError(
                f"boxes[{i}]={tuple(b)} lies outside the {frame_shape[1]}x{frame_shape[0]} frame")
        out.append((x, y, w, h))
    return out


class FacePreprocessor:
    """Frame -> list of :class:`FaceCrops` -> model tensor ``(B, M, S, S)``.

    Not thread-safe (``last_timings``; the Haar path's OpenCV cascades): one
    caller thread. Within a call, the faces of a frame are aligned and cropped
    on :attr:`lanes` when the aligner is thread-safe (FaceMesh), and
    BlazeFace's tiles are searched on them; the results do not depend on the
    number of lanes.

    Attributes:
        params: the preprocessing parameters.
        modalities: channel order of :meth:`to_tensor`.
        lanes: the threads one frame's independent jobs share (:class:`~cmcnn_ros.parallel.Lanes`).
        last_timings: frame-level milliseconds of the last :meth:`process`
            call (``convert``, ``detect``, ``align``, one key per modality,
            ``total``), also filled when no face was found. The per-face
            stages are summed over the faces (with several lanes, more than
            the wall time they took).
    """

    def __init__(self, params: Optional[PreprocessingParams] = None,
                 modalities: Sequence[str] = ("grey", "lbp", "depth"),
                 clock: Callable[[], float] = time.perf_counter, lanes: Optional[Lanes] = None) -> None:
        """Load the cascades and prepare the requested modalities.

        Args:
            params: preprocessing parameters (defaults if None).
            modalities: names among "grey", "lbp", "hog", "gabor", "depth" in model order.
            clock: time source in seconds for the stage timings; wall clock by
                default, ``time.process_time`` measures CPU cost instead
                (meaningful on a shared machine, with one OpenCV thread).
            lanes: threads for one frame's independent jobs (default: one, no thread).

        Raises:
            PreprocessingError: bad modalities, params or missing cascades.
        """
        if params is not None and not isinstance(params, PreprocessingParams):
            raise PreprocessingError(f"params must be PreprocessingParams, got {type(params).__name__}")
        self.params = params or PreprocessingParams()
        self.modalities = check_modalities(modalities)
        self.lanes = lanes or Lanes(1)
        self.detector = make_detector(self.params, self.lanes)
        self.aligner = make_aligner(self.params, self.detector.has_keypoints)
        self._texture = TextureImages(self.params, self.modalities)
        self._clock = clock
        self.last_timings: Dict[str, float] = {}

    def _ms(self, start: float) -> float:
        return (self._clock() - start) * 1000.0

    def process(self, colour: Image, depth_m: Optional[np.ndarray] = None,
                boxes: Optional[Sequence[Sequence[float]]] = None,
                detections: Optional[Sequence[FaceDetection]] = None) -> List[FaceCrops]:
        """Detect, align and crop every face of a frame.

        Args:
            colour: ``uint8`` BGR HxWx3, BGRA HxWx4 or grey HxW frame, or a
                :class:`~.images.Frame` of one (whose copies are then shared).
            depth_m: ``float32`` HxW metres registered to ``colour`` (0/NaN =
                no reading) or None (depth crops are then zeros, invalid).
            boxes: optional ``(x, y, w, h)`` face boxes in colour pixels; they
                replace detection (ground truth, a dataset's face crops).
            detections: optional detections made by this preprocessor's
                detector on this frame (a tracker's); they replace detection
                and keep their keypoints; one that carries an ``alignment``
                made on this frame is not aligned again. Ignored when
                ``boxes`` is given.

        Returns:
            One :class:`FaceCrops` per face, in detection order (best first)
            or in the order of ``boxes``. A detection whose landmarks fail
            (``alignment`` would be ``"keypoints"``) is a face only with a
            score above the detector's ``keep_unconfirmed_above``; else it is
            left out. Given ``boxes`` are never left out.

        Raises:
            PreprocessingError: empty frame, wrong dtype/shape, colour/depth
                size mismatch, malformed boxes.
        """
        t_frame = self._clock()
        t0 = self._clock()
        frame = as_frame(colour)
        _ = frame.grey  # made now (timed as "convert"): every crop reads it; RGB only if a model reads it
        if depth_m is not None:
            depth_m = _check_depth(depth_m, frame.shape)
        timings: Dict[str, float] = {"convert": self._ms(t0)}

        t0 = self._clock()
        found: List[Optional[FaceDetection]]
        if boxes is None:
            found = list(detections if detections is not None else self.detector.detect(frame))
            face_boxes = [d.box for d in found]  # type: ignore[union-attr]
        else:
            face_boxes = _check_boxes(boxes, frame.shape)
            found = [None] * len(face_boxes)
        timings["detect"] = self._ms(t0)
        for key in ("align",) + self.modalities:
            timings[key] = 0.0

        jobs = list(zip(face_boxes, found))
        if self.aligner.thread_safe and len(jobs) > 1:
            _ = frame.rgb  # FaceMesh reads it: made once here, not raced for by the lanes
            cropped = self.lanes.map(lambda job: self._crop_face(frame, depth_m, *job), jobs)
        else:
            cropped = [self._crop_face(frame, depth_m, *job) for job in jobs]
        faces = [face for face in cropped if face is not None]
        for face in faces:
            for key, value in face.timings.items():
                timings[key] = timings.get(key, 0.0) + value
        timings["total"] = self._ms(t_frame)
        for face in faces:
            face.timings["convert"] = timings["convert"]
            face.timings["detect"] = timings["detect"]
        self.last_timings = timings
        return faces

    def _crop_face(self, frame: Frame, depth_m: Optional[np.ndarray], box: Box,
                   detection: Optional[FaceDetection]) -> Optional[FaceCrops]:
        """One face's alignment and crops (its own timings; no shared state, so lanes may run faces at once);
        None for a detection the landmarks rejected, at or below the detector's bar."""
        p = self.params
        t: Dict[str, float] = {}
        t0 = self._clock()
        if detection is not None and detection.alignment is not None:
            alignment = detection.alignment   # the face finder's FaceMesh pass on this frame
        else:
            alignment = self.aligner.align(frame, box, detection)
        score = detection.score if detection is not None else float("nan")
        if (detection is not None and alignment.method == "keypoints"
                and not score > self.detector.keep_unconfirmed_above):
            # The landmark model saw no face where the detector did: a candidate, not a face, unless
            # the detector's own bar says otherwise (why the default drops them all: params.py).
            # Given boxes are faces by the caller's word and never take this branch.
            logger.debug("dropped the detection at %s: landmarks rejected it and its score %.3f is not above %.3f",
                         box, score, self.detector.keep_unconfirmed_above)
            return None
        box = alignment.box or box
        grey_crop = warp_crop(frame.grey, alignment.matrix, p.crop_size, cv2.INTER_LINEAR, 0.0, cv2.BORDER_REPLICATE)
        t["align"] = self._ms(t0)

        crops: Dict[str, np.ndarray] = {}
        depth_valid, fraction = False, 0.0
        for name in self.modalities:
            t0 = self._clock()
            if name not in DEPTH_MODALITIES:
                crops[name] = self._texture(name, grey_crop)
            elif depth_m is None:
                crops[name] = np.zeros((p.crop_size, p.crop_size), np.float32)
            else:
                d = face_depth_crop(depth_m, alignment.matrix, p)
                crops[name] = d.image
                depth_valid, fraction = d.valid, d.valid_fraction
            t[name] = self._ms(t0)
        eyes = (alignment.eyes.left, alignment.eyes.right) if alignment.eyes is not None else None
        return FaceCrops(box=tuple(int(v) for v in box), roll=float(alignment.roll),
                         eyes_found=alignment.eyes_found, crops=crops, depth_valid=depth_valid,
                         depth_valid_fraction=fraction, timings=t, eyes=eyes, detection_score=score,
                         alignment=alignment.method, track_region=alignment.region,
                         landmarks=alignment.landmarks)

    def to_tensor(self, faces: Sequence[FaceCrops], mirrored: bool = False) -> np.ndarray:
        """Stack crops into the model input (:func:`~.model_input.build_model_input`, as training does).

        Args:
            faces: output of :meth:`process`.
            mirrored: the input of the faces' mirror images instead
                (:func:`~.model_input.mirror_images`: flip test-time averaging).

        Returns:
            ``float32`` array ``(B, M, S, S)`` with channels in ``self.modalities`` order
            (``(0, M, S, S)`` for no faces), every crop at the precision the
            trainer stores it in (8-bit texture, ``float16`` depth).

        Raises:
            PreprocessingError: a face lacks a modality or has a crop of the wrong shape.
        """
        size = self.params.crop_size
        for i, face in enumerate(faces):
            for name in self.modalities:
                crop = face.crops.get(name)
                if crop is None:
                    raise PreprocessingError(
                        f"face {i} has no {name!r} crop (has {sorted(face.crops)}); it was made by a "
                        "preprocessor with other modalities")
                if crop.shape != (size, size):
                    raise PreprocessingError(
                        f"face {i} {name!r} crop has shape {crop.shape}, expected {(size, size)}")
        images = {name: np.stack([face.crops[name] for face in faces]) if faces
                  else np.zeros((0, size, size), np.float32) for name in self.modalities}
        if mirrored and faces:
            # The texture of the mirrored face comes from the mirrored grey crop, model input or not.
            grey = {"grey": np.stack([face.crops["grey"] for face in faces])} if "grey" in faces[0].crops else {}
            images = {k: v for k, v in mirror_images({**grey, **images}, self._texture).items()
                      if k in self.modalities}
        return build_model_input(images, self.modalities, np.array([face.depth_valid for face in faces], bool))
