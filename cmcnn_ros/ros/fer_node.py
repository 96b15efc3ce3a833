"""``fer_node``: ROS 2 managed node publishing CM-CNN facial expressions.

Runs the CM-CNN recogniser of Ni et al., "Facial Expression Recognition
Through Cross-Modality Attention Fusion", IEEE TCDS 2023 (preprocessing of
Section III-B, network of Sections III-C to III-E, via
:class:`cmcnn_ros.inference.recognizer.Recognizer`) on synchronised colour +
registered depth images and publishes ``cmcnn_ros/EmotionArray`` on
``~/emotions`` (RELIABLE), one message per processed frame, with the colour
image's header.

Lifecycle (``rclpy.lifecycle``): configure loads the checkpoint and creates
the publishers; activate subscribes and starts the worker; deactivate stops
both; cleanup releases the model. With ``autostart`` (default true) the node
configures and activates itself; the launch file sets it false and drives the
transitions itself.

Never a backlog: the sync callback only puts the newest pair into a one-slot
mailbox (:class:`cmcnn_ros.ros.sync.LatestSlot`); a worker thread processes
the newest pair when it is free, so overwritten pairs are dropped and counted.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from cmcnn_ros import resources
from cmcnn_ros.classes import valence_arousal
from cmcnn_ros.inference.tracking import DEFAULT_REDETECT_INTERVAL, FaceTracker, TrackingError
from cmcnn_ros.ros import conversions
from cmcnn_ros.ros.diagnostics import PipelineStats
from cmcnn_ros.ros.params_file import (ParamsFileError, closest_name, load_params_file, params_files_in,
                                       sections_for_node)
from cmcnn_ros.ros.sync import (DEFAULT_QUEUE_SIZE, DEFAULT_SLOP_S, ApproximateTimeSync, ExactTimeSync,
                                LatestSlot, SyncMonitor, ros_stamp_ns)

try:  # a full ROS 2 install has message_filters; the PyPI wheels do not
    import message_filters  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    message_filters = None

try:  # ROS4HRI output only where hri_msgs is installed
    from hri_msgs.msg import Expression as HriExpression  # type: ignore[import-not-found]
    from hri_msgs.msg import IdsList as HriIdsList  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    HriExpression = HriIdsList = None

LOG = logging.getLogger(__name__)

NODE_NAME = "fer_node"
DEFAULT_MODEL = resources.DEFAULT_MODEL

# name -> (default, description, extra descriptor fields). Declared once here;
# config/fer.yaml mirrors every entry with a comment.
PARAMETERS: Dict[str, Tuple[Any, str, Dict[str, Any]]] = {
    "model_path": ("", "CM-CNN checkpoint (.pt). Empty: models/cmcnn_default.pt from the "
                       "installed share directory, else from the source checkout. Read on configure.", {}),
    "device": ("auto", "Torch device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N. "
                       "Read on configure.", {}),
    "num_threads": (0, "Torch CPU threads; 0 keeps the library default. Read on configure.",
                    {"integer_range": [IntegerRange(from_value=0, to_value=256, step=1)]}),
    "redetect_interval": (DEFAULT_REDETECT_INTERVAL, "Frames between full-frame face detections; in between, each tracked face "
                             "is searched for only around its last box (much cheaper). New faces appear "
                             "within this many processed frames. 1 = full detection on every frame. "
                             "Read on configure.",
                          {"integer_range": [IntegerRange(from_value=1, to_value=100, step=1)]}),
    "colour_topic": ("/camera/color/image_raw",
                     "Colour image topic (rgb8, bgr8, rgba8, bgra8, mono8). Azure Kinect: "
                     "/rgb/image_raw; Kinect v2 (iai_kinect2): /kinect2/qhd/image_color_rect. "
                     "Read on activate.", {}),
    "depth_topic": ("/camera/depth_registered/image_raw",
                    "Depth registered to the colour image (16UC1/mono16 mm, 32FC1 m). Azure "
                    "Kinect: /depth_to_rgb/image_raw; Kinect v2: /kinect2/qhd/image_depth_rect. "
                    "Empty: colour only (depth channel zeroed). Read on activate.", {}),
    "sync_policy": ("approximate", "approximate (ApproximateTimeSynchronizer) or exact "
                                   "(TimeSynchronizer: identical stamps). Read on activate.", {}),
    "sync_slop": (DEFAULT_SLOP_S, "Largest colour/depth stamp difference (s) paired by the approximate policy.",
                  {"floating_point_range": [FloatingPointRange(from_value=0.001, to_value=5.0)]}),
    "sync_queue_size": (DEFAULT_QUEUE_SIZE, "Messages per topic the synchroniser keeps while waiting for a partner.",
                        {"integer_range": [IntegerRange(from_value=1, to_value=1000, step=1)]}),
    "tracking_iou_threshold": (0.3, "Smallest box IoU that keeps a face_id from one frame to the next.",
                               {"floating_point_range": [FloatingPointRange(from_value=0.01, to_value=1.0)]}),
    "tracking_max_missed": (5, "Processed frames a face may be missing before its face_id is retired.",
                            {"integer_range": [IntegerRange(from_value=0, to_value=1000, step=1)]}),
    "score_smoothing": (0.0, "Per-face EMA weight of the previous scores in [0, 1); 0 = no smoothing.",
                        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=0.99)]}),
    "publish_debug_image": (False, "Publish an annotated bgr8 image on ~/debug_image (drawn only "
                                   "while someone subscribes). Read on configure.", {}),
    "publish_hri": (True, "Also publish hri_msgs/Expression on /humans/faces/<face_id>/expression "
                          "when hri_msgs is installed.", {}),
    "diagnostics_period": (1.0, "Seconds between diagnostic_msgs/DiagnosticArray on /diagnostics.",
                           {"floating_point_range": [FloatingPointRange(from_value=0.1, to_value=60.0)]}),
    "sync_warning_delay": (3.0, "Seconds without a synchronised pair before warning why.",
                           {"floating_point_range": [FloatingPointRange(from_value=0.1, to_value=600.0)]}),
    "sync_warning_period": (10.0, "Seconds between repeated sync warnings.",
                            {"floating_point_range": [FloatingPointRange(from_value=0.1, to_value=3600.0)]}),
    "bad_message_log_period": (5.0, "Seconds between log lines for the same kind of bad message.",
                               {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=3600.0)]}),
    "autostart": (True, "Configure and activate at start-up. The launch file sets false and drives "
                        "the lifecycle transitions itself.", {"read_only": True}),
}

RESULT_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                        reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.VOLATILE)
# ROS4HRI (REP-155) topics: a consumer learns a face id from /humans/faces/tracked
# and only then subscribes to /humans/faces/<id>/expression. Transient local
# depth 1 keeps the newest message for that late subscriber (volatile
# subscribers are served as well), so a face's first expression is not lost.
HRI_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                     reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
HRI_TRACKED_TOPIC = "/humans/faces/tracked"
# String parameters with a closed set of values (checked at start-up and on every set).
CHOICES: Dict[str, Tuple[str, str]] = {
    "sync_policy": (r"approximate|exact", "'approximate' or 'exact'"),
    "device": (r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda or cuda:N"),
}
# Overrides rclpy itself declares on every node.
_RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


class FerConfigError(ValueError):
    """A parameter or the checkpoint is unusable; the message says what to fix."""


_KIND = {bool: "a boolean (true/false)", int: "an integer", float: "a floating-point number", str: "a string"}


def _range_text(extra: Dict[str, Any]) -> str:
    for key in ("integer_range", "floating_point_range"):
        if extra.get(key):
            r = extra[key][0]
            return f" in [{r.from_value}, {r.to_value}]"
    return ""


def parameter_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for the declared parameter ``name``, as one line, or None.

    The checks rclpy makes when declaring or setting (type, the descriptor's
    range) plus the closed choices of :data:`CHOICES`, worded for the person
    who wrote the value: the parameter, what it takes and what to write.
    """
    default, _text, extra = PARAMETERS[name]
    want = type(default)
    if type(value) is not want:
        if want is float and type(value) is int:
            fix = f"write it with a decimal point, e.g. {name}: {float(value)}"
        elif want is int and type(value) is float and float(value).is_integer():
            fix = f"write it without a decimal point, e.g. {name}: {int(value)}"
        else:
            fix = f"e.g. {name}: {str(default).lower() if want is bool else repr(default) if want is str else default}"
        return (f"parameter {name}: {value!r} is {_KIND.get(type(value), type(value).__name__)}, but {name} "
                f"takes {_KIND[want]}{_range_text(extra)}; {fix} (default {default!r})")
    for key in ("integer_range", "floating_point_range"):
        if extra.get(key):
            r = extra[key][0]
            if not r.from_value - 1e-12 <= value <= r.to_value + 1e-12:
                return (f"parameter {name}: {value!r} is outside [{r.from_value}, {r.to_value}]; set a value in "
                        f"that range (default {default!r})")
    if name in CHOICES and not re.fullmatch(CHOICES[name][0], str(value)):
        return f"parameter {name}: {value!r} is not one of {CHOICES[name][1]} (default {default!r})"
    return None


