"""ROS4HRI of fer_node as libhri / pyhri consume it (REP-155): issue 10.2's output, issue 17's input.

A consumer reads ``/humans/faces/tracked`` (``hri_msgs/IdsList``) to learn the face ids and only then
subscribes to ``/humans/faces/<id>/expression`` (``hri_msgs/Expression``). ``hri_msgs`` is not on
PyPI, so this module builds a message package of that name holding the three REP-155 messages used
(written from ros4hri/hri_msgs' definitions) into a temporary prefix; the cmcnn_ros package itself does
not ship them. The node, the frame publisher and the consumer run in separate processes over DDS.

Issue 17: with ``face_source: ros4hri`` another process plays ``hri_face_detect`` (a real detector,
OpenCV's Viola-Jones, on the rendered frames): it publishes the images, each face's
``/humans/faces/<id>/roi`` (``hri_msgs/NormalizedRegionOfInterest2D``) and ``/humans/faces/tracked``,
and fer_node must answer under its ids without a tracked list of its own.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.frames import photo_frame
from ros_helpers.msgbuild import build_message_package, prefix_env
from ros_helpers.rosproc import NodeProcess, RosClient, claim_domain_id, image_msg, ros_env, wait_until

from sensor_msgs.msg import Image

# REP-155 (ROS4HRI): hri_msgs/Expression and hri_msgs/IdsList, fields as the REP lists them.
REP155_MESSAGES = {
    "Expression": """
        # A facial expression (REP-155): categorical and valence/arousal.
        std_msgs/Header header
        string NEUTRAL="neutral"
        string ANGRY="angry"
        string SAD="sad"
        string HAPPY="happy"
        string SURPRISED="surprised"
        string DISGUSTED="disgusted"
        string SCARED="scared"
        string expression
        float32 valence
        float32 arousal
        float32 confidence
    """,
    "IdsList": """
        # The ids currently tracked, e.g. on /humans/faces/tracked (REP-155).
        std_msgs/Header header
        string[] ids
    """,
    "NormalizedRegionOfInterest2D": """
        # A face's region in its image, corners normalised to [0, 1] (/humans/faces/<id>/roi).
        std_msgs/Header header
        float32 xmin
        float32 ymin
        float32 xmax
        float32 ymax
        float32 c
    """,
}

COLOUR, DEPTH = "/cam/color/image_raw", "/cam/depth_registered/image_raw"

# The consumer: learns ids from /humans/faces/tracked, then subscribes to each face's expression
# (transient local, as the node's README says), like libhri's face discovery.
CONSUMER = textwrap.dedent("""
    import sys
    sys.path.insert(0, "test")   # cwd is the repository root
    from cmcnn_ros.ros.sync import ros_stamp_ns
    from ros_helpers.listener import report, spin_until_told
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from hri_msgs.msg import Expression, IdsList
    from cmcnn_ros.msg import EmotionArray
    rclpy.init()
    node = rclpy.create_node("hri_consumer")
    got = {"tracked": [], "expressions": {}, "emotions": [], "publishers_at_end": {}}
    subs = {}
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def on_expression(fid, m):
        got["expressions"][fid].append([ros_stamp_ns(m), m.expression, m.valence, m.arousal, m.confidence])

    def on_tracked(m):
        got["tracked"].append([ros_stamp_ns(m), list(m.ids)])
        for fid in m.ids:
            if fid not in subs:
                got["expressions"][fid] = []
                subs[fid] = node.create_subscription(Expression, f"/humans/faces/{fid}/expression",
                                                     lambda e, fid=fid: on_expression(fid, e), latched)

    node.create_subscription(IdsList, "/humans/faces/tracked", on_tracked, 10)
    node.create_subscription(EmotionArray, "/fer_node/emotions", lambda m: got["emotions"].append(
        [ros_stamp_ns(m), [[f.face_id, f.expression, f.valence, f.arousal, f.confidence] for f in m.faces]]), 10)
    spin_until_told(node)
    for fid in subs:
        got["publishers_at_end"][fid] = node.count_publishers(f"/humans/faces/{fid}/expression")
    report(got)
