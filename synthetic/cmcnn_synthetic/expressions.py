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

Two variations (``cmcnn-synth --variation``):

``classic``
    The style above: every subject performs the same prototype with gains
    of 0.75-1.25 and one optional component per class. Default, so existing
    data sets, tests and the demo do not change.
``wide``
    A classifier trained on ``classic`` can learn this renderer's recipes
    instead of the expressions (every happy face is the same seven
    blendshapes in the same proportions). ``wide`` gives each subject its
    own recipe per class (:func:`wide_style`): secondary components are
    dropped, re-weighted (x0.4-1.7) or added from a class-compatible pool,
    left/right asymmetry reaches +-0.3 per class, half the recipes blend in
    10-25 % of a neighbouring class (a sad-angry or fear-surprise mixture)
    or of neutral, each subject has an expressiveness gain and each frame
    jitters the intensity around its level. The class's defining action
    units (:data:`DEFINING`, e.g. AU6+12 for happy) stay at least
    :data:`DEFINING_FLOOR` of the prototype on both sides, so labels stay
    right. Neutral faces get a per-subject resting face (heavy lids, pressed
    lips) well below an intensity-1 expression.

Both are deterministic per subject id (the subject streams of
:func:`cmcnn_synthetic.facekit.subject_rng`); the frame's expression seed
only drives the per-frame jitter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

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

VARIATIONS: Tuple[str, ...] = ("classic", "wide")

# The blendshapes of each class's defining action units (EMFACS: happy 6+12,
# sad 1+15, surprised 1+2+5+26, scared 1+4+5+20 (AU4 with raised brows and
# AU20 tell fear from surprise), angry 4+7, disgusted 9+10). ``wide``
# recipes never drop them and keep each side at >= DEFINING_FLOOR of the
# prototype weight, so a face still shows its class.
DEFINING: Dict[str, Tuple[str, ...]] = {
    "happy": ("mouthSmile", "cheekSquint"),
    "sad": ("browInnerUp", "mouthFrown"),
    "surprised": ("browInnerUp", "browOuterUp", "eyeWide", "jawOpen"),
    "scared": ("browInnerUp", "browDown", "eyeWide", "mouthStretch"),
    "angry": ("browDown", "eyeSquint"),
    "disgusted": ("noseSneer", "mouthUpperUp"),
}
DEFINING_FLOOR = 0.6

# Secondary components a ``wide`` subject may add to a class (max weight):
# movements people show with that expression which do not belong to another
# class's defining set.
_WIDE_EXTRAS: Dict[str, Dict[str, float]] = {
    "happy": {"jawOpen": 0.35, "mouthUpperUp": 0.35, "mouthLowerDown": 0.35, "eyeBlink": 0.3,
              "mouthDimple": 0.4, "eyeSquint": 0.4},
    "sad": {"mouthPress": 0.4, "mouthPucker": 0.25, "eyeLookDown": 0.4, "eyeBlink": 0.3,
            "mouthRollLower": 0.3, "mouthShrugUpper": 0.3},
    "surprised": {"mouthFunnel": 0.35, "mouthLowerDown": 0.35, "mouthPucker": 0.25, "eyeLookUp": 0.3,
                  "mouthStretch": 0.2},
    "scared": {"mouthLowerDown": 0.4, "jawOpen": 0.3, "mouthUpperUp": 0.3, "mouthRollLower": 0.25,
               "browOuterUp": 0.3},
    "angry": {"jawForward": 0.3, "noseSneer": 0.35, "mouthShrugUpper": 0.3, "mouthFrown": 0.3,
              "mouthRollLower": 0.3, "eyeWide": 0.3},
    "disgusted": {"cheekSquint": 0.4, "eyeSquint": 0.4, "browDown": 0.4, "mouthShrugUpper": 0.4,
                  "mouthLowerDown": 0.35, "mouthRollLower": 0.2},
}

# Classes a ``wide`` recipe may blend a little of (the mixtures people pose
# and the confusions of FER data sets); "neutral" dilutes the expression.
_NEIGHBOURS: Dict[str, Tuple[str, ...]] = {
    "happy": ("surprised", "neutral"),
    "sad": ("angry", "scared", "disgusted", "neutral"),
    "surprised": ("scared", "happy", "neutral"),
    "scared": ("surprised", "sad", "neutral"),
    "angry": ("disgusted", "sad", "neutral"),
    "disgusted": ("angry", "sad", "neutral"),
}

