"""``fer_node``'s parameters: declared once here, with a description and a range.

Every parameter of the node is one entry of :data:`PARAMETERS` (default,
description, descriptor fields); ``config/fer.yaml`` mirrors each with a
comment (a test checks both ways). :func:`parameter_problem` words what is
wrong with a value the way rclpy would refuse it, plus the closed choices of
:data:`CHOICES`, for the one-line start-up errors and the run-time
``set_parameters`` check. The defaults shared with the offline tools come from
their one home (sync from :mod:`cmcnn_ros.ros.sync`, tracking from
:mod:`cmcnn_ros.inference.tracking`, devices from :mod:`cmcnn_ros.device`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange

from cmcnn_ros import resources
from cmcnn_ros.device import DEVICE_CHOICES_TEXT, DEVICE_PATTERN
from cmcnn_ros.inference.stream import DEFAULT_MIN_CONFIDENCE
from cmcnn_ros.inference.backends import BACKENDS, DEFAULT_BACKEND
from cmcnn_ros.inference.tracking import (DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_MISSED, DEFAULT_REDETECT_INTERVAL,
                                          DEFAULT_SMOOTHING)
from cmcnn_ros.parallel import DEFAULT_LANES, MAX_LANES
from cmcnn_ros.ros.compressed import COLOUR_TRANSPORTS, DEPTH_TRANSPORTS
from cmcnn_ros.ros.sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP_S

NODE_NAME = "fer_node"
#: Where the faces come from: the node's own detector and tracker, or a ROS4HRI detector's
#: /humans/faces/tracked and /humans/faces/<id>/roi (its ids).
FACE_SOURCES = ("own", "ros4hri")


# name -> (default, description, extra descriptor fields). Declared once here;
# config/fer.yaml mirrors every entry with a comment.
PARAMETERS: Dict[str, Tuple[Any, str, Dict[str, Any]]] = {
    "model_path": ("", "CM-CNN checkpoint (.pt). Empty: models/cmcnn_default.pt from the "
                       "installed share directory, else from the source checkout. Read on configure.", {}),
    "device": ("auto", "Torch device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N. "
                       "Read on configure.", {}),
    "num_threads": (0, "CPU threads of the network (torch's, or ONNX Runtime's intra-op threads); 0 keeps the "
                       "library default. Read on configure.",
                    {"integer_range": [IntegerRange(from_value=0, to_value=256, step=1)]}),
    "face_source": ("own", "Where faces come from. own: the node detects and tracks them and publishes its own "
                           "/humans/faces/tracked. ros4hri: behind a ROS4HRI face detector (e.g. hri_face_detect, "
                           "on the same colour images): no detection, the faces and ids of /humans/faces/tracked "
                           "and /humans/faces/<id>/roi, expressions under those ids, no tracked list of its own "
                           "(needs hri_msgs). Read on configure.",
                    {"additional_constraints": "one of: " + ", ".join(FACE_SOURCES)}),
    "inference_backend": (DEFAULT_BACKEND,
                          "What runs the network: onnxruntime (the checkpoint exported to ONNX at configure, "
                          "cached by its hash; CUDA provider for device cuda), torch (PyTorch, BatchNorm folded), "
                          "or auto: onnxruntime when installed and usable for the device, else torch. Same "
                          "scores to 1e-4. Read on configure.",
                          {"additional_constraints": "one of: " + ", ".join(BACKENDS)}),
    "preprocessing_threads": (DEFAULT_LANES,
                              "Threads that share one frame's independent jobs: the whole-frame and tile passes "
                              "of a full face detection, and each face's landmarks and crops. Same results for "
                              "any number. Read on configure.",
                              {"integer_range": [IntegerRange(from_value=1, to_value=MAX_LANES, step=1)]}),
    "landmark_tracking": (False, "Between full detections, follow each face with FaceMesh on the region its "
                                 "previous landmarks give (one landmark run per face) instead of searching around "
                                 "it with the face detector and aligning it again (one detector and one or two "
                                 "landmark runs). Cheaper with many faces; the crops differ slightly. Read on "
                                 "configure.", {}),
    "flip_tta": (False, "Average each face's scores with those of its mirror image (horizontal-flip "
                        "test-time averaging): the network runs on twice the faces and the texture crops are "
                        "computed twice. Off by default; README gives its cost and what it gains. Read on "
                        "configure.", {}),
    "pipeline": (False, "Two worker threads: one finds, aligns and crops the faces of the newest frame while the "
                        "other runs the network and publishes the frame before (stale frames are dropped, never "
                        "queued). false (default, measured faster on 2 cores): one worker does both, with "
                        "preprocessing_threads lanes inside the frame. Read on activate.", {}),
    "redetect_interval": (DEFAULT_REDETECT_INTERVAL,
                          "Frames between full-frame face detections; in between, each tracked face "
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
    "camera_info_topic": ("", "The colour camera's sensor_msgs/CameraInfo (e.g. /camera/color/camera_info; Azure "
                              "Kinect: /rgb/camera_info). With it each face gets Emotion.position (the sellion, "
                              "metres in the colour optical frame, from the registered depth) and, with face_source "
                              "own, a REP-155 TF frame face_<face_id> (position and head orientation). Empty: no "
                              "position (NaN) and no TF frames. Read on activate.", {}),
    "colour_transport": ("raw", "How the colour image arrives, as image_transport names it: raw subscribes to "
                                "colour_topic (sensor_msgs/Image); compressed to colour_topic/compressed "
                                "(sensor_msgs/CompressedImage, JPEG or PNG: a robot's stream without a "
                                "republish process). Read on activate.",
                         {"additional_constraints": "one of: " + ", ".join(COLOUR_TRANSPORTS)}),
    "depth_transport": ("raw", "How the depth image arrives, as image_transport names it: raw subscribes to "
                               "depth_topic (sensor_msgs/Image); compressedDepth to depth_topic/compressedDepth "
                               "(sensor_msgs/CompressedImage: 16UC1 or 32FC1 as PNG or RVL). Read on activate.",
                        {"additional_constraints": "one of: " + ", ".join(DEPTH_TRANSPORTS)}),
    "sync_policy": ("approximate", "approximate (ApproximateTimeSynchronizer) or exact "
                                   "(TimeSynchronizer: identical stamps). Read on activate.", {}),
    "sync_slop": (DEFAULT_SLOP_S, "Largest colour/depth stamp difference (s) paired by the approximate policy.",
                  {"floating_point_range": [FloatingPointRange(from_value=0.001, to_value=5.0)]}),
    "sync_queue_size": (DEFAULT_QUEUE_SIZE, "Messages per topic the synchroniser keeps while waiting for a partner.",
                        {"integer_range": [IntegerRange(from_value=1, to_value=1000, step=1)]}),
    "tracking_iou_threshold": (DEFAULT_IOU_THRESHOLD,
                               "Smallest box IoU that keeps a face_id from one frame to the next.",
                               {"floating_point_range": [FloatingPointRange(from_value=0.01, to_value=1.0)]}),
    "tracking_max_missed": (DEFAULT_MAX_MISSED, "Processed frames a face may be missing before its face_id is retired.",
                            {"integer_range": [IntegerRange(from_value=0, to_value=1000, step=1)]}),
    "score_smoothing": (DEFAULT_SMOOTHING, "Per-face EMA weight of the previous scores in [0, 1); 0 = no smoothing.",
                        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=0.99)]}),
    "min_confidence": (DEFAULT_MIN_CONFIDENCE,
                       "A face whose top class probability (calibrated, after smoothing) is below this is "
                       "published with its scores and confidence but expression 'unknown' (also on ROS4HRI), "
                       "so nothing downstream acts on a guess; 0 = always the top class. Takes effect at once.",
                       {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=1.0)]}),
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

# String parameters with a closed set of values (checked at start-up and on every set).
CHOICES: Dict[str, Tuple[str, str]] = {
    "face_source": ("|".join(FACE_SOURCES), " or ".join(repr(t) for t in FACE_SOURCES)),
    "sync_policy": (r"approximate|exact", "'approximate' or 'exact'"),
    "colour_transport": ("|".join(COLOUR_TRANSPORTS), " or ".join(repr(t) for t in COLOUR_TRANSPORTS)),
    "depth_transport": ("|".join(DEPTH_TRANSPORTS), " or ".join(repr(t) for t in DEPTH_TRANSPORTS)),
    "device": (DEVICE_PATTERN, DEVICE_CHOICES_TEXT),
    "inference_backend": ("|".join(BACKENDS), " or ".join(repr(b) for b in BACKENDS)),
}
# Overrides rclpy itself declares on every node.
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


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


def model_file(value: str) -> Path:
    """Find the checkpoint named by the ``model_path`` parameter (empty: the default weights).

    Raises:
        FerConfigError: no such file.
    """
    try:
        return resources.find_checkpoint(value)
    except FileNotFoundError as exc:
        raise FerConfigError(f"model_path {value!r}: {exc}; set the parameter model_path") from None
