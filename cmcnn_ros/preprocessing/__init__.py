"""ROS-free preprocessing of Section III-B (Ni et al., IEEE TCDS 2023).

One colour frame (+ registered depth) -> per-face crops of ``crop_size``:
face detection (BlazeFace, or the paper's Viola-Jones), rotation
rectification from the eyes (eq. 1, FaceMesh or Haar eyes), grey, LBP
(eq. 2), HOG/Gabor (ablations) and face-relative depth; then the network
input (``model_input``), built the same way for the node and the trainer.
Depth from 3-D scans (gridfit) is offline work and lives with the trainer
(``cmcnn_training.datasets.scan_depth``).
"""

from ..modalities import MODALITIES
from .alignment import Aligner, Alignment, EyeLocator, EyePair, crop_transform, warp_crop
from .depth import DepthCrop, depth_array_to_metres, face_depth_crop
from .detector import FaceDetection, FaceDetector, NmsRule, make_detector, suppress_overlaps
from .haar import HaarFaceDetector
from .images import Frame, to_grey
from .params import PreprocessingError, PreprocessingParams
from .pipeline import FaceCrops, FacePreprocessor, check_modalities
from .texture import GaborBank, hog_image, lbp_default_codes, lbp_image

__all__ = [
    "Aligner", "Alignment", "DepthCrop", "EyeLocator", "EyePair", "FaceCrops", "FaceDetection", "FaceDetector",
    "FacePreprocessor", "Frame", "GaborBank", "HaarFaceDetector", "MODALITIES", "NmsRule", "PreprocessingError",
    "PreprocessingParams", "check_modalities", "crop_transform", "depth_array_to_metres", "face_depth_crop",
    "hog_image", "lbp_default_codes", "lbp_image", "make_detector", "suppress_overlaps", "to_grey", "warp_crop",
]