def resolve_model_path(value: str) -> Path:
    """Find the checkpoint named by the ``model_path`` parameter (empty: the default weights).

    Raises:
        FerConfigError: no such file.
    """
    try:
        return resources.find_checkpoint(value)
    except FileNotFoundError as exc:
        raise FerConfigError(f"model_path {value!r}: {exc}; set the parameter model_path") from None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class FerNode(LifecycleNode):
    """Managed node: RGB-D images in, ``EmotionArray`` out (see module docstring)."""

    def __init__(self, params_files: Sequence[str] = (), **kwargs: Any) -> None:
        """Args:
            params_files: the ``--params-file`` files of the command line, to warn
                about those with no section for this node.

        Raises:
            FerConfigError: a parameter override has the wrong type, is out of
                range or not one of the allowed values (one line per parameter).
        """
        super().__init__(NODE_NAME, **kwargs)
        overrides = {n: p.value for n, p in getattr(self, "_parameter_overrides", {}).items()}
        problems = [text for n, v in overrides.items() if n in PARAMETERS
                    for text in [parameter_problem(n, v)] if text]
        if problems:
            raise FerConfigError("; ".join(problems) + "; fix it in the params file or the -p override")
        for name, (default, text, extra) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, **extra))
        self._warn_unknown_overrides(overrides, params_files)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._stats = PipelineStats()
        self._slot: LatestSlot[Tuple[Image, Optional[Image]]] = LatestSlot()
        self._recognizer: Any = None
        self._class_names: List[str] = []
        self._model_path = ""
        self._device = ""
        self._tracker: Optional[FaceTracker] = None
        self._emotions_pub: Any = None
        self._debug_pub: Any = None
        self._hri_pubs: Dict[str, Any] = {}
        self._subs: List[Any] = []
        self._sync: Any = None
        self._monitor: Optional[SyncMonitor] = None
        self._worker: Optional[threading.Thread] = None
        self._running = threading.Event()
        self._warn_timer: Any = None
        self._last_sync_warning = -math.inf
        self._throttle: Dict[str, Tuple[float, int]] = {}  # kind -> (last period start, new details logged)
        self._throttle_details: Dict[str, "OrderedDict[str, float]"] = {}
        self._hri_tracked_pub: Any = None
        self._state_label = "unconfigured"
        self._sync_backend = ""
        self._emotion_types: Any = None
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._p("diagnostics_period"), self._publish_diagnostics)

    # ---------------------------------------------------------------- helpers
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _warn_unknown_overrides(self, overrides: Dict[str, Any], params_files: Sequence[str]) -> None:
        """Warn about overrides the node does not declare and params files that do not reach it."""
        fqn = self.get_fully_qualified_name()
        for name in sorted(overrides):
            if name in PARAMETERS or name in _RCLPY_PARAMETERS or name.startswith("qos_overrides."):
                continue
            near = closest_name(name, PARAMETERS)
            self.get_logger().warning(
                f"parameter override {name!r} is not a parameter of {fqn} and is ignored"
                + (f"; did you mean {near!r}?" if near else f"; its parameters: {', '.join(PARAMETERS)}"))
        for path in params_files:
            try:
                data = load_params_file(path)
            except ParamsFileError:
                continue  # main() has already refused such a file
            if data and not sections_for_node(data, fqn):
                self.get_logger().warning(
                    f"params file {path} has no section for this node {fqn} (its node keys: "
                    f"{', '.join(map(str, data))}), so none of its values apply; key the section "
                    f"'/**/{NODE_NAME}:' to match the node under any namespace")

    def _on_set_parameters(self, params: List[Any]) -> SetParametersResult:
        """Refuse run-time values start-up would refuse (ranges are in the descriptors; choices here)."""
        for param in params:
            if param.name in CHOICES:
                problem = parameter_problem(param.name, param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _log_throttled(self, level: str, text: str, period: Optional[float] = None,
                       detail: Optional[str] = None) -> None:
        """Log ``text`` at most once per period per kind, but always when its detail is new.

        The kind is ``detail`` (default ``text``) with numbers masked; the
        detail is what differs between two messages of a kind worth reading
        (e.g. 3840x2160 vs 640x480 after an earlier 320x240). The last 32
        details of each kind count as seen; at most 5 new details a period
        pass the throttle, so a storm of ever-changing sizes cannot flood the log.
        """
        detail = text if detail is None else detail
        key = re.sub(r"\d+(\.\d+)?", "#", detail)[:160]
        period = self._p("bad_message_log_period") if period is None else period
        now = time.monotonic()
        seen = self._throttle_details.setdefault(key, OrderedDict())
        new_detail = detail not in seen
        seen[detail] = now
        seen.move_to_end(detail)
        while len(seen) > 32:
            seen.popitem(last=False)
        last, extra = self._throttle.get(key, (-math.inf, 0))
        if now - last >= period:
            self._throttle[key] = (now, 0)
        elif new_detail and extra < 5:
            self._throttle[key] = (last, extra + 1)
        else:
            return
        getattr(self.get_logger(), level)(text)

    def _read_config(self) -> Dict[str, Any]:
        """Validate parameters read at configure.

        Raises:
            FerConfigError: a value is out of range or unknown.
        """
        cfg = {n: self._p(n) for n in PARAMETERS}
        for name in CHOICES:
            problem = parameter_problem(name, cfg[name])
            if problem:
                raise FerConfigError(problem)
        if not str(cfg["colour_topic"]).strip():
            raise FerConfigError("colour_topic is empty: set it to the camera's colour image topic")
        return cfg

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            cfg = self._read_config()
            path = resolve_model_path(str(cfg["model_path"]))
            from cmcnn_ros.inference.recognizer import Recognizer  # torch: import only when needed
            from cmcnn_ros.preprocessing.params import PreprocessingError
            try:
                rec = Recognizer.from_checkpoint(str(path), device=cfg["device"],
                                                 num_threads=cfg["num_threads"] or None,
                                                 redetect_interval=cfg["redetect_interval"])
            except PreprocessingError as exc:  # e.g. a missing or corrupt face-detector model file
                raise FerConfigError(f"cannot start the face detector for {str(path)!r}: {exc}") from exc
            except ValueError as exc:  # CheckpointError and friends
                raise FerConfigError(f"cannot load model_path {str(path)!r}: {exc}") from exc
            except RuntimeError as exc:  # e.g. CUDA requested but absent
                raise FerConfigError(f"cannot use device {cfg['device']!r} for {str(path)!r}: {exc}; "
                                     "set device to cpu or auto") from exc
            self._tracker = FaceTracker(cfg["tracking_iou_threshold"], cfg["tracking_max_missed"],
                                        cfg["score_smoothing"])
        except (FerConfigError, TrackingError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        from cmcnn_ros.msg import Emotion, EmotionArray
        self._emotion_types = (Emotion, EmotionArray)
        self._recognizer = rec
        self._class_names = [str(c) for c in rec.class_names]
        self._model_path = str(path)
        self._device = str(getattr(rec, "device", cfg["device"]))
        self._emotions_pub = self.create_lifecycle_publisher(EmotionArray, "~/emotions", RESULT_QOS)
        if cfg["publish_debug_image"]:
            self._debug_pub = self.create_lifecycle_publisher(Image, "~/debug_image", qos_profile_sensor_data)
        self._state_label = "inactive"
        self.get_logger().info(f"configured: model {self._model_path} on {self._device}, "
                               f"classes {self._class_names}, image decoding {conversions.backend_name()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            cfg = self._read_config()
        except FerConfigError as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._stats.reset()
        self._slot = LatestSlot()
        self._last_sync_warning = -math.inf
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="fer_worker", daemon=True)
        self._worker.start()
        self._subscribe(cfg)
        self._warn_timer = self.create_timer(0.5, self._check_sync)
        self._state_label = "active"
        self.get_logger().info(
            f"active: colour {self.resolve_topic_name(cfg['colour_topic'])}, depth "
            f"{self.resolve_topic_name(cfg['depth_topic']) if cfg['depth_topic'] else '(none)'}, "
            f"sync {cfg['sync_policy']} via {self._sync_backend}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self._state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._retire_hri(list(self._hri_pubs))
        if self._hri_tracked_pub is not None:
            self.destroy_publisher(self._hri_tracked_pub)
            self._hri_tracked_pub = None
        for attr in ("_emotions_pub", "_debug_pub"):
            pub = getattr(self, attr)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, attr, None)
        self._recognizer = None
        self._tracker = None

    # ---------------------------------------------------------------- input
    def _subscribe(self, cfg: Dict[str, Any]) -> None:
        colour_topic, depth_topic = str(cfg["colour_topic"]), str(cfg["depth_topic"]).strip()
        slop = float(cfg["sync_slop"]) if cfg["sync_policy"] == "approximate" else None
        inputs = [("colour", self.resolve_topic_name(colour_topic))]
        if depth_topic:
            inputs.append(("depth", self.resolve_topic_name(depth_topic)))
        self._monitor = SyncMonitor(inputs, slop=slop, delay=float(cfg["sync_warning_delay"]))
        if not depth_topic:
            self._sync_backend = "none (colour only)"
            self._subs = [self.create_subscription(Image, colour_topic, self._on_colour_only,
                                                   qos_profile_sensor_data)]
            return
        queue = int(cfg["sync_queue_size"])
        if message_filters is not None:
            subs = [message_filters.Subscriber(self, Image, t, qos_profile=qos_profile_sensor_data)
                    for t in (colour_topic, depth_topic)]
            for i, sub in enumerate(subs):
                sub.registerCallback(lambda msg, i=i: self._observe(i, msg))
            if slop is None:
                self._sync = message_filters.TimeSynchronizer(subs, queue)
            else:
                self._sync = message_filters.ApproximateTimeSynchronizer(subs, queue, slop)
            self._sync.registerCallback(self._on_pair)
            self._subs = [s.sub for s in subs]
            self._sync_backend = "message_filters"
            return
        if slop is None:
            self._sync = ExactTimeSync(2, queue, self._on_pair, ros_stamp_ns)
        else:
            self._sync = ApproximateTimeSync(2, queue, slop, self._on_pair, ros_stamp_ns)
        self._subs = [self.create_subscription(Image, t, lambda msg, i=i: self._on_input(i, msg),
                                               qos_profile_sensor_data)
                      for i, t in enumerate((colour_topic, depth_topic))]
        self._sync_backend = "cmcnn_ros.ros.sync"

    def _observe(self, index: int, msg: Image) -> None:
        stamp = _stamp_ns(msg.header)
        if self._monitor is not None:
            self._monitor.observe(index, stamp, msg.header.frame_id)
        if stamp == 0:
            name = ("colour", "depth")[index]
            self._log_throttled("warning", f"{name} image has a zero header.stamp (frame_id "
                                f"{msg.header.frame_id!r}): the driver does not stamp its images; "
                                "results carry the zero stamp and no latency can be measured")

    def _on_input(self, index: int, msg: Image) -> None:
        self._observe(index, msg)
        self._sync.add(index, msg)

    def _on_colour_only(self, msg: Image) -> None:
        self._observe(0, msg)
        self._on_pair(msg, None)

    def _on_pair(self, colour: Image, depth: Optional[Image]) -> None:
        if self._monitor is not None:
            self._monitor.paired()
        dropped = self._slot.put((colour, depth))
        self._stats.on_pair(dropped)

    def _check_sync(self) -> None:
        if self._monitor is None:
            return
        text = self._monitor.diagnose()
        now = time.monotonic()
        if text and now - self._last_sync_warning >= float(self._p("sync_warning_period")):
            self._last_sync_warning = now
            self.get_logger().warning(text)

    def _stop_processing(self) -> None:
        if self._warn_timer is not None:
            self.destroy_timer(self._warn_timer)
            self._warn_timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs, self._sync, self._monitor = [], None, None
        self._running.clear()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        self._slot.clear()
        if self._tracker is not None:
            self._tracker.reset()
        if self._hri_pubs or self._hri_tracked_pub is not None:
            # Paused: no face is tracked any more; say so and drop the per-face topics.
            self._retire_hri(list(self._hri_pubs))
            if self._hri_tracked_pub is not None and self.context.ok():  # not after rclpy shut down
                self._publish_tracked(Header(stamp=self.get_clock().now().to_msg()), [])
        if self._recognizer is not None:
            self._recognizer.face_finder.reset()   # faces seen before a pause need a full detection

    # ---------------------------------------------------------------- processing
    def _work(self) -> None:
        slot = self._slot
        while self._running.is_set():
            pair = slot.take(timeout=0.2)
            if pair is None:
                continue
            try:
                self._process(*pair)
            except Exception as exc:  # noqa: BLE001 - keep serving later frames
                self._stats.on_bad(f"{type(exc).__name__}: {exc}")
                self._log_throttled("error", f"frame skipped, unexpected {type(exc).__name__}: {exc}")

    def _process(self, colour_msg: Image, depth_msg: Optional[Image]) -> None:
        t0 = time.monotonic()
        stamp = _stamp_ns(colour_msg.header)
        if stamp == 0:
            self._stats.on_zero_stamp()
        try:
            colour, depth = conversions.frame_pair(colour_msg, depth_msg)
            result = self._recognizer.recognize(colour, depth, depth_scale=1.0)
        except ValueError as exc:  # ImageConversionError, PreprocessingError
            reason = str(exc)
            self._stats.on_bad(reason)
            self._log_throttled("warning", f"skipping bad frame (stamp {stamp / 1e9:.3f}): {reason}",
                                detail=reason)
            return
        faces = result.faces
        broken = sum(not np.all(np.isfinite(np.asarray(f.scores, dtype=np.float64))) for f in faces)
        if broken:  # never publish a NaN/inf score (a checkpoint that overflows on this input)
            reason = (f"the model gave non-finite scores for {broken} of {len(faces)} faces; the checkpoint "
                      f"{self._model_path} is numerically broken: re-train or re-save it")
            self._stats.on_bad(reason)
            self._log_throttled("error", f"skipping frame (stamp {stamp / 1e9:.3f}): {reason}", detail=reason)
            return
        tracked = self._tracker.update([f.box for f in faces], [np.asarray(f.scores) for f in faces])
        msg = self._build_message(colour_msg, colour.shape[:2], faces, tracked)
        pub = self._emotions_pub
        if pub is None or not self._running.is_set():
            return
        pub.publish(msg)
        latency_ms = (self.get_clock().now().nanoseconds - stamp) / 1e6 if stamp else float("nan")
        processing_ms = (time.monotonic() - t0) * 1e3
        if stamp:
            self._stats.on_processed(latency_ms, processing_ms, len(faces))
        else:
            self._stats.on_processed(processing_ms, processing_ms, len(faces))
        if self._p("publish_hri"):
            self._publish_hri(msg)
        if self._debug_pub is not None and self._debug_pub.get_subscription_count() > 0:
            self._publish_debug(colour_msg, colour, msg)

    def _build_message(self, colour_msg: Image, shape: Tuple[int, int], faces: Sequence[Any],
                       tracked: Sequence[Any]) -> Any:
        Emotion, EmotionArray = self._emotion_types
        out = EmotionArray()
        out.header = colour_msg.header
        out.classes = list(self._class_names)
        h, w = shape
        for face, tr in zip(faces, tracked):
            scores = np.asarray(tr.scores if tr.scores is not None else face.scores, dtype=np.float32)
            best = int(np.argmax(scores)) if scores.size else 0
            valence, arousal = valence_arousal(scores, self._class_names)
            x, y, bw, bh = (int(v) for v in face.box)
            x0, y0 = min(max(x, 0), w), min(max(y, 0), h)
            e = Emotion()
            e.face_id = tr.face_id
            e.roi = RegionOfInterest(x_offset=x0, y_offset=y0, width=max(0, min(x + bw, w) - x0),
                                     height=max(0, min(y + bh, h) - y0), do_rectify=False)
            e.roll = float(face.roll)
            e.eyes_found = bool(face.eyes_found)
            e.expression = self._class_names[best] if scores.size else ""
            e.confidence = float(scores[best]) if scores.size else 0.0
            e.scores = [float(s) for s in scores]
            e.valence, e.arousal = float(valence), float(arousal)
            e.depth_valid = bool(face.depth_valid)
            e.depth_valid_fraction = float(face.depth_valid_fraction)
            out.faces.append(e)
        return out

    def _publish_hri(self, msg: Any) -> None:
        """ROS4HRI (REP-155): each face's expression on ``/humans/faces/<id>/expression``, then the
        ids of all tracked faces on ``/humans/faces/tracked`` (how libhri/pyhri discover faces)."""
        if HriExpression is None or self._tracker is None:
            return
        alive = [t.face_id for t in self._tracker.tracks]
        self._retire_hri(set(self._hri_pubs) - set(alive))
        for e in msg.faces:
            pub = self._hri_pubs.get(e.face_id)
            if pub is None:
                pub = self.create_publisher(HriExpression, f"/humans/faces/{e.face_id}/expression", HRI_QOS)
                self._hri_pubs[e.face_id] = pub
            out = HriExpression()
            out.header = msg.header
            out.expression = e.expression
            out.valence, out.arousal, out.confidence = e.valence, e.arousal, e.confidence
            pub.publish(out)
        self._publish_tracked(msg.header, alive)

    def _publish_tracked(self, header: Any, ids: Sequence[str]) -> None:
        if HriIdsList is None:
            return
        if self._hri_tracked_pub is None:
            self._hri_tracked_pub = self.create_publisher(HriIdsList, HRI_TRACKED_TOPIC, HRI_QOS)
        out = HriIdsList()
        out.header = header
        out.ids = list(ids)
        self._hri_tracked_pub.publish(out)

    def _retire_hri(self, face_ids: Any) -> None:
        """Destroy the expression publishers of faces that left (their topics disappear)."""
        for fid in face_ids:
            pub = self._hri_pubs.pop(fid, None)
            if pub is not None:
                self.destroy_publisher(pub)

    def _publish_debug(self, colour_msg: Image, colour: np.ndarray, msg: Any) -> None:
        import cv2

        img = cv2.cvtColor(colour, cv2.COLOR_GRAY2BGR) if colour.ndim == 2 else colour.copy()
        for e in msg.faces:
            p0 = (int(e.roi.x_offset), int(e.roi.y_offset))
            p1 = (p0[0] + int(e.roi.width), p0[1] + int(e.roi.height))
            cv2.rectangle(img, p0, p1, (0, 255, 0), 2)
            label = f"{e.face_id} {e.expression} {e.confidence:.2f}{'' if e.depth_valid else ' (no depth)'}"
            cv2.putText(img, label, (p0[0], max(12, p0[1] - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 255, 0), 1, cv2.LINE_AA)
            for k, (name, s) in enumerate(zip(msg.classes, e.scores)):
                cv2.putText(img, f"{name} {s:.2f}", (p1[0] + 4, p0[1] + 14 * (k + 1)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
        out = Image(**conversions.array_to_image_fields(img, "bgr8",
                                                         bigendian=conversions.native_is_bigendian()))
        out.header = colour_msg.header
        self._debug_pub.publish(out)

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: CM-CNN facial expressions"
        status.hardware_id = self._device or "none"
        kv = {"lifecycle state": self._state_label, "model path": self._model_path or "(not loaded)",
              "device": self._device or "(not loaded)", "sync": self._sync_backend or "(inactive)",
              "image decoding": conversions.backend_name(),
              "cv_bridge fallbacks": str(conversions.bridge_fallbacks())}
        kv.update(self._stats.key_values())
        if self._monitor is not None:
            kv.update({f"{name} received": str(n) for name, n in self._monitor.counts().items()})
        stall = self._monitor.diagnose() if self._monitor is not None else None
        if self._state_label != "active":
            status.level, status.message = DiagnosticStatus.OK, f"{self._state_label}, not processing"
        elif stall:
            status.level, status.message = DiagnosticStatus.WARN, stall
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"processing at {kv['processed rate (Hz)']} Hz"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in kv.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self._diag_pub.publish(arr)


def _fatal(text: str) -> None:
    """One line on stderr, in the ROS log format, for errors before or instead of a running node."""
    sys.stderr.write(f"[FATAL] [{NODE_NAME}]: {text}\n")
    sys.stderr.flush()


def main(args: Optional[List[str]] = None) -> None:
    """Entry point ``fer_node``: spin the node until shutdown.

    A malformed or missing params file, or a parameter of the wrong type or
    out of range, stops start-up with one line saying what to fix and exit
    status 2 (no traceback).
    """
    argv = list(sys.argv if args is None else args)
    files = params_files_in(argv)
    try:
        for path in files:
            load_params_file(path)
    except ParamsFileError as exc:
        _fatal(str(exc))
        raise SystemExit(2) from None
    try:
        rclpy.init(args=args)
    except Exception as exc:  # noqa: BLE001 - RCLError: what rcl could not parse, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r",? at [\w/.]+:\d+", "", first)  # rcl's source locations
        _fatal(f"cannot start: {first}; check the --ros-args arguments")
        raise SystemExit(2) from None
    try:
        node = FerNode(params_files=files)
    except KeyboardInterrupt:  # Ctrl-C while starting: a normal stop
        rclpy.try_shutdown()
        return
    except (FerConfigError, ParameterException, ValueError, TypeError) as exc:
        # FerConfigError; rclpy's parameter exceptions for parameters rclpy itself declares.
        _fatal(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        rclpy.try_shutdown()
        raise SystemExit(2) from None
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed (see above); fix the parameter and "
                                        "call the lifecycle transition 'configure' again")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # On SIGINT rclpy shuts the context down while the executor may be in the
        # middle of taking a message, which then fails to convert. That is the
        # shutdown we asked for, not an error; anything while still running is.
        if rclpy.ok():
            raise
    finally:
        node._stop_processing()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
