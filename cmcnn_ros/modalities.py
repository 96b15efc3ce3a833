"""Modality names: the input channels of CM-CNN (Ni et al., IEEE TCDS 2023, Sections III-B and III-C).

The preprocessing produces these images and the network reads them, so the
names live below both (``preprocessing/`` and ``model/`` import them from
here). Section III-B makes the grey image, its LBP (eq. 2) and the facial
depth image; Tables II/III swap LBP for HOG or Gabor images in the ablation.
Every modality is one ``float32`` ``crop_size`` square channel in [0, 1]
(docs/ARCHITECTURE.md "Modalities"); the crop side has its one check here too
(:func:`crop_size_problem`).
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

#: Every modality name, in the canonical channel order (the reproduce rows' G, L, H, B, D; a
#: model's own order is its config's).
MODALITIES: Tuple[str, ...] = ("grey", "lbp", "hog", "gabor", "depth")
#: Modalities computed from the aligned grey crop; the deep texture FEN reads them (Fig. 3(b)).
TEXTURE_MODALITIES: Tuple[str, ...] = ("grey", "lbp", "hog", "gabor")
#: Texture modalities derived from the grey crop (recomputed, never warped, when the grey crop is augmented).
GREY_DERIVED: Tuple[str, ...] = ("lbp", "hog", "gabor")
#: Modalities from the registered depth frame; the shallow depth FEN reads them (Fig. 3(a)).
DEPTH_MODALITIES: Tuple[str, ...] = ("depth",)

#: Sides in pixels a crop (the model input's ``S``) may have: the FENs halve it
#: four times (Section III-C, ``model.config.NUM_STAGES``), so at least 16; 1024
#: is far beyond any face (the paper uses 148, the default weights 48).
CROP_SIZE_RANGE: Tuple[int, int] = (16, 1024)


def crop_size_problem(size: object) -> Optional[str]:
    """What is wrong with a crop side, as one line, or None.

    The one check behind ``PreprocessingParams.crop_size`` (stored in every
    checkpoint), ``ModelConfig.input_size`` (derived from it) and
    ``cmcnn-reproduce --crop-size``, so all three accept the same sides.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        return f"must be a whole number of pixels, got {size!r}"
    low, high = CROP_SIZE_RANGE
    if not low <= size <= high:
        return f"must be in [{low}, {high}] pixels (the network halves it four times), got {size}"
    return None


def modality_problem(modalities: Iterable[str]) -> Optional[str]:
    """What is wrong with a modality list, as one line, or None.

    The one check behind :class:`~cmcnn_ros.model.config.ModelConfig` and
    :func:`~cmcnn_ros.preprocessing.pipeline.check_modalities`, so a network
    and its preprocessing accept and refuse the same lists.
    """
    if isinstance(modalities, str):
        return f"modalities must be a sequence of names, got the string {modalities!r}"
    mods = tuple(modalities)
    if not mods:
        return f"at least one modality is needed; choose from {list(MODALITIES)}"
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        return f"unknown modality name(s) {unknown}; choose from {list(MODALITIES)}"
    if len(set(mods)) != len(mods):
        return f"duplicate modality names in {list(mods)}"
    return None


__all__ = ["CROP_SIZE_RANGE", "DEPTH_MODALITIES", "GREY_DERIVED", "MODALITIES", "TEXTURE_MODALITIES",
           "crop_size_problem", "modality_problem"]