# Resting-face components of a ``wide`` neutral subject (max weight): kept
# below what an intensity-1 expression (x0.25) moves the defining shapes.
_RESTING: Dict[str, float] = {
    "eyeBlink": 0.25, "eyeSquint": 0.12, "mouthPress": 0.15, "mouthRollLower": 0.1, "jawOpen": 0.06,
    "browInnerUp": 0.08, "browDown": 0.08, "mouthSmile": 0.06, "mouthFrown": 0.08, "eyeLookDown": 0.15,
}

# Caps on a ``wide`` recipe's side-less components: a subject's gains and
# extras could otherwise close one eye of a sad face into a wink.
_WIDE_CAPS: Dict[str, float] = {"eyeBlink": 0.35}

_STREAM_STYLE = 2
_STREAM_WIDE = 300   # + class index: one stream per class, so classes draw independently


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


@dataclass(frozen=True)
class WideStyle:
    """How one subject performs expressions under the ``wide`` variation.

    Attributes:
        recipes: per class, ``(53,)`` weights at the highest intensity (the
            subject's gains, dropped/added components, asymmetry and blend
            included); neutral maps to the resting face.
        floors: per class, ``(53,)`` lower bound at the highest intensity
            (``DEFINING_FLOOR`` x the prototype on the defining shapes, else 0).
        blends: per class, ``(neighbour class, share)`` when the recipe blends one in.
        expressiveness: the subject's gain on every intensity level (0.8..1.2).
    """

    recipes: Mapping[str, np.ndarray]
    floors: Mapping[str, np.ndarray]
    blends: Mapping[str, Optional[Tuple[str, float]]]
    expressiveness: float


def check_variation(variation: str) -> str:
    """Validate a variation name (one of :data:`VARIATIONS`).

    Raises:
        ExpressionError: unknown name.
    """
    if variation not in VARIATIONS:
        raise ExpressionError(f"variation must be one of {VARIATIONS}, got {variation!r}")
    return variation


def _prototype(name: str) -> np.ndarray:
    """The class's EMFACS recipe as a dense ``(53,)`` vector (no style)."""
    return np.clip(_expand(RECIPES[name]), 0.0, None)


def _apply_asymmetry(w: np.ndarray, asym: float) -> np.ndarray:
    """Scale ``_L`` shapes by ``1 + asym`` and ``_R`` shapes by ``1 - asym`` (in place)."""
    pairs = _side_pairs()
    w[pairs[:, 0]] *= 1.0 + asym
    w[pairs[:, 1]] *= 1.0 - asym
    return w


def _defining_floor(name: str) -> np.ndarray:
    """``DEFINING_FLOOR`` x the prototype on the class's defining shapes, 0 elsewhere."""
    proto = RECIPES[name]
    return DEFINING_FLOOR * np.clip(_expand({k: proto[k] for k in DEFINING[name]}), 0.0, None)


def _pick(rng: np.random.Generator, names: Sequence[str], low: int, high: int) -> Tuple[str, ...]:
    """``low..high`` distinct names drawn from ``names`` (sorted input keeps draws stable)."""
    n = int(rng.integers(low, high + 1))
    return tuple(str(k) for k in rng.choice(sorted(names), size=min(n, len(names)), replace=False))


def _wide_components(name: str, rng: np.random.Generator) -> Dict[str, float]:
    """A subject's side-less recipe of one class: defining shapes kept, the rest varied."""
    recipe = dict(RECIPES[name])
    for prob, extra in _STYLE_OPTIONS.get(name, ()):
        if rng.random() < prob + 0.15:
            for k, w in extra.items():
                recipe[k] = recipe.get(k, 0.0) + w
    out: Dict[str, float] = {}
    for k, w in sorted(recipe.items()):
        if k in DEFINING[name]:
            out[k] = w * float(rng.uniform(0.8, 1.3))
        elif rng.random() >= 0.25:            # a quarter of the secondary shapes are dropped
            out[k] = w * float(rng.uniform(0.4, 1.7))
    extras = _WIDE_EXTRAS[name]
    for k in _pick(rng, list(extras), 0, 2):
        out[k] = out.get(k, 0.0) + float(rng.uniform(0.3, 1.0)) * extras[k]
    return {k: min(w, _WIDE_CAPS.get(k, w)) for k, w in out.items()}


