"""``fer_node``'s input side: colour + registered depth subscriptions and their pairing.

On a full ROS 2 install ``message_filters`` pairs the two topics
(``ApproximateTimeSynchronizer`` / ``TimeSynchronizer``); the PyPI ROS 2
wheels lack it, so :mod:`cmcnn_ros.ros.sync` reproduces the same rule. An
empty depth topic subscribes to colour alone (the depth channel is then
zeroed by the recognizer). Every message is also shown to ``observe`` (the
sync monitor that explains streams that never pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from cmcnn_ros.ros.sync import ApproximateTimeSync, ExactTimeSync, ros_stamp_ns

try:  # a full ROS 2 install has message_filters; the PyPI wheels do not
    import message_filters  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    message_filters = None

Observe = Callable[[int, Image], None]
OnPair = Callable[[Image, Optional[Image]], None]


@dataclass
class RgbdSubscription:
    """What :func:`subscribe_rgbd` created: the subscriptions, the synchroniser and its name."""

    subscriptions: List[Any] = field(default_factory=list)
    synchroniser: Any = None
    backend: str = ""


def subscribe_rgbd(node: Any, colour_topic: str, depth_topic: str, slop: Optional[float], queue_size: int,
                   on_pair: OnPair, observe: Observe) -> RgbdSubscription:
    """Subscribe to colour (and depth, when ``depth_topic`` is not empty) with sensor-data QoS.

    Args:
        node: the subscribing node.
        colour_topic, depth_topic: topic names (relative names resolve in the node's namespace).
        slop: approximate-time tolerance in seconds; None pairs identical stamps only.
        queue_size: messages per topic kept while waiting for a partner.
        on_pair: called with ``(colour, depth)`` per pair (``depth`` None without a depth topic).
        observe: called with ``(index, msg)`` for every message (0 colour, 1 depth).
    """
    if not depth_topic:
        def colour_only(msg: Image) -> None:
            observe(0, msg)
            on_pair(msg, None)

        return RgbdSubscription([node.create_subscription(Image, colour_topic, colour_only, qos_profile_sensor_data)],
                                None, "none (colour only)")
    topics = (colour_topic, depth_topic)
    if message_filters is not None:
        subs = [message_filters.Subscriber(node, Image, t, qos_profile=qos_profile_sensor_data) for t in topics]
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

    def on_input(index: int, msg: Image) -> None:
        observe(index, msg)
        sync.add(index, msg)

    subs = [node.create_subscription(Image, t, lambda msg, i=i: on_input(i, msg), qos_profile_sensor_data)
            for i, t in enumerate(topics)]
    return RgbdSubscription(subs, sync, "cmcnn_ros.ros.sync")
