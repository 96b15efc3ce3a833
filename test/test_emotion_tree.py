"""The example behaviour tree's ROS-free core (cmcnn_ros/examples/emotion_tree.py).

The tree is ticked on a test clock with observations as fer_node would send
them; its lifecycle requests are answered by a recorder standing in for
fer_node's services (the real services are exercised end to end in
test_emotion_tree_ros.py). Assertions are on the decisions it publishes and
the blackboard state.
"""

from __future__ import annotations

import logging
import math
import re
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest

from cmcnn_ros.examples.emotion_tree import (BadEmotions, FaceObservation, Inbox, Request, TreeSettings,
                                             TreeSettingsError, build_tree, faces_on_blackboard,
                                             observations_from_message, perception_on_blackboard)

CLASSES = ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"]


class Recorder:
    """TreeIO on a manual clock; lifecycle calls answered as ``answers`` says."""

    def __init__(self) -> None:
        self.t = 100.0
        self.decisions: List[Dict[str, Any]] = []
        self.calls: List[str] = []
        self.state = "active"
        self.available = True
        self.pending: Optional[Request] = None   # set to hold the next answer back

    def now(self) -> float:
        return self.t

    def publish(self, decision: Dict[str, Any]) -> None:
        self.decisions.append(decision)

    def change_state(self, transition: str) -> Request:
        self.calls.append(transition)
        if not self.available:
            return Request.failed("service /fer_node/change_state is not available (is fer_node running?)")
        ok = (transition, self.state) in (("activate", "inactive"), ("deactivate", "active"))
        if ok:
            self.state = "active" if transition == "activate" else "inactive"
        return Request().finish(value=ok)

    def get_state(self) -> Request:
        self.calls.append("get_state")
        if not self.available:
            return Request.failed("service /fer_node/get_state is not available (is fer_node running?)")
        return Request().finish(value=self.state)

    def kinds(self) -> List[str]:
        return [d["decision"] for d in self.decisions]


def obs(fid: str, expression: str, confidence: float = 0.9, depth_valid: bool = True,
        position: Optional[tuple] = None) -> FaceObservation:
    return FaceObservation(fid, expression, confidence, depth_valid, position,
                           "camera_color_optical_frame" if position else "")


class Run:
    def __init__(self, settings: TreeSettings = TreeSettings(), state: str = "active") -> None:
        self.io = Recorder()
        self.io.state = state
        self.inbox = Inbox()
        self.log = logging.getLogger("test_emotion_tree")
        self.tree = build_tree(self.inbox, self.io, settings, self.log)

    def play(self, seconds: float, faces: Optional[List[FaceObservation]] = None, dt: float = 0.1) -> None:
        """Tick for ``seconds``, sending ``faces`` (None: no message at all) before each tick."""
        for _ in range(int(round(seconds / dt))):
            self.io.t += dt
            if faces is not None:
                self.inbox.put_faces(self.io.t, faces)
            self.tree.tick()

    def decisions(self, kind: str) -> List[Dict[str, Any]]:
        return [d for d in self.io.decisions if d["decision"] == kind]


def test_greets_a_face_happy_for_one_second_once_and_not_the_others():
    r = Run()
    faces = [obs("face_1", "happy", 0.8), obs("face_2", "neutral", 0.9), obs("face_3", "happy", 0.55)]
    r.play(0.95, faces)
    assert r.decisions("greet") == []                    # not yet held for 1 s
    r.play(0.3, faces)
    greets = r.decisions("greet")
    assert [g["face_id"] for g in greets] == ["face_1"]  # face_3 is below 0.6, face_2 not happy
    assert greets[0]["expression"] == "happy" and greets[0]["confidence"] == pytest.approx(0.8)
    assert 1.0 <= greets[0]["held_s"] <= 1.15
    r.play(3.0, faces)
    assert [g["face_id"] for g in r.decisions("greet")] == ["face_1"]   # once per face
    assert [d["face_id"] for d in r.decisions("done")] == ["face_1"]
    # Blackboard: per-face state with how long the expression has held.
    state = faces_on_blackboard()
    assert set(state) == {"face_1", "face_2", "face_3"}
    assert state["face_2"].expression == "neutral" and state["face_2"].held_s(r.io.t) == pytest.approx(4.2, abs=0.15)
    assert state["face_1"].greeted and not state["face_3"].greeted


