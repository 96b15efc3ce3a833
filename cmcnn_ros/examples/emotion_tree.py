"""A behaviour tree that reacts to ``fer_node``'s facial expressions (py_trees, ROS-free core).

What an HRI developer copies to start from: per-``face_id`` state on the
py_trees blackboard, three social behaviours and the compute-saving use of
the node's lifecycle. The rclpy side (subscriptions, lifecycle service
clients, the tick timer) is :mod:`cmcnn_ros.examples.emotion_tree_node`;
everything here imports without ROS so it can be unit tested and reused with
another middleware.

The expressions come from CM-CNN (Ni et al., IEEE TCDS 2023, Sections III-C
to III-E); ``confidence`` is the probability of the top class (softmax of the
fused head, ``CMCNN.predict_proba``): the thresholds below are on that scale.
A face ``fer_node`` publishes as ``unknown`` (its confidence is below the
node's ``min_confidence``) is there, but shows no expression: it breaks any
expression being held, is never greeted or comforted, and gets a
``stay_quiet`` decision instead.

Tree (``build_tree``; priorities left to right, a higher one preempts)::

    emotion_tree (Sequence)
    ├── EmotionsToBlackboard         inbox -> /faces, /last_face_seen, /wake_requested
    └── priorities (Selector)
        ├── read perception state    [PerceptionUnknown?  -> QueryPerception]
        ├── wake up                  [WakeRequested?      -> ChangePerception(activate)]
        │                            (a wake-up re-reads the state first: someone may have changed it)
        ├── save compute             [NobodyFor(idle)?    -> ChangePerception(deactivate)]
        ├── social (Selector, memory: a behaviour in progress is finished)
        │   ├── comfort              [ExpressionHeld(sad, 2 s)?            -> Say(comfort)]
        │   ├── greet                [ExpressionHeld(happy >= 0.6, 1 s)?   -> Say(greet)]
        │   └── stay quiet           [Uncertain(unknown, or no depth and low conf)? -> StayQuiet]
        └── idle (Running)

Every decision goes to ``TreeIO.publish`` (the node publishes it as JSON and
logs it). A face that leaves while it is being greeted or comforted aborts
that behaviour with a log line and an ``abort`` decision.

Greeting and comforting turn towards the person first: with ``fer_node``'s
``camera_info_topic`` set, each face carries its position (REP-155's face
frame origin, metres in the camera's optical frame, REP-103: x right, y down,
z forward), and the decision's ``turn_to`` gives the bearing and elevation of
that person from the camera's optical axis and the face's TF frame
(``face_<face_id>``), which a robot transforms into its base frame with tf2
to turn its head or body; ``turn_to`` is null when the position is unknown.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

import py_trees
from py_trees.common import Access, Status

from cmcnn_ros.classes import UNKNOWN_EXPRESSION

logger = logging.getLogger(__name__)

# Blackboard keys (py_trees' global blackboard; absolute names).
FACES = "/faces"                    # Dict[str, FaceState]
LAST_FACE_SEEN = "/last_face_seen"  # float, seconds on the tree's clock
PERCEPTION = "/perception"          # fer_node's lifecycle state label, or "unknown"
WAKE_REQUESTED = "/wake_requested"  # bool
RETRY_AFTER = "/retry_after"        # float: no lifecycle call before this time
TARGET = "/target/{}"               # face_id chosen by a condition for its action

UNKNOWN = "unknown"


class TreeSettingsError(ValueError):
    """A tree setting is out of range; the message names it and the fix."""


class BadEmotions(ValueError):
    """An EmotionArray the tree cannot trust (says what was wrong); it is skipped."""


@dataclass(frozen=True)
class TreeSettings:
    """Thresholds and durations of the tree (the node's ROS parameters of the same names)."""

    greet_expression: str = "happy"
    greet_min_confidence: float = 0.6
    greet_hold_s: float = 1.0
    comfort_expression: str = "sad"
    comfort_min_confidence: float = 0.5
    comfort_hold_s: float = 2.0
    quiet_max_confidence: float = 0.5
    say_duration_s: float = 1.5
    face_timeout_s: float = 1.0
    idle_timeout_s: float = 10.0
    service_timeout_s: float = 5.0
    retry_period_s: float = 5.0

    def validate(self) -> "TreeSettings":
        """Raises TreeSettingsError naming the first unusable value."""
        for name in ("greet_min_confidence", "comfort_min_confidence", "quiet_max_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise TreeSettingsError(f"{name} {v}: a confidence threshold must be in [0, 1]")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s") and not (math.isfinite(v) and v > 0.0):
                raise TreeSettingsError(f"{f.name} {v}: durations must be positive seconds")
        for name in ("greet_expression", "comfort_expression"):
            if not getattr(self, name).strip():
                raise TreeSettingsError(f"{name} is empty: set it to a class name such as happy or sad")
            if getattr(self, name) == UNKNOWN_EXPRESSION:
                raise TreeSettingsError(f"{name} is {UNKNOWN_EXPRESSION!r}, fer_node's word for a guess below "
                                        "its min_confidence: set it to a class name such as happy or sad")
        return self

    @property
    def history_s(self) -> float:
        """How much observation history each face keeps: enough for the longest hold."""
        return max(self.greet_hold_s, self.comfort_hold_s) + 1.0


# ---------------------------------------------------------------- observations

@dataclass(frozen=True)
class FaceObservation:
    """One face of one EmotionArray, validated.

    ``position`` is the face's ``Emotion.position`` (metres in the frame
    ``frame_id``, the array's ``header.frame_id``), None when it is unknown (NaN).
    """

    face_id: str
    expression: str
    confidence: float
    depth_valid: bool
    position: Optional[Tuple[float, float, float]] = None
    frame_id: str = ""


def observations_from_message(msg: Any) -> List[FaceObservation]:
    """Validate one ``cmcnn_ros/EmotionArray`` (duck-typed: any object with its fields).

    Raises:
        BadEmotions: the message disagrees with itself (``scores`` vs
            ``classes`` length, an expression neither among the classes nor
            ``unknown``, a confidence outside [0, 1], an empty or repeated ``face_id``).
    """
    classes = [str(c) for c in msg.classes]
    header = getattr(msg, "header", None)
    frame_id = str(header.frame_id) if header is not None else ""
    out: List[FaceObservation] = []
    for i, face in enumerate(msg.faces):
        fid = str(face.face_id)
        if not fid:
            raise BadEmotions(f"face #{i} has an empty face_id; the producer must give every face an id")
        n = len(face.scores)
        if n != len(classes):
            raise BadEmotions(f"face {fid!r} has {n} scores for {len(classes)} classes {classes}: scores and "
                              "classes disagree (a mismatched producer or model?)")
        expression = str(face.expression)
        if expression not in classes and expression != UNKNOWN_EXPRESSION:
            raise BadEmotions(f"face {fid!r} has expression {expression!r}, not one of classes {classes} "
                              f"nor {UNKNOWN_EXPRESSION!r}")
        confidence = float(face.confidence)
        if not 0.0 <= confidence <= 1.0:  # also false for NaN
            raise BadEmotions(f"face {fid!r} has confidence {confidence}, outside [0, 1]")
        if any(o.face_id == fid for o in out):
            raise BadEmotions(f"face_id {fid!r} appears twice in one message")
        point = getattr(face, "position", None)   # an older producer has none
        position = None
        if point is not None:
            xyz = (float(point.x), float(point.y), float(point.z))
            position = xyz if all(math.isfinite(c) for c in xyz) else None
        out.append(FaceObservation(fid, expression, confidence, bool(face.depth_valid), position, frame_id))
    return out


@dataclass
class FaceState:
    """What the tree knows about one face (the values of the blackboard's ``/faces``).

    ``since`` is when the face's current top ``expression`` started (so
    ``held_s`` is how long it has held, at any confidence);
    :meth:`held_with` measures runs that also keep a minimum confidence.
    """

    face_id: str
    expression: str
    confidence: float
    depth_valid: bool
    first_seen: float
    last_seen: float
    since: float
    history: Deque[Tuple[float, str, float]] = field(default_factory=deque)
    greeted: bool = False
    comforted_since: Optional[float] = None   # ``since`` of the episode already comforted
    quiet_noted: bool = False
    position: Optional[Tuple[float, float, float]] = None   # the last known one (metres, frame_id)
    frame_id: str = ""

    def held_s(self, now: float) -> float:
        return max(0.0, now - self.since)

    def held_with(self, expression: str, min_confidence: float, now: float) -> Tuple[float, Optional[float]]:
        """``(seconds, run start)`` the face has shown ``expression`` at >= ``min_confidence``
        without a break up to its latest observation; ``(0, None)`` when it does not now."""
        start = None
        for t, expr, conf in reversed(self.history):
            if expr != expression or conf < min_confidence:
                break
            start = t
        if start is None:
            return 0.0, None
        return max(0.0, now - start), start

    def observe(self, obs: FaceObservation, now: float, keep_s: float) -> None:
        if obs.expression != self.expression:
            self.since = now
        self.expression, self.confidence, self.depth_valid = obs.expression, obs.confidence, obs.depth_valid
        if obs.position is not None:   # a frame without depth on the face keeps where it was last seen
            self.position, self.frame_id = obs.position, obs.frame_id
        self.last_seen = now
        self.history.append((now, obs.expression, obs.confidence))
        while self.history and now - self.history[0][0] > keep_s:
            self.history.popleft()

    def summary(self, now: float) -> Dict[str, Any]:
        return {"face_id": self.face_id, "expression": self.expression,
                "confidence": round(self.confidence, 3), "held_s": round(self.held_s(now), 2),
                "depth_valid": self.depth_valid}


def turn_target(state: FaceState) -> Optional[Dict[str, Any]]:
    """Where to turn to face this person, or None when the face's position is unknown.

    ``bearing_deg`` and ``elevation_deg`` are measured from the camera's
    optical axis in REP-103's sense of rotation for a robot (positive bearing
    = to the left, positive elevation = up; the optical frame has x right,
    y down, z forward); ``face_frame`` is the face's REP-155 TF frame, for a
    robot that transforms it into its base frame instead.
    """
    if state.position is None:
        return None
    x, y, z = state.position
    return {"frame_id": state.frame_id, "face_frame": f"face_{state.face_id}",
            "bearing_deg": round(math.degrees(math.atan2(-x, z)), 1),
            "elevation_deg": round(math.degrees(math.atan2(-y, math.hypot(x, z))), 1),
            "distance_m": round(math.sqrt(x * x + y * y + z * z), 2)}


class Inbox:
    """What the ROS side hands the tree between ticks (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: List[Tuple[str, float, Any]] = []

    def put_faces(self, now: float, observations: Sequence[FaceObservation]) -> None:
        with self._lock:
            self._events.append(("faces", now, list(observations)))

    def put_wake_up(self, now: float) -> None:
        with self._lock:
            self._events.append(("wake", now, None))

    def put_producer_restarted(self, now: float) -> None:
        with self._lock:
            self._events.append(("restart", now, None))

    def drain(self) -> List[Tuple[str, float, Any]]:
        with self._lock:
            events, self._events = self._events, []
        return events


# ---------------------------------------------------------------- side effects

class Request:
    """An asynchronous service call's outcome: ``value`` or ``error`` once ``done``."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: Optional[str] = None

    def finish(self, value: Any = None, error: Optional[str] = None) -> "Request":
        self.value, self.error, self.done = value, error, True
        return self

    @classmethod
    def failed(cls, error: str) -> "Request":
        return cls().finish(error=error)


class TreeIO(Protocol):
    """The tree's outputs: decisions and fer_node's lifecycle."""

    def now(self) -> float:
        """Seconds on the tree's clock (ROS time in the node)."""

    def publish(self, decision: Dict[str, Any]) -> None:
        """Publish and log one decision (a JSON-able dict with a ``decision`` key)."""

    def change_state(self, transition: str) -> Request:
        """Ask fer_node for lifecycle ``transition`` ("activate", "deactivate"); value: bool success."""

    def get_state(self) -> Request:
        """Ask fer_node for its lifecycle state; value: its label ("active", "inactive", ...)."""


# ---------------------------------------------------------------- behaviours

class _TreeBehaviour(py_trees.behaviour.Behaviour):
    """A behaviour with the tree's IO, settings and logger, and blackboard access to ``keys``."""

    def __init__(self, name: str, io: TreeIO, settings: TreeSettings, log: Any,
                 keys: Sequence[str] = (FACES,), write: bool = True) -> None:
        super().__init__(name)
        self.io, self.settings, self.log = io, settings, log
        self.bb = self.attach_blackboard_client(name=name)
        for key in keys:
            self.bb.register_key(key, access=Access.WRITE if write else Access.READ)

    def faces(self) -> Dict[str, FaceState]:
        return self.bb.get(FACES)


class EmotionsToBlackboard(_TreeBehaviour):
    """Drain the inbox into the blackboard: per-face state, when a face was last seen,
    wake-up requests; forget faces that left. Always SUCCESS."""

    def __init__(self, inbox: Inbox, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("EmotionsToBlackboard", io, settings, log,
                         keys=(FACES, LAST_FACE_SEEN, PERCEPTION, WAKE_REQUESTED, RETRY_AFTER))
        self.inbox = inbox

    def update(self) -> Status:
        faces = self.faces()
        for kind, t, payload in self.inbox.drain():
            if kind == "faces":
                for obs in payload:
                    state = faces.get(obs.face_id)
                    if state is None:
                        state = faces[obs.face_id] = FaceState(obs.face_id, obs.expression, obs.confidence,
                                                               obs.depth_valid, t, t, t)
                        self.log.info(f"face {obs.face_id!r} appeared: {obs.expression} {obs.confidence:.2f}"
                                      f"{'' if obs.depth_valid else ' (no depth)'}")
                    state.observe(obs, t, self.settings.history_s)
                if payload:
                    self.bb.set(LAST_FACE_SEEN, t)
            elif kind == "wake":
                # A wake-up counts as someone being there: the idle timer restarts. The
                # node's state is read again first: someone else may have changed it.
                self.bb.set(LAST_FACE_SEEN, max(t, self.bb.get(LAST_FACE_SEEN)))
                self.bb.set(WAKE_REQUESTED, True)
                self.bb.set(PERCEPTION, UNKNOWN)
                self.bb.set(RETRY_AFTER, -math.inf)
            elif kind == "restart":
                self.log.warning(f"fer_node restarted: forgetting {len(faces)} face(s) "
                                 f"{sorted(faces)} (face_ids restart with the node) and reading its "
                                 "lifecycle state again")
                faces.clear()
                self.bb.set(PERCEPTION, UNKNOWN)
                self.bb.set(RETRY_AFTER, -math.inf)
        now = self.io.now()
        for fid in [f for f, s in faces.items() if now - s.last_seen > self.settings.face_timeout_s]:
            self.log.info(f"face {fid!r} left (not seen for {now - faces[fid].last_seen:.1f} s)")
            del faces[fid]
        return Status.SUCCESS


class PerceptionUnknown(_TreeBehaviour):
    """SUCCESS when fer_node's lifecycle state is not known (start, restart, failed call)."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("PerceptionUnknown?", io, settings, log, keys=(PERCEPTION, RETRY_AFTER), write=False)

    def update(self) -> Status:
        ok = self.bb.get(PERCEPTION) == UNKNOWN and self.io.now() >= self.bb.get(RETRY_AFTER)
        return Status.SUCCESS if ok else Status.FAILURE


class _ServiceCall(_TreeBehaviour):
    """Start a service call on initialise, RUNNING until it answers or times out."""

    def __init__(self, name: str, io: TreeIO, settings: TreeSettings, log: Any, keys: Sequence[str]) -> None:
        super().__init__(name, io, settings, log, keys=tuple(keys) + (PERCEPTION, RETRY_AFTER))
        self.request: Optional[Request] = None
        self.started = 0.0

    def start(self) -> Request:
        raise NotImplementedError

    def answered(self, value: Any) -> Status:
        raise NotImplementedError

    def initialise(self) -> None:
        self.started = self.io.now()
        self.request = self.start()

    def update(self) -> Status:
        req = self.request
        if req is None:
            return Status.FAILURE
        if not req.done:
            if self.io.now() - self.started < self.settings.service_timeout_s:
                return Status.RUNNING
            req.finish(error=f"no answer within service_timeout_s {self.settings.service_timeout_s:g} s")
        if req.error is not None:
            self.log.warning(f"{self.name}: {req.error}; retrying in {self.settings.retry_period_s:g} s")
            self.bb.set(PERCEPTION, UNKNOWN)
            self.bb.set(RETRY_AFTER, self.io.now() + self.settings.retry_period_s)
            return Status.FAILURE
        return self.answered(req.value)


class QueryPerception(_ServiceCall):
    """Read fer_node's lifecycle state into ``/perception``."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("QueryPerception", io, settings, log, keys=(LAST_FACE_SEEN,))

    def start(self) -> Request:
        return self.io.get_state()

    def answered(self, value: Any) -> Status:
        self.bb.set(PERCEPTION, str(value))
        if value == "active":
            self.bb.set(LAST_FACE_SEEN, max(self.io.now(), self.bb.get(LAST_FACE_SEEN)))
        self.log.info(f"fer_node is {value}")
        return Status.SUCCESS


class WakeRequested(_TreeBehaviour):
    """SUCCESS when a wake-up arrived while perception is not active."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("WakeRequested?", io, settings, log, keys=(WAKE_REQUESTED, PERCEPTION, RETRY_AFTER))

    def update(self) -> Status:
        if not self.bb.get(WAKE_REQUESTED) or self.io.now() < self.bb.get(RETRY_AFTER) \
                or self.bb.get(PERCEPTION) == UNKNOWN:
            return Status.FAILURE
        if self.bb.get(PERCEPTION) == "active":
            self.log.info("wake-up: fer_node is already active, nothing to do")
            self.bb.set(WAKE_REQUESTED, False)
            return Status.FAILURE
        if self.bb.get(PERCEPTION) != "inactive":
            self.log.warning(f"wake-up ignored: fer_node is {self.bb.get(PERCEPTION)}, only an inactive node "
                             "can be activated (configure it first)")
            self.bb.set(WAKE_REQUESTED, False)
            return Status.FAILURE
        return Status.SUCCESS


class NobodyFor(_TreeBehaviour):
    """SUCCESS when perception is active and no face has been seen for ``idle_timeout_s``."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("NobodyFor?", io, settings, log, keys=(PERCEPTION, LAST_FACE_SEEN, RETRY_AFTER),
                         write=False)

    def update(self) -> Status:
        now = self.io.now()
        ok = (self.bb.get(PERCEPTION) == "active" and now >= self.bb.get(RETRY_AFTER)
              and now - self.bb.get(LAST_FACE_SEEN) >= self.settings.idle_timeout_s)
        return Status.SUCCESS if ok else Status.FAILURE


class ChangePerception(_ServiceCall):
    """Activate or deactivate fer_node through its lifecycle service."""

    def __init__(self, transition: str, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__(f"ChangePerception({transition})", io, settings, log,
                         keys=(LAST_FACE_SEEN, WAKE_REQUESTED))
        self.transition = transition

    def start(self) -> Request:
        now = self.io.now()
        if self.transition == "deactivate":
            reason = f"no face for {now - self.bb.get(LAST_FACE_SEEN):.1f} s"
        else:
            reason = "wake-up"
            self.bb.set(WAKE_REQUESTED, False)
        self.io.publish({"decision": f"{self.transition}_perception", "reason": reason})
        return self.io.change_state(self.transition)

    def answered(self, value: Any) -> Status:
        if not value:
            self.log.warning(f"fer_node refused the transition {self.transition!r}; reading its state again")
            self.bb.set(PERCEPTION, UNKNOWN)
            return Status.FAILURE
        state = "active" if self.transition == "activate" else "inactive"
        self.bb.set(PERCEPTION, state)
        if state == "active":
            self.bb.set(LAST_FACE_SEEN, self.io.now())
        self.log.info(f"fer_node is {state} now")
        return Status.SUCCESS


class ExpressionHeld(_TreeBehaviour):
    """SUCCESS when a face not yet served has shown ``expression`` at >= ``min_confidence``
    for ``hold_s``; its face_id goes to ``/target/<kind>``."""

    def __init__(self, kind: str, expression: str, min_confidence: float, hold_s: float, io: TreeIO,
                 settings: TreeSettings, log: Any) -> None:
        super().__init__(f"{expression} >= {min_confidence:g} for {hold_s:g} s?", io, settings, log,
                         keys=(FACES, TARGET.format(kind)))
        self.kind, self.expression, self.min_confidence, self.hold_s = kind, expression, min_confidence, hold_s

    def served(self, state: FaceState) -> bool:
        # Greet a face once; comfort it once per episode of the expression.
        return state.greeted if self.kind == "greet" else state.comforted_since == state.since

    def update(self) -> Status:
        now = self.io.now()
        for fid, state in sorted(self.faces().items()):
            held, start = state.held_with(self.expression, self.min_confidence, now)
            if start is not None and held >= self.hold_s and not self.served(state) \
                    and not is_uncertain(state, self.settings):
                self.bb.set(TARGET.format(self.kind), fid)
                return Status.SUCCESS
        return Status.FAILURE


class Say(_TreeBehaviour):
    """A social action toward the target face that takes ``say_duration_s`` (RUNNING meanwhile).

    Stands in for speech or a gesture: it publishes the decision when it
    starts and aborts (FAILURE, ``abort`` decision) if the face leaves
    before it is done.
    """

    def __init__(self, kind: str, expression: str, min_confidence: float, io: TreeIO,
                 settings: TreeSettings, log: Any) -> None:
        super().__init__(f"Say({kind})", io, settings, log, keys=(FACES, TARGET.format(kind)))
        self.kind, self.expression, self.min_confidence = kind, expression, min_confidence
        self.face_id = ""
        self.started = 0.0

    def initialise(self) -> None:
        now = self.io.now()
        self.started = now
        self.face_id = self.bb.get(TARGET.format(self.kind))
        state = self.faces()[self.face_id]
        held, _ = state.held_with(self.expression, self.min_confidence, now)
        if self.kind == "greet":
            state.greeted = True
        else:
            state.comforted_since = state.since
        # Turn towards the person before speaking (null: fer_node has no camera_info, or no depth on the face).
        self.io.publish({"decision": self.kind, **state.summary(now), "held_s": round(held, 2),
                         "turn_to": turn_target(state)})

    def update(self) -> Status:
        elapsed = self.io.now() - self.started
        if self.face_id not in self.faces():
            self.log.warning(f"{self.kind} of face {self.face_id!r} aborted after {elapsed:.1f} of "
                             f"{self.settings.say_duration_s:g} s: the face left mid-behaviour")
            self.io.publish({"decision": "abort", "behaviour": self.kind, "face_id": self.face_id,
                             "reason": "face left", "after_s": round(elapsed, 2)})
            return Status.FAILURE
        if elapsed < self.settings.say_duration_s:
            return Status.RUNNING
        self.io.publish({"decision": "done", "behaviour": self.kind, "face_id": self.face_id})
        return Status.SUCCESS

    def terminate(self, new_status: Status) -> None:
        if new_status == Status.INVALID and self.status == Status.RUNNING:
            self.log.info(f"{self.kind} of face {self.face_id!r} preempted by a higher-priority behaviour")


def is_uncertain(state: FaceState, settings: TreeSettings) -> bool:
    """A guess the tree does not act on: fer_node said ``unknown``, or no usable depth and a low confidence."""
    return state.expression == UNKNOWN_EXPRESSION or (
        not state.depth_valid and state.confidence < settings.quiet_max_confidence)


def uncertainty_reason(state: FaceState, settings: TreeSettings) -> str:
    """Why :func:`is_uncertain` holds for a face, for the ``stay_quiet`` decision."""
    if state.expression == UNKNOWN_EXPRESSION:
        return f"expression unknown: confidence {state.confidence:.2f} is below fer_node's min_confidence"
    return f"no usable depth and confidence {state.confidence:.2f} < {settings.quiet_max_confidence:g}"


class Uncertain(_TreeBehaviour):
    """SUCCESS for a face not yet noted that :func:`is_uncertain` calls a guess
    (``unknown``, or invalid depth and confidence below ``quiet_max_confidence``):
    the tree should not act on it."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("no depth and low confidence?", io, settings, log, keys=(FACES, TARGET.format("quiet")))

    def update(self) -> Status:
        for fid, state in sorted(self.faces().items()):
            if not state.quiet_noted and is_uncertain(state, self.settings):
                self.bb.set(TARGET.format("quiet"), fid)
                return Status.SUCCESS
        return Status.FAILURE


class StayQuiet(_TreeBehaviour):
    """Decide to say nothing to the target face (once per face), with the reason."""

    def __init__(self, io: TreeIO, settings: TreeSettings, log: Any) -> None:
        super().__init__("StayQuiet", io, settings, log, keys=(FACES, TARGET.format("quiet")))

    def update(self) -> Status:
        now = self.io.now()
        state = self.faces().get(self.bb.get(TARGET.format("quiet")))
        if state is None:
            return Status.FAILURE
        state.quiet_noted = True
        self.io.publish({"decision": "stay_quiet", **state.summary(now),
                         "reason": uncertainty_reason(state, self.settings)})
        return Status.SUCCESS


def build_tree(inbox: Inbox, io: TreeIO, settings: TreeSettings = TreeSettings(),
               log: Any = logger) -> py_trees.trees.BehaviourTree:
    """The tree of the module docstring, with a freshly initialised blackboard.

    Raises:
        TreeSettingsError: a setting is out of range.
    """
    s = settings.validate()
    py_trees.blackboard.Blackboard.clear()
    bb = py_trees.blackboard.Client(name="build_tree")
    for key in (FACES, LAST_FACE_SEEN, PERCEPTION, WAKE_REQUESTED, RETRY_AFTER):
        bb.register_key(key, access=Access.WRITE)
    bb.set(FACES, {})
    bb.set(LAST_FACE_SEEN, io.now())
    bb.set(PERCEPTION, UNKNOWN)
    bb.set(WAKE_REQUESTED, False)
    bb.set(RETRY_AFTER, -math.inf)

    def seq(name: str, *children: py_trees.behaviour.Behaviour) -> py_trees.composites.Sequence:
        return py_trees.composites.Sequence(name, memory=True, children=list(children))

    social = py_trees.composites.Selector("social", memory=True, children=[
        seq("comfort", ExpressionHeld("comfort", s.comfort_expression, s.comfort_min_confidence, s.comfort_hold_s,
                                      io, s, log),
            Say("comfort", s.comfort_expression, s.comfort_min_confidence, io, s, log)),
        seq("greet", ExpressionHeld("greet", s.greet_expression, s.greet_min_confidence, s.greet_hold_s,
                                    io, s, log),
            Say("greet", s.greet_expression, s.greet_min_confidence, io, s, log)),
        seq("stay quiet", Uncertain(io, s, log), StayQuiet(io, s, log)),
    ])
    priorities = py_trees.composites.Selector("priorities", memory=False, children=[
        seq("read perception state", PerceptionUnknown(io, s, log), QueryPerception(io, s, log)),
        seq("wake up", WakeRequested(io, s, log), ChangePerception("activate", io, s, log)),
        seq("save compute", NobodyFor(io, s, log), ChangePerception("deactivate", io, s, log)),
        social,
        py_trees.behaviours.Running("idle"),
    ])
    root = py_trees.composites.Sequence("emotion_tree", memory=False,
                                        children=[EmotionsToBlackboard(inbox, io, s, log), priorities])
    return py_trees.trees.BehaviourTree(root)


def faces_on_blackboard() -> Dict[str, FaceState]:
    """The blackboard's current ``/faces`` (for tools and tests)."""
    return py_trees.blackboard.Blackboard.get(FACES)


def perception_on_blackboard() -> str:
    return py_trees.blackboard.Blackboard.get(PERCEPTION)

