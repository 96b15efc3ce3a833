"""Stream results -> the node's output messages (``cmcnn_ros/EmotionArray``, the debug image).

The values are the stream's (:class:`cmcnn_ros.inference.stream.StreamFace`:
id, clipped box, smoothed scores and what is derived from them); this module
only copies them into message fields, beside :mod:`cmcnn_ros.ros.conversions`
(images in) as the way out. :func:`emotion` is the one place a face becomes
an ``Emotion``; every field of a face reaches it unless
:data:`NOT_IN_MESSAGE` says why not (``test/test_messages.py`` holds the two
together, so a new field of the face is either published or left out on
purpose).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Sequence

import numpy as np
from geometry_msgs.msg import Point
from sensor_msgs.msg import Image, RegionOfInterest

from cmcnn_ros.inference.annotate import Annotation, draw_annotations
from cmcnn_ros.inference.stream import StreamFace
from cmcnn_ros.ros import conversions

if TYPE_CHECKING:
    from cmcnn_ros.msg import Emotion, EmotionArray

#: Fields of :class:`StreamFace` that ``Emotion`` does not carry, and why.
NOT_IN_MESSAGE: Dict[str, str] = {
    "alignment": "which crop path a face took is a diagnostic of the offline tools (cmcnn-recognize, "
                 "bag reports); eyes_found says what a consumer needs",
    "is_new": "a consumer learns new faces from face_id (and ROS4HRI's /humans/faces/tracked)",
    "orientation": "the head's orientation is the rotation of the face's TF frame face_<face_id> (REP-155's "
                   "head pose, published with face_source own); with face_source ros4hri the detector owns "
                   "the face frames",
}


def emotion(face: StreamFace) -> "Emotion":
    """The ``Emotion`` of one stream face: every published field, converted to the message's types."""
    from cmcnn_ros.msg import Emotion

    x, y, w, h = face.box
    return Emotion(
        face_id=face.face_id,
        roi=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h), do_rectify=False),
        roll=float(face.roll),
        eyes_found=bool(face.eyes_found),
        expression=face.expression,
        confidence=float(face.confidence),
        scores=[float(s) for s in np.asarray(face.scores).reshape(-1)],
        valence=float(face.valence),
        arousal=float(face.arousal),
        depth_valid=bool(face.depth_valid),
        depth_valid_fraction=float(face.depth_valid_fraction),
        position=Point(x=float(face.position[0]), y=float(face.position[1]), z=float(face.position[2])),
    )


def emotion_array(header: Any, class_names: Sequence[str], faces: Sequence[StreamFace]) -> "EmotionArray":
    """An ``EmotionArray`` with the colour image's ``header`` and one ``Emotion`` per face."""
    from cmcnn_ros.msg import EmotionArray

    return EmotionArray(header=header, classes=[str(c) for c in class_names], faces=[emotion(f) for f in faces])


def debug_image(header: Any, colour: np.ndarray, class_names: Sequence[str], faces: Sequence[StreamFace]) -> Image:
    """The colour frame with each face's box, id, expression and class scores (``bgr8``)."""
    img = draw_annotations(colour, [
        Annotation(face.box, f"{face.face_id} {face.expression} {face.confidence:.2f}"
                             f"{'' if face.depth_valid else ' (no depth)'}",
                   [f"{name} {s:.2f}" for name, s in zip(class_names, np.asarray(face.scores).reshape(-1))])
        for face in faces])
    out = Image(**conversions.array_to_image_fields(img, "bgr8", bigendian=conversions.native_is_bigendian()))
    out.header = header
    return out
