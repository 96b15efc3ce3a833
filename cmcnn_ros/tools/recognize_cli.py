"""``cmcnn-recognize``: run the CM-CNN pipeline on an image file.

Prints one JSON array with an object per face (box, roll, whether the eyes
were found, and expression, scores, valence/arousal when a model ran); ``[]``
when there is no face. Without weights it runs the preprocessing of Section
III-B alone (detection + rectification), which is how people check that a
photo or a single Kinect frame is usable.

    cmcnn-recognize photo.jpg
    cmcnn-recognize colour.png --depth depth.png --annotate out.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .. import resources
from ..atomic_io import write_bytes_atomic
from . import configure_logging
from ..inference.annotate import Annotation, draw_annotations
from ..model.checkpoint import CheckpointError
from ..preprocessing.params import PreprocessingError, PreprocessingParams
from ..preprocessing.pipeline import FacePreprocessor

LOGGER = logging.getLogger("cmcnn-recognize")


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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmcnn-recognize",
        description="Recognise facial expressions in an image (and its registered depth image); "
                    "prints one JSON object per face.")
    add_image_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"CM-CNN checkpoint (default: the shipped {resources.DEFAULT_MODEL} when present); "
                             "without one only detection and alignment run")
    parser.add_argument("--no-model", action="store_true", help="run the preprocessing only")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--annotate", type=Path, default=None, help="write the image with boxes and labels here")
    parser.add_argument("--verbose", action="store_true", help="log timings")
    return parser


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


def annotate(colour: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """Face boxes with the expression (or, without a model, the eye status) on a BGR copy of the frame."""
    return draw_annotations(colour, [
        Annotation(tuple(face["box"]), f"{face['expression']} {face['confidence']:.2f}" if face.get("expression")
                   else ("eyes" if face["eyes_found"] else "no eyes"))
        for face in faces])


def _write_png_atomic(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image for {path}")
    write_bytes_atomic(path, data.tobytes())


def run(args: argparse.Namespace) -> List[dict]:
    """Process one image and return the per-face dicts (what ``main`` prints)."""
    colour, depth = read_inputs(args)

    checkpoint = args.checkpoint
    if checkpoint is None and not args.no_model:
        checkpoint = resources.find_file(None, resources.DEFAULT_MODEL)
    if checkpoint is not None and not args.no_model:
        from ..inference.recognizer import Recognizer  # torch model only when needed

        recognizer = Recognizer.from_checkpoint(checkpoint, device=args.device)
        result = recognizer.recognize(colour, depth, depth_scale=args.depth_scale)
        LOGGER.info("timings (ms): %s", {k: round(v, 1) for k, v in result.timings.items()})
        faces = [dict(f.to_dict(), classes=recognizer.class_names) for f in result.faces]
    else:
        LOGGER.info("no checkpoint: running detection and alignment only")
        preprocessor = FacePreprocessor(PreprocessingParams(), modalities=("grey",))
        crops = preprocessor.process(colour, None)
        faces = [{"box": list(c.box), "roll_deg": round(float(np.degrees(c.roll)), 2),
                  "eyes_found": bool(c.eyes_found)} for c in crops]
    if args.annotate is not None:
        _write_png_atomic(args.annotate, annotate(colour, faces))
    return faces


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(quiet_level=logging.INFO if args.verbose else logging.WARNING)
    try:
        faces = run(args)
    except (ValueError, CheckpointError, PreprocessingError) as exc:
        # CheckpointError/RecognizerError/PreprocessingError are ValueErrors with a message that says what to fix.
        print(f"cmcnn-recognize: error: {exc}", file=sys.stderr)
        return 2
    json.dump(faces, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
