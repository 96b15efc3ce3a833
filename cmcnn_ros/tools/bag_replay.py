"""``cmcnn-bag-replay``: play a rosbag2 into live ROS 2 topics with rclpy.

For machines without ``ros2 bag play`` (the PyPI ROS 2 wheels have no
rosbag2): the recorded RGB-D stream that feeds CM-CNN (Ni et al., IEEE TCDS
2023, Section III-B: colour + registered depth) is published again at the
recorded timing, so the live node can be tested on recordings.

Behaviour follows ``ros2 bag play --clock``:

* messages go out at their recorded (log) times, scaled by ``--rate``;
* the serialized CDR bytes are published unchanged (``Publisher.publish``
  accepts bytes), so nothing is lost in a decode/encode round trip;
* ``/clock`` (``rosgraph_msgs/msg/Clock``) carries the bag time, at
  ``--clock-hz`` while waiting and right before every message, so a node
  started with ``use_sim_time:=true`` sees the recorded time;
* ``--loop`` starts over at the end (the clock jumps back, as with rosbag2).

Robot bags usually hold ``image_transport``'s compressed topics
(``sensor_msgs/CompressedImage`` on ``<base>/compressed`` and
``<base>/compressedDepth``): they are replayed as recorded (for a node with
``colour_transport: compressed`` / ``depth_transport: compressedDepth``), or
with ``--decompress`` decoded (:mod:`cmcnn_ros.ros.compressed`) and published
as ``sensor_msgs/Image`` on the base topic, as image_transport's ``republish``
to ``raw`` would (colour ``bgr8``/``mono8``, depth in its recorded
``16UC1``/``32FC1``). A message that cannot be decoded is skipped, counted and
logged once per reason. ROS 1 bags are replayed too: each message is
converted to its ROS 2 form (``rosbags``' ``ros1_to_cdr``: the header's
``seq`` dropped); topics of types without a ROS 2 counterpart are left out
with a warning.

QoS: publishers are reliable (depth 10) by default, like ``ros2 bag play``
and as REP-2003 asks of sensor drivers: a reliable publisher serves both
reliable and best-effort (``qos_profile_sensor_data``) subscribers.
``--qos sensor`` publishes best effort instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.ros import compressed
from cmcnn_ros.tools import configure_logging
from cmcnn_ros.tools.bag_io import BagError, rosbag2_folder

logger = logging.getLogger(__name__)

CLOCK_TOPIC = "/clock"
IMAGE_TYPE = "sensor_msgs/msg/Image"
QOS_CHOICES = ("reliable", "sensor")


class ReplayError(ValueError):
    """Bad replay options or a bag that cannot be replayed."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to play a bag.

    Attributes:
        rate: playback speed multiplier (> 0; 2.0 = twice as fast).
        loop: start over when the bag ends (until stopped).
        clock: publish ``/clock`` with the bag time.
        clock_hz: ``/clock`` rate while waiting between messages (> 0).
        qos: ``"reliable"`` (depth 10) or ``"sensor"`` (best effort, depth 5).
        topics: only these topics (None = all).
        remap: ``{bag topic: published topic}``.
        decompress: publish ``CompressedImage`` topics decoded, as ``sensor_msgs/Image``
            on their base topic (``<base>/compressed`` -> ``<base>``).
    """

    rate: float = 1.0
    loop: bool = False
    clock: bool = True
    clock_hz: float = 50.0
    qos: str = "reliable"
    topics: Optional[Tuple[str, ...]] = None
    remap: Dict[str, str] = field(default_factory=dict)
    decompress: bool = False

    def validate(self) -> None:
        """Raises:
            ReplayError: a value is out of range.
        """
        if not self.rate > 0:
            raise ReplayError(f"rate must be > 0, got {self.rate}")
        if not self.clock_hz > 0:
            raise ReplayError(f"clock_hz must be > 0, got {self.clock_hz}")
        if self.qos not in QOS_CHOICES:
            raise ReplayError(f"qos must be one of {QOS_CHOICES}, got {self.qos!r}")


@dataclass
class ReplayStats:
    """What a replay published.

    Attributes:
        published: messages per (published) topic name.
        clock_messages: ``/clock`` messages sent.
        first_time_ns / last_time_ns: bag time of the first / last message.
        wall_s: wall time the playback took.
        publish_wall: per published topic, ``(bag log time ns, time.time())``
            of every message, for end-to-end latency measurements.
        loops: complete passes over the bag.
        bad_messages: per published topic, compressed messages that could not
            be decompressed and were skipped (``--decompress``).
    """

    published: Dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    first_time_ns: Optional[int] = None
    last_time_ns: Optional[int] = None
    wall_s: float = 0.0
    publish_wall: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)
    loops: int = 0
    bad_messages: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        return {"published": dict(self.published), "clock_messages": self.clock_messages,
                "first_time_ns": self.first_time_ns, "last_time_ns": self.last_time_ns,
                "wall_s": round(self.wall_s, 3), "loops": self.loops, "bad_messages": dict(self.bad_messages)}


def message_class(msgtype: str) -> Any:
    """The rclpy message class of a ROS 2 type name such as ``sensor_msgs/msg/Image``.

    Raises:
        ReplayError: the type's Python package is not installed.
    """
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ReplayError(f"not a ROS 2 message type name: {msgtype!r}")
    pkg, _, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as exc:
        wheel = "ros-" + pkg.replace("_", "-")
        raise ReplayError(
            f"message type {msgtype} is not installed ({exc}); install it (e.g. pip install {wheel}) "
            "or leave the topic out with --topics") from exc


def _qos(kind: str) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if kind == "sensor":
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class _Decompressor:
    """CDR bytes of a recorded CompressedImage -> CDR bytes of the ``sensor_msgs/Image`` republish would give."""

    def __init__(self, typestore: Any, topic: str) -> None:
        self._ts = typestore
        self._depth = compressed.split_transport_topic(topic)[1] == "compressedDepth"

    def __call__(self, cdr: bytes) -> bytes:
        """Raises:
            compressed.CompressedImageError: the message cannot be decoded.
        """
        from cmcnn_ros.ros.conversions import array_to_image_fields

        msg = self._ts.deserialize_cdr(cdr, compressed.COMPRESSED_IMAGE_TYPE)
        depth = self._depth or "compresseddepth" in str(msg.format).lower()
        if depth:
            array, encoding = compressed.decode_depth(msg.format, msg.data)
        else:
            array = compressed.decode_colour(msg.format, msg.data)
            encoding = "mono8" if array.ndim == 2 else "bgr8"
        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], np.uint8)
        image = self._ts.types[IMAGE_TYPE](header=msg.header, **fields)
        return bytes(self._ts.serialize_cdr(image, IMAGE_TYPE))


def _decompressed_topic(topic: str) -> str:
    """Where ``--decompress`` publishes a compressed topic: its image_transport base topic."""
    base, transport = compressed.split_transport_topic(topic)
    return base if transport != "raw" else f"{topic}/decompressed"


class BagReplayer:
    """Publishes a bag's messages on live topics at the recorded timing.

    Args:
        node: an rclpy node to own the publishers (need not be spun).
        bag_path: rosbag2 folder (MCAP or sqlite3) or ROS 1 ``.bag`` file.
        options: :class:`ReplayOptions`.

    Raises:
        ReplayError: bad options, or no topic left to play.
        BagError: the bag is missing or unreadable.
    """

    def __init__(self, node: Any, bag_path: "str | Path", options: ReplayOptions = ReplayOptions()) -> None:
        from rosbags.typesys import Stores, get_typestore

        options.validate()
        self.node = node
        self.options = options
        self.path = Path(bag_path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self._ts = get_typestore(Stores.ROS2_KILTED)
        self._ros1 = self.path.is_file() and self.path.suffix == ".bag"
        self._reader, self._folder = self._open()
        wanted = set(options.topics) if options.topics is not None else None
        connections = [c for c in self._reader.connections
                       if (wanted is None or c.topic in wanted) and c.topic != CLOCK_TOPIC]
        self._connections = []
        for conn in connections:
            if self._ros1 and conn.msgtype not in self._ts.types:
                logger.warning("%s (%s) has no ROS 2 counterpart here and is not replayed", conn.topic, conn.msgtype)
                continue
            self._connections.append(conn)
        if wanted is not None:
            missing = wanted - {c.topic for c in self._reader.connections}
            if missing:
                raise ReplayError(f"topics {sorted(missing)} are not in {self.path}; it has "
                                  f"{sorted(self._reader.topics)}")
        if not self._connections:
            raise ReplayError(f"nothing to replay in {self.path}")
        self._publishers: Dict[int, Tuple[str, Any]] = {}
        self._convert: Dict[int, List[Callable[[bytes], bytes]]] = {}
        by_topic: Dict[str, Any] = {}
        for conn in self._connections:
            steps: List[Callable[[bytes], bytes]] = []
            if self._ros1:   # ROS 1 serialisation -> CDR of the ROS 2 type (header.seq dropped)
                steps.append(lambda raw, t=conn.msgtype: bytes(self._ts.ros1_to_cdr(raw, t)))
            msgtype, out_topic = conn.msgtype, options.remap.get(conn.topic, conn.topic)
            if options.decompress and conn.msgtype == compressed.COMPRESSED_IMAGE_TYPE:
                steps.append(_Decompressor(self._ts, conn.topic))
                msgtype, out_topic = IMAGE_TYPE, options.remap.get(conn.topic, _decompressed_topic(conn.topic))
            self._convert[conn.id] = steps
            if out_topic not in by_topic:
                by_topic[out_topic] = node.create_publisher(message_class(msgtype), out_topic, _qos(options.qos))
            self._publishers[conn.id] = (out_topic, by_topic[out_topic])
        self._by_topic = by_topic
        self._clock_pub = None
        if options.clock:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            # Reliable depth 1: serves rclpy's best-effort TimeSource and reliable listeners alike.
            self._clock_pub = node.create_publisher(Clock, CLOCK_TOPIC,
                                                    QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.stop_event = threading.Event()
        self._reasons: set = set()   # decompression failures already logged

    def _open(self) -> Tuple[Any, Any]:
        """The opened reader and the folder context to leave on close.

        Raises:
            BagError: the bag cannot be read.
        """
        from contextlib import nullcontext

        if self._ros1:
            from rosbags.rosbag1 import Reader as Reader1, ReaderError as ReaderError1

            reader1 = Reader1(self.path)
            try:
                reader1.open()
            except (ReaderError1, OSError, ValueError) as exc:
                raise BagError(f"cannot read ROS 1 bag {self.path}: {exc}") from exc
            return reader1, nullcontext()
        from rosbags.rosbag2 import Reader, ReaderError

        # A folder of .mcap files without metadata.yaml opens through a temporary folder
        # (bag_io.rosbag2_folder), kept until close().
        folder = rosbag2_folder(self.path)
        try:
            reader = Reader(folder.__enter__())
            reader.open()
        except (ReaderError, OSError, ValueError) as exc:
            folder.__exit__(None, None, None)
            raise BagError(f"cannot read bag {self.path}: {exc}") from exc
        return reader, folder

    @property
    def topics(self) -> List[str]:
        """Published topic names."""
        return sorted(self._by_topic)

    def close(self) -> None:
        """Destroy the publishers and close the bag."""
        from rclpy.duration import Duration

        for pub in self._by_topic.values():
            # Reliable samples still in flight die with the publisher: let
            # subscribers acknowledge the tail of the bag before tearing down.
            try:
                pub.wait_for_all_acked(Duration(seconds=2.0))
            except Exception:
                pass
            self.node.destroy_publisher(pub)
        if self._clock_pub is not None:
            self.node.destroy_publisher(self._clock_pub)
        self._by_topic.clear()
        self._reader.close()
        self._folder.__exit__(None, None, None)

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Wait until each of ``topics`` (published names) has a subscriber.

        DDS discovery takes a moment; messages published before it completes
        are lost, so the demo and tests wait here first.

        Raises:
            ReplayError: a topic is not one this replayer publishes.
        """
        pubs = dict(self._by_topic)
        if self._clock_pub is not None:
            pubs[CLOCK_TOPIC] = self._clock_pub
        for t in topics:
            if t not in pubs:
                raise ReplayError(f"{t!r} is not replayed; replayed topics: {sorted(pubs)}")
        deadline = time.monotonic() + timeout_s
        while True:
            if all(pubs[t].get_subscription_count() > 0 for t in topics):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def publish_clock(self, t_ns: int) -> bool:
        """Publish ``/clock`` = ``t_ns`` (e.g. to keep sim time running after the bag ended).

        Returns:
            False when this replayer publishes no clock.
        """
        if self._clock_pub is None:
            return False
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
        self._clock_pub.publish(msg)
        return True

    def _publish_clock(self, t_ns: int, stats: ReplayStats) -> None:
        if self.publish_clock(t_ns):
            stats.clock_messages += 1

    def _prepare(self, conn: Any, t_ns: int, raw: bytes, topic: str, stats: ReplayStats) -> Optional[bytes]:
        """The bytes to publish for a recorded message, or None when it cannot be decompressed (logged, counted)."""
        try:
            for step in self._convert[conn.id]:
                raw = step(raw)
        except compressed.CompressedImageError as exc:
            n = stats.bad_messages.get(topic, 0) + 1
            stats.bad_messages[topic] = n
            reason = str(exc)
            if reason not in self._reasons:
                self._reasons.add(reason)
                logger.warning("skipping a %s message at %.3f s that cannot be decompressed: %s; replay without "
                               "--decompress to pass it on as recorded", conn.topic, t_ns / 1e9, reason)
            return None
        return raw

    def play(self, progress: Optional[Callable[[int, int], None]] = None) -> ReplayStats:
        """Play the bag (once, or until :attr:`stop_event` with ``loop``).

        Args:
            progress: called with ``(messages done, messages per pass)``.

        Returns:
            :class:`ReplayStats`.
        """
        stats = ReplayStats()
        total = sum(c.msgcount for c in self._connections)
        rate = self.options.rate
        clock_period = 1.0 / self.options.clock_hz
        wall_start = time.monotonic()
        while not self.stop_event.is_set():
            done = 0
            pass_wall0: Optional[float] = None
            bag_t0: Optional[int] = None
            next_clock = 0.0
            for conn, t_ns, raw in self._reader.messages(connections=self._connections):
                if self.stop_event.is_set():
                    break
                if bag_t0 is None:
                    bag_t0, pass_wall0 = t_ns, time.monotonic()
                    stats.first_time_ns = t_ns if stats.first_time_ns is None else stats.first_time_ns
                assert pass_wall0 is not None
                target = pass_wall0 + (t_ns - bag_t0) / 1e9 / rate
                while True:
                    now = time.monotonic()
                    if now >= target or self.stop_event.is_set():
                        break
                    if self._clock_pub is not None and now >= next_clock:
                        self._publish_clock(bag_t0 + int((now - pass_wall0) * rate * 1e9), stats)
                        next_clock = now + clock_period
                    time.sleep(max(0.0, min(target, next_clock) - time.monotonic()))
                # The clock reaches the message's time before the message arrives.
                self._publish_clock(t_ns, stats)
                topic, pub = self._publishers[conn.id]
                data = self._prepare(conn, t_ns, bytes(raw), topic, stats)
                if data is None:
                    done += 1
                    continue
                pub.publish(data)
                stats.published[topic] = stats.published.get(topic, 0) + 1
                stats.publish_wall.setdefault(topic, []).append((t_ns, time.time()))
                stats.last_time_ns = t_ns
                done += 1
                if progress is not None:
                    progress(done, total)
            else:
                stats.loops += 1
            if not self.options.loop:
                break
        stats.wall_s = time.monotonic() - wall_start
        return stats


