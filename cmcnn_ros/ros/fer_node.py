"""``fer_node``: ROS 2 managed node publishing CM-CNN facial expressions.

Runs the CM-CNN recogniser of Ni et al., "Facial Expression Recognition
Through Cross-Modality Attention Fusion", IEEE TCDS 2023 (preprocessing of
Section III-B, network of Sections III-C to III-E), with face tracking and
score smoothing, through the ROS-free
:class:`cmcnn_ros.inference.stream.ExpressionStream` on synchronised colour +
registered depth images and publishes its results as ``cmcnn_ros/EmotionArray``
on ``~/emotions`` (RELIABLE), one message per processed frame, with the colour
image's header. The node itself only converts messages, calls the stream and
publishes: parameters live in :mod:`~cmcnn_ros.ros.parameters`, subscriptions
in :mod:`~cmcnn_ros.ros.inputs`, message building in
:mod:`~cmcnn_ros.ros.messages`, ROS4HRI output in :mod:`~cmcnn_ros.ros.hri`.

Behind a ROS4HRI face detector (``face_source: ros4hri``) the node detects
nothing: each ``/humans/faces/tracked`` list is paired with the colour/depth
pair of its image (:class:`~cmcnn_ros.ros.sync.FollowSync`), the listed
faces' ``/humans/faces/<id>/roi`` give the boxes
(:mod:`~cmcnn_ros.ros.hri_input`), and the expressions go out under the
detector's ids, without a tracked list of the node's own.

With ``camera_info_topic`` set, each face is located too (the sellion from the
registered depth, the head's orientation from its landmarks:
:mod:`cmcnn_ros.inference.face_pose`, with the intrinsics of the image's
``CameraInfo``, :mod:`~cmcnn_ros.ros.camera_info`): ``Emotion.position`` and,
with ``face_source: own``, REP-155's TF frame ``face_<face_id>``
(:mod:`~cmcnn_ros.ros.face_frames`). An unusable ``CameraInfo`` costs the
positions and frames of its images, never their expressions.

Colour and depth arrive raw or through ``image_transport``'s compressed
transports (``colour_transport: compressed``, ``depth_transport:
compressedDepth``): the node then subscribes to the ``CompressedImage`` topic
under the base topic and decodes it in the ROS-free
:mod:`cmcnn_ros.ros.compressed`, so a robot's Wi-Fi stream needs no
``republish`` process.

Lifecycle (``rclpy.lifecycle``): configure loads the checkpoint and creates
the publishers; activate subscribes and starts the worker; deactivate stops
both; cleanup releases the model. With ``autostart`` (default true) the node
configures and activates itself; the launch file sets it false and drives the
transitions itself.

Never a backlog: the sync callback only puts the newest pair into a one-slot
mailbox (:class:`cmcnn_ros.ros.sync.LatestSlot`); a worker thread processes
the newest pair when it is free, so overwritten pairs are dropped and counted.
With ``pipeline: true`` there are two workers and two such mailboxes:
``fer_prepare`` converts the newest pair and finds, aligns and crops its faces
(:meth:`ExpressionStream.prepare`, its independent jobs on
``preprocessing_threads`` lanes) while ``fer_publish`` runs the network, the
tracks and the publishing of the frame before
(:meth:`ExpressionStream.finish`); a prepared frame the second stage has not
taken when the next one is ready is dropped and counted too. By default
(measured faster on 2 cores: README, Benchmarks) one worker does both halves
and the second core serves the lanes inside each frame. Deactivation,
cleanup and shutdown end every thread the node started.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from cmcnn_ros.device import DeviceError, resolve_device
from cmcnn_ros.inference.backends import BackendError
from cmcnn_ros.inference.face_pose import CameraIntrinsics, IntrinsicsError
from cmcnn_ros.inference.recognizer import NonFiniteScoresError, PreparedFrame
from cmcnn_ros.inference.stream import ExpressionStream, StreamResult
from cmcnn_ros.inference.tracking import TrackingError
from cmcnn_ros.preprocessing.params import PreprocessingError
from cmcnn_ros.ros import conversions, messages
from cmcnn_ros.ros.camera_info import CameraInfoBuffer, image_intrinsics
from cmcnn_ros.ros.diagnostics import LogThrottle, PipelineStats
from cmcnn_ros.ros.face_frames import NO_TF, FaceFramePublisher
from cmcnn_ros.ros.hri import HRI_TRACKED_TOPIC, HriPublisher
from cmcnn_ros.ros.hri_input import HriFaceInput
from cmcnn_ros.ros.inputs import InputTopic, input_topic, subscribe_rgbd, transport_problems
from cmcnn_ros.ros.parameters import (CHOICES, NODE_NAME, PARAMETERS, RCLPY_PARAMETERS, FerConfigError, model_file,
                                      parameter_problem)
from cmcnn_ros.ros.params_file import (ParamsFileError, closest_name, load_params_file, params_files_in,
                                       sections_for_node)
from cmcnn_ros.ros.sync import FollowSync, LatestSlot, SyncMonitor, ros_stamp_ns

RESULT_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                        reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.VOLATILE)


class _Prepared(NamedTuple):
    """A frame between the two stages: its faces cropped, and what publishing it needs."""

    header: Any
    colour: Any            # the decoded image, for the debug image
    stamp: int             # colour stamp (ns)
    started: float         # time.monotonic() when its processing began
    frame: Optional[PreparedFrame]   # None when the faces came from ROS4HRI (already recognised)
    decode_ms: float       # converting the two messages to arrays
    result: Optional[StreamResult] = None   # face_source ros4hri: recognised in the first stage


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
        self._throttle = LogThrottle()
        self._slot: LatestSlot[Tuple[Any, Optional[Any]]] = LatestSlot()
        self._prepared: LatestSlot[_Prepared] = LatestSlot()   # between the pipeline's stages
        self._topics: Tuple[Optional[str], ...] = (None, None)
        self._stream: Optional[ExpressionStream] = None   # once configured
        self._model_path = ""
        self._device = ""
        self._backend = ""
        self._emotions_pub: Any = None
        self._debug_pub: Any = None
        self._hri = HriPublisher(self)
        self._camera_info = CameraInfoBuffer()
        self._camera_info_topic = ""   # resolved; empty: faces are not located
        self._frames = FaceFramePublisher(self)   # REP-155 face_<id> TF frames (face_source own)
        self._said: Set[str] = set()   # one-time notices already logged
        self._face_source = "own"     # as configured
        self._hri_input = HriFaceInput(self, self._on_tracked,
                                       lambda level, text, detail: self._log_throttled(level, text, detail=detail))
        self._follow: Optional[FollowSync] = None   # ros4hri: tracked lists -> their colour/depth pairs
        self._subs: List[Any] = []
        self._inputs: List[InputTopic] = []
        self._sync: Any = None
        self._sync_backend = ""
        self._monitor: Optional[SyncMonitor] = None
        self._threads: List[threading.Thread] = []
        self._pipeline = ""
        self._running = threading.Event()
        self._warn_timer: Any = None
        self._last_sync_warning = -math.inf
        self._state_label = "unconfigured"
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._param("diagnostics_period"), self._publish_diagnostics)

    # ---------------------------------------------------------------- parameters and logging
    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _warn_unknown_overrides(self, overrides: Dict[str, Any], params_files: Sequence[str]) -> None:
        """Warn about overrides the node does not declare and params files that do not reach it."""
        fqn = self.get_fully_qualified_name()
        for name in sorted(overrides):
            if name in PARAMETERS or name in RCLPY_PARAMETERS or name.startswith("qos_overrides."):
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
        for param in params:
            # A robot may tighten or relax the threshold while running; the next frame uses it.
            if param.name == "min_confidence" and self._stream is not None \
                    and parameter_problem(param.name, param.value) is None:
                self._stream.min_confidence = float(param.value)
        return SetParametersResult(successful=True)

    def _log_throttled(self, level: str, text: str, period: Optional[float] = None,
                       detail: Optional[str] = None) -> None:
        """Log ``text`` unless :class:`~cmcnn_ros.ros.diagnostics.LogThrottle` holds it back."""
        period = self._param("bad_message_log_period") if period is None else period
        if not self._throttle.allow(text, period, detail):
            return
        # One call site per severity: rclpy refuses a call site whose severity changes between calls.
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.info(text)

    def _say_once(self, key: str, text: str) -> None:
        """Log ``text`` the first time ``key`` comes up in this node's life (a setting, not an event)."""
        if key not in self._said:
            self._said.add(key)
            self.get_logger().warning(text)

    def _read_config(self) -> Dict[str, Any]:
        """Validate parameters read at configure.

        Raises:
            FerConfigError: a value is out of range or unknown.
        """
        cfg = {n: self._param(n) for n in PARAMETERS}
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
            path = model_file(str(cfg["model_path"]))
            try:
                resolve_device(cfg["device"])
            except DeviceError as exc:
                raise FerConfigError(f"parameter device: {exc}") from exc
            if cfg["face_source"] == "ros4hri" and not HriFaceInput.available():
                raise FerConfigError("face_source 'ros4hri' needs hri_msgs (ros4hri/hri_msgs, with REP-155's "
                                     "NormalizedRegionOfInterest2D) installed and sourced; install it or set "
                                     "face_source: own")
            stream = self._load_stream(path, cfg)
        except (FerConfigError, TrackingError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        from cmcnn_ros.msg import EmotionArray

        self._stream = stream
        self._face_source = str(cfg["face_source"])
        self._model_path = str(path)
        self._device = str(stream.recognizer.device)
        self._backend = stream.recognizer.backend.description
        self._emotions_pub = self.create_lifecycle_publisher(EmotionArray, "~/emotions", RESULT_QOS)
        if cfg["publish_debug_image"]:
            self._debug_pub = self.create_lifecycle_publisher(Image, "~/debug_image", qos_profile_sensor_data)
        self._state_label = "inactive"
        self.get_logger().info(f"configured: model {self._model_path} on {self._device} ({self._backend}), "
                               f"classes {stream.class_names}, image decoding {conversions.backend_name()}, "
                               f"faces from {self._face_source}")
        return TransitionCallbackReturn.SUCCESS

    @staticmethod
    def _load_stream(path: Path, cfg: Dict[str, Any]) -> ExpressionStream:
        """The checkpoint's stream with the tracking parameters, each failure worded as the parameter to fix.

        Raises:
            TrackingError: a tracking parameter is out of range.
            FerConfigError: the face detector, the checkpoint or the device cannot be used.
        """
        try:
            return ExpressionStream.from_checkpoint(
                str(path), device=cfg["device"], num_threads=cfg["num_threads"] or None,
                redetect_interval=cfg["redetect_interval"], iou_threshold=cfg["tracking_iou_threshold"],
                max_missed=cfg["tracking_max_missed"], smoothing=cfg["score_smoothing"],
                min_confidence=cfg["min_confidence"],
                backend=cfg["inference_backend"], preprocessing_threads=cfg["preprocessing_threads"],
                landmark_tracking=cfg["landmark_tracking"], flip_tta=cfg["flip_tta"])
        except TrackingError:
            raise
        except BackendError as exc:  # e.g. onnxruntime asked for and not installed
            raise FerConfigError(f"parameter inference_backend {cfg['inference_backend']!r}: {exc}; "
                                 "set inference_backend to auto or torch") from exc
        except PreprocessingError as exc:  # e.g. a missing or corrupt face-detector model file
            raise FerConfigError(f"cannot start the face detector for {str(path)!r}: {exc}") from exc
        except ValueError as exc:  # CheckpointError and friends
            raise FerConfigError(f"cannot load model_path {str(path)!r}: {exc}") from exc
        except RuntimeError as exc:  # e.g. a CUDA device that fails to initialise
            raise FerConfigError(f"cannot use device {cfg['device']!r} for {str(path)!r}: {exc}; "
                                 "set device to cpu or auto") from exc

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            cfg = self._read_config()
        except FerConfigError as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._stats.reset()
        self._last_sync_warning = -math.inf
        self._start_threads(bool(cfg["pipeline"]))
        self._subscribe(cfg)
        self._warn_timer = self.create_timer(0.5, self._check_sync)
        self._state_label = "active"
        described = [f"{i.kind} {self.resolve_topic_name(i.topic)} ({i.transport})" for i in self._inputs]
        if len(described) == 1:
            described.append("depth (none)")
        if self._follow is not None:
            described.append(f"faces from {HRI_TRACKED_TOPIC} and /humans/faces/<id>/roi")
        described.append(self._start_locating())
        self.get_logger().info(f"active: {', '.join(described)}, sync {cfg['sync_policy']} via {self._sync_backend}, "
                               f"{self._pipeline}")
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

    def _start_locating(self) -> str:
        """Face positions and frames for this activation (after :meth:`_subscribe`); what the log line says."""
        if not self._camera_info_topic:
            self._say_once("no camera_info", "camera_info_topic is empty: faces are published without a position "
                           "(Emotion.position NaN) and without REP-155 face_<id> TF frames; set camera_info_topic "
                           "to the colour camera's camera_info (e.g. /camera/color/camera_info) to locate them")
            return "camera_info none (faces not located)"
        if self._face_source != "own":
            # The ROS4HRI detector publishes its faces' frames; a second face_<id> would contradict it.
            return f"camera_info {self._camera_info_topic} (Emotion.position; face frames are the detector's)"
        backend = self._frames.start()
        if backend == NO_TF:
            self._say_once("no tf", "neither tf2_ros nor tf2_msgs can be imported: no face_<id> TF frames are "
                           "published (Emotion.position is); install tf2_ros (ROS 2's tf2_ros_py)")
        return f"camera_info {self._camera_info_topic}, face frames via {backend}"

    def _release(self) -> None:
        self._hri.release()
        self._frames.release()
        for attr in ("_emotions_pub", "_debug_pub"):
            pub = getattr(self, attr)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, attr, None)
        if self._stream is not None:
            self._stream.stop_threads()
        self._stream = None
        self._backend = ""

    # ---------------------------------------------------------------- input
    def _subscribe(self, cfg: Dict[str, Any]) -> None:
        colour_topic, depth_topic = str(cfg["colour_topic"]), str(cfg["depth_topic"]).strip()
        slop = float(cfg["sync_slop"]) if cfg["sync_policy"] == "approximate" else None
        colour = input_topic("colour", colour_topic, str(cfg["colour_transport"]))
        depth = input_topic("depth", depth_topic, str(cfg["depth_transport"])) if depth_topic else None
        self._inputs = [colour] + ([depth] if depth is not None else [])
        self._topics = tuple(self.resolve_topic_name(i.topic) for i in self._inputs) + (None,)
        watched = [(i.kind, self.resolve_topic_name(i.topic)) for i in self._inputs]
        on_pair = self._on_pair
        if self._face_source == "ros4hri":
            # The detector's tracked list is a third input: a frame is processed once its list arrived.
            self._follow = FollowSync(int(cfg["sync_queue_size"]), slop, self._on_followed,
                                      frame_stamp=lambda pair: ros_stamp_ns(pair[0]))
            follow = self._follow
            on_pair = lambda c, d: follow.add_frame((c, d))  # noqa: E731
            watched.append(("tracked", HRI_TRACKED_TOPIC))
        self._monitor = SyncMonitor(watched, slop=slop, delay=float(cfg["sync_warning_delay"]),
                                    subject="colour/depth pair" if self._follow is None
                                    else f"colour/depth pair with its {HRI_TRACKED_TOPIC} list")
        sub = subscribe_rgbd(self, colour, depth, slop, int(cfg["sync_queue_size"]), on_pair, self._observe)
        self._subs, self._sync, self._sync_backend = sub.subscriptions, sub.synchroniser, sub.backend
        info_topic = str(cfg["camera_info_topic"]).strip()
        self._camera_info.clear()
        self._camera_info_topic = self.resolve_topic_name(info_topic) if info_topic else ""
        if info_topic:
            # Not a third synchronised stream: each image takes the CameraInfo of its stamp, else the newest
            # (ros/camera_info.py says why). Sensor-data QoS matches reliable and best-effort drivers alike.
            self._subs.append(self.create_subscription(CameraInfo, info_topic, self._camera_info.add,
                                                       qos_profile_sensor_data))
        if self._follow is not None:
            self._hri_input.start()

    def _observe(self, index: int, msg: Any) -> None:
        stamp = ros_stamp_ns(msg)
        if self._monitor is not None:
            self._monitor.observe(index, stamp, msg.header.frame_id)
        if stamp == 0:
            name = ("colour", "depth")[index]
            self._log_throttled("warning", f"{name} image has a zero header.stamp (frame_id "
                                f"{msg.header.frame_id!r}): the driver does not stamp its images; "
                                "results carry the zero stamp and no latency can be measured")

    def _on_pair(self, colour: Any, depth: Optional[Any]) -> None:
        if self._monitor is not None:
            self._monitor.paired()
        dropped = self._slot.put((colour, depth))
        self._stats.on_pair(dropped)

    def _on_tracked(self, msg: Any) -> None:
        """A ROS4HRI tracked list (its faces' roi subscriptions exist): wait for its image."""
        if self._monitor is not None:
            self._monitor.observe(len(self._inputs), ros_stamp_ns(msg), msg.header.frame_id)
        if self._follow is not None:
            self._follow.add_lead(msg)

    def _on_followed(self, pair: Tuple[Any, Optional[Any]], tracked: Any) -> None:
        if self._monitor is not None:
            self._monitor.paired()
        dropped = self._slot.put((pair[0], pair[1], tracked))
        self._stats.on_pair(dropped)

    def _check_sync(self) -> None:
        if self._monitor is None:
            return
        text = self._monitor.diagnose()
        now = time.monotonic()
        if text and now - self._last_sync_warning >= float(self._param("sync_warning_period")):
            self._last_sync_warning = now
            # Silent inputs: the graph may say why (another message type, the other transport).
            counts = self._monitor.counts()
            silent = [i for i in self._inputs if counts.get(i.kind, 0) == 0]
            hints = transport_problems(self, silent) if silent else []
            self.get_logger().warning("; ".join([text] + hints))

    def _stop_processing(self) -> None:
        if self._warn_timer is not None:
            self.destroy_timer(self._warn_timer)
            self._warn_timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._hri_input.stop()
        self._subs, self._sync, self._monitor, self._inputs, self._follow = [], None, None, [], None
        self._running.clear()
        self._slot.close()
        self._prepared.close()
        for thread in self._threads:
            thread.join(timeout=10.0)
        self._threads = []
        self._slot.clear()
        self._prepared.clear()
        # Paused: no face is tracked any more (the topics say so), and faces seen
        # before the pause need a full detection.
        if self._hri.active:
            self._hri.pause(Header(stamp=self.get_clock().now().to_msg()), can_publish=self.context.ok())
        if self._stream is not None:
            self._stream.reset()
            self._stream.stop_threads()   # the preprocessing's lanes: no thread outlives activity

    # ---------------------------------------------------------------- processing
    def _start_threads(self, pipeline: bool) -> None:
        """The worker(s): two pipeline stages, or one thread doing both (``pipeline: false``)."""
        self._slot, self._prepared = LatestSlot(), LatestSlot()
        self._running.set()
        if pipeline:
            loops = [("fer_prepare", self._prepare_loop), ("fer_publish", self._publish_loop)]
            self._pipeline = "pipeline: fer_prepare (detect, align, crop) | fer_publish (network, publish)"
        else:
            loops = [("fer_worker", self._serial_loop)]
            self._pipeline = "one worker thread"
        lanes = self._stream.recognizer.preprocessor.lanes.count if self._stream is not None else 1
        self._pipeline += f", {lanes} preprocessing lane{'s' if lanes > 1 else ''}"
        self._threads = [threading.Thread(target=loop, name=name, daemon=True) for name, loop in loops]
        for thread in self._threads:
            thread.start()

    def _serial_loop(self) -> None:
        while self._running.is_set():
            pair = self._slot.take(timeout=0.2)
            if pair is not None:
                self._guarded(self._process, *pair)

    def _prepare_loop(self) -> None:
        while self._running.is_set():
            pair = self._slot.take(timeout=0.2)
            if pair is None:
                continue
            job = self._guarded(self._prepare, *pair)
            if job is not None and self._prepared.put(job):
                self._stats.on_dropped()   # the publishing stage had not taken the one before

    def _publish_loop(self) -> None:
        while self._running.is_set():
            job = self._prepared.take(timeout=0.2)
            if job is not None:
                self._guarded(self._publish, job)

    def _guarded(self, step: Callable[..., Any], *args: Any) -> Any:
        """``step(*args)``; an unexpected exception skips the frame (logged, counted) and the loop goes on."""
        try:
            return step(*args)
        except Exception as exc:
            self._stats.on_bad(f"{type(exc).__name__}: {exc}")
            self._log_throttled("error", f"frame skipped, unexpected {type(exc).__name__}: {exc}")
            return None

    def _process(self, colour_msg: Any, depth_msg: Optional[Any], tracked: Optional[Any] = None) -> None:
        """Both stages for one pair, on the calling thread (``pipeline: false``, tests)."""
        job = self._prepare(colour_msg, depth_msg, tracked)
        if job is not None:
            self._publish(job)

    def _prepare(self, colour_msg: Any, depth_msg: Optional[Any],
                 tracked: Optional[Any] = None) -> Optional[_Prepared]:
        """Stage 1: decode the pair, find, align and crop its faces; None for a bad frame (logged, counted)."""
        t0 = time.monotonic()
        stamp = ros_stamp_ns(colour_msg)
        if stamp == 0:
            self._stats.on_zero_stamp()
        try:
            colour, depth = conversions.frame_pair(colour_msg, depth_msg, self._topics[:2])
            decode_ms = (time.monotonic() - t0) * 1e3
            intrinsics = self._intrinsics_for(colour_msg, colour.shape)
            if tracked is None:
                frame, result = self._stream.prepare(colour, depth, depth_scale=1.0, intrinsics=intrinsics), None
            else:  # face_source ros4hri: the detector's faces of this image, under its ids, in one stage
                faces, ids, skipped = self._hri_input.faces_for(tracked, colour_msg.header, colour.shape[:2],
                                                                float(self._param("sync_slop")))
                self._stats.on_faces_skipped(skipped)
                frame, result = None, self._stream.process_faces(colour, faces, ids, depth, depth_scale=1.0,
                                                                 intrinsics=intrinsics)
        except NonFiniteScoresError as exc:  # never publish a NaN/inf score
            reason = str(exc)
            self._stats.on_bad(reason)
            self._log_throttled("error", f"skipping frame (stamp {stamp / 1e9:.3f}): {reason}", detail=reason)
            return None
        except ValueError as exc:  # ImageConversionError, RecognizerError
            reason = str(exc)
            self._stats.on_bad(reason)
            self._log_throttled("warning", f"skipping bad frame (stamp {stamp / 1e9:.3f}): {reason}",
                                detail=reason)
            return None
        return _Prepared(colour_msg.header, colour, stamp, t0, frame, decode_ms, result)

    def _intrinsics_for(self, colour_msg: Any, shape: Tuple[int, ...]) -> Optional[CameraIntrinsics]:
        """The colour image's intrinsics from its CameraInfo; None (logged, throttled, counted) when unusable."""
        topic = self._camera_info_topic
        if not topic:
            return None
        info = self._camera_info.for_image(ros_stamp_ns(colour_msg))
        if info is None:
            self._stats.on_without_intrinsics()
            self._log_throttled("warning", f"no camera_info received on '{topic}' yet: faces are published "
                                "without position and TF frame until one arrives (is it the colour camera's?)")
            return None
        try:
            return image_intrinsics(info, shape, colour_msg.header.frame_id)
        except IntrinsicsError as exc:
            # The expressions are still good: publish them, without where the faces are.
            self._stats.on_without_intrinsics()
            self._log_throttled("warning", f"camera_info on '{topic}' is unusable: {exc}; faces are published "
                                "without position and TF frame until a usable one arrives", detail=f"{topic} {exc}")
            return None

    def _publish(self, job: _Prepared) -> None:
        """Stage 2: the network, tracks and smoothing of a prepared frame, then its messages."""
        try:
            result = job.result if job.result is not None else self._stream.finish(job.frame)
        except NonFiniteScoresError as exc:  # never publish a NaN/inf score
            reason = str(exc)
            self._stats.on_bad(reason)
            self._log_throttled("error", f"skipping frame (stamp {job.stamp / 1e9:.3f}): {reason}", detail=reason)
            return
        class_names = self._stream.class_names
        t0 = time.monotonic()
        msg = messages.emotion_array(job.header, class_names, result.faces)
        t1 = time.monotonic()
        pub = self._emotions_pub
        if pub is None or not self._running.is_set():
            return
        pub.publish(msg)
        t2 = time.monotonic()
        processing_ms = (t2 - job.started) * 1e3
        latency_ms = (self.get_clock().now().nanoseconds - job.stamp) / 1e6 if job.stamp else processing_ms
        self._stats.on_processed(latency_ms, processing_ms, len(result.faces))
        self._stats.on_stages(_stage_times(job.decode_ms, result.timings, (t1 - t0) * 1e3, (t2 - t1) * 1e3))
        if self._param("publish_hri"):
            self._hri.publish(msg.header, result.faces, result.tracked_ids,
                              publish_tracked=self._face_source == "own")
        if self._frames.active:
            if not msg.header.frame_id:
                self._say_once("no frame_id", "the colour images have an empty header.frame_id: face_<id> TF "
                               "frames need their parent frame, none are published (Emotion.position is)")
            self._frames.publish(msg.header, result.faces)
        if self._debug_pub is not None and self._debug_pub.get_subscription_count() > 0:
            self._debug_pub.publish(messages.debug_image(job.header, job.colour, class_names, result.faces))

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        kv = {"lifecycle state": self._state_label, "model path": self._model_path or "(not loaded)",
              "face source": self._face_source,
              "device": self._device or "(not loaded)", "inference backend": self._backend or "(not loaded)",
              "threads": self._pipeline or "(inactive)", "sync": self._sync_backend or "(inactive)",
              "inputs": ", ".join(f"{i.kind} {i.transport}" for i in self._inputs) or "(inactive)",
              "camera_info": self._camera_info_topic or "(none)",
              "camera_info received": str(self._camera_info.received),
              "face frames": self._frames.backend,
              "image decoding": conversions.backend_name(),
              "cv_bridge fallbacks": str(conversions.bridge_fallbacks())}
        kv.update(self._stats.key_values())
        follow = self._follow
        if follow is not None:
            kv["tracked lists without their image"] = str(follow.dropped_leads)
        if self._monitor is not None:
            kv.update({f"{name} received": str(n) for name, n in self._monitor.counts().items()})
        stall = self._monitor.diagnose() if self._monitor is not None else None
        if self._state_label != "active":
            level, text = DiagnosticStatus.OK, f"{self._state_label}, not processing"
        elif stall:
            level, text = DiagnosticStatus.WARN, stall
        else:
            level, text = DiagnosticStatus.OK, f"processing at {kv['processed rate (Hz)']} Hz"
        status = DiagnosticStatus(level=level, message=text, hardware_id=self._device or "none",
                                  name=f"{self.get_fully_qualified_name()}: CM-CNN facial expressions",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in kv.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def _stage_times(decode_ms: float, timings: Dict[str, float], message_ms: float,
                 publish_ms: float) -> Dict[str, float]:
    """The profile of one frame, in pipeline order; per-face stages are summed over the faces."""
    crops = sum(v for k, v in timings.items() if k not in ("convert", "detect", "align", "preprocess", "network",
                                                            "total"))
    return {"decode": decode_ms, "detect": timings.get("detect", 0.0), "align": timings.get("align", 0.0),
            "crops": crops, "network": timings.get("network", 0.0), "message": message_ms, "publish": publish_ms}


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
    except Exception as exc:
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
