"""The one torch-device check shared by the recognizer, the node and the trainer.

Every ``--device`` flag and ``device`` parameter takes the same words
(:data:`DEVICE_CHOICES`, plus ``cuda:N``), and asking for CUDA where there is
none is refused up front with a message saying what to use instead, rather
than failing later inside the first ``.to(device)``.
"""

from __future__ import annotations

import re

import torch

#: Words every device option accepts; ``cuda:N`` (a GPU index) is accepted too.
DEVICE_CHOICES = ("auto", "cpu", "cuda")

_CUDA_INDEX = re.compile(r"cuda:\d+")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as asked.

    Raises:
        ValueError: anything else, or a CUDA device asked for while
            ``torch.cuda.is_available()`` is False (one line naming the fix).
    """
    word = str(name).strip().lower()
    if word == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if word not in DEVICE_CHOICES and not _CUDA_INDEX.fullmatch(word):
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    if word.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch.cuda.is_available() is False; "
                         "use --device cpu or auto")
    return torch.device(word)
