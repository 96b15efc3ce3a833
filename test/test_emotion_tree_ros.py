"""The example behaviour tree end to end: real rclpy and DDS, three processes.

fer_node (shipped weights) and the tree (``cmcnn_ros.examples.emotion_tree_node``)
each run in their own process on a private ROS_DOMAIN_ID; this test process
publishes rendered synthetic RGB-D frames into the node, the wake-up message
and (for the bad-input case) a hand-made EmotionArray, and reads the tree's
decisions, the node's results and its lifecycle state.

The scene: three synthetic subjects side by side at 1.1 m, a full-intensity
happy face (left), a neutral face whose depth is blanked (middle: the node
answers without depth) and a full-intensity sad face (right), the
expressions the shipped weights classify reliably (models/MODEL_CARD.md).
Which face_id is which person comes from the node's own results, matched to
the renderer's ground-truth boxes by IoU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.rosproc import (ROOT, NodeProcess, RosClient, claim_domain_id, image_msg,
                                 ros_env, wait_until)

from cmcnn_ros.msg import Emotion, EmotionArray
from lifecycle_msgs.srv import GetState
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, String

COLOUR, DEPTH = "/cam/color/image_raw", "/cam/depth_registered/image_raw"
INFO = "/cam/color/camera_info"
EMOTIONS = "/fer_node/emotions"
DECISIONS = "/emotion_tree/decisions"
WAKE = "/emotion_tree/wake_up"
TREE_MODULE = "cmcnn_ros.examples.emotion_tree_node"
RATE_HZ = 8.0
LABELS = ("happy", "neutral", "sad")   # left to right


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Dict[str, Any]:
    """Four renders of the three-face scene (different light and sensor noise) and an empty room."""
    from cmcnn_synthetic.scene import FaceSpec, render_frame

    z, f, cx = 1.1, 525.0, 319.5
    specs = [FaceSpec(subject_id=subject, label=label, intensity=4 if label != "neutral" else 0,
                      position_m=((u - cx) * z / f, 0.0, z), expression_seed=1)
             for subject, label, u in ((4, "happy", 110), (24, "neutral", 320), (14, "sad", 530))]
    frames, boxes, sellions = [], None, None
    for seed in range(100, 104):
        fr = render_frame(specs, seed=seed)
        depth = fr.depth_mm.copy()
        depth[:, 215:425] = 0          # no depth readings on the middle face
        frames.append((fr.colour, depth))
        boxes = [t.box for t in fr.faces]
        sellions = [t.sellion_m for t in fr.faces]
    empty = render_frame([], seed=200)
    info = CameraInfo(width=640, height=480)
    info.k = [f, 0.0, cx, 0.0, f, 239.5, 0.0, 0.0, 1.0]   # the renderer's camera
    info.header.frame_id = "camera_color_optical_frame"
    return {"faces": frames, "boxes": boxes, "sellions": sellions, "empty": [(empty.colour, empty.depth_mm)],
            "camera_info": info}


def _iou(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


class World:
    """A private domain with the tree (and fer_node, when started) and this test's client."""

    def __init__(self, workdir: Path, name: str, tree_params: Dict[str, Any]) -> None:
        self.workdir, self.name = workdir, name
        self.lease = claim_domain_id()
        self.client = RosClient(self.lease.domain_id, name="emotion_tree_test")
        n = self.client.node
        self.pub_c = n.create_publisher(Image, COLOUR, 10)
        self.pub_d = n.create_publisher(Image, DEPTH, 10)
        self.pub_wake = n.create_publisher(Empty, WAKE, 10)
        self.pub_info = n.create_publisher(CameraInfo, INFO, 10)
        self.camera_info: Any = None      # set by the test: sent with every frame
        self.sub_decisions, self.decisions_raw = self.client.collector(String, DECISIONS, 50)
        self.sub_emotions, self.emotions = self.client.collector(EmotionArray, EMOTIONS, 50)
        self.nodes: List[NodeProcess] = []
        self.node = self.start_node()
        self.tree = NodeProcess(self.lease.domain_id, workdir / f"{name}_tree.log",
                                {"emotions_topic": EMOTIONS, "retry_period_s": 1.0, **tree_params},
                                module=TREE_MODULE)

    def start_node(self) -> NodeProcess:
        node = NodeProcess(self.lease.domain_id, self.workdir / f"{self.name}_fer_node_{len(self.nodes)}.log",
                           {"colour_topic": COLOUR, "depth_topic": DEPTH, "device": "cpu", "num_threads": 1,
                            "publish_hri": False, "camera_info_topic": INFO})
        self.nodes.append(node)
        return node

    def wait_ready(self, node: NodeProcess, after: int = 0) -> None:
        """fer_node active and subscribed; the tree knows it is active."""
        node.wait_for_log(r"\] \[fer_node\]: active:", 90)
        assert wait_until(lambda: self.pub_c.get_subscription_count() > 0
                          and self.pub_d.get_subscription_count() > 0, 30), node.log()[-2000:]
        self.tree.wait_for_log(r"fer_node is active", 30, after=after)

    def decisions(self, kind: str = "") -> List[Dict[str, Any]]:
        out = [json.loads(m.data) for _, m in list(self.decisions_raw)]
        return [d for d in out if not kind or d["decision"] == kind]

    def play(self, frames: List[Tuple[np.ndarray, np.ndarray]], seconds: float,
             until: Any = None) -> bool:
        """Publish ``frames`` round-robin at RATE_HZ for ``seconds`` or until ``until()`` is true."""
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            colour, depth = frames[i % len(frames)]
            ns = time.time_ns()
            if self.camera_info is not None:
                self.camera_info.header.stamp.sec, self.camera_info.header.stamp.nanosec = divmod(ns, 10**9)
                self.pub_info.publish(self.camera_info)
            self.pub_c.publish(image_msg(colour, "bgr8", ns))
            self.pub_d.publish(image_msg(depth, "16UC1", ns))
            i += 1
            if until is not None and until():
                return True
            time.sleep(1.0 / RATE_HZ)
        return until() if until is not None else True

    def lifecycle_state(self) -> str:
        return self.client.call(GetState, "/fer_node/get_state", GetState.Request()).current_state.label

    def ids_by_label(self, boxes: List[Tuple[int, int, int, int]], since_ns: int = 0) -> Dict[str, str]:
        """label -> the face_id the node gave that person (results received after ``since_ns``)."""
        votes: Dict[Tuple[str, str], int] = {}
        for t, msg in list(self.emotions):
            if t < since_ns:
                continue
            for e in msg.faces:
                roi = (e.roi.x_offset, e.roi.y_offset, e.roi.width, e.roi.height)
                best = max(range(len(boxes)), key=lambda k: _iou(roi, boxes[k]))
                if _iou(roi, boxes[best]) > 0.3:
                    votes[(LABELS[best], e.face_id)] = votes.get((LABELS[best], e.face_id), 0) + 1
        out: Dict[str, str] = {}
        for (label, fid), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            out.setdefault(label, fid)
        return out

    def close(self) -> None:
        self.client.close()
        for proc in [self.tree] + self.nodes:
            proc.stop()
        self.lease.release()


