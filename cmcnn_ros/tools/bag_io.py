"""Shared rosbag reading for the bag tools: topics, ground-truth labels, colour/depth pairing.

The bag tools feed recorded Kinect-style RGB-D streams to the CM-CNN pipeline
(Ni et al., IEEE TCDS 2023, Section III-B: one colour frame plus the
registered depth frame per inference). This module is ROS-free: it reads
rosbag2 (MCAP or sqlite3) and ROS 1 bags with the pure-Python ``rosbags``
library, so the offline evaluator runs on machines without a ROS runtime.

Conventions of the bags written by ``cmcnn-bag-write`` (Kinect-style; the
colour and depth topics are the ``fer_node`` defaults, so a replayed bag
feeds the node without remapping):

* colour ``sensor_msgs/msg/Image`` (``rgb8``) on :data:`COLOUR_TOPIC`,
* registered depth ``sensor_msgs/msg/Image`` (``16UC1``, millimetres, 0 = no
  reading) on :data:`DEPTH_TOPIC` with the *same* stamp and frame id,
* ``sensor_msgs/msg/CameraInfo`` on :data:`CAMERA_INFO_TOPIC`,
* the ground truth as ``std_msgs/msg/String`` JSON on :data:`LABELS_TOPIC`,
  one message per frame carrying that frame's stamp (:class:`FrameLabels`).

Users' own recordings may lack the labels topic or use other topic names;
:func:`resolve_topics` guesses the colour and depth topics from their names
and says what it found when it cannot decide. A robot's recording usually
holds ``image_transport``'s compressed topics instead of raw ones
(``sensor_msgs/msg/CompressedImage`` on ``<base>/compressed`` and
``<base>/compressedDepth``): topics are told apart by message type, a topic
argument names the base topic or the compressed one, and the frames decode
through the same conversions as the live node's
(:mod:`cmcnn_ros.ros.compressed`).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.ros.compressed import (COLOUR_TRANSPORTS, COMPRESSED_IMAGE_TYPE, DEPTH_TRANSPORTS,
                                      split_transport_topic, transport_topic)
from cmcnn_ros.ros.sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP_S, stamp_ns

logger = logging.getLogger(__name__)

COLOUR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/depth_registered/image_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
LABELS_TOPIC = "/cmcnn/ground_truth"
# Registered depth shares the colour optical frame (that is what "registered" means).
CAMERA_FRAME_ID = "camera_color_optical_frame"

IMAGE_TYPE = "sensor_msgs/msg/Image"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
STRING_TYPE = "std_msgs/msg/String"
LABELS_FORMAT = "cmcnn_ros.ground_truth/1"

# Name fragments of colour / depth topics of common RGB-D drivers (openni,
# freenect, iai_kinect2, Azure Kinect, RealSense), most specific first.
_DEPTH_HINTS = ("depth_registered", "depth_to_rgb", "image_depth_rect", "aligned_depth_to_color", "depth")
_COLOUR_HINTS = ("rgb/image", "color/image", "colour/image", "image_color", "rgb", "color", "colour", "image")

class BagError(ValueError):
    """A bag is missing, unreadable, or lacks the topics a tool needs."""


@dataclass(frozen=True)
class GroundTruthFace:
    """One labelled face in one frame.

    Attributes:
        subject: identity of the rendered subject; stable for the whole bag,
            also when the face leaves and comes back (the timeline's rows).
        label: canonical expression name (``cmcnn_ros.classes``).
        box: ``(x, y, w, h)`` in colour pixels.
        intensity: expression intensity level (1-4 like BU-3DFE) or None.
        eyes: ``((x, y), (x, y))`` eye centres in colour pixels, or None.
        visible_fraction: share of the face's landmarks in view and not occluded, or None.
    """

    subject: str
    label: str
    box: Tuple[int, int, int, int]
    intensity: Optional[int] = None
    eyes: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None
    visible_fraction: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "subject": self.subject, "label": self.label, "box": list(self.box),
            "intensity": self.intensity,
            "eyes": None if self.eyes is None else [list(e) for e in self.eyes],
            "visible_fraction": self.visible_fraction,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GroundTruthFace":
        """Raises:
            BagError: a field is missing or malformed.
        """
        try:
            box = tuple(int(v) for v in d["box"])
            if len(box) != 4:
                raise ValueError("box needs 4 numbers")
            eyes = d.get("eyes")
            eyes_t = None if eyes is None else tuple((float(e[0]), float(e[1])) for e in eyes)
            intensity = d.get("intensity")
            vis = d.get("visible_fraction")
            return cls(subject=str(d["subject"]), label=str(d["label"]), box=box,  # type: ignore[arg-type]
                       intensity=None if intensity is None else int(intensity), eyes=eyes_t,  # type: ignore[arg-type]
                       visible_fraction=None if vis is None else float(vis))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BagError(f"malformed ground-truth face {d!r}: {exc}") from exc


@dataclass(frozen=True)
class FrameLabels:
    """Ground truth of one frame, as carried by one labels-topic message."""

    stamp_ns: int
    frame_index: int
    faces: Tuple[GroundTruthFace, ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "format": LABELS_FORMAT, "stamp_ns": self.stamp_ns, "frame": self.frame_index,
            "faces": [f.to_dict() for f in self.faces],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FrameLabels":
        """Raises:
            BagError: the text is not a ground-truth message of this package.
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BagError(f"labels message is not JSON: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != LABELS_FORMAT:
            raise BagError(f"labels message is not {LABELS_FORMAT!r}: {text[:120]!r}")
        try:
            return cls(stamp_ns=int(d["stamp_ns"]), frame_index=int(d["frame"]),
                       faces=tuple(GroundTruthFace.from_dict(f) for f in d["faces"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BagError(f"malformed labels message: {exc}") from exc


@dataclass(frozen=True)
class BagTopics:
    """Topics a tool reads; ``depth`` and ``labels`` may be absent.

    ``colour_transport`` / ``depth_transport``: ``raw`` for ``sensor_msgs/Image``,
    ``compressed`` / ``compressedDepth`` for ``image_transport``'s ``CompressedImage``.
    """

    colour: str
    depth: Optional[str] = None
    labels: Optional[str] = None
    camera_info: Optional[str] = None
    colour_transport: str = "raw"
    depth_transport: Optional[str] = None


@dataclass
class FramePair:
    """One colour frame with its depth partner (if any) and ground truth (if any)."""

    stamp_ns: int
    colour: Any
    depth: Optional[Any] = None
    labels: Optional[FrameLabels] = None
    depth_dt_ns: Optional[int] = None


@contextmanager
def rosbag2_folder(path: "str | Path") -> Iterator[Path]:
    """A folder ``rosbags`` can open as a rosbag2, for ``path``.

    A rosbag2 folder with ``metadata.yaml`` (what ``ros2 bag record`` and
    ``cmcnn-bag-write`` write) is yielded as it is. A folder holding only
    ``.mcap`` files (other recorders, e.g. the ``mcap`` library or Foxglove,
    write no ``metadata.yaml``), or one ``.mcap`` file, gets a temporary
    folder with links to the files and a ``metadata.yaml`` made from the MCAP
    files' own index; it is removed on exit. Anything else is yielded
    unchanged, so the reader reports what is wrong with it.

    Raises:
        BagError: an ``.mcap`` file is unreadable.
    """
    import tempfile

    p = Path(path)
    if p.is_dir() and not (p / "metadata.yaml").exists():
        files = sorted(f for f in p.iterdir() if f.suffix == ".mcap" and f.is_file())
    elif p.is_file() and p.suffix == ".mcap":
        files = [p]
    else:
        files = []
    if not files:
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="cmcnn_mcap_") as tmp:
        folder = Path(tmp) / (p.stem if p.is_file() else p.name)
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
        (folder / "metadata.yaml").write_text(_mcap_metadata(folder, [f.name for f in files]))
        logger.info("%s has no metadata.yaml; reading its MCAP file(s) %s by their own index",
                    p, [f.name for f in files])
        yield folder


def _mcap_metadata(folder: Path, names: Sequence[str]) -> str:
    """rosbag2 ``metadata.yaml`` text describing the MCAP files ``names`` in ``folder``."""
    import yaml
    from rosbags.rosbag2 import ReaderError
    from rosbags.rosbag2.storage_mcap import McapReader

    topics: Dict[Tuple[str, str], Dict[str, Any]] = {}
    start, end, count = None, None, 0
    for name in names:
        reader = McapReader(folder / name)
        try:
            reader.open()
        except (ReaderError, OSError, ValueError, KeyError, TypeError) as exc:
            raise BagError(f"cannot read MCAP file {folder / name}: {exc}") from exc
        try:
            for conn in reader.connections:
                key = (conn.topic, conn.msgtype)
                entry = topics.setdefault(key, {"topic_metadata": {
                    "name": conn.topic, "type": conn.msgtype,
                    "serialization_format": getattr(conn.ext, "serialization_format", "cdr"),
                    "offered_qos_profiles": ""}, "message_count": 0})
                entry["message_count"] += int(conn.msgcount)
            meta = reader.metadata
            if meta.message_count:
                start = meta.start_time if start is None else min(start, meta.start_time)
                end = meta.end_time if end is None else max(end, meta.end_time)
                count += int(meta.message_count)
        finally:
            reader.close()
    info = {"version": 8, "storage_identifier": "mcap", "relative_file_paths": list(names),
            "duration": {"nanoseconds": max(0, (end or 0) - (start or 0) - 1)},
            "starting_time": {"nanoseconds_since_epoch": start or 0}, "message_count": count,
            "topics_with_message_count": list(topics.values()),
            "compression_format": "", "compression_mode": ""}
    return yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)


@contextmanager
def open_bag(path: "str | Path") -> Iterator[Any]:
    """Open a rosbag2 folder (MCAP/sqlite3) or ROS 1 ``.bag`` file for reading.

    A context manager yielding an opened ``rosbags.highlevel.AnyReader``
    (whose ``deserialize`` handles both CDR and ROS 1 serialisation). A folder
    holding only ``.mcap`` files without ``metadata.yaml`` opens too
    (:func:`rosbag2_folder`).

    Raises:
        BagError: the path does not exist or is not a readable bag.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    p = Path(path)
    if not p.exists():
        raise BagError(f"bag {p} does not exist (write one with cmcnn-bag-write, or record with ros2 bag record)")
    with rosbag2_folder(p) as folder:
        reader = AnyReader([folder], default_typestore=get_typestore(Stores.ROS2_KILTED))
        try:
            reader.open()
        except (AnyReaderError, OSError, ValueError) as exc:
            raise BagError(f"cannot read bag {p}: {exc}") from exc
        try:
            yield reader
        finally:
            reader.close()


def topic_types(reader: Any) -> Dict[str, str]:
    """``topic -> message type`` of an opened reader."""
    return {t: info.msgtype for t, info in reader.topics.items()}


def _pick(candidates: Sequence[str], hints: Sequence[str]) -> Optional[str]:
    # Sorted, so of a raw topic and its compressed transports the raw one comes first.
    for hint in hints:
        hits = sorted(t for t in candidates if hint in t.lower())
        if hits:
            return hits[0]
    return None


def _first_format(reader: Any, topic: str) -> str:
    """The ``format`` of a CompressedImage topic's first message ("" when it has none)."""
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _t, raw in reader.messages(connections=conns):
        return str(reader.deserialize(raw, conn.msgtype).format)
    return ""


def image_streams(reader: Any) -> Dict[str, str]:
    """``topic -> transport`` of every image topic: ``raw`` (Image), ``compressed`` or ``compressedDepth``.

    A CompressedImage topic is colour or depth by its image_transport name
    (``.../compressed``, ``.../compressedDepth``); under any other name, by its
    first message's ``format``.
    """
    out: Dict[str, str] = {}
    for topic, msgtype in topic_types(reader).items():
        if msgtype == IMAGE_TYPE:
            out[topic] = "raw"
        elif msgtype == COMPRESSED_IMAGE_TYPE:
            transport = split_transport_topic(topic)[1]
            if transport == "raw":
                transport = "compressedDepth" if "compresseddepth" in _first_format(reader, topic).lower() \
                    else "compressed"
            out[topic] = transport
    return out


def _named(types: Dict[str, str], name: str, what: str, transports: Sequence[str]) -> str:
    """The topic an explicit ``--colour-topic`` / ``--depth-topic`` means: itself, or its compressed transport.

    Raises:
        BagError: neither is in the bag, or the topic found is not an image type.
    """
    if name in types:
        if types[name] not in IMAGE_TYPES:
            raise BagError(f"{what} topic {name!r} has type {types[name]}, expected {IMAGE_TYPE} or "
                           f"{COMPRESSED_IMAGE_TYPE}")
        return name
    for transport in transports:
        topic = transport_topic(name, transport)
        if topic in types:
            if types[topic] != COMPRESSED_IMAGE_TYPE:
                raise BagError(
                    f"{what} topic {topic!r} ({transport} transport of {name!r}) has type {types[topic]}, not "
                    f"{COMPRESSED_IMAGE_TYPE}, so it cannot be decoded; name a raw or image_transport topic with "
                    f"--{what}-topic, or republish it with image_transport to raw or {transport} and record that")
            return topic
    images = sorted(t for t, ty in types.items() if ty in IMAGE_TYPES)
    others = " or ".join(transport_topic(name, t) for t in transports)
    raise BagError(f"{what} topic {name!r} is not in the bag (nor {others}); "
                   f"its image topics: {images}; all topics: {sorted(types)}")


def resolve_topics(reader: Any, colour: Optional[str] = None, depth: Optional[str] = None,
                   labels: Optional[str] = None, use_depth: bool = True) -> BagTopics:
    """Choose the colour, depth and labels topics of a bag.

    Explicit names win: a base topic (``/camera/color/image_raw``) is read raw
    when the bag has it, else through its ``compressed`` / ``compressedDepth``
    transport; a compressed topic may also be named directly. Otherwise this
    package's defaults (raw, then compressed), then topics whose names look
    like an RGB-D driver's. Depth is optional (recognition then uses grey + LBP
    only) and so are labels (the evaluator then reports predictions and latency only).

    Raises:
        BagError: an explicit topic is absent or not of an image type, or no
            colour image topic can be identified.
    """
    types = topic_types(reader)
    streams = image_streams(reader)
    depth_like = [t for t, tr in streams.items() if tr in ("raw", "compressedDepth")]
    colour_like = [t for t, tr in streams.items() if tr in ("raw", "compressed")]

    def default(base: str, transport: str) -> Optional[str]:
        for topic in (base, transport_topic(base, transport)):
            if topic in streams and streams[topic] in ("raw", transport):
                return topic
        return None

    if depth is not None:
        depth_t: Optional[str] = _named(types, depth, "depth", DEPTH_TRANSPORTS[1:])
    elif not use_depth:
        depth_t = None
    else:
        depth_t = default(DEPTH_TOPIC, "compressedDepth") or _pick([t for t in depth_like if t != colour],
                                                                   _DEPTH_HINTS)

    if colour is not None:
        colour_t = _named(types, colour, "colour", COLOUR_TRANSPORTS[1:])
    else:
        colour_t = default(COLOUR_TOPIC, "compressed")  # type: ignore[assignment]
        if colour_t is None:
            rest = [t for t in colour_like
                    if t != depth_t and "depth" not in t.lower() and "ir" not in t.lower().split("/")]
            colour_t = _pick(rest, _COLOUR_HINTS) or (rest[0] if len(rest) == 1 else None)  # type: ignore[assignment]
        if colour_t is None:
            raise BagError(
                f"cannot tell which image topic is the colour stream; image topics: {sorted(streams)}. "
                "Name it with --colour-topic")
    if depth_t == colour_t:
        depth_t = None

    if labels is not None:
        if labels not in types:
            raise BagError(f"labels topic {labels!r} is not in the bag; its topics: {sorted(types)}")
        if types[labels] != STRING_TYPE:
            raise BagError(f"labels topic {labels!r} has type {types[labels]}, expected {STRING_TYPE}")
        labels_t: Optional[str] = labels
    else:
        labels_t = LABELS_TOPIC if types.get(LABELS_TOPIC) == STRING_TYPE else None
    info = CAMERA_INFO_TOPIC if types.get(CAMERA_INFO_TOPIC) == CAMERA_INFO_TYPE else None
    return BagTopics(colour=colour_t, depth=depth_t, labels=labels_t, camera_info=info,
                     colour_transport=streams.get(colour_t, "raw"),
                     depth_transport=None if depth_t is None else streams.get(depth_t, "raw"))


def read_labels(reader: Any, topic: Optional[str]) -> Dict[int, FrameLabels]:
    """All ground-truth messages of a bag, keyed by the frame stamp (ns).

    Raises:
        BagError: a labels message is malformed.
    """
    if topic is None:
        return {}
    conns = [c for c in reader.connections if c.topic == topic]
    out: Dict[int, FrameLabels] = {}
    for conn, _t, raw in reader.messages(connections=conns):
        lab = FrameLabels.from_json(reader.deserialize(raw, conn.msgtype).data)
        out[lab.stamp_ns] = lab
    return out


def iter_frame_pairs(reader: Any, topics: BagTopics, slop_s: float = DEFAULT_SLOP_S,
                     labels: Optional[Dict[int, FrameLabels]] = None,
                     queue_size: int = DEFAULT_QUEUE_SIZE) -> Iterator[FramePair]:
    """Colour frames of a bag in order, each with its depth partner and labels.

    Pairing uses the node's own synchroniser
    (:class:`cmcnn_ros.ros.sync.ApproximateTimeSync`, message_filters'
    rule), so offline evaluation sees the same pairs the live node would.
    Without a depth topic every colour frame is yielded alone. Messages are
    deserialised lazily (raw bytes wait in the synchroniser), so a long
    recording is streamed rather than loaded.

    Args:
        reader: an opened reader from :func:`open_bag`.
        topics: from :func:`resolve_topics`.
        slop_s: largest colour/depth stamp difference accepted as a pair
            (default: the node's ``sync_slop`` default).
        labels: from :func:`read_labels`; looked up by the colour stamp.
        queue_size: messages the synchroniser keeps per input (the node's
            ``sync_queue_size`` default).
    """
    from cmcnn_ros.ros.sync import ApproximateTimeSync

    wanted = {topics.colour} | ({topics.depth} if topics.depth else set())
    conns = [c for c in reader.connections if c.topic in wanted]
    labels = labels or {}
    matched: List[Tuple[_Raw, Optional[_Raw]]] = []
    sync = ApproximateTimeSync(2, queue_size, slop_s, lambda c, d: matched.append((c, d)),
                               stamp_fn=lambda item: item.stamp)

    def emit(colour: _Raw, depth: Optional[_Raw]) -> FramePair:
        return FramePair(
            stamp_ns=colour.stamp, colour=reader.deserialize(colour.raw, colour.msgtype),
            depth=None if depth is None else reader.deserialize(depth.raw, depth.msgtype),
            labels=labels.get(colour.stamp), depth_dt_ns=None if depth is None else depth.stamp - colour.stamp)

    for conn, _t, raw in reader.messages(connections=conns):
        # Only the header is needed to pair; the image is decoded again when emitted.
        item = _Raw(stamp_ns(reader.deserialize(raw, conn.msgtype).header.stamp), conn.msgtype, raw)
        if topics.depth is None:
            yield emit(item, None)
            continue
        sync.add(0 if conn.topic == topics.colour else 1, item)
        while matched:
            yield emit(*matched.pop(0))


@dataclass(frozen=True)
class _Raw:
    stamp: int
    msgtype: str
    raw: bytes


def closest_stamp_gap_s(reader: Any, topics: BagTopics) -> Optional[float]:
    """Smallest ``|colour stamp - depth stamp|`` in seconds over the whole bag.

    What an evaluation that paired nothing reports, so the user knows which
    slop would pair the streams. None without a depth topic or messages.
    """
    import bisect

    if topics.depth is None:
        return None
    stamps: Dict[str, List[int]] = {topics.colour: [], topics.depth: []}
    conns = [c for c in reader.connections if c.topic in stamps]
    for conn, _t, raw in reader.messages(connections=conns):
        stamps[conn.topic].append(stamp_ns(reader.deserialize(raw, conn.msgtype).header.stamp))
    depth = sorted(stamps[topics.depth])
    best: Optional[int] = None
    for c in stamps[topics.colour]:
        i = bisect.bisect_left(depth, c)
        for j in (i - 1, i):
            if 0 <= j < len(depth) and (best is None or abs(depth[j] - c) < best):
                best = abs(depth[j] - c)
    return None if best is None else best / 1e9


def count_messages(reader: Any, topic: Optional[str]) -> int:
    """Number of messages recorded on ``topic`` (0 when absent or None)."""
    if topic is None:
        return 0
    return sum(c.msgcount for c in reader.connections if c.topic == topic)


def decode_pair(pair: FramePair, topics: Optional[BagTopics] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(colour BGR uint8, depth metres float32 or None)`` of a pair.

    Uses the package's message conversions (``cmcnn_ros.ros.conversions``,
    ROS-free) so bags and the live node decode images identically, raw or
    compressed.

    Args:
        topics: the bag's topics, named in the error messages.

    Raises:
        cmcnn_ros.ros.conversions.ImageConversionError: bad encoding, size or data.
    """
    from cmcnn_ros.ros.conversions import frame_pair

    names = (None, None) if topics is None else (topics.colour, topics.depth)
    return frame_pair(pair.colour, pair.depth, names)
