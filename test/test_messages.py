"""The generated cmcnn_ros messages: field layout, documentation, import from a
fresh shell, and a real publisher-process -> subscriber-process round trip over
DDS on this machine (loopback discovery, a test-private ROS_DOMAIN_ID).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import typing
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from conftest import ENV_FILE, REPO_ROOT

MSG_DIR = REPO_ROOT / "msg"

EXPECTED_FIELDS: Dict[str, Dict[str, str]] = {
    "EmotionArray": {
        "header": "std_msgs/Header",
        "classes": "sequence<string>",
        "faces": "sequence<cmcnn_ros/Emotion>",
    },
    "Emotion": {
        "face_id": "string",
        "roi": "sensor_msgs/RegionOfInterest",
        "roll": "float",
        "eyes_found": "boolean",
        "expression": "string",
        "confidence": "float",
        "scores": "sequence<float>",
        "valence": "float",
        "arousal": "float",
        "depth_valid": "boolean",
        "depth_valid_fraction": "float",
        "position": "geometry_msgs/Point",
    },
}

# Values exactly representable in float32, so equality is exact after DDS.
SAMPLE = {
    "stamp": [1700000000, 123456789],
    "frame_id": "kinect_rgb_optical_frame",
    "classes": ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"],
    "faces": [
        {"face_id": "face-0", "roi": [10, 20, 96, 80, False], "roll": 0.125, "eyes_found": True,
         "expression": "happy", "confidence": 0.875,
         "scores": [0.0, 0.03125, 0.0625, 0.875, 0.015625, 0.25, 0.5],
         "valence": 0.75, "arousal": 0.5, "depth_valid": True, "depth_valid_fraction": 0.9375,
         "position": [0.125, -0.25, 1.5]},
        {"face_id": "face-17", "roi": [300, 140, 120, 110, False], "roll": -0.25,
         "eyes_found": False, "expression": "sad", "confidence": 0.625,
         "scores": [0.125, 0.0, 0.0, 0.0, 0.625, 0.0, 0.25],
         "valence": -0.5, "arousal": -0.375, "depth_valid": False, "depth_valid_fraction": 0.0,
         "position": [-0.5, 0.0625, 2.75]},
        {"face_id": "face-3", "roi": [520, 0, 64, 64, False], "roll": 0.0, "eyes_found": True,
         "expression": "surprised", "confidence": 1.0,
         "scores": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
         "valence": 0.1875, "arousal": 1.0, "depth_valid": True, "depth_valid_fraction": 0.5,
         "position": [0.0, 0.0, 0.0]},
    ],
}

_TO_DICT = r'''
def to_dict(m):
    return {
        "stamp": [m.header.stamp.sec, m.header.stamp.nanosec],
        "frame_id": m.header.frame_id,
        "classes": list(m.classes),
        "faces": [{
            "face_id": f.face_id,
            "roi": [f.roi.x_offset, f.roi.y_offset, f.roi.width, f.roi.height, f.roi.do_rectify],
            "roll": f.roll, "eyes_found": f.eyes_found, "expression": f.expression,
            "confidence": f.confidence, "scores": [float(s) for s in f.scores],
            "valence": f.valence, "arousal": f.arousal, "depth_valid": f.depth_valid,
            "depth_valid_fraction": f.depth_valid_fraction,
            "position": [f.position.x, f.position.y, f.position.z],
        } for f in m.faces],
    }
'''

_PUBLISHER = _TO_DICT + r'''
import json, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from cmcnn_ros.msg import Emotion, EmotionArray

sample = json.loads(SAMPLE_JSON)
msg = EmotionArray()
msg.header.stamp.sec, msg.header.stamp.nanosec = sample["stamp"]
msg.header.frame_id = sample["frame_id"]
msg.classes = sample["classes"]
for f in sample["faces"]:
    e = Emotion()
    e.face_id = f["face_id"]
    (e.roi.x_offset, e.roi.y_offset, e.roi.width, e.roi.height, e.roi.do_rectify) = f["roi"]
    for key in ("roll", "eyes_found", "expression", "confidence", "scores", "valence",
                "arousal", "depth_valid", "depth_valid_fraction"):
        setattr(e, key, f[key])
    e.position.x, e.position.y, e.position.z = f["position"]
    msg.faces.append(e)
assert to_dict(msg) == sample, "message built wrongly before sending"

rclpy.init()
node = rclpy.create_node("emotion_test_publisher")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE)
pub = node.create_publisher(EmotionArray, "/cmcnn_test/emotions", qos)
# Publish until the subscriber process has had its message and exits (the
# test then kills us), at most 30 s.
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=0.1)
node.destroy_node()
rclpy.shutdown()
'''

_SUBSCRIBER = _TO_DICT + r'''
import json, sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from cmcnn_ros.msg import EmotionArray

rclpy.init()
node = rclpy.create_node("emotion_test_subscriber")
got = []
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE)
node.create_subscription(EmotionArray, "/cmcnn_test/emotions", got.append, qos)
print("READY", flush=True)
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
node.destroy_node()
rclpy.shutdown()
if not got:
    sys.exit("no EmotionArray received within 30 s")
print("RESULT " + json.dumps(to_dict(got[0])), flush=True)
'''


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_every_field_is_documented(name: str) -> None:
    """Each field in msg/<name>.msg has a comment directly above it."""
    lines = (MSG_DIR / f"{name}.msg").read_text(encoding="utf-8").splitlines()
    fields = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    assert [lines[i].split()[1] for i in fields] == list(EXPECTED_FIELDS[name])
    for i in fields:
        assert i > 0 and lines[i - 1].lstrip().startswith("#"), \
            f"{name}.msg field {lines[i]!r} has no comment above it"


def test_generated_module_imports_from_fresh_shell() -> None:
    """`source .ros_prefix/env.sh` in a clean shell is all it takes to use the messages."""
    assert ENV_FILE.is_file(), f"{ENV_FILE} missing: run `make setup`"
    code = (
        "import json, cmcnn_ros, cmcnn_ros.classes\n"
        "from cmcnn_ros.msg import Emotion, EmotionArray\n"
        "print(json.dumps({'Emotion': Emotion.get_fields_and_field_types(),"
        " 'EmotionArray': EmotionArray.get_fields_and_field_types(),"
        " 'source': cmcnn_ros.__file__, 'classes': list(cmcnn_ros.classes.BASIC_EXPRESSIONS)}))\n"
    )
    # env -i: nothing from this test process leaks in; cd / so the repo root
    # is not on sys.path by accident.
    proc = subprocess.run(
        ["env", "-i", f"HOME={Path.home()}", "PATH=/usr/local/bin:/usr/bin:/bin",
         "bash", "--noprofile", "--norc", "-c",
         'source "$1" && cd / && python -c "$2"', "bash", str(ENV_FILE), code],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["Emotion"] == EXPECTED_FIELDS["Emotion"]
    assert out["EmotionArray"] == EXPECTED_FIELDS["EmotionArray"]
    # Our source package (not the generated stub) answered `import cmcnn_ros`.
    assert Path(out["source"]).resolve() == (REPO_ROOT / "cmcnn_ros" / "__init__.py").resolve()
    assert out["classes"] == ["angry", "disgusted", "scared", "happy", "sad", "surprised"]


def test_round_trip_between_processes(ros_env: Dict[str, str], start_python) -> None:
    """A publisher process and a subscriber process exchange a nested EmotionArray over DDS."""
    sample_json = json.dumps(SAMPLE)
    sub = start_python(_SUBSCRIBER)
    # Wait for the subscriber to be up so its discovery starts first.
    ready = sub.stdout.readline()
    assert ready.strip() == "READY", sub.stderr.read() if sub.poll() is not None else ready
    pub = start_python(_PUBLISHER.replace("SAMPLE_JSON", repr(sample_json)))
    try:
        out, err = sub.communicate(timeout=60)
    finally:
        pub.kill()
        pub.communicate(timeout=10)
    assert sub.returncode == 0, f"subscriber failed: {err}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"subscriber printed no result; stderr: {err}"
    received = json.loads(lines[0][len("RESULT "):])
    assert received["stamp"] == SAMPLE["stamp"]
    assert received["frame_id"] == SAMPLE["frame_id"]
    assert received["classes"] == SAMPLE["classes"]
    assert len(received["faces"]) == len(SAMPLE["faces"]) == 3
    for got, want in zip(received["faces"], SAMPLE["faces"]):
        assert got == want  # every field, exact: the values are float32-representable


def _value_for(name: str, hint: Any, i: int) -> Any:
    """A value of ``hint``'s type that no message field has by default (float32-exact)."""
    if hint is str:
        return f"value-of-{name}"
    if hint is bool:
        return True
    if hint in (int, float):
        return hint(i + 1) / 64 if hint is float else i + 1
    if hint is np.ndarray:
        return np.array([0.125, 0.5, 0.375], np.float32) + i
    if typing.get_origin(hint) is tuple:
        return tuple(range(10 * i + 1, 10 * i + 1 + len(typing.get_args(hint))))
    pytest.fail(f"StreamFace.{name}: teach this test a value of type {hint}")


