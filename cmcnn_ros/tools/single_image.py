"""What the single-image tools (``cmcnn-recognize``, ``cmcnn-explain``) share:
their image arguments, reading the colour/depth files, writing a PNG, and a
``main`` that turns every expected error into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..atomic_io import write_bytes_atomic
from ..model.checkpoint import CheckpointError
from ..preprocessing.params import PreprocessingError
from . import configure_logging


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, ``--depth`` and ``--depth-scale`` arguments of the single-image tools."""
    parser.add_argument("image", type=Path, help="colour or grey image (PNG, JPEG, ...)")
    parser.add_argument("--depth", type=Path, default=None,
                        help="registered depth image: 16-bit PNG in millimetres (Kinect 16UC1) "
                             "or a float32 .npy/.tiff in metres")
    parser.add_argument("--depth-scale", type=float, default=None,
                        help="metres per depth unit (default 0.001 for 16-bit, 1.0 for float)")


def read_inputs(args: argparse.Namespace) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The colour image and the optional depth image named by :func:`add_image_arguments`' arguments.

    Raises:
        ValueError: unreadable files or a colour image that is not 8-bit.
    """
    colour = _read_image(args.image, cv2.IMREAD_UNCHANGED, "image")
    if colour.dtype != np.uint8:
        raise ValueError(f"image {args.image} has dtype {colour.dtype}; expected an 8-bit colour or grey image")
    depth = _read_image(args.depth, cv2.IMREAD_UNCHANGED, "depth image") if args.depth else None
    return colour, depth


def _read_image(path: Path, flags: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what} {path} is not a readable .npy array: {exc}") from exc
    image = cv2.imread(str(path), flags)
    if image is None or image.size == 0:
        raise ValueError(f"{what} {path} could not be decoded (corrupt or unsupported format)")
    return image


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image for {path}")
    write_bytes_atomic(path, data.tobytes())


def run_image_tool(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], List[dict]],
                   argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run, print the per-face dicts as strict JSON; a bad input is one line and exit 2.

    CheckpointError, RecognizerError and PreprocessingError are ValueErrors
    whose message says what to fix; a value JSON cannot hold (NaN) is refused
    the same way rather than printed.
    """
    args = parser.parse_args(argv)
    configure_logging(quiet_level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    try:
        text = json.dumps(run(args), allow_nan=False)
    except (ValueError, CheckpointError, PreprocessingError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text + "\n")
    return 0
