"""Publish pre-rendered RGB-D frames at a fixed rate (a separate process for tests
and ``benchmarks/bench_node.py``).

    python test/ros_helpers/publish_frames.py --frames F.npz --rate 30 --duration 10 \
        [--colour-topic T] [--depth-topic T] [--json OUT] \
        [--colour-transport compressed [--jpeg-quality Q]] [--depth-transport compressedDepth [--depth-codec rvl]]

Colour goes out as bgr8, depth as 16UC1 millimetres, both with the same stamp
(the wall clock at publish time, as a driver would). With a compressed
transport the frame goes out as ``sensor_msgs/CompressedImage`` on
``<topic>/compressed`` / ``<topic>/compressedDepth``, encoded as
image_transport's plugins encode it (``cmcnn_ros.ros.compressed``). Messages are built once
per frame; only the stamps change. Writes ``{"published": n, "stamps_ns": [...],
"rate_hz": achieved}`` as JSON to ``--json`` (or stdout).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from ros_helpers.frames import load_frames
from ros_helpers.rosproc import image_msg, stamp_msg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", required=True, type=Path)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--colour-topic", default="/camera/color/image_raw")
    ap.add_argument("--depth-topic", default="/camera/depth_registered/image_raw")
    ap.add_argument("--wait-subscribers", type=float, default=10.0,
                    help="seconds to wait for the node's subscriptions")
    ap.add_argument("--colour-transport", choices=("raw", "compressed"), default="raw")
    ap.add_argument("--depth-transport", choices=("raw", "compressedDepth"), default="raw")
    ap.add_argument("--jpeg-quality", type=int, default=95)
    ap.add_argument("--colour-codec", choices=("jpeg", "png"), default="jpeg")
    ap.add_argument("--depth-codec", choices=("png", "rvl"), default="png")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from cmcnn_ros.ros import compressed

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    frames = load_frames(args.frames)
    rclpy.init()
    node = rclpy.create_node("fer_frame_publisher")

    def compressed_msg(fmt: str, data: bytes) -> CompressedImage:
        msg = CompressedImage(format=fmt)
        msg.data = data
        msg.header.frame_id = "camera_color_optical_frame"
        return msg

    def colour_msg(c):
        if args.colour_transport == "raw":
            return image_msg(c, "bgr8", 0)
        return compressed_msg(*compressed.encode_colour(c, "bgr8", args.colour_codec, args.jpeg_quality))

    def depth_msg(d):
        if args.depth_transport == "raw":
            return image_msg(d, "16UC1", 0, frame_id="camera_color_optical_frame")
        return compressed_msg(*compressed.encode_depth(d, "16UC1", args.depth_codec))

    pc = node.create_publisher(Image if args.colour_transport == "raw" else CompressedImage,
                               compressed.transport_topic(args.colour_topic, args.colour_transport),
                               qos_profile_sensor_data)
    pd = node.create_publisher(Image if args.depth_transport == "raw" else CompressedImage,
                               compressed.transport_topic(args.depth_topic, args.depth_transport),
                               qos_profile_sensor_data)
    msgs = [(colour_msg(c), depth_msg(d)) for c, d in zip(frames["colour"], frames["depth"])]
    end = time.monotonic() + args.wait_subscribers
    while time.monotonic() < end and (pc.get_subscription_count() == 0 or pd.get_subscription_count() == 0):
        time.sleep(0.05)
    stamps = []
    period = 1.0 / args.rate
    t0 = time.monotonic()
    n = 0
    while True:
        due = t0 + n * period
        if due - t0 > args.duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        c, d = msgs[n % len(msgs)]
        ns = time.time_ns()
        c.header.stamp = d.header.stamp = stamp_msg(ns)
        pc.publish(c)
        pd.publish(d)
        stamps.append(ns)
        n += 1
    elapsed = time.monotonic() - t0
    out = {"published": n, "stamps_ns": stamps, "rate_hz": n / elapsed if elapsed > 0 else 0.0}
    text = json.dumps(out)
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.json)
    else:
        sys.stdout.write(text + "\n")
    time.sleep(0.5)  # let the last samples leave
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
