"""Inference: the Recognizer (frame -> per-face expressions), face tracking, and
the stream (Recognizer + tracker + smoothing: what the node publishes).

ROS-free; the node in ``cmcnn_ros.ros`` is a thin layer over these classes.
"""

from .recognizer import FaceResult, NonFiniteScoresError, RecognitionResult, Recognizer, RecognizerError
from .stream import ExpressionStream, StreamFace, StreamResult

__all__ = ["ExpressionStream", "FaceResult", "NonFiniteScoresError", "RecognitionResult", "Recognizer",
           "RecognizerError", "StreamFace", "StreamResult"]
