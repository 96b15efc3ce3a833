"""The bag tools on robot bags: image_transport's compressed topics in MCAP, sqlite3 and ROS 1 bags.

Real bags: ``cmcnn-bag-write``'s compressed option (rosbag2) and a ROS 1 bag
written with ``rosbags``' ROS 1 writer and noetic message types, with the
older format strings a ROS 1 robot records. The evaluator runs the real
stream; the replayer publishes over real DDS to a subscriber in another process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from cmcnn_ros.ros import compressed
from cmcnn_ros.tools.bag_io import (COLOUR_TOPIC, DEPTH_TOPIC, LABELS_TOPIC, BagError, FrameLabels, decode_pair,
                                    iter_frame_pairs, open_bag, read_labels, resolve_topics)
from cmcnn_ros.tools.bag_writer import CameraIntrinsics, RgbdBagWriter, Transports
from cmcnn_synthetic.bags import write_synthetic_bag

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / "models" / "cmcnn_default.pt"
C_TOPIC, D_TOPIC = COLOUR_TOPIC + "/compressed", DEPTH_TOPIC + "/compressedDepth"
ROBOT = Transports("compressed", "compressedDepth", "jpeg", 90, "png")
Frame = Tuple[int, np.ndarray, np.ndarray, FrameLabels]


def _frames(bag: Path) -> List[Frame]:
    """``(stamp, BGR, depth mm, labels)`` of every frame of a raw bag."""
    with open_bag(bag) as reader:
        topics = resolve_topics(reader)
        labels = read_labels(reader, topics.labels)
        out = []
        for pair in iter_frame_pairs(reader, topics, labels=labels):
            colour, depth_m = decode_pair(pair)
            out.append((pair.stamp_ns, colour, np.rint(depth_m * 1000).astype(np.uint16), pair.labels))
    return out


def _rewrite(frames: List[Frame], path: Path, storage: str = "mcap", transports: Transports = ROBOT) -> Path:
    """The same frames written again by cmcnn-bag-write's writer (e.g. compressed, as a robot records)."""
    with RgbdBagWriter(path, storage=storage, transports=transports) as w:
        for st, colour, depth, labels in frames:
            w.write_frame(st, colour, depth, labels, CameraIntrinsics(525.0, 525.0, 319.5, 239.5, 640, 480))
    return path


