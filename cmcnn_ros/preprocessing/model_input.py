"""The model input: per-face crops -> the ``(B, M, S, S)`` array CM-CNN reads.

The one builder of the network input for the node, the CLI and the trainer
(Ni et al., IEEE TCDS 2023, Section III-C: one image per modality, stacked in
the model's channel order). Training reads crops from a cache that keeps
texture modalities as 8-bit images and depth as ``float16`` (a few thousand
frames fit in memory); the network learns on exactly those values, so the
live path stores its crops the same way before stacking, and a frame gives
the same input bit for bit whichever way it came (``test_model_input.py``).
The difference this removes was at most half a grey level for HOG/Gabor,
2.4e-4 for depth and one float32 step for LBP.

A face without usable depth has an all-zero depth channel, the convention
depth-modality dropout trains on (docs/ARCHITECTURE.md "Modalities").
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from ..modalities import DEPTH_MODALITIES, GREY_DERIVED
from .params import PreprocessingError

#: Levels of a stored texture crop (``uint8``: value * 255, rounded).
TEXTURE_LEVELS = 255


def store(modality: str, crops: np.ndarray) -> np.ndarray:
    """Crops of one modality in their stored precision.

    Args:
        modality: the modality name.
        crops: ``float32`` crops in [0, 1] (any shape), or crops already stored.

    Returns:
        ``uint8`` levels for a texture modality, ``float16`` for depth; an
        array already in that type is returned as it is.
    """
    a = np.asarray(crops)
    if modality in DEPTH_MODALITIES:
        return a if a.dtype == np.float16 else a.astype(np.float32, copy=False).astype(np.float16)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32, copy=False)
    return np.clip(np.rint(a * float(TEXTURE_LEVELS)), 0, TEXTURE_LEVELS).astype(np.uint8)


def load(stored: np.ndarray) -> np.ndarray:
    """Stored crops (see :func:`store`) as ``float32`` in [0, 1]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) * (1.0 / TEXTURE_LEVELS)
    return stored.astype(np.float32)


def at_model_precision(modality: str, crops: np.ndarray) -> np.ndarray:
    """``float32`` crops holding exactly the values the model gets for them (stored, then loaded)."""
    return load(store(modality, crops))


def mirror_images(images: Mapping[str, np.ndarray],
                  texture: Callable[[str, np.ndarray], np.ndarray]) -> Dict[str, np.ndarray]:
    """The left-right mirror image of every face's crops, for horizontal-flip test-time averaging.

    An LBP (HOG, Gabor) code is not mirror symmetric: mirroring the texture
    image is not the texture of the mirrored face, so grey-derived modalities
    are recomputed from the mirrored grey crop; grey and depth are mirrored.

    Args:
        images: modality -> ``(B, S, S)`` crops, ``float32`` in [0, 1] (the
            live path) or stored (the trainer's cache); must hold ``grey``
            when it holds a grey-derived modality.
        texture: ``texture(name, uint8 grey) -> float32 image``
            (:class:`~.texture.TextureImages`).

    Returns:
        The mirrored crops, each in the type it came in.

    Raises:
        PreprocessingError: a grey-derived modality without its grey crop.
    """
    grey = images.get("grey")
    if grey is None and any(name in GREY_DERIVED for name in images):
        raise PreprocessingError(
            f"mirroring {sorted(images)} needs the grey crop to recompute the texture modalities from")
    out: Dict[str, np.ndarray] = {}
    for name, crops in images.items():
        if name not in GREY_DERIVED:
            out[name] = np.ascontiguousarray(crops[:, :, ::-1])
            continue
        levels = store("grey", grey[:, :, ::-1])  # the uint8 grey the texture was computed from
        maps = [texture(name, np.ascontiguousarray(g)) for g in levels]
        stacked = np.stack(maps) if maps else np.zeros(crops.shape, np.float32)
        out[name] = store(name, stacked) if crops.dtype == np.uint8 else stacked.astype(crops.dtype, copy=False)
    return out


def zero_depth(x: np.ndarray, modalities: Sequence[str], rows: np.ndarray) -> None:
    """Give the selected rows of a model input ``x`` the all-zero missing-depth channel, in place.

    Args:
        x: ``(B, M, S, S)`` model input.
        modalities: its channel order.
        rows: ``(B,)`` bool mask (or indices) of the faces whose depth is missing or dropped.
    """
    for j, name in enumerate(modalities):
        if name in DEPTH_MODALITIES:
            x[rows, j] = 0.0


def build_model_input(images: Mapping[str, np.ndarray], modalities: Sequence[str],
                depth_valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Stack per-modality crops into the model input.

    Args:
        images: modality -> ``(B, S, S)`` crops, ``float32`` in [0, 1] or
            stored (``uint8`` texture, ``float16`` depth); at least the
            ``modalities``.
        modalities: channel order (the model's ``config.modalities``).
        depth_valid: optional ``(B,)`` bool; faces marked False get the
            all-zero depth channel.

    Returns:
        ``float32`` ``(B, M, S, S)``, every crop at the stored precision.

    Raises:
        PreprocessingError: a modality is missing or the crops' shapes differ.
    """
    missing = [m for m in modalities if m not in images]
    if missing:
        raise PreprocessingError(f"no {missing} crops to build the model input from (have {sorted(images)})")
    channels = [at_model_precision(m, images[m]) for m in modalities]
    shapes = {c.shape for c in channels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise PreprocessingError(f"crops of {list(modalities)} must all be (B, S, S), got shapes "
                                 f"{[c.shape for c in channels]}")
    x = np.stack(channels, axis=1)
    if depth_valid is not None:
        zero_depth(x, modalities, ~np.asarray(depth_valid, dtype=bool))
    return x


__all__ = ["TEXTURE_LEVELS", "at_model_precision", "build_model_input", "load", "mirror_images", "store",
           "zero_depth"]
