"""fer_node end to end: real rclpy and DDS, the node in its own process.

Each node process gets its own ROS_DOMAIN_ID (an flock'ed id, see
``ros_helpers/rosproc.py``); the test process publishes frames and receives
results over DDS (the overload test uses a third process as publisher).
The plumbing tests run on a randomly initialised checkpoint (cheap, and the
same cost per frame); ``test_default_weights_expressions`` checks expression
correctness with the shipped ``models/cmcnn_default.pt``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.frames import build_frames, load_frames
from ros_helpers.rosproc import (ROOT, NodeProcess, RosClient, claim_domain_id, image_msg,
                                 ros_env, wait_until)

import rclpy

from cmcnn_ros.msg import EmotionArray
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image

COLOUR, DEPTH = "/cam/color/image_raw", "/cam/depth_registered/image_raw"
EMOTIONS = "/fer_node/emotions"
DEFAULT_WEIGHTS = ROOT / "models" / "cmcnn_default.pt"


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fer_node")


@pytest.fixture(scope="module")
def frames(workdir):
    return {k: load_frames(build_frames(workdir / f"{k}.npz", k, count=4)) for k in ("one", "none")}


class Harness:
    """A running node plus a client on its domain."""

    def __init__(self, workdir: Path, name: str, params: dict):
        self.lease = claim_domain_id()
        self.node = NodeProcess(self.lease.domain_id, workdir / f"{name}.log",
                                {"colour_topic": COLOUR, "depth_topic": DEPTH, **params})
        self.client = RosClient(self.lease.domain_id)
        n = self.client.node
        self.pub_c = n.create_publisher(Image, COLOUR, 10)
        self.pub_d = n.create_publisher(Image, DEPTH, 10)
        self.sub, self.results = self.client.collector(EmotionArray, EMOTIONS)

    def connected(self, timeout: float = 30.0) -> None:
        ok = wait_until(lambda: self.pub_c.get_subscription_count() > 0
                        and self.pub_d.get_subscription_count() > 0
                        and self.sub.get_publisher_count() > 0, timeout)
        assert ok, f"node did not connect:\n{self.node.log()[-3000:]}"

    def send(self, colour, depth, stamp_ns=None, colour_kw=None, depth_kw=None,
             depth_encoding="16UC1", frame_id="camera_color_optical_frame") -> int:
        ns = time.time_ns() if stamp_ns is None else stamp_ns
        self.pub_c.publish(image_msg(colour, "bgr8", ns, frame_id, **(colour_kw or {})))
        if depth is not None:
            self.pub_d.publish(image_msg(depth, depth_encoding, ns, frame_id, **(depth_kw or {})))
        return ns

    def result_for(self, ns: int, timeout: float = 10.0):
        found = []
        wait_until(lambda: bool(found.extend(m for _, m in self.results if stamp_of(m) == ns) or found),
                   timeout)
        return found[0] if found else None

    def close(self):
        self.client.close()
        rc = self.node.stop()
        self.lease.release()
        return rc


@pytest.fixture(scope="module")
def active_node(workdir, random_checkpoint):
    h = Harness(workdir, "active", {"model_path": str(random_checkpoint), "bad_message_log_period": 0.0,
                                    "device": "cpu", "publish_debug_image": True})
    h.node.wait_for_log(r"\] \[fer_node\]: active:", 60)
    h.connected()
    yield h
    assert h.close() == 0, h.node.log()[-2000:]


def test_emotions_carry_colour_header_and_all_fields(active_node, frames):
    h = active_node
    _, debug = h.client.collector(Image, "/fer_node/debug_image", rclpy.qos.qos_profile_sensor_data)
    time.sleep(0.5)
    sent = []
    for c, d in zip(frames["one"]["colour"], frames["one"]["depth"]):
        sent.append(h.send(c, d))
        time.sleep(0.4)
    got = [h.result_for(ns) for ns in sent]
    received = [m for m in got if m is not None]
    assert len(received) >= 3, h.node.log()[-3000:]
    ids = set()
    for m in received:
        assert m.header.frame_id == "camera_color_optical_frame"
        assert list(m.classes) == ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"]
        assert len(m.faces) == 1
        f = m.faces[0]
        ids.add(f.face_id)
        scores = np.array(f.scores)
        assert scores.shape == (7,) and np.all((scores >= 0) & (scores <= 1))
        assert f.expression == m.classes[int(np.argmax(scores))]
        assert f.confidence == pytest.approx(scores.max(), abs=1e-6)
        assert -1 <= f.valence <= 1 and -1 <= f.arousal <= 1
        # The astronaut's face sits at about x 237..332, y 66..161 in the frame.
        cx, cy = f.roi.x_offset + f.roi.width / 2, f.roi.y_offset + f.roi.height / 2
        assert 220 < cx < 360 and 60 < cy < 180 and 60 < f.roi.width < 160
        assert f.depth_valid and f.depth_valid_fraction > 0.9
        assert isinstance(f.eyes_found, bool) and abs(f.roll) < 0.6
        # No camera_info_topic: where the face is stays unknown (test_ros_face_frames.py has one).
        assert all(math.isnan(v) for v in (f.position.x, f.position.y, f.position.z))
    assert len(ids) == 1, f"face_id not stable: {ids}"
    assert h.node.log().count("camera_info_topic is empty: faces are published without a position") == 1
    # The annotated debug image (on while subscribed) carries the colour header.
    assert wait_until(lambda: len(debug) > 0, 5)
    img = debug[-1][1]
    assert (img.encoding, img.width, img.height) == ("bgr8", 640, 480) and stamp_of(img) in sent


def test_frames_without_faces_give_empty_arrays(active_node, frames):
    h = active_node
    sent = []
    for c, d in zip(frames["none"]["colour"][:3], frames["none"]["depth"][:3]):
        sent.append(h.send(c, d))
        time.sleep(0.3)
    got = [h.result_for(ns, 5) for ns in sent]
    assert sum(m is not None for m in got) >= 2
    assert all(len(m.faces) == 0 and len(m.classes) == 7 for m in got if m is not None)


def test_bad_messages_are_logged_and_good_frames_still_published(active_node, frames):
    h = active_node
    c, d = frames["one"]["colour"][0], frames["one"]["depth"][0]
    bad = [
        ({"colour_kw": {"encoding": "yuv422"}}, "unsupported encoding 'yuv422'"),
        ({"colour_kw": {"step": 100}}, "step 100 is smaller than one row"),
        ({"colour_kw": {"data": image_msg(c, 'bgr8', 0).data[:5000]}}, "data truncated: 5000 B"),
        ({"depth_override": d[::2, ::2]}, "colour is 640x480 but depth is 320x240"),
    ]
    before = len(h.node.log())
    for kw, reason in bad:
        depth = kw.pop("depth_override", d)
        h.send(c, depth, **kw)
        time.sleep(0.3)
        good = h.send(c, d)
        assert h.result_for(good) is not None, f"no result after bad frame ({reason})"
        h.node.wait_for_log(f"skipping bad frame .*{reason}", 5, after=before)
        time.sleep(0.2)

    # NaN / zero depth: published, depth_valid false.
    for depth, enc in ((np.full(d.shape, np.nan, np.float32), "32FC1"), (np.zeros_like(d), "16UC1")):
        ns = h.send(c, depth, depth_encoding=enc)
        m = h.result_for(ns)
        assert m is not None and len(m.faces) == 1
        assert m.faces[0].depth_valid is False and m.faces[0].depth_valid_fraction == 0.0
        time.sleep(0.3)

    # Zero stamps: warned about, still answered with the zero stamp.
    h.results.clear()
    h.send(c, d, stamp_ns=0)
    h.node.wait_for_log("colour image has a zero header.stamp", 5, after=before)
    assert wait_until(lambda: any(stamp_of(m) == 0 and len(m.faces) == 1 for _, m in h.results), 10)
    time.sleep(0.3)
    assert h.result_for(h.send(c, d)) is not None


def test_diagnostics_report_pipeline(active_node):
    h = active_node
    _, diags = h.client.collector(DiagnosticArray, "/diagnostics")
    assert wait_until(lambda: len(diags) >= 1, 5)
    status = diags[-1][1].status[0]
    assert "fer_node" in status.name
    kv = {v.key: v.value for v in status.values}
    assert kv["lifecycle state"] == "active" and kv["device"] == "cpu"
    assert kv["model path"].endswith("random.pt")
    assert int(kv["processed frames"]) >= 1
    for key in ("input rate (Hz)", "processed rate (Hz)", "dropped pairs", "latency p50 (ms)",
                "latency p95 (ms)", "bad messages", "colour received", "depth received"):
        assert key in kv
    assert (kv["camera_info"], kv["face frames"], kv["frames without camera_info"]) == ("(none)", "none", "0")
    assert float(kv["latency p95 (ms)"]) >= float(kv["latency p50 (ms)"]) > 0


@pytest.fixture(scope="module")
def slow_checkpoint(workdir):
    """A randomly initialised paper-sized CM-CNN: slow enough (~50 ms a frame on one thread)
    that the test publisher, which tops out near 60 Hz, can feed it three times faster than it
    processes. The shipped network is too fast for that on an idle machine."""
    import torch

    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
    from cmcnn_ros.model.checkpoint import save_checkpoint
    from cmcnn_ros.model.cmcnn import cmcnn
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    torch.manual_seed(0)
    return save_checkpoint(workdir / "paper_random.pt", cmcnn(preset="paper", num_classes=7),
                           EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams().to_dict())


def test_overload_keeps_latency_bounded_and_memory_flat(workdir, slow_checkpoint, frames):
    """Fed 3x faster than it processes, results stay fresh and RSS stays flat."""
    h = Harness(workdir, "overload", {"model_path": str(slow_checkpoint), "device": "cpu", "num_threads": 1,
                                      "redetect_interval": 1})
    try:
        h.node.wait_for_log(r"\] \[fer_node\]: active:", 60)
        h.connected()
        # Warm up: the diagnostics need a processing time (the first frame may race discovery).
        warm = [h.result_for(h.send(c, d), timeout=5.0)
                for c, d in zip(frames["one"]["colour"][:4], frames["one"]["depth"][:4])]
        assert any(m is not None for m in warm), h.node.log()[-3000:]
        _check_overload(h, workdir)
    finally:
        assert h.close() == 0, h.node.log()[-2000:]


def _check_overload(h, workdir):
    _, diags = h.client.collector(DiagnosticArray, "/diagnostics")
    assert wait_until(lambda: len(diags) >= 1, 5)
    kv = {v.key: v.value for v in diags[-1][1].status[0].values}
    proc_ms = float(kv["processing p50 (ms)"])
    rate = min(3000.0 / proc_ms, 60.0)
    npz = build_frames(workdir / "overload.npz", "one", count=4)
    out = workdir / "overload.json"
    h.results.clear()
    duration = 8.0
    pub = subprocess.Popen([sys.executable, str(ROOT / "test" / "ros_helpers" / "publish_frames.py"),
                            "--frames", str(npz), "--rate", f"{rate:.2f}", "--duration", str(duration),
                            "--colour-topic", COLOUR, "--depth-topic", DEPTH, "--json", str(out)],
                           env=ros_env(h.lease.domain_id))
    time.sleep(3.0)
    rss_start = h.node.rss_mb()
    assert pub.wait(60) == 0
    rss_end = h.node.rss_mb()
    sent = json.loads(out.read_text())
    time.sleep(1.0)
    stamps = set(sent["stamps_ns"])
    ages = np.array([(t - stamp_of(m)) / 1e6 for t, m in h.results if stamp_of(m) in stamps])
    diags.clear()
    assert wait_until(lambda: len(diags) >= 1, 5)
    kv = {v.key: v.value for v in diags[-1][1].status[0].values}
    proc_p50 = float(kv["processing p50 (ms)"])
    proc_p95 = float(kv["processing p95 (ms)"])
    print(f"overload: sent {sent['published']} at {sent['rate_hz']:.1f} Hz, published {len(ages)}, "
          f"processing p50 {proc_p50:.1f} / p95 {proc_p95:.1f} ms, age p50 {np.median(ages):.1f} / p95 "
          f"{np.percentile(ages, 95):.1f} ms, dropped {kv['dropped pairs']}, RSS {rss_start:.1f} -> {rss_end:.1f} MB")
    assert sent["published"] > 2 * len(ages), "the node was not overloaded"
    assert len(ages) >= 0.4 * duration * 1000.0 / proc_p50 / 2
    assert int(kv["dropped pairs"]) > 0
    # Newest-pair processing: a result waits at most one processing time, then takes
    # one (+ transport of two 640x480 images between processes on a shared CPU).
    assert np.percentile(ages, 95) < 2.0 * proc_p95 + 25.0
    third = len(ages) // 3
    assert np.median(ages[-third:]) < 1.5 * np.median(ages[:third]) + 15.0, "latency grows"
    assert rss_end - rss_start < 30.0, f"RSS grew {rss_start:.1f} -> {rss_end:.1f} MB"


def test_lifecycle_transitions_and_sync_warnings(workdir, random_checkpoint, frames):
    h = Harness(workdir, "lifecycle", {"autostart": False, "model_path": str(workdir / "missing.pt"),
                                       "sync_warning_delay": 1.0, "sync_warning_period": 1.0,
                                       "device": "cpu"})
    try:
        cl = h.client

        def state():
            return cl.call(GetState, "/fer_node/get_state", GetState.Request()).current_state.id

        def change(tid):
            req = ChangeState.Request()
            req.transition.id = tid
            return cl.call(ChangeState, "/fer_node/change_state", req, timeout=60).success

        assert wait_until(lambda: cl.node.count_publishers("/diagnostics") > 0, 30)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert change(Transition.TRANSITION_CONFIGURE) is False
        h.node.wait_for_log(r"configure failed: model_path .*missing\.pt.*set the parameter model_path", 5)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED

        req = SetParameters.Request()
        req.parameters = [Parameter(name="model_path", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=str(random_checkpoint)))]
        assert cl.call(SetParameters, "/fer_node/set_parameters", req).results[0].successful
        assert change(Transition.TRANSITION_CONFIGURE) is True
        assert state() == State.PRIMARY_STATE_INACTIVE
        c, d = frames["one"]["colour"][0], frames["one"]["depth"][0]
        assert h.pub_c.get_subscription_count() == 0  # inactive: not subscribed

        assert change(Transition.TRANSITION_ACTIVATE) is True
        assert state() == State.PRIMARY_STATE_ACTIVE
        h.connected()
        # Colour only: the warning names the silent depth topic.
        mark = len(h.node.log())
        for _ in range(8):
            h.send(c, None)
            time.sleep(0.2)
        h.node.wait_for_log(f"no messages on the depth topic '{DEPTH}'", 5, after=mark)
        # Depth stamped 10 s before colour: the warning gives the gap and the slop.
        mark = len(h.node.log())
        for _ in range(8):
            ns = time.time_ns()
            h.pub_c.publish(image_msg(c, "bgr8", ns))
            h.pub_d.publish(image_msg(d, "16UC1", ns - 10_000_000_000, frame_id="camera_depth_frame"))
            time.sleep(0.2)
        m = h.node.wait_for_log(r"stamps are (\d+\.\d+) s apart at best, more than sync_slop 0\.050 s", 5,
                                after=mark)
        assert 6.0 < float(m.group(1)) < 10.1
        h.node.wait_for_log(r"frame ids differ \(colour \['camera_color_optical_frame'\], "
                            r"depth \['camera_depth_frame'\]\)", 5, after=mark)
        # Good pairs now flow.
        assert h.result_for(h.send(c, d)) is not None

        assert change(Transition.TRANSITION_DEACTIVATE) is True
        assert state() == State.PRIMARY_STATE_INACTIVE
        h.results.clear()
        h.send(c, d)
        time.sleep(1.0)
        assert h.results == []
        assert change(Transition.TRANSITION_CLEANUP) is True
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        assert h.close() == 0


def test_default_weights_expressions(workdir):
    """EXPRESSION CORRECTNESS with the shipped weights on synthetic faces with known labels."""
    data = load_frames(build_frames(workdir / "synthetic.npz", "synthetic", count=8))
    h = Harness(workdir, "default_weights", {"device": "cpu"})
    try:
        h.node.wait_for_log(r"\] \[fer_node\]: active:", 60)
        h.connected()
        right = total = 0
        for c, d, label in zip(data["colour"], data["depth"], data["labels"]):
            m = h.result_for(h.send(c, d))
            time.sleep(0.2)
            if m is None or not m.faces:
                continue
            total += 1
            right += m.faces[0].expression == str(label)
        assert total >= 6 and right >= 0.6 * total, f"{right}/{total} correct"
    finally:
        h.close()