""")


@pytest.fixture(scope="module")
def hri_prefix(tmp_path_factory) -> Path:
    return build_message_package("hri_msgs", REP155_MESSAGES, tmp_path_factory.mktemp("hri_ws"))


def test_tracked_faces_and_expressions_reach_a_ros4hri_consumer(hri_prefix, random_checkpoint, tmp_path):
    lease = claim_domain_id()
    env = prefix_env(ros_env(lease.domain_id), hri_prefix)
    node = NodeProcess(lease.domain_id, tmp_path / "hri_node.log",
                       {"model_path": str(random_checkpoint), "device": "cpu", "colour_topic": COLOUR,
                        "depth_topic": DEPTH, "redetect_interval": 1, "tracking_max_missed": 1}, env=env)
    import subprocess

    from ros_helpers.rosproc import ROOT

    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER], env=env, cwd=ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = RosClient(lease.domain_id)
    try:
        node.wait_for_log(r"\] \[fer_node\]: active:", 60)
        assert consumer.stdout.readline().strip() == "ready", consumer.stderr.read()
        pub_c = client.node.create_publisher(Image, COLOUR, 10)
        pub_d = client.node.create_publisher(Image, DEPTH, 10)
        assert wait_until(lambda: pub_c.get_subscription_count() > 0 and pub_d.get_subscription_count() > 0
                          and client.node.count_subscribers("/fer_node/emotions") > 0
                          and client.node.count_subscribers("/humans/faces/tracked") > 0, 30), node.log()
        face, empty = photo_frame(1), photo_frame(0)
        # A face-free warm-up pair first: on a loaded machine the first best-effort pair
        # can go while the transports settle, and the first face is what is under test.
        ns = time.time_ns()
        pub_c.publish(image_msg(empty[0], "bgr8", ns))
        pub_d.publish(image_msg(empty[1], "16UC1", ns))
        time.sleep(1.5)
        sent = []
        # One face for 4 frames, then none: with tracking_max_missed 1 the id is retired
        # on the second empty frame. A second apart, so every frame is processed.
        for colour, depth in [face] * 4 + [empty] * 3:
            ns = time.time_ns()
            pub_c.publish(image_msg(colour, "bgr8", ns))
            pub_d.publish(image_msg(depth, "16UC1", ns))
            sent.append(ns)
            time.sleep(1.0)
        out, err = consumer.communicate("done\n", timeout=60)
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        client.close()
        if consumer.poll() is None:
            consumer.kill()
        rc = node.stop()
        lease.release()
    assert rc == 0, node.log()[-2000:]
    emotions = {stamp: faces for stamp, faces in got["emotions"] if stamp >= sent[0]}
    assert sorted(emotions) == sent, f"not every frame was answered:\n{node.log()[-2000:]}"
    # /humans/faces/tracked: one IdsList per processed frame, the colour stamp, the tracked ids.
    tracked = {stamp: ids for stamp, ids in got["tracked"] if stamp >= sent[0]}
    assert sorted(tracked) == sent
    with_face = [s for s in sent if emotions[s]]
    assert len(with_face) == 4, emotions
    fid = emotions[with_face[0]][0][0]
    assert [tracked[s] for s in sent] == [[fid]] * 4 + [[fid], []] + [[]]
    # Each expression of the face arrived, including the first one (the consumer subscribed only
    # after the first IdsList named the face), with the EmotionArray's values.
    expressions = got["expressions"][fid]
    assert [e[0] for e in expressions] == with_face, (expressions, with_face)
    for stamp, expression, valence, arousal, confidence in expressions:
        _, e_expr, e_val, e_ar, e_conf = emotions[stamp][0]
        assert expression == e_expr
        assert (valence, arousal, confidence) == pytest.approx((e_val, e_ar, e_conf), abs=1e-6)
    # The retired face's topic has no publisher any more.
    assert got["publishers_at_end"] == {fid: 0}


# ---------------------------------------------------------------------------------------- issue 17

FACE_IDS = ["anna", "ben", "cleo", "dan", "eve"]

# Plays hri_face_detect: per frame (one JSON spec a line on stdin) the images, then each listed face's roi
# (from a real detector on the pixels), then the tracked list, all with the image's stamp; then it waits
# until fer_node has subscribed to every listed face's roi (it does so when it reads the list).
DETECTOR = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, "test")
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from hri_msgs.msg import IdsList, NormalizedRegionOfInterest2D
    from ros_helpers.frames import photo_frame
    from ros_helpers.rosproc import image_msg
    from cmcnn_ros.preprocessing.detector import make_detector
    from cmcnn_ros.preprocessing.params import PreprocessingParams
    colour_topic, depth_topic, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("face_detector")
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)   # as hri_face_detect publishes
    pub_c = node.create_publisher(Image, colour_topic, qos_profile_sensor_data)
    pub_d = node.create_publisher(Image, depth_topic, qos_profile_sensor_data)
    tracked = node.create_publisher(IdsList, "/humans/faces/tracked", reliable)
    rois = {}
    detector = make_detector(PreprocessingParams(detector="haar"))   # not fer_node's BlazeFace: its own framing
    print("ready", flush=True)
    for n, line in enumerate(sys.stdin):
        spec = json.loads(line)
        end = time.monotonic() + 20   # fer_node subscribed, as this process sees it: nothing published is lost
        while time.monotonic() < end and not all(p.get_subscription_count() for p in (pub_c, pub_d, tracked)):
            rclpy.spin_once(node, timeout_sec=0.05)
        colour, depth = photo_frame(5, seed=n, jitter=(2 * n) % 10)
        boxes = sorted((d.box for d in detector.detect(colour)), key=lambda b: (b[1] // 100, b[0]))
        assert len(boxes) == len(ids), boxes
        box_of = dict(zip(ids, boxes))
        box_of["ghost"] = box_of[ids[0]]
        ns = time.time_ns()
        c_msg, d_msg = image_msg(colour, "bgr8", ns), image_msg(depth, "16UC1", ns)
        pub_c.publish(c_msg)
        pub_d.publish(d_msg)
        h, w = colour.shape[:2]
        for fid, how in spec["rois"].items():
            if fid not in rois:
                rois[fid] = node.create_publisher(NormalizedRegionOfInterest2D, f"/humans/faces/{fid}/roi", reliable)
            x, y, bw, bh = box_of[fid]
            corners = (x / w, y / h, (x + bw) / w, (y + bh) / h)
            if how == "outside":
                corners = (1.2, corners[1], 1.5, corners[3])
            rois[fid].publish(NormalizedRegionOfInterest2D(header=c_msg.header, xmin=corners[0], ymin=corners[1],
                                                           xmax=corners[2], ymax=corners[3], c=0.9))
        tracked.publish(IdsList(header=c_msg.header, ids=spec["listed"]))
        end = time.monotonic() + 20
        while time.monotonic() < end and not all(rois[f].get_subscription_count() for f in spec["listed"]
                                                 if f in rois and f != "ghost"):
            rclpy.spin_once(node, timeout_sec=0.05)
        print(json.dumps({"stamp": ns, "boxes": {f: list(b) for f, b in box_of.items()}}), flush=True)
""")

