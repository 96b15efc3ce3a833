"""Inference: the Recognizer (frame pair -> per-face expressions) and face tracking.

ROS-free; the node in ``cmcnn_ros.ros`` is a thin layer over these classes.
"""

from .recognizer import FaceResult, RecognitionResult, Recognizer, RecognizerError, resolve_device

__all__ = ["FaceResult", "RecognitionResult", "Recognizer", "RecognizerError", "resolve_device"]
