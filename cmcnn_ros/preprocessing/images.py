"""One camera frame, checked once, and the grey and RGB copies its consumers read.

Section III-B of Ni et al. (IEEE TCDS 2023) works on the grey-scale image
(Viola-Jones detection, the grey and LBP crops of eq. 2); BlazeFace and
FaceMesh read RGB. A :class:`Frame` checks a ``uint8`` BGR, BGRA or grey frame
once and makes each copy at most once, when first read, so the detector, the
tracker's local searches, the aligner and the texture images of one frame
share them. This is the package's one colour conversion.
"""

from __future__ import annotations

from functools import cached_property
from typing import Tuple, Union

import cv2
import numpy as np

from .params import PreprocessingError


def _check(image: np.ndarray) -> np.ndarray:
    """``image`` if it is a non-empty ``uint8`` HxW, HxWx1, HxWx3 or HxWx4 array (one clear error otherwise)."""
    if not isinstance(image, np.ndarray):
        raise PreprocessingError(f"colour must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise PreprocessingError(f"colour frame is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise PreprocessingError(
            f"colour must be uint8 (BGR, BGRA or grey), got dtype {image.dtype}; scale float images "
            "to 0..255 and convert with .astype(np.uint8)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
        return image
    raise PreprocessingError(
        f"colour must be HxW grey, HxWx3 BGR or HxWx4 BGRA, got shape {image.shape}")


class Frame:
    """A checked ``uint8`` frame (BGR, BGRA or grey) with its grey and RGB versions, each made once.

    Not thread-safe: one frame is read by one pipeline.

    Args:
        image: ``uint8`` BGR HxWx3, BGRA HxWx4 or grey HxW / HxWx1.

    Raises:
        PreprocessingError: anything else (the message says what is wrong).
    """

    def __init__(self, image: np.ndarray) -> None:
        self.image = _check(image)

    @property
    def shape(self) -> Tuple[int, int]:
        """``(h, w)`` in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @cached_property
    def grey(self) -> np.ndarray:
        """``uint8`` HxW (the frame itself when it is grey already)."""
        image = self.image
        if image.ndim == 2:
            return image
        if image.shape[2] == 1:
            return np.ascontiguousarray(image[:, :, 0])
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)

    @cached_property
    def rgb(self) -> np.ndarray:
        """``uint8`` HxWx3 RGB (grey repeated for a grey frame)."""
        image = self.image
        if image.ndim == 2 or image.shape[2] == 1:
            return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


#: What the detectors and the preprocessing accept: a camera array or a frame already checked.
Image = Union[np.ndarray, Frame]


def as_frame(image: Image) -> Frame:
    """``image`` itself when it is a :class:`Frame`, else a new one (checked: :class:`PreprocessingError`)."""
    return image if isinstance(image, Frame) else Frame(image)


def to_grey(image: Image) -> np.ndarray:
    """Grey ``uint8`` HxW of a BGR, BGRA or grey ``uint8`` frame.

    Raises:
        PreprocessingError: not a non-empty uint8 HxW / HxWx1 / HxWx3 / HxWx4 array.
    """
    return as_frame(image).grey


__all__ = ["Frame", "Image", "as_frame", "to_grey"]
