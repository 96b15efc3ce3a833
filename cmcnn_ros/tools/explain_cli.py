"""``cmcnn-explain``: where did the network look? Grad-CAM of every face on every modality.

What a user runs when the robot calls a face angry and they want to see why:
for each face the pipeline detects (Section III-B), one row of the output
image shows each input crop the model reads (grey, LBP, depth, ...) with the
Grad-CAM map of the predicted class on that modality's FEN (Section IV-H,
:mod:`cmcnn_ros.inference.gradcam`), and the class scores beside them.

    cmcnn-explain photo.jpg --out why.png
    cmcnn-explain colour.png --depth depth.png --checkpoint runs/x/checkpoint.pt --out why.png
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .. import resources
from ..atomic_io import write_bytes_atomic
from .single_image import add_image_arguments, read_inputs, run_image_tool

logger = logging.getLogger("cmcnn-explain")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-explain",
        description="Grad-CAM of each detected face on each input modality, next to the model's scores; "
                    "writes one PNG and prints one JSON object per face.")
    add_image_arguments(p)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"CM-CNN checkpoint (default: the shipped {resources.DEFAULT_MODEL})")
    p.add_argument("--out", type=Path, required=True, help="output PNG")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--verbose", action="store_true")
    return p


def explain(colour: np.ndarray, depth: Optional[np.ndarray], checkpoint: Path, depth_scale: Optional[float] = None,
            device: str = "cpu"):
    """Faces, their crops, scores and Grad-CAM maps.

    Returns:
        ``(faces, x, probs, maps, class_names, modalities)``: the
        :class:`FaceCrops` list, the model input ``(B, M, S, S)``, softmax
        scores ``(B, K)`` and ``{modality: (B, S, S)}`` maps of the predicted class.
    """
    import torch

    from ..device import resolve_device
    from ..inference.gradcam import grad_cam
    from ..model.checkpoint import load_checkpoint
    from ..preprocessing.depth import depth_array_to_metres
    from ..preprocessing.params import PreprocessingParams
    from ..preprocessing.pipeline import FacePreprocessor

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    dev = resolve_device(device)
    model = ckpt.model.to(dev).eval()
    modalities = tuple(model.modalities)
    pre = FacePreprocessor(PreprocessingParams.from_checkpoint(ckpt.preprocessing), modalities=modalities)
    depth_m = None
    if depth is not None:
        depth_m = depth_array_to_metres(depth, depth_scale)
    faces = pre.process(colour, depth_m)
    if not faces:
        return faces, None, None, {}, list(ckpt.class_names), modalities
    x = torch.from_numpy(pre.to_tensor(faces)).to(dev)
    maps = {}
    probs = None
    for m in modalities:
        maps[m], probs = grad_cam(model, x, m)
    return faces, x.cpu().numpy(), probs, maps, list(ckpt.class_names), modalities


def explanation_figure(faces, x: np.ndarray, probs: np.ndarray, maps, class_names: Sequence[str],
                       modalities: Sequence[str]):
    """The figure: a row per face, a column per modality (crop under its map), and a score bar chart.

    Constrained layout keeps the score panel's class names beside (not over)
    its bars and each panel title clear of the figure title; an input without
    depth shows "no depth" and no heat map (a map over zeros would point at
    nothing).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..inference.gradcam import overlay
    from ..modalities import DEPTH_MODALITIES

    n, m = len(faces), len(modalities)
    fig = Figure(figsize=(2.3 * m + 3.6, 2.5 * n + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n, m + 1, width_ratios=[1.0] * m + [1.6])
    for i, face in enumerate(faces):
        k = int(np.argmax(probs[i]))
        for j, mod in enumerate(modalities):
            ax = fig.add_subplot(grid[i, j])
            if mod in DEPTH_MODALITIES and not face.depth_valid:
                ax.imshow(np.zeros_like(x[i, j]), cmap="gray", vmin=0.0, vmax=1.0)
                ax.text(0.5, 0.5, "no depth", transform=ax.transAxes, ha="center", va="center", color="white",
                        fontsize=10)
            else:
                ax.imshow(overlay(x[i, j], maps[mod][i]), interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(mod, fontsize=9)
            if j == 0:
                bx = ", ".join(str(int(v)) for v in face.box)
                ax.set_ylabel(f"face {i + 1}\n({bx})", fontsize=8)
        ax = fig.add_subplot(grid[i, m])
        ypos = np.arange(len(class_names))
        ax.barh(ypos, probs[i], color=["tab:red" if c == k else "tab:grey" for c in range(len(class_names))])
        ax.set_yticks(ypos)
        ax.set_yticklabels(class_names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{class_names[k]} {probs[i, k]:.2f}", fontsize=9)
    fig.suptitle("Grad-CAM of the predicted class on each input (red = most used)", fontsize=10)
    return fig


def render(faces, x: np.ndarray, probs: np.ndarray, maps, class_names: Sequence[str],
           modalities: Sequence[str]) -> bytes:
    """PNG bytes of :func:`explanation_figure`."""
    buf = io.BytesIO()
    explanation_figure(faces, x, probs, maps, class_names, modalities).savefig(buf, format="png")
    return buf.getvalue()


def run(args: argparse.Namespace) -> List[dict]:
    colour, depth = read_inputs(args)
    checkpoint = args.checkpoint or resources.find_file(None, resources.DEFAULT_MODEL)
    if checkpoint is None:
        raise ValueError(f"no checkpoint given and the shipped {resources.DEFAULT_MODEL} is not installed; "
                         "pass --checkpoint FILE")
    faces, x, probs, maps, class_names, modalities = explain(colour, depth, Path(checkpoint), args.depth_scale,
                                                             args.device)
    if not faces:
        raise ValueError(f"no face found in {args.image}; nothing to explain (try a larger, frontal face)")
    write_bytes_atomic(args.out, render(faces, x, probs, maps, class_names, modalities))
    return [{"box": [int(v) for v in f.box], "expression": class_names[int(np.argmax(p))],
             "scores": {c: round(float(s), 4) for c, s in zip(class_names, p)}, "depth_valid": bool(f.depth_valid)}
            for f, p in zip(faces, probs)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_image_tool("cmcnn-explain", get_args_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
