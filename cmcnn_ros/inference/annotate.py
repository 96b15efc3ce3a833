"""Face boxes and labels drawn on a frame: the node's ``~/debug_image`` and
``cmcnn-recognize --annotate`` draw with this one function. ROS-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

Box = Tuple[int, int, int, int]

_BOX_COLOUR = (0, 255, 0)
_DETAIL_COLOUR = (0, 255, 255)


@dataclass(frozen=True)
class Annotation:
    """What to draw for one face.

    Attributes:
        box: ``(x, y, w, h)`` in image pixels.
        label: text above the box.
        details: lines beside the box (e.g. one per class score).
    """

    box: Box
    label: str
    details: Sequence[str] = ()


def draw_annotations(image: np.ndarray, annotations: Sequence[Annotation]) -> np.ndarray:
    """A BGR copy of ``image`` (grey, BGR or BGRA) with every annotation drawn."""
    # np.array copies: a view of the caller's frame must never be drawn on.
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.array(image[:, :, :3], order="C")
    for a in annotations:
        x, y, w, h = (int(v) for v in a.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), _BOX_COLOUR, 2)
        cv2.putText(out, a.label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _BOX_COLOUR, 1, cv2.LINE_AA)
        for k, line in enumerate(a.details):
            cv2.putText(out, line, (x + w + 4, y + 14 * (k + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _DETAIL_COLOUR,
                        1, cv2.LINE_AA)
    return out