def _logs(w: World) -> str:
    return f"--- tree log:\n{w.tree.log()[-4000:]}\n--- fer_node log:\n{w.node.log()[-2000:]}"


def test_tree_greets_the_happy_face_pauses_perception_and_resumes_on_wake_up(tmp_path, scene):
    w = World(tmp_path, "main", {"idle_timeout_s": 3.0, "say_duration_s": 1.0, "quiet_max_confidence": 0.9})
    w.camera_info = scene["camera_info"]
    try:
        w.wait_ready(w.node)
        assert w.lifecycle_state() == "active"

        # People in view: happy for > 1 s earns a greeting, sad for > 2 s comforting.
        t_faces = time.time_ns()
        w.play(scene["faces"], 10.0, until=lambda: w.decisions("comfort") and w.decisions("greet")
               and w.decisions("stay_quiet"))
        ids = w.ids_by_label(scene["boxes"], t_faces)
        assert set(ids) == set(LABELS), f"node did not see all three faces: {ids}\n{_logs(w)}"
        greets = w.decisions("greet")
        assert [g["face_id"] for g in greets] == [ids["happy"]], f"{w.decisions()}\n{_logs(w)}"
        assert greets[0]["expression"] == "happy" and greets[0]["confidence"] >= 0.6
        assert greets[0]["held_s"] >= 1.0
        assert [c["face_id"] for c in w.decisions("comfort")] == [ids["sad"]], w.decisions()
        assert [q["face_id"] for q in w.decisions("stay_quiet")] == [ids["neutral"]], w.decisions()
        for d in w.decisions():
            assert d["decision"] not in ("greet", "comfort") or d["face_id"] != ids["neutral"]
        # Issue 17: each turns towards the person that triggered it (left: happy, right: sad).
        for decision, index in ((greets[0], 0), (w.decisions("comfort")[0], 2)):
            x, y, z = scene["sellions"][index]
            turn = decision["turn_to"]
            assert turn["face_frame"] == f"face_{decision['face_id']}", decision
            assert turn["bearing_deg"] == pytest.approx(math.degrees(math.atan2(-x, z)), abs=2.0), decision
            assert turn["distance_m"] == pytest.approx(math.sqrt(x * x + y * y + z * z), abs=0.05), decision
        assert greets[0]["turn_to"]["bearing_deg"] > 15 and w.decisions("comfort")[0]["turn_to"]["bearing_deg"] < -15

        # They leave: after idle_timeout_s without a face the tree pauses the node.
        w.play(scene["empty"], 10.0, until=lambda: w.decisions("deactivate_perception"))
        w.tree.wait_for_log(r"fer_node is inactive now", 10)
        assert w.lifecycle_state() == "inactive"
        paused = w.decisions("deactivate_perception")
        assert len(paused) == 1 and paused[0]["reason"].startswith("no face for 3.")
        # Paused: frames arrive, no results come out.
        w.play(scene["faces"], 1.0)
        n_results = len(w.emotions)
        w.play(scene["faces"], 1.0)
        assert len(w.emotions) == n_results
        assert w.decisions("greet") == greets

        # Wake-up: the node is active again and results flow into the tree again.
        w.pub_wake.publish(Empty())
        assert wait_until(lambda: w.decisions("activate_perception"), 10), _logs(w)
        w.tree.wait_for_log(r"fer_node is active now", 10)
        assert w.lifecycle_state() == "active"
        t_wake = time.time_ns()
        assert w.play(scene["faces"], 8.0, until=lambda: len(w.decisions("greet")) > 1), _logs(w)
        ids_after = w.ids_by_label(scene["boxes"], t_wake)
        assert [g["face_id"] for g in w.decisions("greet")][1:] == [ids_after["happy"]]
        assert w.tree.proc.poll() is None
    finally:
        w.close()