def test_every_face_field_reaches_the_message_or_is_left_out_on_purpose() -> None:
    """A field added to the recognizer's FaceResult (say head_pose) fails here until it is published or explained."""
    from cmcnn_ros.inference.stream import StreamFace
    from cmcnn_ros.ros import messages

    hints = typing.get_type_hints(StreamFace)
    names = [f.name for f in dataclasses.fields(StreamFace)]
    assert set(messages.NOT_IN_MESSAGE) <= set(names), "NOT_IN_MESSAGE names a field faces no longer have"
    face = StreamFace(**{name: _value_for(name, hints[name], i) for i, name in enumerate(names)})
    msg = messages.emotion(face)
    for name in names:
        if name in messages.NOT_IN_MESSAGE:
            continue
        want = getattr(face, name)
        if name == "box":
            got = (msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height)
        elif name == "position":
            got = (msg.position.x, msg.position.y, msg.position.z)
        else:
            assert hasattr(msg, name), (f"StreamFace.{name} does not reach Emotion: add it to msg/Emotion.msg and "
                                        "cmcnn_ros.ros.messages.emotion, or to NOT_IN_MESSAGE with the reason")
            got = getattr(msg, name)
        if isinstance(want, np.ndarray):
            got, want = list(got), want.tolist()
        assert got == want, f"StreamFace.{name}={want!r} arrives as {got!r}"


def test_an_unknown_position_is_published_as_nan() -> None:
    """No camera_info, no depth: Emotion.position is NaN in all three coordinates (msg/Emotion.msg)."""
    from cmcnn_ros.inference.stream import StreamFace
    from cmcnn_ros.ros import messages

    face = StreamFace(box=(1, 2, 30, 30), roll=0.0, eyes_found=True, expression="happy", confidence=0.9,
                      scores=np.array([0.9, 0.1], np.float32), valence=0.5, arousal=0.2, depth_valid=False,
                      depth_valid_fraction=0.0, face_id="face1")
    msg = messages.emotion(face)
    assert all(math.isnan(v) for v in (msg.position.x, msg.position.y, msg.position.z))
