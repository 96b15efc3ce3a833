"""Scripted multi-face RGB-D sequences: who is in view, posing what, where.

CM-CNN (Ni et al., IEEE TCDS 2023) classifies the face crops of one colour
frame and its registered depth (Section III-B). To test the live node and the
offline evaluator on *sequences* without a licensed database, a scenario
scripts several synthetic subjects (ICT-FaceKit identities posing EMFACS
prototypes of the six basic expressions plus neutral, :mod:`cmcnn_synthetic`)
whose expressions change over time, who enter and leave the view and move
slightly. :func:`plan_sequence` draws the script from a seed;
:mod:`cmcnn_synthetic.bags` renders it into a labelled rosbag2
(``cmcnn-bag-write``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name
from cmcnn_ros.tools.bag_writer import BagWriteError

# 2023-11-14T22:13:20Z: a plausible wall-clock epoch, fixed so bags are reproducible.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
# Kinect v1 colour intrinsics (the renderer's default CameraSpec); used to place faces.
_FX, _CX, _CY = 525.0, 319.5, 239.5


@dataclass(frozen=True)
class ExpressionSegment:
    """From ``start_s`` on (until the next segment) the face poses ``label`` at ``intensity``."""

    start_s: float
    label: str
    intensity: int


@dataclass(frozen=True)
class FaceTrackPlan:
    """One subject's presence, expressions and motion over the sequence.

    Attributes:
        subject_id: synthetic identity (:func:`cmcnn_synthetic.identity_mesh`).
        enter_s / leave_s: the face is in view for ``enter_s <= t < leave_s``.
        x_m, y_m, z_m: rest position of the head centre (OpenCV camera frame, metres).
        segments: expression changes, sorted by ``start_s``; the first starts at ``enter_s``.
        sway_m: amplitude of the slow lateral/vertical sway.
        yaw_deg, roll_deg: amplitudes of the slow head turn and tilt.
        phase: motion phase (radians), so faces do not move in lockstep.
        period_s: period of the sway.
    """

    subject_id: int
    enter_s: float
    leave_s: float
    x_m: float
    y_m: float
    z_m: float
    segments: Tuple[ExpressionSegment, ...]
    sway_m: float = 0.02
    yaw_deg: float = 10.0
    roll_deg: float = 6.0
    phase: float = 0.0
    period_s: float = 4.0

    def visible(self, t: float) -> bool:
        return self.enter_s <= t < self.leave_s

    def expression_at(self, t: float) -> ExpressionSegment:
        current = self.segments[0]
        for seg in self.segments:
            if seg.start_s <= t:
                current = seg
        return current

    def pose_at(self, t: float) -> Dict[str, float]:
        """Head position (m) and yaw/pitch/roll (degrees) at time ``t``: slow smooth sway."""
        w = 2 * np.pi * t / self.period_s + self.phase
        return {"x": self.x_m + self.sway_m * float(np.sin(w)),
                "y": self.y_m + 0.5 * self.sway_m * float(np.sin(0.7 * w + 1.0)),
                "z": self.z_m + self.sway_m * float(np.sin(0.5 * w + 2.0)),
                "yaw": self.yaw_deg * float(np.sin(0.8 * w + 0.5)),
                "pitch": 0.5 * self.yaw_deg * float(np.sin(0.6 * w + 2.5)),
                "roll": self.roll_deg * float(np.sin(0.9 * w + 1.5))}


@dataclass(frozen=True)
class SequencePlan:
    """A scripted multi-face sequence (what :func:`plan_sequence` returns)."""

    duration_s: float
    fps: float
    seed: int
    faces: Tuple[FaceTrackPlan, ...]
    start_ns: int = DEFAULT_START_NS

    @property
    def num_frames(self) -> int:
        return int(round(self.duration_s * self.fps))

    def frame_time(self, index: int) -> float:
        return index / self.fps

    def stamp_ns(self, index: int) -> int:
        return self.start_ns + int(round(index * 1e9 / self.fps))


def plan_sequence(duration_s: float = 10.0, fps: float = 10.0, num_faces: int = 3, seed: int = 0,
                  min_segment_s: float = 1.2, max_segment_s: float = 2.5,
                  labels: Sequence[str] = (), first_subject: int = 1000) -> SequencePlan:
    """Script a deterministic sequence: faces side by side, expressions changing, entries and exits.

    The first face is in view all the time; every other face enters after up
    to 30 % of the sequence and/or leaves in its last 30 %, so the node sees
    faces appear and disappear. Each face holds an expression for
    ``min_segment_s``-``max_segment_s`` then switches to a different one
    (drawn from ``labels``, default the six basic expressions plus neutral;
    intensities 2-4, as low intensity 1 is barely visible).

    Args:
        duration_s: sequence length (> 0).
        fps: frame rate (> 0).
        num_faces: faces at once, 1..4 (they stand side by side).
        seed: everything is drawn from this seed.
        min_segment_s, max_segment_s: expression hold times.
        labels: classes to draw from.
        first_subject: subject ids are ``first_subject + k`` (k = 0..num_faces-1) offset by the seed,
            away from the ids the training set uses by default.

    Raises:
        BagWriteError: an argument is out of range.
    """
    if not duration_s > 0 or not fps > 0:
        raise BagWriteError(f"duration and fps must be > 0, got {duration_s} s at {fps} fps")
    if not 1 <= num_faces <= 4:
        raise BagWriteError(f"num_faces must be 1..4 (side by side in a 640x480 view), got {num_faces}")
    if not 0 < min_segment_s <= max_segment_s:
        raise BagWriteError(f"need 0 < min_segment_s <= max_segment_s, got {min_segment_s}, {max_segment_s}")
    try:
        pool = [canonical_name(c) for c in (labels or EXPRESSIONS_WITH_NEUTRAL)]
    except ValueError as exc:
        raise BagWriteError(str(exc)) from exc
    rng = np.random.default_rng(seed)
    # Side by side without overlap: centres spaced across the 640 px view, and
    # far enough that a face box (~0.13 m wide) fits between neighbours with a margin.
    spacing_px = min(190.0, 600.0 / num_faces)
    z_lo = max(0.6, 0.13 * _FX / (spacing_px - 40.0))
    faces = []
    for k in range(num_faces):
        if k == 0:
            enter, leave = 0.0, duration_s
        else:
            enter = float(rng.uniform(0.0, 0.3) * duration_s) if rng.random() < 0.7 else 0.0
            leave = float(rng.uniform(0.7, 1.0) * duration_s) if rng.random() < 0.7 else duration_s
        segs: List[ExpressionSegment] = []
        t, prev = enter, None
        while t < leave:
            label = str(rng.choice([c for c in pool if c != prev] or pool))
            intensity = 0 if label == "neutral" else int(rng.integers(2, 5))
            segs.append(ExpressionSegment(round(t, 6), label, intensity))
            prev = label
            t += float(rng.uniform(min_segment_s, max_segment_s))
        z = float(rng.uniform(z_lo, z_lo + 0.15))
        u = _CX + (k - (num_faces - 1) / 2) * spacing_px + float(rng.uniform(-8, 8))
        v = _CY - 10.0 + float(rng.uniform(-15, 15))
        faces.append(FaceTrackPlan(
            subject_id=first_subject + 7 * seed + k, enter_s=enter, leave_s=leave,
            x_m=(u - _CX) * z / _FX, y_m=(v - _CY) * z / _FX, z_m=z,
            segments=tuple(segs), sway_m=float(rng.uniform(0.008, 0.018)),
            yaw_deg=float(rng.uniform(4, 10)), roll_deg=float(rng.uniform(3, 8)),
            phase=float(rng.uniform(0, 2 * np.pi)), period_s=float(rng.uniform(3, 6))))
    return SequencePlan(duration_s=float(duration_s), fps=float(fps), seed=int(seed), faces=tuple(faces))