def _bad_array(n_scores: int) -> EmotionArray:
    msg = EmotionArray()
    msg.header.stamp.sec = 12
    msg.classes = ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"]
    e = Emotion(face_id="face_bad", expression="happy", confidence=0.9, scores=[0.1] * n_scores, depth_valid=True)
    msg.faces = [e]
    return msg


def test_tree_survives_bad_arrays_faces_leaving_mid_greeting_and_node_restart(tmp_path, scene):
    w = World(tmp_path, "robust", {"idle_timeout_s": 60.0, "say_duration_s": 3.0})
    try:
        w.wait_ready(w.node)

        # The happy face stays 1.6 s: the greeting starts after 1 s, the face leaves before it ends.
        room_c, room_d = scene["empty"][0]
        happy_only = [(np.concatenate([c[:, :215], room_c[:, 215:]], axis=1),
                       np.concatenate([d[:, :215], room_d[:, 215:]], axis=1)) for c, d in scene["faces"]]
        t0 = time.time_ns()
        assert w.play(happy_only, 6.0, until=lambda: w.decisions("greet")), _logs(w)
        w.play(happy_only, 0.6)
        w.play(scene["empty"], 6.0, until=lambda: w.decisions("abort"))
        happy_id = w.ids_by_label(scene["boxes"], t0)["happy"]
        aborts = w.decisions("abort")
        assert [(a["face_id"], a["behaviour"], a["reason"]) for a in aborts] == [(happy_id, "greet", "face left")]
        assert aborts[0]["after_s"] < 3.0 and w.decisions("done") == []
        w.tree.wait_for_log(rf"greet of face '{happy_id}' aborted after \d+\.\d of 3 s: the face left mid-behaviour", 5)

        # An EmotionArray whose scores do not match its classes: logged, skipped, the tree goes on.
        bad_pub = w.client.node.create_publisher(EmotionArray, EMOTIONS, 10)
        assert wait_until(lambda: bad_pub.get_subscription_count() >= 2, 10)
        bad_pub.publish(_bad_array(5))
        w.tree.wait_for_log(r"skipping EmotionArray \(stamp 12\.000\) on /fer_node/emotions: face 'face_bad' has 5 "
                            r"scores for 7 classes", 10)
        w.client.node.destroy_publisher(bad_pub)
        assert "face 'face_bad' appeared" not in w.tree.log()

        # fer_node restarts: the tree says so, forgets the old face_ids, and works with the new node.
        mark = len(w.tree.log())
        assert w.node.stop() == 0
        w.tree.wait_for_log(r"/fer_node no longer publishes on /fer_node/emotions: it stopped or is restarting",
                            10, after=mark)
        w.node = w.start_node()
        w.wait_ready(w.node, after=mark)
        w.tree.wait_for_log(r"/fer_node publishes on /fer_node/emotions again: it restarted", 10, after=mark)
        w.tree.wait_for_log(r"fer_node restarted: forgetting \d+ face\(s\)", 10, after=mark)
        n_greets = len(w.decisions("greet"))
        t1 = time.time_ns()
        assert w.play(happy_only, 8.0, until=lambda: len(w.decisions("greet")) > n_greets), _logs(w)
        assert w.decisions("greet")[-1]["face_id"] == w.ids_by_label(scene["boxes"], t1)["happy"]
        assert w.tree.proc.poll() is None, _logs(w)
        assert "Traceback" not in w.tree.log()
    finally:
        w.close()