# A ROS4HRI application: ids from /humans/faces/tracked (whoever publishes it), then each face's expression.
FOLLOWER = textwrap.dedent("""
    import re, sys
    sys.path.insert(0, "test")   # cwd is the repository root
    from cmcnn_ros.ros.sync import ros_stamp_ns
    from ros_helpers.listener import report, spin_until_told
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from diagnostic_msgs.msg import DiagnosticArray
    from hri_msgs.msg import Expression, IdsList
    from cmcnn_ros.msg import EmotionArray
    rclpy.init()
    node = rclpy.create_node("hri_app")
    got = {"expressions": {}, "emotions": [], "diagnostics": {}}
    subs = {}
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def on_tracked(m):
        for fid in m.ids:
            if fid not in subs and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", fid):
                got["expressions"][fid] = []
                subs[fid] = node.create_subscription(
                    Expression, f"/humans/faces/{fid}/expression",
                    lambda e, fid=fid: got["expressions"][fid].append([ros_stamp_ns(e), e.expression, e.confidence]),
                    latched)

    def on_diagnostics(m):
        for s in m.status:
            if "fer_node" in s.name:
                got["diagnostics"] = {kv.key: kv.value for kv in s.values}

    node.create_subscription(IdsList, "/humans/faces/tracked", on_tracked, 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    node.create_subscription(EmotionArray, "/fer_node/emotions", lambda m: got["emotions"].append(
        [ros_stamp_ns(m), list(m.classes), [[f.face_id, f.expression, f.confidence, list(f.scores),
          [f.roi.x_offset, f.roi.y_offset, f.roi.width, f.roi.height]] for f in m.faces]]), 10)
    spin_until_told(node)
    got["tracked_publishers"] = sorted(i.node_name for i in node.get_publishers_info_by_topic("/humans/faces/tracked"))
    got["expression_publishers"] = {fid: node.count_publishers(f"/humans/faces/{fid}/expression")
                                    for fid in list(subs) + ["ghost"]}
    report(got)
""")