def _write_ros1(frames: List[Frame], path: Path, damage: bool = False) -> Path:
    """A ROS 1 robot bag: noetic types (header.seq), the older format strings, PNG depth.

    With ``damage`` the 2nd colour message is cut short and the 3rd depth message loses its header.
    """
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    CImage, Header, Time, String = (ts.types[n] for n in ("sensor_msgs/msg/CompressedImage", "std_msgs/msg/Header",
                                                          "builtin_interfaces/msg/Time", "std_msgs/msg/String"))
    with Writer(path) as w:
        cc = w.add_connection(C_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=ts)
        dc = w.add_connection(D_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=ts)
        lc = w.add_connection(LABELS_TOPIC, "std_msgs/msg/String", typestore=ts)
        for i, (st, colour, depth, labels) in enumerate(frames):
            _, jpeg = compressed.encode_colour(np.ascontiguousarray(colour[:, :, ::-1]), "rgb8", "jpeg", 90)
            _, png = compressed.encode_depth(depth, "16UC1", "png")
            if damage and i == 1:
                jpeg = jpeg[: len(jpeg) // 2]
            if damage and i == 2:
                png = png[12:]
            sec, ns = divmod(st, 10**9)
            header = Header(seq=i, stamp=Time(sec=sec, nanosec=ns), frame_id="camera_color_optical_frame")
            for conn, fmt, data in ((cc, "rgb8; jpeg compressed bgr8", jpeg), (dc, "16UC1; compressedDepth", png)):
                msg = CImage(header=header, format=fmt, data=np.frombuffer(data, np.uint8))
                w.write(conn, st, ts.serialize_ros1(msg, "sensor_msgs/msg/CompressedImage"))
            w.write(lc, st, ts.serialize_ros1(String(data=labels.to_json()), "std_msgs/msg/String"))
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """A raw synthetic bag and the same frames as compressed MCAP, sqlite3 and ROS 1 bags."""
    root = tmp_path_factory.mktemp("robot_bags")
    raw = root / "raw"
    write_synthetic_bag(raw, duration_s=0.8, fps=5.0, num_faces=2, seed=3)
    frames = _frames(raw)
    return {"raw": raw, "frames": frames, "mcap": _rewrite(frames, root / "mcap"),
            "sqlite3": _rewrite(frames, root / "sqlite3", "sqlite3"), "ros1": _write_ros1(frames, root / "robot.bag")}


def test_writer_records_compressed_topics_as_image_transport(bags):
    frames = bags["frames"]
    with open_bag(bags["mcap"]) as reader:
        types = {t: i.msgtype for t, i in reader.topics.items()}
        assert types == {C_TOPIC: "sensor_msgs/msg/CompressedImage", D_TOPIC: "sensor_msgs/msg/CompressedImage",
                         LABELS_TOPIC: "std_msgs/msg/String", "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo"}
        topics = resolve_topics(reader)
        assert (topics.colour, topics.colour_transport, topics.depth, topics.depth_transport) == \
            (C_TOPIC, "compressed", D_TOPIC, "compressedDepth")
        pairs = list(iter_frame_pairs(reader, topics, labels=read_labels(reader, topics.labels)))
    assert [p.stamp_ns for p in pairs] == [f[0] for f in frames] and all(p.labels for p in pairs)
    assert pairs[0].colour.format == "rgb8; jpeg compressed bgr8"
    assert pairs[0].depth.format == "16UC1; compressedDepth png"
    for (_, colour, depth, _), pair in zip(frames, pairs):
        c, d_m = decode_pair(pair, topics)
        np.testing.assert_array_equal(np.rint(d_m * 1000).astype(np.uint16), depth)   # 16UC1 PNG: exact
        err = np.abs(c.astype(np.int16) - colour.astype(np.int16))
        assert err.mean() < 3.0                                                        # JPEG quality 90


@pytest.mark.parametrize("kind", ["mcap", "sqlite3", "ros1"])
def test_evaluator_reads_compressed_bags(bags, kind, random_checkpoint):
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag

    stream = ExpressionStream(Recognizer.from_checkpoint(random_checkpoint, device="cpu"))
    # The base topic names of the node's parameters find the compressed topics too.
    for options in (EvaluateOptions(gt_boxes=True, progress=False),
                    EvaluateOptions(gt_boxes=True, progress=False, colour_topic=COLOUR_TOPIC, depth_topic=DEPTH_TOPIC)):
        report, _ = evaluate_bag(bags[kind], stream, options)
        assert report.frames == report.frames_labelled == 4
        assert report.extra["frames_with_depth"] == 4 and report.extra["bad_frames"] == 0
        assert report.gt_faces == report.matched > 0
        t = report.extra["topics"]
        assert (t["colour"], t["colour_transport"], t["depth"], t["depth_transport"]) == \
            (C_TOPIC, "compressed", D_TOPIC, "compressedDepth")
        assert report.latency_ms["decode"]["n"] == 4


def test_compressed_bag_accuracy_matches_the_raw_bag(tmp_path):
    """JPEG quality 90 colour and PNG compressedDepth: the shipped weights score as on the raw frames."""
    from cmcnn_ros.inference.recognizer import Recognizer
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.tools.bag_evaluate import EvaluateOptions, evaluate_bag

    raw = tmp_path / "raw"
    write_synthetic_bag(raw, duration_s=3.0, fps=4.0, num_faces=3, seed=11)
    robot = _rewrite(_frames(raw), tmp_path / "robot")
    stream = ExpressionStream(Recognizer.from_checkpoint(DEFAULT_WEIGHTS, device="cpu"))
    reports = [evaluate_bag(bag, stream, EvaluateOptions(progress=False))[0] for bag in (raw, robot)]
    a, b = reports
    assert a.matched >= 20 and b.matched >= a.matched - 1
    # JPEG q90 costs at most two of these ~30 faces: on so few faces one or two flip either way with the
    # weights (the README gives the figure on the 215-face demo bag, where q90 scores as well as raw).
    assert b.correct >= a.correct - 2, (a.per_class, b.per_class)


def test_damaged_messages_in_a_bag_are_skipped_counted_and_named(bags, random_checkpoint, tmp_path, caplog):
    from cmcnn_ros.tools import bag_evaluate

    bag = _write_ros1(bags["frames"], tmp_path / "damaged.bag", damage=True)
    out = tmp_path / "eval"
    with caplog.at_level("WARNING"):
        rc = bag_evaluate.main([str(bag), "--weights", str(random_checkpoint), "--device", "cpu", "--gt-boxes",
                                "--no-progress", "--output-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 2 and report["extra"]["bad_frames"] == 2
    reasons = report["extra"]["bad_frame_reasons"]
    assert any(r.startswith(f"compressed colour image on '{C_TOPIC}': JPEG payload of") and "truncated" in r
               for r in reasons)
    assert any(r.startswith(f"compressedDepth image on '{D_TOPIC}': the payload is a bare PNG") for r in reasons)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad frame")]
    assert len(lines) == 2 and "Traceback" not in caplog.text


def test_compressed_topic_of_another_type_is_refused_in_one_line(tmp_path, random_checkpoint, caplog):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from cmcnn_ros.tools import bag_evaluate

    ts = get_typestore(Stores.ROS2_KILTED)
    path = tmp_path / "odd"
    with Writer(path, version=9) as w:
        conn = w.add_connection("/cam/image_raw/compressed", "std_msgs/msg/String", typestore=ts)
        w.write(conn, 1, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
    with open_bag(path) as reader:
        with pytest.raises(BagError, match=r"colour topic '/cam/image_raw/compressed' \(compressed transport of "
                                           r"'/cam/image_raw'\) has type std_msgs/msg/String, not "
                                           r"sensor_msgs/msg/CompressedImage, so it cannot be decoded"):
            resolve_topics(reader, colour="/cam/image_raw")
    with caplog.at_level("ERROR"):
        assert bag_evaluate.main([str(path), "--weights", str(random_checkpoint), "--colour-topic", "/cam/image_raw",
                                  "--no-progress", "--output-dir", str(tmp_path / "o")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "republish" in errors[0] and "\n" not in errors[0]


def test_replayer_plays_compressed_topics_as_recorded(bags, ros_domain_id):
    import rclpy

    from cmcnn_ros.tools.bag_replay import BagReplayer, ReplayOptions

    rclpy.init()
    try:
        node = rclpy.create_node("compressed_replay")
        replayer = BagReplayer(node, bags["sqlite3"], ReplayOptions(rate=20.0, clock=False))
        try:
            assert replayer.topics == sorted([C_TOPIC, D_TOPIC, LABELS_TOPIC, "/camera/color/camera_info"])
            stats = replayer.play()
        finally:
            replayer.close()
        assert stats.published[C_TOPIC] == stats.published[D_TOPIC] == 4 and not stats.bad_messages
        node.destroy_node()
    finally:
        rclpy.try_shutdown()


LISTENER = textwrap.dedent("""
    import hashlib, json, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("decompressed_listener")
    got = {"colour": [], "depth": []}
    def keep(key):
        def cb(m):
            got[key].append([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.encoding, m.width, m.height,
                             m.header.frame_id, hashlib.sha1(bytes(m.data)).hexdigest()])
        return cb
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/camera/color/image_raw", keep("colour"), qos)
    node.create_subscription(Image, "/camera/depth_registered/image_raw", keep("depth"), qos)
    print("ready", flush=True)
    end = time.monotonic() + 60
    while time.monotonic() < end and (len(got["colour"]) < 3 or len(got["depth"]) < 3):
        rclpy.spin_once(node, timeout_sec=0.05)
    stop = time.monotonic() + 0.5
    while time.monotonic() < stop:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(got), flush=True)
""")


def test_replayer_decompresses_a_ros1_robot_bag(bags, ros_env, start_python, tmp_path):
    """--decompress: a ROS 1 robot bag (one message damaged) comes out as raw Images on the base topics."""
    import hashlib

    frames = bags["frames"]
    bag = _write_ros1(frames, tmp_path / "robot.bag", damage=True)
    sub = start_python(LISTENER)
    assert sub.stdout.readline().strip() == "ready"
    replay = subprocess.run(
        [sys.executable, "-m", "cmcnn_ros.tools.bag_replay", str(bag), "--decompress", "--rate", "4", "--no-clock",
         "--wait-for-subscriber", COLOUR_TOPIC, DEPTH_TOPIC, "--wait-timeout", "30"],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout.strip().splitlines()[-1])
    assert summary["published"][COLOUR_TOPIC] == 3 and summary["published"][DEPTH_TOPIC] == 3
    assert summary["bad_messages"] == {COLOUR_TOPIC: 1, DEPTH_TOPIC: 1}
    assert replay.stderr.count("cannot be decompressed") == 2 and "Traceback" not in replay.stderr
    got = json.loads(sub.communicate(timeout=60)[0].strip().splitlines()[-1])
    stamps = [f[0] for f in frames]
    assert [g[0] for g in got["colour"]] == [stamps[0], stamps[2], stamps[3]]
    assert all(g[1:5] == ["bgr8", 640, 480, "camera_color_optical_frame"] for g in got["colour"])
    assert [g[0] for g in got["depth"]] == [stamps[0], stamps[1], stamps[3]]
    depth_by_stamp = {f[0]: f[2] for f in frames}
    for stamp, encoding, w, h, _, digest in got["depth"]:     # 16UC1 through PNG: bit for bit
        assert (encoding, w, h) == ("16UC1", 640, 480)
        assert digest == hashlib.sha1(depth_by_stamp[stamp].astype("<u2").tobytes()).hexdigest()


def test_bag_write_refuses_bad_transport_options_in_one_line(tmp_path, caplog):
    from cmcnn_synthetic import bags as bag_cli

    with caplog.at_level("ERROR"):
        assert bag_cli.main([str(tmp_path / "b"), "--compressed", "--jpeg-quality", "0", "--no-progress"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["JPEG quality must be in 1-100, got 0"]
    assert not (tmp_path / "b").exists()