def _wide_recipe(name: str, rng: np.random.Generator) -> Tuple[np.ndarray, Optional[Tuple[str, float]]]:
    """A subject's dense recipe of one basic class and the blend it uses (if any)."""
    vec = np.clip(_expand(_wide_components(name, rng)), 0.0, None)
    _apply_asymmetry(vec, float(rng.uniform(-0.3, 0.3)))
    blend = None
    if rng.random() < 0.5:
        others = _NEIGHBOURS[name]
        other = others[int(rng.integers(len(others)))]
        share = float(rng.uniform(0.1, 0.25))
        neighbour = np.zeros_like(vec) if other == "neutral" else _prototype(other)
        vec = (1.0 - share) * vec + share * neighbour
        blend = (other, share)
    return np.maximum(vec, _defining_floor(name)), blend


def _resting_face(rng: np.random.Generator) -> np.ndarray:
    """A subject's neutral: 2-4 resting components at up to their cap."""
    comps = {k: float(rng.uniform(0.3, 1.0)) * _RESTING[k] for k in _pick(rng, list(_RESTING), 2, 4)}
    return np.clip(_expand(comps), 0.0, None)


@functools.lru_cache(maxsize=256)
def wide_style(subject_id: int) -> WideStyle:
    """The ``wide`` expression style of a subject (cached; arrays are read-only).

    Each class draws from its own subject stream, so a change to one
    class's recipe leaves the others alone.

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
    """
    recipes: Dict[str, np.ndarray] = {}
    floors: Dict[str, np.ndarray] = {}
    blends: Dict[str, Optional[Tuple[str, float]]] = {}
    for k, name in enumerate(EXPRESSIONS_WITH_NEUTRAL):
        rng = subject_rng(subject_id, _STREAM_WIDE + k)
        if name == "neutral":
            recipes[name], blends[name] = _resting_face(rng), None
            floors[name] = np.zeros_like(recipes[name])
        else:
            recipes[name], blends[name] = _wide_recipe(name, rng)
            floors[name] = _defining_floor(name)
        recipes[name].setflags(write=False)
        floors[name].setflags(write=False)
    expressiveness = float(subject_rng(subject_id, _STREAM_WIDE + 99).uniform(0.8, 1.2))
    return WideStyle(recipes=recipes, floors=floors, blends=blends, expressiveness=expressiveness)


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
                       scale: float = 1.0, variation: str = "classic") -> np.ndarray:
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
        variation: ``"classic"`` or ``"wide"`` (module docstring).

    Raises:
        ExpressionError: bad label, intensity, scale or variation.
    """
    name, level = check_label_intensity(label, intensity)
    if not 0.0 <= scale <= 1.0:
        raise ExpressionError(f"scale must be in [0, 1], got {scale}")
    if check_variation(variation) == "wide":
        return _wide_weights(name, level, subject_id, rng, jitter, scale)
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


def _wide_weights(name: str, level: int, subject_id: int, rng: Optional[np.random.Generator],
                  jitter: float, scale: float) -> np.ndarray:
    """``expression_weights`` under the ``wide`` variation (arguments checked by the caller)."""
    style = wide_style(subject_id)
    w = style.recipes[name].astype(np.float64)
    if name == "neutral":
        if rng is not None:
            w = w * rng.uniform(0.6, 1.4) + np.abs(rng.normal(0.0, 0.03, w.shape))
        return np.clip(w, 0.0, MAX_WEIGHT).astype(np.float32)
    s = INTENSITY_SCALES[level] * style.expressiveness * scale
    if rng is not None:
        # Intensity jitter around the level (+-30 % at most, so level 1 stays
        # below level 3 for one subject), then per-frame asymmetry and weight
        # jitter a little wider than classic's.
        s = float(np.clip(s * (1.0 + np.clip(rng.normal(0.0, 0.12), -0.3, 0.3)), 0.0, 1.2))
        w = _apply_asymmetry(w * s, float(rng.normal(0.0, 0.06)))
        active = w > 0
        w[active] += rng.normal(0.0, 1.4 * jitter * max(s, 0.25), int(active.sum()))
        # Other muscles are never perfectly still either.
        w += np.abs(rng.normal(0.0, 0.015, w.shape))
    else:
        w = w * s
    w = np.maximum(w, style.floors[name] * s)
    return np.clip(w, 0.0, MAX_WEIGHT).astype(np.float32)
