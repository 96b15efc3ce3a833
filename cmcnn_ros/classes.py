"""Expression class names and the circumplex mapping to valence and arousal.

Class names are spelled as the ROS4HRI ``hri_msgs/Expression`` constants
(REP-155) so HRI consumers can map them directly. The six basic expressions
come in the paper's order (Section III-E: indices 0-5 are anger, disgust,
fear, happiness, sadness, surprise); that order matters because the soft
label of eq. (5) is a Gaussian over class *indices*. The seven-class set
appends ``neutral`` so the basic expressions keep their indices.

Checkpoints store their own class list; these tuples are the defaults that
training writes into a checkpoint, not something inference relies on.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np

BASIC_EXPRESSIONS: Tuple[str, ...] = ("angry", "disgusted", "scared", "happy", "sad", "surprised")
EXPRESSIONS_WITH_NEUTRAL: Tuple[str, ...] = BASIC_EXPRESSIONS + ("neutral",)

# Every name any ROS4HRI consumer may receive.
ROS4HRI_EXPRESSIONS = frozenset(EXPRESSIONS_WITH_NEUTRAL)

#: The expression of a face whose top class is below the node's ``min_confidence``: the
#: scores and confidence are still published, the label is not, so nothing downstream acts on
#: a guess. Not one of ``hri_msgs/Expression``'s constants (it has no "unknown"): libhri /
#: pyhri read it as "no expression" (``Face::expression()`` empty) and log that they got it.
UNKNOWN_EXPRESSION = "unknown"

# Paper / database spellings -> ROS4HRI spelling (BU-3DFE uses AN DI FE HA SA SU NE).
ALIASES: Dict[str, str] = {
    "anger": "angry", "an": "angry", "angry": "angry",
    "disgust": "disgusted", "di": "disgusted", "disgusted": "disgusted",
    "fear": "scared", "fe": "scared", "scared": "scared", "afraid": "scared",
    "happiness": "happy", "happy": "happy", "ha": "happy", "joy": "happy",
    "sadness": "sad", "sad": "sad", "sa": "sad",
    "surprise": "surprised", "su": "surprised", "surprised": "surprised",
    "neutral": "neutral", "ne": "neutral",
}

# Russell's circumplex (valence, arousal) per expression, in [-1, 1]. Values
# follow the placement of the basic emotions in Russell (1980) and the
# ROS4HRI discussion; they are a documented convention, not a measurement.
CIRCUMPLEX: Dict[str, Tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "happy": (0.8, 0.5),
    "surprised": (0.2, 0.8),
    "scared": (-0.6, 0.7),
    "angry": (-0.7, 0.6),
    "disgusted": (-0.7, 0.2),
    "sad": (-0.7, -0.4),
}


def canonical_name(name: str) -> str:
    """Return the ROS4HRI spelling of an expression name.

    Raises:
        ValueError: the name is not an expression this package knows.
    """
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise ValueError(
            f"unknown expression label {name!r}; expected one of {sorted(set(ALIASES))}")
    return ALIASES[key]


def valence_arousal(scores: Sequence[float], class_names: Sequence[str]) -> Tuple[float, float]:
    """Expected (valence, arousal) under the class probabilities.

    The score-weighted mean of each class's circumplex point; an unknown class
    contributes (0, 0). The result stays inside [-1, 1] because every point does
    and the weights are normalised.
    """
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = p.sum()
    if total <= 0 or len(p) != len(class_names):
        return 0.0, 0.0
    points = np.array([CIRCUMPLEX.get(c, (0.0, 0.0)) for c in class_names], dtype=np.float64)
    v, a = (p[:, None] * points).sum(axis=0) / total
    return float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))


class ScoreSummary(NamedTuple):
    """What a face's class scores say: the fields of a face result derived from its ``scores``."""

    expression: str
    confidence: float
    valence: float
    arousal: float


def describe_scores(scores: Sequence[float], class_names: Sequence[str],
                    min_confidence: float = 0.0) -> ScoreSummary:
    """``(expression, confidence, valence, arousal)`` of one face's class scores.

    The one place the top class, its probability and the circumplex point are
    read off a score vector: the recognizer applies it to the network's
    scores, the stream again after smoothing, so what the node publishes and
    what the offline tools score are derived the same way. An empty vector
    gives ``("", 0.0, 0.0, 0.0)``.

    Args:
        min_confidence: a top class below this probability is reported as
            :data:`UNKNOWN_EXPRESSION`; ``confidence``, valence and arousal keep
            their values, so a consumer still sees how unsure the model was.
    """
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return ScoreSummary("", 0.0, 0.0, 0.0)
    top = int(np.argmax(p))
    valence, arousal = valence_arousal(p, class_names)
    expression = str(class_names[top]) if p[top] >= min_confidence else UNKNOWN_EXPRESSION
    return ScoreSummary(expression, float(p[top]), valence, arousal)