def test_ros4hri_without_hri_msgs_is_one_line_at_configure(random_checkpoint, tmp_path):
    """Without hri_msgs there is nothing to follow: configure says so in one line, the node stays up."""
    import importlib.util

    if importlib.util.find_spec("hri_msgs") is not None:
        pytest.skip("hri_msgs is installed in this environment")
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, tmp_path / "no_hri.log",
                       {"model_path": str(random_checkpoint), "device": "cpu", "face_source": "ros4hri"})
    try:
        node.wait_for_log(r"configure failed: face_source 'ros4hri' needs hri_msgs \(ros4hri/hri_msgs, with "
                          r"REP-155's NormalizedRegionOfInterest2D\) installed and sourced; install it or set "
                          r"face_source: own", 60)
        time.sleep(0.5)
        assert node.proc.poll() is None
    finally:
        rc = node.stop()
        lease.release()
    assert rc == 0 and "Traceback" not in node.log(), node.log()


def _iou(a, b) -> float:
    from cmcnn_ros.boxes import iou

    return iou(a, b)


def test_behind_a_ros4hri_face_detector_it_answers_that_detectors_faces_under_its_ids(hri_prefix, random_checkpoint,
                                                                                     tmp_path):
    """Issue 17.1 + 17.3 + bad input: face_source ros4hri end to end, min_confidence on both outputs."""
    import subprocess

    from ros_helpers.rosproc import ROOT

    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    lease = claim_domain_id()
    env = prefix_env(ros_env(lease.domain_id), hri_prefix)
    node = NodeProcess(lease.domain_id, tmp_path / "follow_node.log",
                       {"model_path": str(random_checkpoint), "device": "cpu", "colour_topic": COLOUR,
                        "depth_topic": DEPTH, "face_source": "ros4hri", "min_confidence": 0.5,
                        "diagnostics_period": 0.5}, env=env)
    pipes = {"env": env, "cwd": ROOT, "text": True, "stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
             "stderr": subprocess.PIPE}
    follower = subprocess.Popen([sys.executable, "-c", FOLLOWER], **pipes)
    detector = subprocess.Popen([sys.executable, "-c", DETECTOR, COLOUR, DEPTH, json.dumps(FACE_IDS)], **pipes)
    client = RosClient(lease.domain_id)
    everyone = dict.fromkeys(FACE_IDS, "ok")
    frames = [
        {"listed": FACE_IDS, "rois": everyone},                                       # warm-up: rois go unheard
        {"listed": FACE_IDS, "rois": everyone},
        {"listed": FACE_IDS + ["9lives"], "rois": {**everyone, "ghost": "ok"}},       # bad id; a face never listed
        {"listed": FACE_IDS, "rois": {**everyone, "cleo": "outside"}},                # a roi outside the image
        {"listed": FACE_IDS, "rois": {f: "ok" for f in FACE_IDS if f != "dan"}},      # dan kept, not seen now
        {"listed": FACE_IDS[:4], "rois": dict.fromkeys(FACE_IDS[:4], "ok")},            # eve has left
    ]
    sent = []
    try:
        node.wait_for_log(r"\] \[fer_node\]: active:", 60)
        assert follower.stdout.readline().strip() == "ready", follower.stderr.read()
        assert detector.stdout.readline().strip() == "ready", detector.stderr.read()
        assert wait_until(lambda: client.node.count_subscribers(COLOUR) > 0 and client.node.count_subscribers(DEPTH) > 0
                          and client.node.count_subscribers("/humans/faces/tracked") >= 2
                          and client.node.count_subscribers("/fer_node/emotions") > 0, 30), node.log()
        for i, spec in enumerate(frames):
            if i == 4:   # a robot that trusts the model more: min_confidence set at run time
                req = SetParameters.Request()
                req.parameters = [Parameter(name="min_confidence", value=ParameterValue(
                    type=ParameterType.PARAMETER_DOUBLE, double_value=0.0))]
                assert client.call(SetParameters, "/fer_node/set_parameters", req).results[0].successful
            detector.stdin.write(json.dumps(spec) + "\n")
            detector.stdin.flush()
            line = detector.stdout.readline()
            assert line, detector.stderr.read()
            sent.append(json.loads(line))
            time.sleep(1.0)
        out, err = follower.communicate("done\n", timeout=60)
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        client.close()
        for proc in (follower, detector):
            if proc.poll() is None:
                proc.kill()
        rc = node.stop()
        lease.release()
    log = node.log()
    assert rc == 0 and "Traceback" not in log, log[-3000:]
    emotions = {stamp: (classes, faces) for stamp, classes, faces in got["emotions"]}
    stamps = [f["stamp"] for f in sent]
    assert set(stamps[1:]) <= set(emotions), f"not every frame was answered:\n{log[-3000:]}"
    if stamps[0] in emotions:   # the warm-up's rois went by before fer_node knew the ids: nothing to answer
        assert emotions[stamps[0]][1] == []
    expected_ids = [FACE_IDS, FACE_IDS, [f for f in FACE_IDS if f != "cleo"], [f for f in FACE_IDS if f != "dan"],
                    FACE_IDS[:4]]
    for frame, ids in zip(sent[1:], expected_ids):
        classes, faces = emotions[frame["stamp"]]
        assert [f[0] for f in faces] == ids                          # the detector's ids, in its order
        for fid, expression, confidence, scores, roi in faces:
            # The face came from that id's roi (re-framed by FaceMesh, as a detected face is).
            assert _iou(roi, frame["boxes"][fid]) > 0.5, (fid, roi, frame["boxes"][fid])
            assert confidence == pytest.approx(max(scores), abs=1e-6)
            if frame["stamp"] in stamps[1:4]:                        # min_confidence 0.5: a guess is unknown
                assert expression == "unknown" and 0.0 < confidence < 0.5
            else:                                                    # min_confidence 0: the top class
                assert expression == classes[scores.index(max(scores))]
            # ROS4HRI: the same expression and confidence under the same id and stamp.
            hri = {s: (e, c) for s, e, c in got["expressions"][fid]}
            assert hri[frame["stamp"]] == (expression, pytest.approx(confidence, abs=1e-6))
    # One list of faces on the robot: the detector's. fer_node publishes none, and no ghost face.
    assert got["tracked_publishers"] == ["face_detector"]
    assert got["expression_publishers"] == {"anna": 1, "ben": 1, "cleo": 1, "dan": 1, "eve": 0, "ghost": 0}
    assert all(f[0] != "ghost" for _, faces in emotions.values() for f in faces)
    # Bad input: one line naming the topic and the problem; the routine skips are counted.
    assert re.search(r"/humans/faces/cleo/roi: roi \(1\.2, [0-9.]+\)-\(1\.5, [0-9.]+\) lies outside the image", log)
    assert "/humans/faces/tracked lists face id '9lives', which cannot name a ROS topic" in log
    diagnostics = got["diagnostics"]
    assert diagnostics["face source"] == "ros4hri"
    warm_up_skips = 5 if stamps[0] in emotions else 0
    assert diagnostics["followed faces skipped"] == str(warm_up_skips + 2)   # cleo's bad roi, dan's stale one
