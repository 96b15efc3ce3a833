"""The torch device names every entry point accepts, checked in one place.

The node's ``device`` parameter, ``cmcnn-recognize --device``, ``cmcnn-train
--device`` and the evaluators all take the same names and refuse the same
ones: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` and
``cuda:N``. Other torch back-ends (``mps``, ``xpu``...) are refused: the
network and its fused inference path are only tested on these two.

torch is imported only when a device is resolved, so a parameter check does
not load it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Words every device option accepts; ``cuda:N`` (a GPU index) is accepted too.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: The accepted spellings, for help texts and error messages.
DEVICE_CHOICES_TEXT = "auto, cpu, cuda or cuda:N"
#: Regular expression of the accepted names (a full match is a valid name).
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


class DeviceError(ValueError):
    """A device name that is not accepted here, or CUDA asked for where there is none."""


def check_device_name(name: str) -> str:
    """The normalised device name (``""`` -> ``"auto"``), without importing torch.

    Raises:
        DeviceError: not one of :data:`DEVICE_CHOICES_TEXT`.
    """
    norm = str(name).strip().lower() or "auto"
    if not re.fullmatch(DEVICE_PATTERN, norm):
        raise DeviceError(f"unknown device {name!r}: use {DEVICE_CHOICES_TEXT}")
    return norm


def resolve_device(device: Union[str, "torch.device"]) -> "torch.device":
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked.

    Raises:
        DeviceError: an unknown name, or a CUDA device asked for where CUDA is
            not available.
    """
    import torch

    if isinstance(device, torch.device):
        if device.type not in ("cpu", "cuda"):
            raise DeviceError(f"device type {device.type!r} is not supported; use {DEVICE_CHOICES_TEXT}")
        resolved = device
    else:
        name = check_device_name(device)
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for but CUDA is not available here; "
                          "use auto or cpu")
    return resolved