def _parse_remap(items: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items:
        if ":=" not in item:
            raise ReplayError(f"--remap expects OLD:=NEW, got {item!r}")
        old, new = item.split(":=", 1)
        out[old] = new
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-bag-replay",
        description="Publish a rosbag2 (MCAP/sqlite3) or ROS 1 bag on live ROS 2 topics at the recorded timing, "
                    "with /clock for use_sim_time nodes (ros2 bag play --clock without rosbag2).")
    p.add_argument("bag", type=Path, help="rosbag2 folder or ROS 1 .bag file")
    p.add_argument("--rate", type=float, default=1.0, help="speed multiplier (default 1.0)")
    p.add_argument("--loop", action="store_true", help="start over at the end until Ctrl-C")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--clock-hz", type=float, default=50.0, help="/clock rate between messages (default 50)")
    p.add_argument("--qos", choices=QOS_CHOICES, default="reliable",
                   help="reliable (default, serves every subscriber) or sensor (best effort)")
    p.add_argument("--topics", nargs="+", default=None, help="only these bag topics")
    p.add_argument("--remap", nargs="+", default=[], metavar="OLD:=NEW", help="publish a bag topic under another name")
    p.add_argument("--decompress", action="store_true",
                   help="publish image_transport compressed topics (sensor_msgs/CompressedImage) decoded, as "
                        "sensor_msgs/Image on their base topic (BASE/compressed -> BASE), as republish to raw "
                        "would; default: as recorded")
    p.add_argument("--wait-for-subscriber", nargs="+", default=[], metavar="TOPIC",
                   help="wait until these (published) topics have a subscriber before playing")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds for --wait-for-subscriber (default 30)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-bag-replay``; prints a JSON summary on stdout."""
    args = get_args_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        options = ReplayOptions(rate=args.rate, loop=args.loop, clock=not args.no_clock, clock_hz=args.clock_hz,
                                qos=args.qos, topics=tuple(args.topics) if args.topics else None,
                                remap=_parse_remap(args.remap), decompress=args.decompress)
        options.validate()
    except ReplayError as exc:
        logger.error("%s", exc)
        return 2
    import rclpy

    rclpy.init(args=None)
    node = rclpy.create_node("cmcnn_bag_replay")
    replayer: Optional[BagReplayer] = None
    try:
        replayer = BagReplayer(node, args.bag, options)
        if args.wait_for_subscriber and not replayer.wait_for_subscribers(args.wait_for_subscriber,
                                                                           args.wait_timeout):
            logger.error("no subscriber on %s after %.0f s", args.wait_for_subscriber, args.wait_timeout)
            return 3
        logger.info("replaying %s (%s) at rate %.2f%s", args.bag, ", ".join(replayer.topics), options.rate,
                    " in a loop" if options.loop else "")
        try:
            stats = replayer.play()
        except KeyboardInterrupt:
            replayer.stop_event.set()
            return 130
        print(json.dumps(stats.summary()))
        return 0
    except (BagError, ReplayError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if replayer is not None:
            replayer.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
