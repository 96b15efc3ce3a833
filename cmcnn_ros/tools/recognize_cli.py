"""``cmcnn-recognize``: run the CM-CNN pipeline on an image file.

Prints one JSON array with an object per face (box, roll, whether the eyes
were found, and expression, scores, valence/arousal when a model ran); ``[]``
when there is no face. Without weights it runs the preprocessing of Section
III-B alone (detection + rectification), which is how people check that a
photo or a single Kinect frame is usable.

    cmcnn-recognize photo.jpg
    cmcnn-recognize colour.png --depth depth.png --annotate out.png
    cmcnn-recognize colour.png --depth depth.png --intrinsics intrinsics.yaml   # + where each face is

With ``--intrinsics`` (the colour camera's calibration) and a depth image,
each face also gets the node's ``position_m`` (the sellion, metres in the
camera's optical frame) and ``orientation_xyzw`` (REP-155 face axes), the
numbers ``fer_node`` publishes as ``Emotion.position`` and ``face_<id>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np

from .. import resources
from ..inference.annotate import Annotation, draw_annotations
from ..preprocessing.params import PreprocessingParams
from ..preprocessing.pipeline import FacePreprocessor
from .single_image import add_image_arguments, read_inputs, run_image_tool, write_png_atomic

if TYPE_CHECKING:
    from ..inference.face_pose import CameraIntrinsics

logger = logging.getLogger("cmcnn-recognize")


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
    # Not argparse choices: naming them would import torch for every call, --no-model too;
    # a wrong name is refused in one line by the recognizer.
    parser.add_argument("--backend", default=None,
                        help="what runs the network: auto (the default: ONNX Runtime when installed, else torch), "
                             "torch or onnxruntime")
    parser.add_argument("--intrinsics", type=Path, default=None,
                        help="colour camera calibration YAML (fx, fy, cx, cy, width, height as cmcnn-synth writes "
                             "it, or a ROS camera_calibration file): also locate each face")
    parser.add_argument("--annotate", type=Path, default=None, help="write the image with boxes and labels here")
    parser.add_argument("--verbose", action="store_true", help="log timings")
    return parser


def annotate(colour: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """Face boxes with the expression (or, without a model, the eye status) on a BGR copy of the frame."""
    return draw_annotations(colour, [
        Annotation(tuple(face["box"]), f"{face['expression']} {face['confidence']:.2f}" if face.get("expression")
                   else ("eyes" if face["eyes_found"] else "no eyes"))
        for face in faces])


def read_intrinsics(path: Path) -> "CameraIntrinsics":
    """The camera calibration file of ``--intrinsics``.

    Raises:
        ValueError: unreadable or unusable file, naming it and the problem.
    """
    import yaml

    from ..inference.face_pose import CameraIntrinsics, IntrinsicsError

    try:
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict):
            raise IntrinsicsError("not a YAML mapping")
        return CameraIntrinsics.from_mapping(doc)
    except (OSError, yaml.YAMLError, IntrinsicsError) as exc:
        raise ValueError(f"--intrinsics {path}: {exc}") from exc


def run(args: argparse.Namespace) -> List[dict]:
    """Process one image and return the per-face dicts (what ``main`` prints)."""
    colour, depth = read_inputs(args)
    intrinsics = read_intrinsics(args.intrinsics) if args.intrinsics else None   # a bad file fails first

    checkpoint = args.checkpoint
    if checkpoint is None and not args.no_model:
        checkpoint = resources.find_file(None, resources.DEFAULT_MODEL)
    if checkpoint is not None and not args.no_model:
        from ..inference.recognizer import Recognizer  # torch model only when needed

        chosen = {"backend": args.backend} if args.backend else {}   # else the recognizer's default
        recognizer = Recognizer.from_checkpoint(checkpoint, device=args.device, **chosen)
        result = recognizer.recognize(colour, depth, depth_scale=args.depth_scale,
                                      intrinsics=intrinsics)
        logger.info("timings (ms): %s", {k: round(v, 1) for k, v in result.timings.items()})
        faces = [dict(f.to_dict(), classes=recognizer.class_names) for f in result.faces]
    else:
        logger.info("no checkpoint: running detection and alignment only")
        preprocessor = FacePreprocessor(PreprocessingParams(), modalities=("grey",))
        crops = preprocessor.process(colour, None)
        faces = [{"box": list(c.box), "roll_deg": round(float(np.degrees(c.roll)), 2),
                  "eyes_found": bool(c.eyes_found)} for c in crops]
    if args.annotate is not None:
        write_png_atomic(args.annotate, annotate(colour, faces))
    return faces


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_image_tool("cmcnn-recognize", get_args_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
