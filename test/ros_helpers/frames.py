"""Test/benchmark RGB-D frames for the node, rendered once and stored as .npz.

Faces come from the synthetic ICT-FaceKit renderer (``cmcnn_synthetic``)
when it is importable and renders, with known expression labels; otherwise
from scikit-image's astronaut photograph (a real frontal face the Haar cascade
finds), with label ``""`` (unknown). Depth is Kinect-like uint16 millimetres
registered to colour: a background plane with the face region closer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)
H, W = 480, 640


def _astronaut() -> np.ndarray:
    import cv2
    import skimage.data

    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 90.0) + rng.normal(0, 2, (H, W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# Top-left corners of the five faces (layouts checked to be found by the
# Haar face detector with 0-9 px jitter).
FIVE_POSITIONS = ((0, 0), (213, 0), (426, 0), (100, 240), (320, 240))


def photo_frame(n_faces: int, seed: int = 0, jitter: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """One 640x480 frame with 0, 1, 3 or 5 copies of the astronaut's face (3: the top row of 5).

    Returns:
        ``(bgr uint8 HxWx3, depth uint16 HxW mm)``; the faces are 0.8 m away
        in front of a 1.5 m background.
    """
    import cv2

    colour = _background(seed)
    depth = np.full((H, W), 1500, np.uint16)
    if n_faces == 0:
        return colour, depth
    img = _astronaut()
    if n_faces == 1:
        patches = [(img[0:H], 60 + jitter, 0)]
    elif n_faces in (3, 5):
        face = cv2.resize(img[0:240, 100:340], None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)
        patches = [(face, x + jitter, y) for x, y in FIVE_POSITIONS[:n_faces]]
    else:
        raise ValueError(f"n_faces must be 0, 1, 3 or 5, got {n_faces}")
    for patch, x, y in patches:
        hh, ww = min(patch.shape[0], H - y), min(patch.shape[1], W - x)
        colour[y:y + hh, x:x + ww] = patch[:hh, :ww]
        depth[y:y + hh, x:x + ww] = 800 + (np.arange(ww)[None, :] % 7).astype(np.uint16)
    return colour, depth


def synthetic_frames(count: int, seed: int = 0) -> Optional[Tuple[np.ndarray, np.ndarray, List[str]]]:
    """Frames from the synthetic renderer (one frontal-ish face at 0.7-1.1 m,
    full-intensity expressions cycling through the classes), or None when the
    renderer is not available."""
    try:
        from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
        from cmcnn_synthetic.scene import PoseRange, random_face_spec, render_frame
    except Exception:
        return None
    try:
        poses = PoseRange(yaw_deg=10.0, pitch_deg=8.0, roll_deg=8.0, distance_m=(0.7, 1.1))
        colours, depths, labels = [], [], []
        for i in range(count):
            label = EXPRESSIONS_WITH_NEUTRAL[i % len(EXPRESSIONS_WITH_NEUTRAL)]
            rng = np.random.default_rng(seed + i)
            spec = random_face_spec(rng, subject_id=i % 5, label=label, intensity=4 if label != "neutral" else 0,
                                    poses=poses, centre_px=(320.0, 240.0))
            frame = render_frame([spec], seed=seed + i)
            colours.append(frame.colour)
            depths.append(frame.depth_mm)
            labels.append(label)
        return np.stack(colours), np.stack(depths), labels
    except Exception as exc:
        logger.warning("synthetic renderer unusable (%s)", exc)
        return None


def build_frames(path: Path, kind: str = "one", count: int = 6) -> Path:
    """Write frames of ``kind`` ("one", "three", "five", "none", "synthetic") to ``path`` (.npz).

    The file holds ``colour (N,H,W,3) uint8``, ``depth (N,H,W) uint16 mm`` and
    ``labels (N,)`` str. Written atomically.
    """
    labels: List[str]
    if kind == "synthetic":
        out = synthetic_frames(count)
        if out is None:
            raise RuntimeError("synthetic renderer not available")
        colour, depth, labels = out
    else:
        n = {"one": 1, "three": 3, "five": 5, "none": 0}[kind]
        pairs = [photo_frame(n, seed=i, jitter=(2 * i) % 10) for i in range(count)]
        colour = np.stack([p[0] for p in pairs])
        depth = np.stack([p[1] for p in pairs])
        labels = [""] * count
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, colour=colour, depth=depth, labels=np.array(labels))
    os.replace(tmp, path)
    return path


def load_frames(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