def test_a_dip_in_confidence_restarts_the_hold():
    r = Run()
    r.play(0.8, [obs("a", "happy", 0.9)])
    r.play(0.1, [obs("a", "happy", 0.4)])
    r.play(0.8, [obs("a", "happy", 0.9)])
    assert r.decisions("greet") == []
    r.play(0.4, [obs("a", "happy", 0.9)])
    assert [g["face_id"] for g in r.decisions("greet")] == ["a"]


def test_comforts_a_face_sad_for_two_seconds_once_per_episode():
    r = Run()
    r.play(1.9, [obs("s", "sad", 0.7)])
    assert r.decisions("comfort") == []
    r.play(0.3, [obs("s", "sad", 0.7)])
    assert [c["face_id"] for c in r.decisions("comfort")] == ["s"]
    r.play(3.0, [obs("s", "sad", 0.7)])
    assert len(r.decisions("comfort")) == 1
    r.play(0.5, [obs("s", "neutral", 0.7)])
    r.play(2.3, [obs("s", "sad", 0.7)])                 # a new episode
    assert len(r.decisions("comfort")) == 2


def test_comfort_and_greeting_turn_towards_the_person_that_triggered_them():
    """Issue 17: the decision says where that person is (fer_node's Emotion.position, optical frame)."""
    r = Run()
    sad = (0.5, -0.2, 1.5)         # right of the optical axis and above it, 1.6 m away
    happy = (-0.4, 0.1, 1.2)       # left of it and a little below
    r.play(1.2, [obs("s", "sad", 0.7, position=sad), obs("h", "happy", 0.9, position=happy)])
    r.play(2.0, [obs("s", "sad", 0.7, position=sad), obs("h", "happy", 0.9, position=happy)])   # greeting done
    comfort, greet = r.decisions("comfort")[0], r.decisions("greet")[0]
    assert comfort["face_id"] == "s" and greet["face_id"] == "h"
    assert comfort["turn_to"] == {"frame_id": "camera_color_optical_frame", "face_frame": "face_s",
                                  "bearing_deg": pytest.approx(-18.4, abs=0.05),   # atan2(-0.5, 1.5): to the right
                                  "elevation_deg": pytest.approx(7.2, abs=0.05),   # up
                                  "distance_m": pytest.approx(1.59, abs=0.005)}
    assert greet["turn_to"]["bearing_deg"] == pytest.approx(18.4, abs=0.05)        # to the left
    assert greet["turn_to"]["elevation_deg"] < 0


def test_without_a_position_the_tree_still_acts_and_says_it_cannot_turn():
    r = Run()
    r.play(2.2, [obs("s", "sad", 0.7)])              # fer_node without camera_info: position NaN
    assert r.decisions("comfort")[0]["turn_to"] is None
    # A face seen with a position keeps it through frames without depth on it.
    r.play(0.2, [obs("t", "sad", 0.7, position=(0.0, 0.0, 2.0))])
    r.play(2.2, [obs("t", "sad", 0.7)])
    assert r.decisions("comfort")[-1]["face_id"] == "t" and r.decisions("comfort")[-1]["turn_to"]["distance_m"] == 2.0


def test_stays_quiet_to_a_face_without_depth_and_low_confidence():
    r = Run(TreeSettings(quiet_max_confidence=0.7))
    faces = [obs("nodepth", "happy", 0.65, depth_valid=False), obs("depth", "neutral", 0.3)]
    r.play(2.0, faces)
    quiet = r.decisions("stay_quiet")
    assert [q["face_id"] for q in quiet] == ["nodepth"]   # a low confidence with depth is not enough
    assert "no usable depth" in quiet[0]["reason"] and "0.65 < 0.7" in quiet[0]["reason"]
    assert r.decisions("greet") == []                     # happy >= 0.6 for 2 s, but a guess: no greeting


