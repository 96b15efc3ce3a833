"""``cmcnn-emotion-tree``: run the example behaviour tree over ``fer_node`` (rclpy).

The tree itself (behaviours, blackboard, validation) is the ROS-free
:mod:`cmcnn_ros.examples.emotion_tree`; this node only plumbs it into ROS 2:

* subscribes to fer_node's ``cmcnn_ros/EmotionArray`` (``emotions_topic``,
  reliable like the node's publisher) and ``std_msgs/Empty`` wake-ups
  (``wake_topic``, standing in for a person detector or a voice event);
* ticks the tree at ``tick_rate``;
* publishes each decision as JSON in a ``std_msgs/String`` on
  ``decisions_topic`` and logs it;
* drives fer_node's lifecycle services ``<fer_node>/change_state`` and
  ``<fer_node>/get_state`` (``lifecycle_msgs``) asynchronously, so a node that
  is down or slow never blocks the tree;
* notices fer_node restarting (its publisher on ``emotions_topic`` is
  replaced) and tells the tree, whose face_ids start afresh with the node.

    cmcnn-emotion-tree --ros-args --params-file config/emotion_tree.yaml
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Optional, Set, Tuple

import rclpy
import rclpy.exceptions
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from std_msgs.msg import Empty, String

import py_trees

from cmcnn_ros.examples.emotion_tree import (BadEmotions, Inbox, Request, TreeSettings, TreeSettingsError,
                                             build_tree, observations_from_message)
from cmcnn_ros.ros.sync import ros_stamp_ns

NODE_NAME = "emotion_tree"

_CONF = {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=1.0)]}
_SECONDS = {"floating_point_range": [FloatingPointRange(from_value=0.01, to_value=3600.0)]}

# name -> (default, description, extra descriptor fields); all read at start-up.
# Declared once here; config/emotion_tree.yaml mirrors every entry with a comment.
PARAMETERS: Dict[str, Tuple[Any, str, Dict[str, Any]]] = {
    "emotions_topic": ("/fer_node/emotions", "cmcnn_ros/EmotionArray topic of fer_node.", {}),
    "decisions_topic": ("~/decisions", "Where each decision goes, as JSON in std_msgs/String.", {}),
    "wake_topic": ("~/wake_up", "std_msgs/Empty: reactivates a paused fer_node (a person detector or "
                                "voice event would publish it).", {}),
    "fer_node": ("/fer_node", "Fully qualified name of the lifecycle node to pause and resume; its "
                              "<name>/change_state and <name>/get_state services are called.", {}),
    "tick_rate": (10.0, "Tree ticks per second.",
                  {"floating_point_range": [FloatingPointRange(from_value=0.5, to_value=200.0)]}),
    "greet_expression": ("happy", "Expression (a class name of fer_node) that earns a greeting.", {}),
    "greet_min_confidence": (0.6, "Smallest confidence of greet_expression that counts.", _CONF),
    "greet_hold_s": (1.0, "Seconds greet_expression must hold without a break before the greeting.", _SECONDS),
    "comfort_expression": ("sad", "Expression that earns comforting.", {}),
    "comfort_min_confidence": (0.5, "Smallest confidence of comfort_expression that counts.", _CONF),
    "comfort_hold_s": (2.0, "Seconds comfort_expression must hold before comforting (once per episode).",
                       _SECONDS),
    "quiet_max_confidence": (0.5, "A face without usable depth (depth_valid false) and a confidence below "
                                  "this is not acted on: the tree decides to stay quiet.", _CONF),
    "say_duration_s": (1.5, "Seconds a greeting or comforting takes (the face must stay that long).",
                       _SECONDS),
    "face_timeout_s": (1.0, "Seconds a face may be missing from the results before it is forgotten.",
                       _SECONDS),
    "idle_timeout_s": (10.0, "Seconds without any face before fer_node is deactivated to save compute.",
                       _SECONDS),
    "service_timeout_s": (5.0, "Seconds to wait for a lifecycle service answer.", _SECONDS),
    "retry_period_s": (5.0, "Seconds before retrying a failed lifecycle call.", _SECONDS),
    "bad_message_log_period": (5.0, "Seconds between log lines for the same kind of bad EmotionArray.",
                               {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=3600.0)]}),
    "log_tree": (False, "Log the tree with each behaviour's status on every tick (debugging).",
                 {}),
}

RELIABLE = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)
DECISIONS_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=50,
                           reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)


class EmotionTreeNode(Node):
    """Plumbing between ROS 2 and the tree (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, text, extra) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True, **extra))
        p = {n: self.get_parameter(n).value for n in PARAMETERS}
        self.settings = TreeSettings(**{f: p[f] for f in TreeSettings.__dataclass_fields__}).validate()
        self._throttle_period = float(p["bad_message_log_period"])
        self._throttle: Dict[str, float] = {}
        self._log_tree = bool(p["log_tree"])
        target = "/" + (str(p["fer_node"]).strip("/") or "fer_node")
        self._target = target
        self._change = self.create_client(ChangeState, f"{target}/change_state")
        self._get = self.create_client(GetState, f"{target}/get_state")
        self._decisions = self.create_publisher(String, p["decisions_topic"], DECISIONS_QOS)
        self._emotions_topic = self.resolve_topic_name(p["emotions_topic"])
        self.inbox = Inbox()
        self._producers: Set[bytes] = set()
        self._seen_producer = self._producer_lost = False
        self._classes: Tuple[str, ...] = ()
        self.tree = build_tree(self.inbox, self, self.settings, self.get_logger())
        self.create_subscription(self._emotion_array_type(), p["emotions_topic"], self._on_emotions, RELIABLE)
        self.create_subscription(Empty, p["wake_topic"], self._on_wake, RELIABLE)
        self.create_timer(1.0 / float(p["tick_rate"]), self._tick)
        self.create_timer(0.5, self._watch_producer)
        self.get_logger().info(
            f"emotion tree: {self._emotions_topic} -> {self.resolve_topic_name(p['decisions_topic'])}; wake-up on "
            f"{self.resolve_topic_name(p['wake_topic'])}; pauses {target} after {self.settings.idle_timeout_s:g} s "
            f"without a face\n{py_trees.display.unicode_tree(self.tree.root)}")

    @staticmethod
    def _emotion_array_type() -> Any:
        from cmcnn_ros.msg import EmotionArray  # generated; needs the built messages on the path

        return EmotionArray

    # ---------------------------------------------------------------- TreeIO
    def now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def publish(self, decision: Dict[str, Any]) -> None:
        decision = {**decision, "time": round(self.now(), 3)}
        text = json.dumps(decision, sort_keys=True)
        self.get_logger().info(f"decision: {text}")
        self._decisions.publish(String(data=text))

    def change_state(self, transition: str) -> Request:
        ids = {"activate": Transition.TRANSITION_ACTIVATE, "deactivate": Transition.TRANSITION_DEACTIVATE}
        req = ChangeState.Request()
        req.transition.id = ids[transition]
        return self._call(self._change, req, lambda r: bool(r.success))

    def get_state(self) -> Request:
        return self._call(self._get, GetState.Request(), lambda r: str(r.current_state.label))

    def _call(self, client: Any, request: Any, convert: Any) -> Request:
        if not client.service_is_ready():
            return Request.failed(f"service {client.service_name} is not available (is fer_node running?)")
        out = Request()

        def done(future: Any) -> None:
            try:
                out.finish(value=convert(future.result()))
            except Exception as exc:
                out.finish(error=f"service {client.service_name} failed: {exc}")

        client.call_async(request).add_done_callback(done)
        return out

    # ---------------------------------------------------------------- inputs
    def _warn_throttled(self, text: str, kind: str) -> None:
        now = self.now()
        if now - self._throttle.get(kind, -math.inf) >= self._throttle_period:
            self._throttle[kind] = now
            self.get_logger().warning(text)

    def _on_emotions(self, msg: Any) -> None:
        try:
            faces = observations_from_message(msg)
        except BadEmotions as exc:
            stamp = ros_stamp_ns(msg) / 1e9
            # One log line per kind of problem and period (numbers and names ignored).
            self._warn_throttled(f"skipping EmotionArray (stamp {stamp:.3f}) on {self._emotions_topic}: {exc}",
                                 re.sub(r"'[^']*'|[\d.]+", "#", str(exc))[:80])
            return
        classes = tuple(msg.classes)
        if classes != self._classes:
            self._classes = classes
            for name in ("greet_expression", "comfort_expression"):
                if classes and getattr(self.settings, name) not in classes:
                    self.get_logger().warning(f"{name} {getattr(self.settings, name)!r} is not one of fer_node's "
                                              f"classes {list(classes)}: that behaviour can never run")
        self.inbox.put_faces(self.now(), faces)

    def _on_wake(self, _msg: Any) -> None:
        self.get_logger().info("wake-up message received")
        self.inbox.put_wake_up(self.now())

    def _watch_producer(self) -> None:
        """Tell the tree when fer_node's publisher goes away and when a new one replaces it."""
        # Only fer_node's own publisher counts (others may publish on the topic too).
        gids = {bytes(i.endpoint_gid) for i in self.get_publishers_info_by_topic(self._emotions_topic)
                if f"{i.node_namespace.rstrip('/')}/{i.node_name}" == self._target}
        if gids == self._producers:
            return
        previous, self._producers = self._producers, gids
        if not gids:
            self._producer_lost = True
            self.get_logger().warning(f"{self._target} no longer publishes on {self._emotions_topic}: it stopped "
                                      "or is restarting; the tree keeps running and waits for it")
        elif not self._seen_producer:
            self._seen_producer = True
            self.get_logger().info(f"{self._target} found: it publishes on {self._emotions_topic}")
        elif self._producer_lost or not gids & previous:
            self._producer_lost = False
            self.get_logger().warning(f"{self._target} publishes on {self._emotions_topic} again: it restarted")
            self.inbox.put_producer_restarted(self.now())

    def _tick(self) -> None:
        self.tree.tick()
        if self._log_tree:
            self.get_logger().info("\n" + py_trees.display.unicode_tree(self.tree.root, show_status=True))


def main(args: Optional[List[str]] = None) -> None:
    """Entry point ``cmcnn-emotion-tree``: spin the tree node until shutdown."""
    rclpy.init(args=args)
    node: Optional[EmotionTreeNode] = None
    # Everything after init is inside the try: Ctrl-C may come at any moment of start-up.
    try:
        node = EmotionTreeNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (TreeSettingsError, rclpy.exceptions.ParameterException) as exc:
        rclpy.logging.get_logger(NODE_NAME).error(
            f"cannot start: {exc}; fix that parameter (defaults and meanings: config/emotion_tree.yaml)")
        raise SystemExit(2) from None
    except ImportError as exc:
        rclpy.logging.get_logger(NODE_NAME).error(
            f"cannot start: {exc}; the cmcnn_ros messages are not on the path: run `make setup` and "
            "`source .ros_prefix/env.sh` (on a ROS 2 install: colcon build, source install/setup.bash)")
        raise SystemExit(2) from None
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