def test_yaml_mirrors_declared_parameters():
    import yaml

    from cmcnn_ros.examples.emotion_tree import TreeSettings
    from cmcnn_ros.examples.emotion_tree_node import NODE_NAME, PARAMETERS

    text = (ROOT / "config" / "emotion_tree.yaml").read_text()
    params = yaml.safe_load(text)[NODE_NAME]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, (default, description, _) in PARAMETERS.items():
        assert params[name] == default and type(params[name]) is type(default), name
        assert len(description) > 20, name
    # The tree's settings are exactly the thresholds/durations parameters, with the same defaults.
    for name, field in TreeSettings.__dataclass_fields__.items():
        assert PARAMETERS[name][0] == field.default, name
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    ") and not line.strip().startswith("#") and ":" in line:
            assert lines[i - 1].strip().startswith("#"), f"no comment above {line.strip()!r}"


@pytest.mark.parametrize("args, message", [
    (["-p", "greet_min_confidence:=1.5"], "Parameter greet_min_confidence out of range"),
    (["-p", "idle_timeout_s:=3"], "parameter 'idle_timeout_s' to '3' of type 'INTEGER', expecting type 'DOUBLE'"),
    (["-p", "comfort_expression:=' '"], "comfort_expression is empty"),
])
def test_bad_parameters_stop_start_up_with_a_clear_message(args, message):
    lease = claim_domain_id()
    try:
        proc = subprocess.run([sys.executable, "-m", TREE_MODULE, "--ros-args", *args], env=ros_env(lease.domain_id),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        lease.release()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "cannot start:" in out and message in out and "fix that parameter" in out
    assert "Traceback" not in out


def test_starts_with_the_shipped_params_file(tmp_path):
    lease = claim_domain_id()
    tree = NodeProcess(lease.domain_id, tmp_path / "tree.log", {}, module=TREE_MODULE,
                       ros_args=["--params-file", str(ROOT / "config" / "emotion_tree.yaml")])
    try:
        tree.wait_for_log(r"emotion tree: /fer_node/emotions -> /emotion_tree/decisions; wake-up on "
                          r"/emotion_tree/wake_up; pauses /fer_node after 10 s without a face", 30)
    finally:
        assert tree.stop() == 0, tree.log()
        lease.release()