def test_never_acts_on_an_unknown_expression():
    """Issue 17.3: below fer_node's min_confidence a face is 'unknown': seen, never greeted or comforted."""
    r = Run()
    # A face that smiles confidently, then is only a guess for a while, then smiles again.
    r.play(0.8, [obs("f", "happy", 0.9)])
    r.play(0.2, [obs("f", "unknown", 0.45)])          # the hold of 'happy' is broken, not paused
    quiet = r.decisions("stay_quiet")
    assert [q["face_id"] for q in quiet] == ["f"] and quiet[0]["expression"] == "unknown"
    assert quiet[0]["reason"] == "expression unknown: confidence 0.45 is below fer_node's min_confidence"
    r.play(0.9, [obs("f", "happy", 0.9)])
    assert r.decisions("greet") == []                 # 0.9 s of happy since the unknown frames
    r.play(0.3, [obs("f", "happy", 0.9)])
    assert [g["face_id"] for g in r.decisions("greet")] == ["f"]
    # A face that stays unknown for long is still a face (no idle deactivation), never served.
    r2 = Run(TreeSettings(idle_timeout_s=2.0))
    r2.play(5.0, [obs("g", "unknown", 0.3), obs("h", "unknown", 0.2, depth_valid=False)])
    assert r2.decisions("greet") == r2.decisions("comfort") == r2.decisions("deactivate_perception") == []
    assert sorted(q["face_id"] for q in r2.decisions("stay_quiet")) == ["g", "h"]
    assert faces_on_blackboard()["g"].expression == "unknown"


def test_face_leaving_mid_greeting_aborts_with_a_log_line(caplog):
    r = Run(TreeSettings(say_duration_s=2.0))
    r.play(1.2, [obs("f", "happy", 0.9)])
    assert [g["face_id"] for g in r.decisions("greet")] == ["f"]
    with caplog.at_level(logging.INFO, logger="test_emotion_tree"):
        r.play(1.5, [])                                   # empty results: the face is gone
    aborts = r.decisions("abort")
    assert len(aborts) == 1 and aborts[0]["face_id"] == "f" and aborts[0]["behaviour"] == "greet"
    assert 1.0 < aborts[0]["after_s"] < 1.3               # face_timeout_s 1.0 after the last sighting
    assert r.decisions("done") == []
    assert "greet of face 'f' aborted after" in caplog.text and "the face left mid-behaviour" in caplog.text
    assert "face 'f' left (not seen for" in caplog.text


def test_deactivates_after_idle_timeout_and_reactivates_on_wake_up():
    r = Run(TreeSettings(idle_timeout_s=3.0))
    r.play(0.2)
    assert r.io.calls == ["get_state"] and perception_on_blackboard() == "active"
    r.play(1.0, [obs("f", "neutral")])
    r.play(2.7, [])                                       # results without faces
    assert "deactivate" not in r.io.calls
    r.play(0.5, [])
    assert r.io.calls == ["get_state", "deactivate"] and r.io.state == "inactive"
    dec = r.decisions("deactivate_perception")
    assert len(dec) == 1 and dec[0]["reason"].startswith("no face for 3.")
    assert perception_on_blackboard() == "inactive"
    r.play(5.0)                                           # paused: no messages, no more calls
    assert r.io.calls == ["get_state", "deactivate"]
    r.inbox.put_wake_up(r.io.t)
    r.play(0.3)
    assert r.io.calls[-2:] == ["get_state", "activate"] and r.io.state == "active"
    assert r.decisions("activate_perception")[0]["reason"] == "wake-up"
    r.play(2.5)                                           # idle timer restarted on wake-up
    assert r.io.calls.count("deactivate") == 1
    r.play(1.0)
    assert r.io.calls.count("deactivate") == 2


def test_wake_up_when_someone_else_activated_the_node_changes_nothing(caplog):
    r = Run(state="inactive")
    r.play(0.2)
    assert perception_on_blackboard() == "inactive"
    r.io.state = "active"                                 # e.g. `ros2 lifecycle set /fer_node activate`
    with caplog.at_level(logging.INFO, logger="test_emotion_tree"):
        r.inbox.put_wake_up(r.io.t)
        r.play(0.3)
    assert r.io.calls == ["get_state", "get_state"] and perception_on_blackboard() == "active"
    assert "wake-up: fer_node is already active, nothing to do" in caplog.text
    assert r.decisions("activate_perception") == []


