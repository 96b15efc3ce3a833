"""Texture images of an aligned face crop: LBP (eq. 2), HOG and Gabor.

Ni et al. (IEEE TCDS 2023), Section III-B 3, compute LBP components (eq. 2)
from the grey facial region; Tables II/III swap LBP for HOG (G+H+D) or Gabor
(G+B+D) in the ablation. All three are computed on the ``crop_size`` aligned
grey crop only (never the whole frame) and returned as ``float32`` images in
[0, 1] of the crop's size.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Tuple

import cv2
import numpy as np
from skimage.feature import hog, local_binary_pattern

from ..modalities import TEXTURE_MODALITIES
from .params import PreprocessingError, PreprocessingParams


def lbp_max_code(points: int, method: str) -> float:
    """Largest code ``local_binary_pattern`` can return for ``points`` and ``method``.

    Args:
        points: number of neighbours P.
        method: scikit-image method name (not "var", which is unbounded).
    """
    if method == "uniform":
        return float(points + 1)
    if method == "nri_uniform":
        return float(points * (points - 1) + 2)
    return float(2 ** points - 1)


def lbp_default_codes(grey: np.ndarray, points: int, radius: float) -> np.ndarray:
    """``local_binary_pattern(grey, points, radius, "default")``, vectorised.

    scikit-image loops per pixel in Cython (~3 ms for a 148x148 crop on these
    CPUs); this NumPy version (~0.8 ms) repeats its arithmetic operation by
    operation: neighbour offsets rounded to 5 decimals, bilinear
    interpolation with the per-pixel fractions ``r - floor(r)``, zeros
    outside the image, ``neighbour - centre >= 0``. The result is identical
    bit for bit (checked by ``test/test_preprocessing.py`` against
    scikit-image for several P and R).

    Args:
        grey: 2-D ``uint8`` image.
        points: number of neighbours P.
        radius: radius R in pixels.

    Returns:
        ``float64`` code image (like scikit-image's).
    """
    img = grey.astype(np.float64)
    height, width = img.shape
    angles = 2 * np.pi * np.arange(points, dtype=np.double) / points
    offsets_r = np.round(-radius * np.sin(angles), 5)
    offsets_c = np.round(radius * np.cos(angles), 5)
    pad = int(math.ceil(radius)) + 1
    padded = np.zeros((height + 2 * pad, width + 2 * pad))
    padded[pad:pad + height, pad:pad + width] = img
    rows = np.arange(height, dtype=np.float64)[:, None]
    cols = np.arange(width, dtype=np.float64)[None, :]
    codes = np.zeros((height, width), np.float64)
    top, bottom, tmp = (np.empty((height, width)) for _ in range(3))
    ge = np.empty((height, width), bool)

    def shifted(dr: int, dc: int) -> np.ndarray:
        return padded[pad + dr:pad + dr + height, pad + dc:pad + dc + width]

    for i in range(points):
        r0, r1 = int(math.floor(offsets_r[i])), int(math.ceil(offsets_r[i]))
        c0, c1 = int(math.floor(offsets_c[i])), int(math.ceil(offsets_c[i]))
        if r0 == r1 and c0 == c1:
            # Integer offset: the interpolation weights are exactly 1 and 0.
            np.greater_equal(shifted(r0, c0), img, out=ge)
        else:
            r, c = rows + offsets_r[i], cols + offsets_c[i]
            fr, fc = r - np.floor(r), c - np.floor(c)
            np.multiply(1 - fc, shifted(r0, c0), out=top)
            np.multiply(fc, shifted(r0, c1), out=tmp)
            top += tmp
            np.multiply(1 - fc, shifted(r1, c0), out=bottom)
            np.multiply(fc, shifted(r1, c1), out=tmp)
            bottom += tmp
            np.multiply(1 - fr, top, out=top)
            np.multiply(fr, bottom, out=bottom)
            top += bottom
            # a - b >= 0 and a >= b agree for finite doubles.
            np.greater_equal(top, img, out=ge)
        codes += ge * float(1 << i)
    return codes


def lbp_image(grey: np.ndarray, params: PreprocessingParams) -> np.ndarray:
    """LBP code image (eq. 2) scaled to [0, 1].

    Eq. (2) sums ``S(g_n - g_c) 2^n``; scikit-image's "default" method is
    that sum with ``n`` from 0 (a constant factor 2 away, removed by the
    scaling); it runs through :func:`lbp_default_codes`, other methods
    through scikit-image. For ``method="var"`` (a contrast measure, no codes) the image is
    divided by its maximum instead.

    Args:
        grey: ``uint8`` SxS aligned grey crop.
        params: LBP P, R and method.

    Returns:
        ``float32`` SxS image in [0, 1].
    """
    if params.lbp_method == "default":
        codes = lbp_default_codes(grey, params.lbp_points, params.lbp_radius)
    else:
        codes = local_binary_pattern(grey, params.lbp_points, params.lbp_radius, method=params.lbp_method)
    if params.lbp_method == "var":
        codes = np.nan_to_num(codes, nan=0.0)
        top = float(codes.max())
        return (codes / top).astype(np.float32) if top > 0 else np.zeros(grey.shape, np.float32)
    return (codes * (1.0 / lbp_max_code(params.lbp_points, params.lbp_method))).astype(np.float32)


def hog_image(grey: np.ndarray, params: PreprocessingParams) -> np.ndarray:
    """HOG visualisation image (``skimage.feature.hog(visualize=True)``) scaled to [0, 1].

    Each cell draws its orientation histogram as oriented line segments;
    the image is divided by its maximum (a flat crop gives zeros).

    Args:
        grey: ``uint8`` SxS aligned grey crop.
        params: HOG orientations and cell size.

    Returns:
        ``float32`` SxS image in [0, 1].
    """
    cell = params.hog_pixels_per_cell
    _, image = hog(grey, orientations=params.hog_orientations, pixels_per_cell=(cell, cell),
                   cells_per_block=(1, 1), visualize=True, feature_vector=True)
    image = np.asarray(image, dtype=np.float32)
    top = float(image.max())
    return image / top if top > 0 else np.zeros(grey.shape, np.float32)


class GaborBank:
    """Quadrature Gabor filter bank; the magnitude image averages the bank.

    For every wavelength and orientation an even (cosine) and odd (sine)
    kernel give a local energy ``sqrt(even^2 + odd^2)``; the mean energy over
    the bank is divided by its 99th percentile and clipped, so one specular
    highlight cannot flatten the rest of the crop.
    """

    def __init__(self, params: PreprocessingParams) -> None:
        """Build the kernels (one octave bandwidth: sigma = 0.56 * wavelength)."""
        self.kernels: List[Tuple[np.ndarray, np.ndarray]] = []
        for wavelength in params.gabor_wavelengths:
            sigma = 0.56 * wavelength
            ksize = int(2 * math.ceil(3 * sigma) + 1)
            for k in range(params.gabor_orientations):
                theta = math.pi * k / params.gabor_orientations
                even = cv2.getGaborKernel((ksize, ksize), sigma, theta, wavelength, 0.5, 0.0, ktype=cv2.CV_32F)
                odd = cv2.getGaborKernel((ksize, ksize), sigma, theta, wavelength, 0.5, math.pi / 2,
                                         ktype=cv2.CV_32F)
                # Zero DC so flat regions give no response.
                even -= even.mean()
                odd -= odd.mean()
                self.kernels.append((even, odd))

    def magnitude(self, grey: np.ndarray) -> np.ndarray:
        """Mean Gabor energy of ``grey`` scaled to [0, 1].

        Args:
            grey: ``uint8`` SxS aligned grey crop.

        Returns:
            ``float32`` SxS image in [0, 1].
        """
        src = grey.astype(np.float32) * (1.0 / 255.0)
        total = np.zeros(src.shape, np.float32)
        for even, odd in self.kernels:
            re = cv2.filter2D(src, cv2.CV_32F, even, borderType=cv2.BORDER_REFLECT)
            im = cv2.filter2D(src, cv2.CV_32F, odd, borderType=cv2.BORDER_REFLECT)
            total += cv2.magnitude(re, im)
        top = float(np.percentile(total, 99.0))
        # Below ~1e-3 there is no texture, only float round-off of a flat crop.
        if top <= 1e-3:
            return np.zeros(src.shape, np.float32)
        return np.clip(total * (1.0 / top), 0.0, 1.0).astype(np.float32)


def grey_image(grey: np.ndarray) -> np.ndarray:
    """The grey modality: a ``uint8`` crop as ``float32`` in [0, 1]."""
    return grey.astype(np.float32) * np.float32(1.0 / 255.0)


class TextureImages:
    """Every texture modality of an aligned ``uint8`` grey crop, by name.

    The one place that maps a texture modality name to its image, used by
    the preprocessing on each face and by the trainer's augmentation, which
    recomputes the texture from an augmented grey crop.
    """

    def __init__(self, params: PreprocessingParams, modalities: Iterable[str] = ()) -> None:
        """Keep the settings; the Gabor bank is built now when ``modalities`` asks for Gabor, else on first use."""
        self.params = params
        self._gabor: Optional[GaborBank] = GaborBank(params) if "gabor" in tuple(modalities) else None

    def __call__(self, name: str, grey: np.ndarray) -> np.ndarray:
        """The ``name`` image of ``grey``: ``float32`` SxS in [0, 1].

        Raises:
            PreprocessingError: ``name`` is not a texture modality.
        """
        if name == "grey":
            return grey_image(grey)
        if name == "lbp":
            return lbp_image(grey, self.params)
        if name == "hog":
            return hog_image(grey, self.params)
        if name == "gabor":
            if self._gabor is None:
                self._gabor = GaborBank(self.params)
            return self._gabor.magnitude(grey)
        raise PreprocessingError(f"{name!r} is not a texture modality; those are {list(TEXTURE_MODALITIES)}")
