"""``fer_node``'s input side: colour + registered depth subscriptions and their pairing.

On a full ROS 2 install ``message_filters`` pairs the two topics
(``ApproximateTimeSynchronizer`` / ``TimeSynchronizer``); the PyPI ROS 2
wheels lack it, so :mod:`cmcnn_ros.ros.sync` reproduces the same rule. An
empty depth topic subscribes to colour alone (the depth channel is then
zeroed by the recognizer). Every message is also shown to ``observe`` (the
sync monitor that explains streams that never pair).

Either input may come through ``image_transport``'s compressed transports: the
node then subscribes to ``sensor_msgs/CompressedImage`` on ``<base>/compressed``
or ``<base>/compressedDepth`` (:func:`input_topic`) and pairs those messages
exactly as raw ones. :func:`transport_problems` reads the ROS graph to say why
such a topic stays silent (another message type on it, or only the other
transport published).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from cmcnn_ros.ros.compressed import (COLOUR_TRANSPORTS, COMPRESSED_IMAGE_TYPE, DEPTH_TRANSPORTS, split_transport_topic,
                                      transport_topic)
from cmcnn_ros.ros.sync import ApproximateTimeSync, ExactTimeSync, ros_stamp_ns

IMAGE_TYPE = "sensor_msgs/msg/Image"

try:  # a full ROS 2 install has message_filters; the PyPI wheels do not
    import message_filters  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    message_filters = None

Observe = Callable[[int, Any], None]
OnPair = Callable[[Any, Optional[Any]], None]


@dataclass(frozen=True)
class InputTopic:
    """One image input as subscribed: the topic, its message class and type name, the transport."""

    kind: str          # "colour" or "depth"
    topic: str         # the subscribed topic (base + "/compressed" etc.), unresolved
    transport: str     # "raw", "compressed" or "compressedDepth"
    msg_class: Any
    type_name: str


def input_topic(kind: str, base: str, transport: str) -> InputTopic:
    """What to subscribe to for ``base`` over ``transport`` (image_transport's topic naming)."""
    if transport == "raw":
        return InputTopic(kind, base, transport, Image, IMAGE_TYPE)
    return InputTopic(kind, transport_topic(base, transport), transport, CompressedImage, COMPRESSED_IMAGE_TYPE)


def transport_problems(node: Any, inputs: List[InputTopic]) -> List[str]:
    """Why a silent input gets nothing, read from the ROS graph (one sentence per input, none when unknown).

    A topic published with another message type never reaches the subscription
    (DDS matches on the type); a stream published only over the other transport
    (raw where compressed is read, or the reverse) needs the transport parameter changed.
    """
    out: List[str] = []
    for item in inputs:
        resolved = node.resolve_topic_name(item.topic)
        types = sorted({i.topic_type for i in node.get_publishers_info_by_topic(resolved)})
        param = f"{item.kind}_transport"
        if types and item.type_name not in types:
            out.append(f"'{resolved}' is published as {', '.join(types)}, not {item.type_name}, so the "
                       f"{item.kind} input receives nothing; set {param} to match the topic or run "
                       "image_transport republish to the expected transport")
            continue
        if types:
            continue
        base = split_transport_topic(resolved)[0] if item.transport != "raw" else resolved
        choices = COLOUR_TRANSPORTS if item.kind == "colour" else DEPTH_TRANSPORTS
        others = [(t, transport_topic(base, t)) for t in choices]
        for transport, topic in others:
            if transport == item.transport:
                continue
            if node.get_publishers_info_by_topic(topic):
                out.append(f"nothing is published on '{resolved}' but '{topic}' is ({transport}): set "
                           f"{param}: {transport} (or run image_transport republish to {item.transport})")
                break
    return out


@dataclass
class RgbdSubscription:
    """What :func:`subscribe_rgbd` created: the subscriptions, the synchroniser and its name."""

    subscriptions: List[Any] = field(default_factory=list)
    synchroniser: Any = None
    backend: str = ""


def subscribe_rgbd(node: Any, colour: InputTopic, depth: Optional[InputTopic], slop: Optional[float],
                   queue_size: int, on_pair: OnPair, observe: Observe) -> RgbdSubscription:
    """Subscribe to colour (and depth, when given) with sensor-data QoS.

    Args:
        node: the subscribing node.
        colour, depth: the inputs (:func:`input_topic`; relative names resolve in the node's namespace).
        slop: approximate-time tolerance in seconds; None pairs identical stamps only.
        queue_size: messages per topic kept while waiting for a partner.
        on_pair: called with ``(colour, depth)`` per pair (``depth`` None without a depth topic).
        observe: called with ``(index, msg)`` for every message (0 colour, 1 depth).
    """
    if depth is None:
        def colour_only(msg: Any) -> None:
            observe(0, msg)
            on_pair(msg, None)

        return RgbdSubscription([node.create_subscription(colour.msg_class, colour.topic, colour_only,
                                                          qos_profile_sensor_data)], None, "none (colour only)")
    inputs = (colour, depth)
    if message_filters is not None:
        subs = [message_filters.Subscriber(node, i.msg_class, i.topic, qos_profile=qos_profile_sensor_data)
                for i in inputs]
        for i, sub in enumerate(subs):
            sub.registerCallback(lambda msg, i=i: observe(i, msg))
        if slop is None:
            sync = message_filters.TimeSynchronizer(subs, queue_size)
        else:
            sync = message_filters.ApproximateTimeSynchronizer(subs, queue_size, slop)
        sync.registerCallback(on_pair)
        return RgbdSubscription([s.sub for s in subs], sync, "message_filters")
    if slop is None:
        sync = ExactTimeSync(2, queue_size, on_pair, ros_stamp_ns)
    else:
        sync = ApproximateTimeSync(2, queue_size, slop, on_pair, ros_stamp_ns)

    def on_input(index: int, msg: Any) -> None:
        observe(index, msg)
        sync.add(index, msg)

    subs = [node.create_subscription(item.msg_class, item.topic, lambda msg, i=i: on_input(i, msg),
                                     qos_profile_sensor_data)
            for i, item in enumerate(inputs)]
    return RgbdSubscription(subs, sync, "cmcnn_ros.ros.sync")