def test_unavailable_service_is_retried_not_fatal(caplog):
    r = Run(TreeSettings(retry_period_s=2.0))
    r.io.available = False
    with caplog.at_level(logging.WARNING, logger="test_emotion_tree"):
        r.play(3.0)
    assert r.io.calls == ["get_state", "get_state"]      # at start and after retry_period_s
    assert "QueryPerception: service /fer_node/get_state is not available" in caplog.text
    assert perception_on_blackboard() == "unknown"
    r.io.available = True
    r.play(2.0, [obs("f", "happy")])
    assert perception_on_blackboard() == "active" and len(r.decisions("greet")) == 1


def test_producer_restart_forgets_faces_and_rereads_state(caplog):
    r = Run()
    r.play(0.5, [obs("face_1", "sad")])
    r.io.state = "active"
    with caplog.at_level(logging.WARNING, logger="test_emotion_tree"):
        r.inbox.put_producer_restarted(r.io.t)
        r.play(0.1)
    assert "fer_node restarted: forgetting 1 face(s) ['face_1']" in caplog.text
    assert faces_on_blackboard() == {} and r.io.calls.count("get_state") == 2
    # The new node reuses face_1 for another person: that one is greeted afresh.
    r.play(1.2, [obs("face_1", "happy")])
    assert [g["face_id"] for g in r.decisions("greet")] == ["face_1"]


def _msg(scores_len: int = 7, **face: Any) -> SimpleNamespace:
    f = {"face_id": "face_1", "expression": "happy", "confidence": 0.9, "scores": [0.1] * scores_len,
         "depth_valid": True}
    f.update(face)
    return SimpleNamespace(classes=list(CLASSES), faces=[SimpleNamespace(**f)])


def test_observations_from_message_accepts_a_good_message():
    out = observations_from_message(_msg())
    assert out == [FaceObservation("face_1", "happy", pytest.approx(0.9), True)]
    m = _msg(position=SimpleNamespace(x=0.25, y=-0.5, z=1.5))
    m.header = SimpleNamespace(frame_id="camera_color_optical_frame")
    assert observations_from_message(m) == [FaceObservation("face_1", "happy", pytest.approx(0.9), True,
                                                            (0.25, -0.5, 1.5), "camera_color_optical_frame")]
    unknown = observations_from_message(_msg(position=SimpleNamespace(x=math.nan, y=math.nan, z=math.nan)))
    assert unknown[0].position is None
    # 'unknown' is not among the classes, but it is what fer_node sends below min_confidence
    out = observations_from_message(_msg(expression="unknown", confidence=0.3))
    assert out == [FaceObservation("face_1", "unknown", pytest.approx(0.3), True)]


@pytest.mark.parametrize("kw, text", [
    ({"scores_len": 5}, "face 'face_1' has 5 scores for 7 classes"),
    ({"expression": "joy"}, "expression 'joy', not one of classes"),
    ({"confidence": math.nan}, "confidence nan, outside [0, 1]"),
    ({"confidence": 1.5}, "confidence 1.5, outside [0, 1]"),
    ({"face_id": ""}, "face #0 has an empty face_id"),
])
def test_observations_from_message_rejects_inconsistent_messages(kw, text):
    with pytest.raises(BadEmotions, match=re.escape(text)):
        observations_from_message(_msg(**kw))


def test_repeated_face_id_is_rejected():
    m = _msg()
    m.faces.append(m.faces[0])
    with pytest.raises(BadEmotions, match="face_id 'face_1' appears twice"):
        observations_from_message(m)


@pytest.mark.parametrize("kw, text", [
    ({"greet_min_confidence": 1.2}, "greet_min_confidence 1.2: a confidence threshold must be in"),
    ({"idle_timeout_s": 0.0}, "idle_timeout_s 0.0: durations must be positive"),
    ({"greet_expression": " "}, "greet_expression is empty"),
    ({"comfort_expression": "unknown"}, "comfort_expression is 'unknown', fer_node's word for a guess"),
])
def test_bad_settings_are_clear_errors(kw, text):
    with pytest.raises(TreeSettingsError, match=re.escape(text)):
        build_tree(Inbox(), Recorder(), TreeSettings(**kw))
