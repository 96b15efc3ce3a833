"""Bag workflows: writer round trip, pairing, offline evaluator, rclpy replayer with /clock.

Real rosbag2 files written with ``rosbags``, the real Recognizer (a randomly
initialised checkpoint for plumbing; the default weights when present), and
real rclpy/DDS in separate processes for the replayer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from cmcnn_ros.tools.bag_io import (CAMERA_FRAME_ID, COLOUR_TOPIC, DEPTH_TOPIC, LABELS_TOPIC, BagError,
                                    FrameLabels, GroundTruthFace, decode_pair, iter_frame_pairs, open_bag,
                                    read_labels, resolve_topics, stamp_ns)
from cmcnn_ros.tools.bag_writer import BagWriteError, CameraIntrinsics, RgbdBagWriter
from cmcnn_synthetic.bags import write_synthetic_bag
from cmcnn_synthetic.scenarios import plan_sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / "models" / "cmcnn_default.pt"
T0 = 1_700_000_000_000_000_000


def _frame(i: int, h: int = 48, w: int = 64):
    rng = np.random.default_rng(i)
    colour = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = np.full((h, w), 800 + 10 * i, np.uint16)
    depth[0, 0] = 0          # hole
    depth[1, 1] = 11000      # far reading that an 8-bit decoder would mangle
    depth[2, 2] = 65535
    return colour, depth


def _write_small_bag(path: Path, n: int = 10, period_ns: int = 50_000_000) -> List[tuple]:
    frames = []
    with RgbdBagWriter(path) as w:
        for i in range(n):
            st = T0 + i * period_ns
            c, d = _frame(i)
            lab = FrameLabels(st, i, (GroundTruthFace("7", "happy", (1, 2, 30, 30), 3, ((5.0, 6.0), (15.0, 6.0))),))
            w.write_frame(st, c, d, lab, CameraIntrinsics(50.0, 50.0, 31.5, 23.5, 64, 48))
            frames.append((st, c, d, lab))
    return frames


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("bags") / "small"
    return path, _write_small_bag(path)


@pytest.fixture(scope="module")
def synthetic_bag(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("bags") / "synthetic"
    summary = write_synthetic_bag(path, duration_s=0.8, fps=5.0, num_faces=2, seed=3)
    return path, summary


# ---------------------------------------------------------------- writer / reader

def test_small_bag_round_trip(small_bag):
    path, frames = small_bag
    assert (path / "metadata.yaml").is_file() and (path / "small.mcap").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".small.")]  # temp folder moved away
    with open_bag(path) as reader:
        topics = resolve_topics(reader)
        assert (topics.colour, topics.depth, topics.labels) == (COLOUR_TOPIC, DEPTH_TOPIC, LABELS_TOPIC)
        counts = {t: sum(c.msgcount for c in reader.connections if c.topic == t) for t in reader.topics}
        assert counts == {COLOUR_TOPIC: 10, DEPTH_TOPIC: 10, LABELS_TOPIC: 10, "/camera/color/camera_info": 10}
        stamps: Dict[str, List[int]] = {}
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == LABELS_TOPIC:
                continue
            assert stamp_ns(msg.header.stamp) == t
            assert msg.header.frame_id == CAMERA_FRAME_ID
            stamps.setdefault(conn.topic, []).append(t)
            if conn.topic == COLOUR_TOPIC:
                assert msg.encoding == "rgb8"
            elif conn.topic == DEPTH_TOPIC:
                assert msg.encoding == "16UC1"
        assert stamps[COLOUR_TOPIC] == stamps[DEPTH_TOPIC] == [f[0] for f in frames]
        labels = read_labels(reader, topics.labels)
        assert sorted(labels) == [f[0] for f in frames]
        assert labels[frames[3][0]] == frames[3][3]
        pairs = list(iter_frame_pairs(reader, topics, labels=labels))
    assert len(pairs) == 10
    for (st, colour, depth, lab), pair in zip(frames, pairs):
        assert pair.stamp_ns == st and pair.depth_dt_ns == 0 and pair.labels == lab
        c, d_m = decode_pair(pair)
        np.testing.assert_array_equal(c, colour)                      # BGR back after rgb8
        np.testing.assert_array_equal(np.rint(d_m * 1000).astype(np.int64), depth.astype(np.int64))
    assert d_m[1, 1] == pytest.approx(11.0) and d_m[0, 0] == 0.0


def test_writer_rejects_bad_input(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(BagWriteError, match="depth must be uint16"):
        with RgbdBagWriter(path) as w:
            c, d = _frame(0)
            w.write_frame(T0, c, d.astype(np.float32), FrameLabels(T0, 0))
    assert not path.exists()  # aborted bag removed
    _write_small_bag(path, n=1)
    with pytest.raises(BagWriteError, match="exists"):
        RgbdBagWriter(path)
    with pytest.raises(BagWriteError, match="labels stamp"):
        with RgbdBagWriter(tmp_path / "b2") as w:
            c, d = _frame(0)
            w.write_frame(T0, c, d, FrameLabels(T0 + 1, 0))
    with pytest.raises(BagError, match="does not exist"):
        with open_bag(tmp_path / "nope"):
            pass


def test_labels_json_errors():
    lab = FrameLabels(5, 1, (GroundTruthFace("1", "sad", (1, 2, 3, 4)),))
    assert FrameLabels.from_json(lab.to_json()) == lab
    with pytest.raises(BagError, match="not JSON"):
        FrameLabels.from_json("{")
    with pytest.raises(BagError, match="not 'cmcnn_ros.ground_truth/1'"):
        FrameLabels.from_json('{"faces": []}')


KINECT2_COLOUR, KINECT2_DEPTH = "/kinect2/qhd/image_color_rect", "/kinect2/qhd/image_depth_rect"


def _write_foreign_bag(path: Path) -> None:
    """A user's recording: Kinect v2 topic names, sqlite3, depth 4 ms after colour, no labels."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from cmcnn_ros.ros.conversions import array_to_image_fields

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        cc = w.add_connection(KINECT2_COLOUR, "sensor_msgs/msg/Image", typestore=ts)
        dc = w.add_connection(KINECT2_DEPTH, "sensor_msgs/msg/Image", typestore=ts)
        for i in range(5):
            c, d = _frame(i)
            for conn, arr, enc, st in ((cc, c, "bgr8", T0 + i * 10**8), (dc, d, "16UC1", T0 + i * 10**8 + 4_000_000)):
                f = array_to_image_fields(arr, enc)
                f["data"] = np.frombuffer(f["data"], np.uint8)
                sec, ns = divmod(st, 10**9)
                msg = Image(header=Header(stamp=Time(sec=sec, nanosec=ns), frame_id="kinect2_rgb_optical_frame"), **f)
                w.write(conn, st, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def test_pairing_of_foreign_topics_with_offset_stamps(tmp_path):
    path = tmp_path / "k2"
    _write_foreign_bag(path)
    colour_t, depth_t = KINECT2_COLOUR, KINECT2_DEPTH
    with open_bag(path) as reader:
        topics = resolve_topics(reader)
        assert (topics.colour, topics.depth, topics.labels) == (colour_t, depth_t, None)
        pairs = list(iter_frame_pairs(reader, topics, slop_s=0.01))
        assert [p.depth_dt_ns for p in pairs] == [4_000_000] * 5
        assert all(p.labels is None for p in pairs)
        assert len(list(iter_frame_pairs(reader, topics, slop_s=0.001))) == 0  # too tight: nothing pairs
        with pytest.raises(BagError, match="not in the bag"):
            resolve_topics(reader, colour="/camera/rgb/image_raw")


def test_synthetic_bag_labels_and_determinism(synthetic_bag):
    path, summary = synthetic_bag
    assert summary.frames == 4 and summary.size_mb < 10
    plan = plan_sequence(duration_s=0.8, fps=5.0, num_faces=2, seed=3)
    assert plan == plan_sequence(duration_s=0.8, fps=5.0, num_faces=2, seed=3)
    assert plan != plan_sequence(duration_s=0.8, fps=5.0, num_faces=2, seed=4)
    with open_bag(path) as reader:
        topics = resolve_topics(reader)
        labels = read_labels(reader, topics.labels)
        pairs = list(iter_frame_pairs(reader, topics, labels=labels))
    assert len(pairs) == 4
    for i, p in enumerate(pairs):
        assert p.stamp_ns == plan.stamp_ns(i) and p.labels is not None
        expected = {str(f.subject_id): f.expression_at(plan.frame_time(i)).label
                    for f in plan.faces if f.visible(plan.frame_time(i))}
        assert {f.subject: f.label for f in p.labels.faces} == expected
        c, d = decode_pair(p)
        assert c.shape == (480, 640, 3) and d.shape == (480, 640)
        for f in p.labels.faces:   # a face is nearer than the room behind it
            x, y, w, h = f.box
            face_d = d[y + h // 3: y + 2 * h // 3, x + w // 3: x + 2 * w // 3]
            assert 0.4 < float(np.median(face_d[face_d > 0])) < 1.2


# ---------------------------------------------------------------- evaluator

def test_evaluator_counts_and_confusion(synthetic_bag, random_checkpoint, tmp_path):
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag, format_report, write_outputs

    path, summary = synthetic_bag
    rec = ExpressionStream(Recognizer.from_checkpoint(random_checkpoint, device="cpu"))
    report, board = evaluate_bag(path, rec, EvaluateOptions(gt_boxes=True, progress=False))
    gt = round(summary.faces_per_frame * summary.frames)
    assert report.frames == report.frames_labelled == 4
    assert report.gt_faces == gt and report.matched == gt and report.missed == 0   # boxes given
    assert report.false_positives == 0
    cm = np.asarray(report.confusion)
    assert cm.sum() == report.matched
    assert cm.sum(axis=1).tolist() == [report.per_class[c]["support"] for c in report.class_names]
    assert report.correct == int(np.trace(cm))
    assert dict(summary.labels.items()) == {c: v["gt_faces"] for c, v in report.per_class.items()
                                                         if v["gt_faces"]}
    assert {"decode", "preprocess", "network", "total"} <= set(report.latency_ms)
    assert report.latency_ms["total"]["n"] == 4 and report.latency_ms["total"]["p95"] >= \
        report.latency_ms["total"]["p50"] > 0
    out = write_outputs(report, board, tmp_path / "eval", "test")
    saved = json.loads(out["report"].read_text())
    assert saved["matched"] == gt and saved["confusion"] == cm.tolist()
    for key in ("confusion", "timeline"):
        assert out[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in format_report(report)

    # Detection mode on the same bag: whatever is found, the books balance.
    det, _ = evaluate_bag(path, rec, EvaluateOptions(progress=False, max_frames=2))
    assert det.frames == 2 and det.matched + det.missed == det.gt_faces
    assert np.asarray(det.confusion).sum() == det.matched


def test_evaluator_without_labels(random_checkpoint, tmp_path):
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools import bag_evaluate
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, EvaluationError, evaluate_bag

    path = tmp_path / "k2"
    _write_foreign_bag(path)
    rec = ExpressionStream(Recognizer.from_checkpoint(random_checkpoint, device="cpu"))
    report, _ = evaluate_bag(path, rec, EvaluateOptions(progress=False, slop_s=0.01))
    assert report.frames == 5 and not report.has_labels and report.gt_faces == 0
    assert report.extra["frames_with_depth"] == 5
    assert report.latency_ms["total"]["n"] == 5
    with pytest.raises(EvaluationError, match="labels topic"):
        evaluate_bag(path, rec, EvaluateOptions(progress=False, gt_boxes=True))
    assert bag_evaluate.main([str(path), "--weights", str(tmp_path / "missing.pt"), "--no-progress"]) == 2


def test_default_weights_beat_chance(tmp_path):
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag

    path = tmp_path / "eval_bag"
    write_synthetic_bag(path, duration_s=3.0, fps=4.0, num_faces=3, seed=11)
    rec = ExpressionStream(Recognizer.from_checkpoint(DEFAULT_WEIGHTS, device="cpu"))
    report, _ = evaluate_bag(path, rec, EvaluateOptions(gt_boxes=True, progress=False))
    chance = 1.0 / len(report.class_names)
    assert report.matched >= 20
    assert report.accuracy > 2 * chance, report.per_class


# ---------------------------------------------------------------- replayer

SUBSCRIBER = textwrap.dedent("""
    import json, sys, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    rclpy.init()
    node = rclpy.create_node("bag_test_listener")
    got = {"colour": [], "depth": [], "labels": 0, "clock": []}
    st = lambda m: m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
    node.create_subscription(Image, "/camera/color/image_raw", lambda m: got["colour"].append(st(m)),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Image, "/camera/depth_registered/image_raw", lambda m: got["depth"].append(st(m)),
                             qos_profile_sensor_data)
    node.create_subscription(String, "/cmcnn/ground_truth", lambda m: got.__setitem__("labels", got["labels"] + 1),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(m.clock.sec * 10**9 + m.clock.nanosec),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
    print("ready", flush=True)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(got["colour"]) < 10:
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(got), flush=True)
""")


def test_replayer_publishes_bag_with_clock(small_bag, ros_env, start_python, tmp_path):
    path, frames = small_bag
    sub = start_python(SUBSCRIBER)
    assert sub.stdout.readline().strip() == "ready"
    replay = subprocess.run(
        [sys.executable, "-m", "cmcnn_ros.tools.bag_replay", str(path), "--rate", "2.0",
         "--wait-for-subscriber", COLOUR_TOPIC, LABELS_TOPIC, "/clock", "--wait-timeout", "30"],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout.strip().splitlines()[-1])
    assert summary["published"][COLOUR_TOPIC] == 10 and summary["published"][DEPTH_TOPIC] == 10
    # 10 frames 50 ms apart = 0.45 s of bag time, played at twice the speed.
    assert 0.2 <= summary["wall_s"] < 2.0
    out, err = sub.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1])
    stamps = [f[0] for f in frames]
    assert got["colour"] == stamps                       # reliable: every frame, in order, stamps kept
    assert set(got["depth"]) <= set(stamps) and got["depth"]
    assert got["labels"] == 10
    clock = got["clock"]
    assert len(clock) >= 10 and clock == sorted(clock)   # /clock advances monotonically
    assert clock[0] >= stamps[0] and clock[-1] == stamps[-1]


def test_replayer_rejects_bad_options(small_bag, ros_domain_id):
    from cmcnn_ros.tools.bag_replay import ReplayError, ReplayOptions, main

    with pytest.raises(ReplayError, match="rate"):
        ReplayOptions(rate=0).validate()
    assert main([str(small_bag[0]), "--rate", "-1"]) == 2
    assert main([str(small_bag[0]), "--topics", "/nope"]) == 2


# ---------------------------------------------------------------- issue 10: the bag tools agree with the node

def _write_lagged_bag(path: Path, n: int = 12, lag_ms=(25, 35)) -> None:
    """Default topics and labels, depth stamped 25-35 ms after colour (a Kinect-style driver lag)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from cmcnn_ros.ros.conversions import array_to_image_fields

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time, String = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                          "builtin_interfaces/msg/Time", "std_msgs/msg/String"))
    with Writer(path, version=9) as w:
        cc = w.add_connection(COLOUR_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        dc = w.add_connection(DEPTH_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        lc = w.add_connection(LABELS_TOPIC, "std_msgs/msg/String", typestore=ts)
        for i in range(n):
            st = T0 + i * 100_000_000
            lag = int(np.interp(i, [0, n - 1], lag_ms) * 1e6)
            c, d = _frame(i)
            lab = FrameLabels(st, i, (GroundTruthFace("7", "happy", (1, 2, 30, 30)),))
            w.write(lc, st, ts.serialize_cdr(String(data=lab.to_json()), "std_msgs/msg/String"))
            for conn, arr, enc, t in ((cc, c, "bgr8", st), (dc, d, "16UC1", st + lag)):
                f = array_to_image_fields(arr, enc)
                f["data"] = np.frombuffer(f["data"], np.uint8)
                sec, ns = divmod(t, 10**9)
                msg = Image(header=Header(stamp=Time(sec=sec, nanosec=ns), frame_id=CAMERA_FRAME_ID), **f)
                w.write(conn, t, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def test_evaluator_pairs_a_lagging_depth_like_the_node(random_checkpoint, tmp_path):
    """Depth 25-35 ms behind colour: the node's sync_slop (0.05 s) pairs every frame, so must the evaluator."""
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag

    path = tmp_path / "lagged"
    _write_lagged_bag(path)
    rec = ExpressionStream(Recognizer.from_checkpoint(random_checkpoint, device="cpu"))
    report, _ = evaluate_bag(path, rec, EvaluateOptions(gt_boxes=True, progress=False))
    assert report.frames == report.frames_labelled == 12
    assert report.extra["frames_with_depth"] == 12 and report.gt_faces == 12


def test_evaluator_that_pairs_nothing_says_why_and_fails(random_checkpoint, tmp_path, caplog):
    from cmcnn_ros.tools import bag_evaluate

    path = tmp_path / "lagged"
    _write_lagged_bag(path)
    out = tmp_path / "eval"
    with caplog.at_level("ERROR"):
        rc = bag_evaluate.main([str(path), "--weights", str(random_checkpoint), "--device", "cpu",
                                "--slop", "0.02", "--no-progress", "--gt-boxes", "--output-dir", str(out)])
    assert rc == 2
    text = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert ("nothing evaluated: none of the 12 colour frames on /camera/color/image_raw found a depth partner "
            "on /camera/depth_registered/image_raw within --slop 0.020 s (the closest colour/depth stamps are "
            "0.025 s apart) (the bag has 12 labelled frames)") in text
    assert "colour only" not in caplog.text and "no ground-truth labels" not in caplog.text
    assert not (out / "report.json").exists()


def _mcap_only_copy(bag: Path, dest: Path) -> Path:
    """What other recorders leave: a folder with the .mcap file and no metadata.yaml."""
    import shutil

    dest.mkdir()
    for f in bag.glob("*.mcap"):
        shutil.copy(f, dest / f.name)
    assert not (dest / "metadata.yaml").exists()
    return dest


def test_mcap_folder_without_metadata_opens_and_evaluates(small_bag, random_checkpoint, tmp_path):
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag

    path, frames = small_bag
    bare = _mcap_only_copy(path, tmp_path / "bare")
    with open_bag(bare) as reader:
        topics = resolve_topics(reader)
        assert (topics.colour, topics.depth, topics.labels) == (COLOUR_TOPIC, DEPTH_TOPIC, LABELS_TOPIC)
        counts = {t: sum(c.msgcount for c in reader.connections if c.topic == t) for t in reader.topics}
        assert counts[COLOUR_TOPIC] == counts[DEPTH_TOPIC] == 10
        pairs = list(iter_frame_pairs(reader, topics, labels=read_labels(reader, topics.labels)))
    assert [p.stamp_ns for p in pairs] == [f[0] for f in frames]
    np.testing.assert_array_equal(decode_pair(pairs[3])[0], frames[3][1])
    rec = ExpressionStream(Recognizer.from_checkpoint(random_checkpoint, device="cpu"))
    report, _ = evaluate_bag(bare, rec, EvaluateOptions(gt_boxes=True, progress=False))
    assert report.frames == report.frames_labelled == 10
    assert not (bare / "metadata.yaml").exists()   # the user's folder is left as it was


def test_mcap_folder_without_metadata_replays(small_bag, ros_domain_id, tmp_path):
    import rclpy

    from cmcnn_ros.tools.bag_replay import BagReplayer, ReplayOptions

    bare = _mcap_only_copy(small_bag[0], tmp_path / "bare")
    rclpy.init()
    try:
        node = rclpy.create_node("mcap_only_replay")
        replayer = BagReplayer(node, bare, ReplayOptions(rate=20.0, clock=False))
        try:
            assert replayer.topics == sorted([COLOUR_TOPIC, DEPTH_TOPIC, LABELS_TOPIC, "/camera/color/camera_info"])
            stats = replayer.play()
        finally:
            replayer.close()
        assert stats.published[COLOUR_TOPIC] == stats.published[DEPTH_TOPIC] == 10
        assert [t for t, _ in stats.publish_wall[COLOUR_TOPIC]] == [f[0] for f in small_bag[1]]
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
