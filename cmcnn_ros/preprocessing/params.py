"""Preprocessing parameters: the single source of truth for Section III-B.

Ni et al. (IEEE TCDS 2023), Section III-B, turn one RGB-D frame into
square facial crops (148 px in the paper, ``crop_size`` here; the default
weights use 48): Viola-Jones face detection, rotation rectification from
the eye line (eq. 1), grey-scale, LBP (eq. 2) and depth images. Every number
that changes what the network sees lives in :class:`PreprocessingParams`, and
a copy is stored in every checkpoint (``"preprocessing"``) so training,
evaluation, the CLI and the ROS node crop faces the same way.

Defaults were chosen by measurement on these CPUs (2 cores, OpenCV 4.14,
see ``benchmarks/bench_preprocessing.py`` and the notes beside each field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

from ..modalities import crop_size_problem

#: LBP mapping methods of ``skimage.feature.local_binary_pattern``.
LBP_METHODS: Tuple[str, ...] = ("default", "ror", "uniform", "nri_uniform", "var")

FACE_CASCADES: Tuple[str, ...] = (
    "haarcascade_frontalface_default.xml",
    "haarcascade_frontalface_alt.xml",
    "haarcascade_frontalface_alt2.xml",
)
EYE_CASCADES: Tuple[str, ...] = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")

#: The face detectors the ``detector`` setting names: name -> ``"module:class"``
#: of a :class:`~cmcnn_ros.preprocessing.detector.FaceDetector`, built by
#: ``make_detector``. Import paths rather than classes: every detector imports
#: this module, which checks the name. Adding a detector is one line here
#: (docs/ARCHITECTURE.md, "Adding a face detector").
DETECTORS: Dict[str, str] = {
    # MediaPipe's full-range BlazeFace, with keypoints (FaceMesh alignment); the default.
    "blazeface": "cmcnn_ros.preprocessing.blazeface:BlazeFaceDetector",
    # The paper's Viola-Jones (Haar cascade), boxes only (Haar eye alignment).
    "haar": "cmcnn_ros.preprocessing.haar:HaarFaceDetector",
}


class PreprocessingError(ValueError):
    """Bad input or bad settings for the preprocessing; the message names what is wrong."""


@dataclass(frozen=True)
class PreprocessingParams:
    """Settings of the Section III-B preprocessing.

    Geometry:
        crop_size: side of every output crop in pixels (paper: 148; the
            default weights: 48). The one home of the crop size: the model's
            ``input_size`` is derived from it when a model is built for these
            params, and both are checked by :func:`~cmcnn_ros.modalities.crop_size_problem`.
        crop_margin: fraction of the detected box side added on *each* side
            before resizing to ``crop_size`` (0.1 turns a 100 px box into a
            120 px square region).

    Face detection:
        detector: a name in :data:`DETECTORS`: ``"blazeface"`` (MediaPipe
            full-range BlazeFace, eye centres from the 468-point FaceMesh; the
            default) or ``"haar"`` (the paper's Viola-Jones with Haar eyes). A checkpoint written before
            this field existed was trained with Haar and loads as ``"haar"``.
        min_face_size: smallest face to find, in full-frame pixels (whole-face
            box side). BlazeFace finds faces down to ~25 px (3 m from a VGA
            Kinect); the Haar path costs much more below 60 (see below).
        max_face_size: largest face to find in full-frame pixels (0 = no limit).
        blazeface_min_score: detection probability threshold (MediaPipe's 0.6:
            no false face on the face-free photographs and rooms measured).
        blazeface_nms_iou: IoU above which BlazeFace boxes are merged
            (weighted NMS, MediaPipe's 0.3).
        detect_tile_side: BlazeFace also searches overlapping square tiles of
            this side (frame pixels; 384 = four 0.5x tiles of a VGA frame) so
            faces 2-3 m away are found; 0 = the whole frame only (4x cheaper).
        detector_threads: LiteRT threads of the detector and landmark models
            (1: predictable on a 2-core robot computer).
        landmark_roi_scale: the FaceMesh input region is this many times the
            BlazeFace box, square, rotated by the eye keypoints (MediaPipe's 1.5).
        landmark_min_presence: FaceMesh face-presence probability below which
            its landmarks are not trusted (no face in the region: roll 0,
            ``eyes_found=False``, or the detector's keypoints).
        blazeface_keep_unconfirmed_above: a BlazeFace detection that the
            FaceMesh rejects (presence below ``landmark_min_presence`` or an
            implausible mesh) is a candidate, not a face: it is kept, aligned
            from the detector's eye keypoints (``alignment: keypoints``), only
            if its score is above this. 0 keeps every candidate (the rule
            before this setting); 1 keeps none (the default, also for a
            checkpoint written before the setting: see the note at the field).
        box_roi_scale: for a given whole-face box (ground truth, a dataset's
            face crop, tracking) the FaceMesh region is this many times its
            side; the roll is unknown, so the mesh runs twice, the second time
            on the region its first landmarks give.

    Viola-Jones (``detector: haar``, OpenCV Haar cascade):
        face_cascade: cascade file name in ``cv2.data.haarcascades``. alt2
            found all five faces of the benchmark frame and the astronaut
            rotated by +-12 deg at more settings than "default", with no false
            positive on 12 scikit-image photographs.
        detect_max_side: the grey frame is downscaled so its longer side is at
            most this many pixels before detection (a full 512x512 frame at
            scale factor 1.1 costs ~60-110 ms here, 240 px about 5x less).
            If the downscaled frame would make a ``min_face_size`` face smaller
            than the cascade window, detection runs at a finer scale so the
            promise holds (slower: use 60 with Haar, :data:`HAAR_PAPER`).
        scale_factor: ``detectMultiScale`` pyramid step.
        min_neighbors: ``detectMultiScale`` grouping threshold (higher = fewer
            false positives, fewer detections).
        detect_equalize: equalise the histogram of the small frame first
            (off: on a dark scene it saturated a lit face and lost it).
        nms_overlap: a box whose intersection with a better (more neighbours)
            box exceeds this fraction of the smaller box's area is dropped, so
            the output boxes do not overlap by more than that.

    Rotation rectification (eq. 1):
        align: estimate the in-plane roll from the eyes and remove it. With
            BlazeFace the eyes are the FaceMesh eye-contour centres and the
            crop is framed by the mesh (forehead to chin, square, plus
            ``crop_margin``); off, the crop is the detector box at roll 0.
        eye_cascade: cascade file name in ``cv2.data.haarcascades``.
        eye_region_width: the upper face is resized to this width before the
            eye cascade runs (fixed cost per face; eyes land at ~22 px, just
            above the cascade's 20 px window).
        eye_scale_factor, eye_min_neighbors: eye ``detectMultiScale`` settings.
        max_roll_deg: eye pairs whose line is steeper than this are rejected.
        eye_refine: move each eye centre onto the dark pupil blob inside its
            Haar box (roll error on a rotated photograph: ~2.7 -> ~0.5 deg).

    Texture (LBP eq. 2, HOG and Gabor for the ablation rows):
        lbp_points, lbp_radius, lbp_method: ``skimage.feature.local_binary_pattern``
            P, R and method. P=8, R=1, "default" is eq. (2) (8 neighbours,
            codes 0..255, not rotation invariant: the crop is already aligned);
            the code is divided by its maximum (2**P - 1 for "default").
        hog_orientations, hog_pixels_per_cell: ``skimage.feature.hog`` settings
            of the HOG visualisation image.
        gabor_wavelengths: Gabor wavelengths in crop pixels.
        gabor_orientations: number of orientations in [0, pi).

    Depth (Section III-B 4, Kinect path):
        depth_min_m, depth_max_m: readings outside this range are invalid
            (Kinect v2 works from 0.5 to 4.5 m; the slack keeps good edges).
        depth_range_m: depth span mapped to [1, 0] behind the reference
            (nearest face point = 1, ``depth_range_m`` behind it = 0).
        depth_reference_percentile: percentile of the valid depths in the
            central region used as the reference (a low one: the nose tip,
            robust to a few flying pixels).
        depth_center_fraction: side of the central square region (fraction of
            the crop) that is the face proper; the reference and the valid
            fraction are measured there, not in the margin and corners where
            background may be legitimately out of range.
        depth_fill_kernel: holes are filled by normalised box filtering with
            this odd kernel (crop pixels); holes wider than that get the
            background value 0.
        min_depth_valid_fraction: below this valid fraction the depth is
            unusable: ``depth_valid=False`` and an all-zero depth crop.
    """

    crop_size: int = 148
    crop_margin: float = 0.1

    detector: str = "blazeface"
    min_face_size: int = 24
    max_face_size: int = 0
    blazeface_min_score: float = 0.6
    blazeface_nms_iou: float = 0.3
    detect_tile_side: int = 384
    detector_threads: int = 1
    landmark_roi_scale: float = 1.5
    box_roi_scale: float = 1.3
    landmark_min_presence: float = 0.5
    # 1: no mesh-rejected detection is a face, because no score bar tells them
    # apart (benchmarks/bench_false_faces.py -> results/false_faces_cpu2.json):
    # the real faces the mesh rejected scored 0.61-0.63 (1 of 581 found on the
    # pose sweep, at 40 deg yaw, 28 deg roll and 2.9 m; 2 of 1510 found FER2013
    # test faces), the 25 non-faces 0.61-0.80. Keeping them all gave 2 false
    # faces on the 26 people-free pictures shipped with scikit-image and
    # matplotlib and 24 on 780 scaled, mirrored and turned copies; dropping them
    # gives 0 and 1 (that one passed the mesh) and costs those 3 faces. Old
    # checkpoints load with it too: it drops detections, never changes a crop.
    blazeface_keep_unconfirmed_above: float = 1.0

    face_cascade: str = "haarcascade_frontalface_alt2.xml"
    detect_max_side: int = 240
    scale_factor: float = 1.2
    min_neighbors: int = 3
    detect_equalize: bool = False
    nms_overlap: float = 0.2

    align: bool = True
    eye_cascade: str = "haarcascade_eye.xml"
    eye_region_width: int = 80
    eye_scale_factor: float = 1.15
    eye_min_neighbors: int = 2
    max_roll_deg: float = 30.0
    eye_refine: bool = True

    lbp_points: int = 8
    lbp_radius: float = 1.0
    lbp_method: str = "default"
    hog_orientations: int = 9
    hog_pixels_per_cell: int = 8
    gabor_wavelengths: Tuple[float, ...] = field(default=(4.0, 8.0))
    gabor_orientations: int = 4

    depth_min_m: float = 0.3
    depth_max_m: float = 5.0
    depth_range_m: float = 0.15
    depth_reference_percentile: float = 2.0
    depth_center_fraction: float = 0.6
    depth_fill_kernel: int = 9
    min_depth_valid_fraction: float = 0.5

    def __post_init__(self) -> None:
        # Tuples survive a JSON/YAML round trip as lists; normalise first.
        object.__setattr__(self, "gabor_wavelengths", tuple(float(w) for w in self.gabor_wavelengths))
        self._validate()

    def _validate(self) -> None:
        """Check every value; raise PreprocessingError naming the first bad field."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise PreprocessingError(
                    f"PreprocessingParams.{name}={getattr(self, name)!r} is invalid: {what}")

        problem = crop_size_problem(self.crop_size)
        need(problem is None, "crop_size", problem or "")
        for name in ("detect_max_side", "min_face_size", "max_face_size", "min_neighbors",
                     "eye_region_width", "eye_min_neighbors", "lbp_points", "hog_orientations",
                     "hog_pixels_per_cell", "gabor_orientations", "depth_fill_kernel", "detector_threads",
                     "detect_tile_side"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "must be an int")
        for name in ("detect_equalize", "align", "eye_refine"):
            need(isinstance(getattr(self, name), bool), name, "must be a bool")
        for name in ("crop_margin", "scale_factor", "nms_overlap", "eye_scale_factor", "max_roll_deg",
                     "lbp_radius", "depth_min_m", "depth_max_m", "depth_range_m",
                     "depth_reference_percentile", "depth_center_fraction", "min_depth_valid_fraction",
                     "blazeface_min_score", "blazeface_nms_iou", "landmark_roi_scale", "box_roi_scale",
                     "landmark_min_presence", "blazeface_keep_unconfirmed_above"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 name, "must be a finite number")

        need(0.0 <= self.crop_margin <= 1.0, "crop_margin", "must be in [0, 1]")
        need(isinstance(self.detector, str) and self.detector in DETECTORS, "detector",
             f"must be one of {tuple(DETECTORS)}")
        need(0.0 < self.blazeface_min_score < 1.0, "blazeface_min_score", "must be in (0, 1)")
        need(0.0 < self.blazeface_nms_iou < 1.0, "blazeface_nms_iou", "must be in (0, 1)")
        need(0.0 <= self.blazeface_keep_unconfirmed_above <= 1.0, "blazeface_keep_unconfirmed_above",
             "must be in [0, 1] (0 keeps every detection the landmarks reject, 1 none)")
        need(self.detect_tile_side == 0 or self.detect_tile_side >= 96, "detect_tile_side",
             "must be 0 (no tiles) or >= 96 pixels")
        need(1 <= self.detector_threads <= 16, "detector_threads", "must be in [1, 16]")
        need(1.0 <= self.landmark_roi_scale <= 3.0, "landmark_roi_scale", "must be in [1, 3]")
        need(0.0 <= self.landmark_min_presence < 1.0, "landmark_min_presence", "must be in [0, 1)")
        need(0.8 <= self.box_roi_scale <= 3.0, "box_roi_scale", "must be in [0.8, 3]")
        need(self.face_cascade in FACE_CASCADES, "face_cascade", f"must be one of {FACE_CASCADES}")
        need(self.detect_max_side >= 64, "detect_max_side", "must be >= 64")
        need(self.min_face_size >= 8, "min_face_size", "must be >= 8 pixels")
        need(self.max_face_size == 0 or self.max_face_size >= self.min_face_size, "max_face_size",
             "must be 0 (no limit) or >= min_face_size")
        need(1.01 <= self.scale_factor <= 2.0, "scale_factor", "must be in [1.01, 2]")
        need(self.min_neighbors >= 0, "min_neighbors", "must be >= 0")
        need(0.0 <= self.nms_overlap <= 1.0, "nms_overlap", "must be in [0, 1]")
        need(self.eye_cascade in EYE_CASCADES, "eye_cascade", f"must be one of {EYE_CASCADES}")
        need(40 <= self.eye_region_width <= 400, "eye_region_width", "must be in [40, 400]")
        need(1.01 <= self.eye_scale_factor <= 2.0, "eye_scale_factor", "must be in [1.01, 2]")
        need(self.eye_min_neighbors >= 0, "eye_min_neighbors", "must be >= 0")
        need(0.0 < self.max_roll_deg <= 90.0, "max_roll_deg", "must be in (0, 90]")
        need(1 <= self.lbp_points <= 24, "lbp_points", "must be in [1, 24]")
        need(0.5 <= self.lbp_radius <= 8.0, "lbp_radius", "must be in [0.5, 8]")
        need(self.lbp_method in LBP_METHODS, "lbp_method", f"must be one of {LBP_METHODS}")
        need(self.hog_orientations >= 1, "hog_orientations", "must be >= 1")
        need(2 <= self.hog_pixels_per_cell <= self.crop_size // 2, "hog_pixels_per_cell",
             "must be in [2, crop_size // 2]")
        need(len(self.gabor_wavelengths) >= 1 and all(2.0 <= w <= self.crop_size / 2
                                                      for w in self.gabor_wavelengths),
             "gabor_wavelengths", "must be a non-empty list of wavelengths in [2, crop_size / 2] pixels")
        need(self.gabor_orientations >= 1, "gabor_orientations", "must be >= 1")
        need(0.0 <= self.depth_min_m < self.depth_max_m, "depth_min_m", "must be >= 0 and < depth_max_m")
        need(0.0 < self.depth_range_m <= 2.0, "depth_range_m", "must be in (0, 2] metres")
        need(0.0 <= self.depth_reference_percentile <= 50.0, "depth_reference_percentile",
             "must be in [0, 50]")
        need(0.05 <= self.depth_center_fraction <= 1.0, "depth_center_fraction", "must be in [0.05, 1]")
        need(self.depth_fill_kernel >= 1 and self.depth_fill_kernel % 2 == 1, "depth_fill_kernel",
             "must be an odd int >= 1")
        need(0.0 <= self.min_depth_valid_fraction <= 1.0, "min_depth_valid_fraction", "must be in [0, 1]")

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python copy (JSON/YAML/torch.save friendly); tuples become lists."""
        out = dataclasses.asdict(self)
        out["gabor_wavelengths"] = list(self.gabor_wavelengths)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessingParams":
        """Build from a dict such as a checkpoint's ``"preprocessing"`` entry.

        Missing keys take their defaults (a checkpoint's dict: use
        :meth:`from_checkpoint`, which also keeps old checkpoints on the
        detector they were trained with).

        Args:
            d: mapping of field name to value.

        Raises:
            PreprocessingError: ``d`` is not a mapping, has unknown keys, or a value is invalid.
        """
        if not isinstance(d, Mapping):
            raise PreprocessingError(f"preprocessing parameters must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PreprocessingError(
                f"unknown preprocessing parameter(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(d))
        except TypeError as exc:  # e.g. a non-iterable gabor_wavelengths
            raise PreprocessingError(f"invalid preprocessing parameters: {exc}") from exc

    @classmethod
    def from_checkpoint(cls, d: Mapping[str, Any]) -> "PreprocessingParams":
        """:meth:`from_dict` for a checkpoint's ``"preprocessing"`` entry.

        A checkpoint written before the ``detector`` field existed was
        trained on Viola-Jones crops (whose other fields it stores), so it
        loads as ``detector="haar"`` and keeps seeing the faces it learnt.

        Raises:
            PreprocessingError: as :meth:`from_dict`.
        """
        if isinstance(d, Mapping) and "detector" not in d:
            d = {**d, "detector": "haar"}
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "PreprocessingParams":
        """Copy with some fields changed (validated).

        Raises:
            PreprocessingError: a changed value is invalid or a name is unknown.
        """
        return type(self).from_dict({**self.to_dict(), **changes})


#: The paper's preprocessing: Viola-Jones faces, Haar eyes, 148 px crops (the
#: settings of the first synthetic-only weights).
HAAR_PAPER = PreprocessingParams(detector="haar", min_face_size=60)
