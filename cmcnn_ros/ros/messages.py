"""Stream results -> the node's output messages (``cmcnn_ros/EmotionArray``, the debug image).

The values are the stream's (:class:`cmcnn_ros.inference.stream.StreamFace`:
id, clipped box, smoothed scores and what is derived from them); this module
only copies them into message fields, beside :mod:`cmcnn_ros.ros.conversions`
(images in) as the way out.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sensor_msgs.msg import Image, RegionOfInterest

from cmcnn_ros.inference.annotate import Annotation, draw_annotations
from cmcnn_ros.ros import conversions


def emotion_array(header: Any, class_names: Sequence[str], faces: Sequence[Any]) -> Any:
    """An ``EmotionArray`` with the colour image's ``header`` and one ``Emotion`` per face."""
    from cmcnn_ros.msg import Emotion, EmotionArray

    out = EmotionArray()
    out.header = header
    out.classes = [str(c) for c in class_names]
    for face in faces:
        x, y, w, h = face.box
        e = Emotion()
        e.face_id = face.face_id
        e.roi = RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h), do_rectify=False)
        e.roll = float(face.roll)
        e.eyes_found = bool(face.eyes_found)
        e.expression = face.expression
        e.confidence = float(face.confidence)
        e.scores = [float(s) for s in np.asarray(face.scores).reshape(-1)]
        e.valence, e.arousal = float(face.valence), float(face.arousal)
        e.depth_valid = bool(face.depth_valid)
        e.depth_valid_fraction = float(face.depth_valid_fraction)
        out.faces.append(e)
    return out


def debug_image(header: Any, colour: np.ndarray, class_names: Sequence[str], faces: Sequence[Any]) -> Image:
    """The colour frame with each face's box, id, expression and class scores (``bgr8``)."""
    img = draw_annotations(colour, [
        Annotation(face.box, f"{face.face_id} {face.expression} {face.confidence:.2f}"
                             f"{'' if face.depth_valid else ' (no depth)'}",
                   [f"{name} {s:.2f}" for name, s in zip(class_names, np.asarray(face.scores).reshape(-1))])
        for face in faces])
    out = Image(**conversions.array_to_image_fields(img, "bgr8", bigendian=conversions.native_is_bigendian()))
    out.header = header
    return out
