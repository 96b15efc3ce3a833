"""fer_node on image_transport's compressed transports: real rclpy/DDS, the node and the publisher in
their own processes.

The publisher process (``ros_helpers/publish_frames.py``) sends JPEG colour on
``<base>/compressed`` and PNG / RVL ``compressedDepth`` on
``<base>/compressedDepth``, encoded as the plugins encode them; the node,
started with ``colour_transport: compressed`` and ``depth_transport:
compressedDepth``, must answer them like raw frames, and skip, log and count
damaged ones. A randomly initialised checkpoint: this tests the transport,
not the accuracy (the bag tests compare accuracy against raw).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.frames import build_frames, load_frames
from ros_helpers.rosproc import ROOT, NodeProcess, RosClient, claim_domain_id, ros_env, wait_until

from cmcnn_ros.msg import EmotionArray
from cmcnn_ros.ros import compressed
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CompressedImage, Image

COLOUR, DEPTH = "/robot/color/image_raw", "/robot/depth_registered/image_raw"


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _publish(domain_id: int, npz: Path, out: Path, depth_codec: str, duration: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "test" / "ros_helpers" / "publish_frames.py"), "--frames", str(npz),
         "--rate", "4", "--duration", str(duration), "--colour-topic", COLOUR, "--depth-topic", DEPTH,
         "--colour-transport", "compressed", "--jpeg-quality", "90", "--depth-transport", "compressedDepth",
         "--depth-codec", depth_codec, "--wait-subscribers", "30", "--json", str(out)],
        env=ros_env(domain_id))


def test_node_answers_a_compressed_stream_and_skips_damaged_messages(tmp_path, random_checkpoint):
    npz = build_frames(tmp_path / "one.npz", "one", count=3)
    frame = load_frames(npz)
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, tmp_path / "node.log",
                       {"model_path": str(random_checkpoint), "device": "cpu", "colour_topic": COLOUR,
                        "depth_topic": DEPTH, "colour_transport": "compressed", "depth_transport": "compressedDepth",
                        "bad_message_log_period": 0.0})
    client = RosClient(lease.domain_id)
    try:
        node.wait_for_log(r"\] \[fer_node\]: active: colour /robot/color/image_raw/compressed \(compressed\), "
                          r"depth /robot/depth_registered/image_raw/compressedDepth \(compressedDepth\)", 60)
        _, results = client.collector(EmotionArray, "/fer_node/emotions")
        _, diags = client.collector(DiagnosticArray, "/diagnostics")
        for codec in ("png", "rvl"):
            out = tmp_path / f"sent_{codec}.json"
            pub = _publish(lease.domain_id, npz, out, codec, duration=3.0)
            assert pub.wait(90) == 0
            sent = json.loads(out.read_text())["stamps_ns"]
            assert wait_until(lambda: sum(stamp_of(m) in sent for _, m in results) >= len(sent) // 2,  # noqa: B023
                              15), \
                node.log()[-3000:]
            answered = [m for _, m in results if stamp_of(m) in sent]
            for m in answered:
                assert len(m.faces) == 1, node.log()[-2000:]
                f = m.faces[0]
                # The astronaut's face, found in the decoded JPEG; the decoded depth is the face's 0.8 m.
                cx, cy = f.roi.x_offset + f.roi.width / 2, f.roi.y_offset + f.roi.height / 2
                assert 220 < cx < 360 and 60 < cy < 180
                assert f.depth_valid and f.depth_valid_fraction > 0.9

        # Damaged messages from this process: skipped, logged with the topic and the fix, counted.
        pc = client.node.create_publisher(CompressedImage, COLOUR + "/compressed", 10)
        pd = client.node.create_publisher(CompressedImage, DEPTH + "/compressedDepth", 10)
        assert wait_until(lambda: pc.get_subscription_count() > 0 and pd.get_subscription_count() > 0, 20)
        jpeg = compressed.encode_colour(frame["colour"][0], "bgr8", "jpeg", 90)
        png = compressed.encode_depth(frame["depth"][0])

        def send(colour, depth) -> int:
            ns = time.time_ns()
            for pub, (fmt, data) in ((pc, colour), (pd, depth)):
                msg = CompressedImage(format=fmt)
                msg.data = data
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                msg.header.frame_id = "camera_color_optical_frame"
                pub.publish(msg)
            return ns

        mark = len(node.log())
        bad = [
            ((jpeg[0], jpeg[1][:4000]), png,
             r"compressed colour image on '/robot/color/image_raw/compressed': JPEG payload of 4000 B has no JPEG "
             r"end marker: the payload is truncated"),
            (jpeg, ("16UC1; compressedDepth png", png[1][12:]),
             r"compressedDepth image on '/robot/depth_registered/image_raw/compressedDepth': the payload is a bare "
             r"PNG without the 12-byte compressedDepth header"),
            (("yuv422; h264 compressed", jpeg[1]), png,
             r"compressed colour image on .*: unknown format string 'yuv422; h264 compressed'.*"
                                                        r"republish node \(in_transport compressed"),
        ]
        for colour, depth, reason in bad:
            send(colour, depth)
            node.wait_for_log(r"skipping bad frame \(stamp [0-9.]+\): " + reason, 10, after=mark)
            time.sleep(0.3)
        good = send(jpeg, png)
        assert wait_until(lambda: any(stamp_of(m) == good for _, m in results), 10), node.log()[-2000:]
        assert "Traceback" not in node.log()
        diags.clear()
        assert wait_until(lambda: len(diags) >= 1, 5)
        kv = {v.key: v.value for v in diags[-1][1].status[0].values}
        assert int(kv["bad messages"]) >= 3
        assert kv["inputs"] == "colour compressed, depth compressedDepth"
    finally:
        client.close()
        rc = node.stop()
        lease.release()
    assert rc == 0, node.log()[-2000:]


def test_silent_compressed_inputs_are_explained_from_the_graph(ros_domain_id):
    """A '<base>/compressed' topic of another type, or only the other transport published: the node's warning
    says which and what to set (read from the real rclpy graph)."""
    import rclpy

    from cmcnn_ros.ros.inputs import input_topic, transport_problems

    rclpy.init()
    try:
        node = rclpy.create_node("transport_probe")
        wrong_type = node.create_publisher(Image, "/cam/color/image_raw/compressed", 1)
        raw_only = node.create_publisher(Image, "/cam/depth/image_raw", 1)
        inputs = [input_topic("colour", "/cam/color/image_raw", "compressed"),
                  input_topic("depth", "/cam/depth/image_raw", "compressedDepth")]
        assert wait_until(lambda: len(transport_problems(node, inputs)) == 2, 10)
        colour, depth = transport_problems(node, inputs)
        assert colour == ("'/cam/color/image_raw/compressed' is published as sensor_msgs/msg/Image, not "
                          "sensor_msgs/msg/CompressedImage, so the colour input receives nothing; set "
                          "colour_transport to match the topic or run image_transport republish to the expected "
                          "transport")
        assert depth == ("nothing is published on '/cam/depth/image_raw/compressedDepth' but "
                         "'/cam/depth/image_raw' is (raw): set depth_transport: raw (or run image_transport "
                         "republish to compressedDepth)")
        # Raw inputs whose stream only arrives compressed are told the other way round.
        node.destroy_publisher(wrong_type)
        node.destroy_publisher(raw_only)
        node.create_publisher(CompressedImage, "/cam/color/image_raw/compressed", 1)
        raw_in = [input_topic("colour", "/cam/color/image_raw", "raw")]
        assert wait_until(lambda: transport_problems(node, raw_in) == [
            "nothing is published on '/cam/color/image_raw' but '/cam/color/image_raw/compressed' is (compressed): "
            "set colour_transport: compressed (or run image_transport republish to raw)"], 10)
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
