"""Expression class -> blendshape recipes (EMFACS prototypes) with per-subject style.

The paper's databases pose the six basic expressions (Section IV-A; class
order of Section III-E) and BU-3DFE adds four intensity levels. A recipe
here is the EMFACS prototype of each expression written in ICT-FaceKit
blendshapes (the AU mapping is in ``data/README.md``):

=========  ===================  ==========================================
class      prototype (AUs)      blendshapes (main ones)
=========  ===================  ==========================================
happy      6 + 12               cheekSquint, mouthSmile (+ eyeSquint)
sad        1 + 4 + 15 (+17)     browInnerUp, browDown, mouthFrown, mouthShrugLower
surprised  1 + 2 + 5 + 26       browInnerUp, browOuterUp, eyeWide, jawOpen
scared     1+2+4+5+7+20+26      brow raise + browDown, eyeWide, eyeSquint, mouthStretch, jawOpen
angry      4 + 5 + 7 + 23/24    browDown, eyeWide, eyeSquint, mouthPress (no AU23 shape)
disgusted  9 + 15 + 16 (+10)    noseSneer, mouthFrown, mouthLowerDown, mouthUpperUp
=========  ===================  ==========================================

Intensity levels 1..4 scale the recipe by 0.25/0.5/0.75/1.0 (BU-3DFE's
"low" to "highest"). Each subject gets a deterministic style (a gain per
blendshape, a preferred asymmetry and optional components such as an open
smile), and each frame adds a small jitter, so a class is a distribution of
faces rather than one mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name
from .facekit import FaceKitError, load_facekit, subject_rng

# Weights at the highest intensity. A name without side applies to both
# ``_L`` and ``_R`` blendshapes. A few exceed 1 (mild extrapolation, capped
# at MAX_WEIGHT) where the model's shape is weaker than the posed databases'
# apex expressions (brow lowering in anger, the sad brow and lip corners).
RECIPES: Dict[str, Dict[str, float]] = {
    "neutral": {},
    "happy": {"mouthSmile": 1.0, "cheekSquint": 0.9, "eyeSquint": 0.35, "mouthDimple": 0.2,
              "jawOpen": 0.08, "mouthUpperUp": 0.15},
    "sad": {"browInnerUp": 1.3, "browDown": 0.6, "mouthFrown": 1.3, "mouthShrugLower": 0.7,
            "mouthPress": 0.3, "eyeSquint": 0.2, "eyeBlink": 0.15, "eyeLookDown": 0.3, "mouthRollLower": 0.1},
    "surprised": {"browInnerUp": 1.0, "browOuterUp": 1.0, "eyeWide": 1.0, "jawOpen": 0.65,
                  "mouthFunnel": 0.15},
    "scared": {"browInnerUp": 1.0, "browOuterUp": 0.55, "browDown": 0.45, "eyeWide": 1.0,
               "eyeSquint": 0.25, "mouthStretch": 1.0, "jawOpen": 0.3, "mouthLowerDown": 0.45},
    "angry": {"browDown": 1.35, "eyeWide": 0.4, "eyeSquint": 0.9, "mouthPress": 1.0,
              "mouthRollUpper": 0.25, "mouthRollLower": 0.25, "noseSneer": 0.35, "mouthFrown": 0.25,
              "mouthShrugLower": 0.4, "cheekSquint": 0.2},
    "disgusted": {"noseSneer": 1.0, "mouthUpperUp": 0.8, "mouthFrown": 0.55, "mouthLowerDown": 0.45,
                  "browDown": 0.45, "cheekSquint": 0.5, "eyeSquint": 0.45, "mouthShrugUpper": 0.3},
}

# Optional components a subject may use in a class (probability, extra weights).
_STYLE_OPTIONS: Dict[str, Tuple[Tuple[float, Dict[str, float]], ...]] = {
    "happy": ((0.45, {"jawOpen": 0.25, "mouthUpperUp": 0.35, "mouthLowerDown": 0.3}),),
    "surprised": ((0.3, {"jawOpen": 0.25, "mouthStretch": 0.15}),),
    "angry": ((0.35, {"mouthUpperUp": 0.35, "jawOpen": 0.1, "mouthPress": -0.6,
                      "mouthStretch": 0.3}),),   # teeth-baring variant
    "disgusted": ((0.3, {"jawOpen": 0.12, "mouthLowerDown": 0.25}),),
    "sad": ((0.3, {"eyeBlink": 0.2, "mouthStretch": 0.15}),),
    "scared": ((0.35, {"jawOpen": 0.2}),),
}

MAX_WEIGHT = 1.4
INTENSITY_SCALES: Dict[int, float] = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
INTENSITY_LEVELS: Tuple[int, ...] = (1, 2, 3, 4)

_STREAM_STYLE = 2


class ExpressionError(ValueError):
    """An expression label, intensity or weight request is invalid."""


@dataclass(frozen=True)
class ExpressionStyle:
    """How one subject performs expressions (deterministic per subject).

    Attributes:
        gains: ``(53,)`` multiplicative gain per blendshape (~0.8..1.2).
        asymmetry: signed left/right imbalance (-0.2..0.2) applied to paired shapes.
        options: per class, whether the subject uses the optional component.
    """

    gains: np.ndarray
    asymmetry: float
    options: Mapping[str, bool]


def _side_pairs() -> np.ndarray:
    """``(K, 2)`` indices of ``_L``/``_R`` blendshape pairs."""
    model = load_facekit()
    pairs = []
    for i, name in enumerate(model.expression_names):
        if name.endswith("_L"):
            pairs.append((i, model.expression_index(name[:-2] + "_R")))
    return np.asarray(pairs, dtype=np.int64)


def _expand(recipe: Mapping[str, float]) -> np.ndarray:
    """Recipe dict (with side-less names) to a dense ``(53,)`` vector."""
    model = load_facekit()
    vec = np.zeros(model.num_expressions, dtype=np.float64)
    names = set(model.expression_names)
    for name, w in recipe.items():
        if name in names:
            vec[model.expression_index(name)] += w
        elif f"{name}_L" in names and f"{name}_R" in names:
            vec[model.expression_index(f"{name}_L")] += w
            vec[model.expression_index(f"{name}_R")] += w
        else:
            raise FaceKitError(f"recipe names unknown blendshape {name!r}")
    return vec


def subject_style(subject_id: int) -> ExpressionStyle:
    """Seeded expression style of a subject.

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
    """
    rng = subject_rng(subject_id, _STREAM_STYLE)
    model = load_facekit()
    gains = np.clip(rng.normal(1.0, 0.12, model.num_expressions), 0.75, 1.25)
    asym = float(rng.uniform(-0.2, 0.2))
    options = {label: bool(rng.random() < opts[0][0]) for label, opts in sorted(_STYLE_OPTIONS.items())}
    return ExpressionStyle(gains=gains, asymmetry=asym, options=options)


def check_label_intensity(label: str, intensity: int) -> Tuple[str, int]:
    """Canonicalise a label and validate its intensity (0 for neutral, 1..4 otherwise).

    Raises:
        ExpressionError: unknown label or an intensity outside the allowed range.
    """
    try:
        name = canonical_name(label)
    except ValueError as exc:
        raise ExpressionError(str(exc)) from None
    if name not in EXPRESSIONS_WITH_NEUTRAL:
        raise ExpressionError(f"unknown expression {label!r}")
    if isinstance(intensity, bool) or not isinstance(intensity, (int, np.integer)):
        raise ExpressionError(f"intensity must be an int, got {intensity!r}")
    if name == "neutral":
        if intensity != 0:
            raise ExpressionError(f"neutral has intensity 0, got {intensity}")
    elif intensity not in INTENSITY_SCALES:
        raise ExpressionError(f"intensity of {name!r} must be one of {INTENSITY_LEVELS}, got {intensity}")
    return name, int(intensity)


def expression_weights(label: str, intensity: int, subject_id: int,
                       rng: Optional[np.random.Generator] = None, jitter: float = 0.06,
                       scale: float = 1.0) -> np.ndarray:
    """Blendshape weights ``(53,)`` float32 for one posed expression.

    Args:
        label: class name (any alias of :mod:`cmcnn_ros.classes`).
        intensity: 0 for neutral, 1..4 for the basic expressions.
        subject_id: selects the subject's style.
        rng: per-frame jitter source; ``None`` means no jitter (the subject's
            canonical pose).
        jitter: standard deviation of the additive weight jitter (scaled by
            the intensity so low intensities stay subtle).
        scale: extra multiplier in [0, 1] (onset/offset animation in bags).

    Raises:
        ExpressionError: bad label, intensity or scale.
    """
    name, level = check_label_intensity(label, intensity)
    if not 0.0 <= scale <= 1.0:
        raise ExpressionError(f"scale must be in [0, 1], got {scale}")
    style = subject_style(subject_id)
    recipe = dict(RECIPES[name])
    if style.options.get(name, False):
        for k, w in _STYLE_OPTIONS[name][0][1].items():
            recipe[k] = recipe.get(k, 0.0) + w
    w = np.clip(_expand(recipe), 0.0, None) * style.gains
    s = INTENSITY_SCALES.get(level, 0.0) * scale
    if rng is not None and level > 0:
        s = float(np.clip(s + rng.normal(0.0, 0.04), 0.12, 1.1))
    w = w * s
    pairs = _side_pairs()
    asym = style.asymmetry + (rng.normal(0.0, 0.05) if rng is not None else 0.0)
    w[pairs[:, 0]] *= 1.0 + asym
    w[pairs[:, 1]] *= 1.0 - asym
    if rng is not None:
        active = w > 0
        w[active] += rng.normal(0.0, jitter * max(s, 0.25), int(active.sum()))
        # Neutral faces are not frozen: tiny random activity everywhere
        # (idle blinks, lip tension) so "neutral" is a distribution too.
        if name == "neutral":
            w += np.abs(rng.normal(0.0, 0.03, w.shape))
    return np.clip(w, 0.0, MAX_WEIGHT).astype(np.float32)
