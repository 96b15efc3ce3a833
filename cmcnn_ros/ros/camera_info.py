"""The colour camera's ``sensor_msgs/CameraInfo`` -> pinhole intrinsics for each image, ROS-free.

``fer_node`` locates faces (``Emotion.position``, REP-155's ``face_<id>`` TF
frames) with the intrinsics of its ``camera_info_topic``
(:class:`~cmcnn_ros.inference.face_pose.CameraIntrinsics`, from ``K``: the
raw image's camera matrix, as ``sensor_msgs/CameraInfo`` defines it; the
distortion ``D`` is not applied). A camera driver publishes one
``CameraInfo`` with every image, same stamp and ``frame_id``, and for a
calibrated camera it never changes. So a ``CameraInfo`` is not made a third
stream of the colour/depth synchroniser, where a late or lost one would drop
a frame's expressions too: :class:`CameraInfoBuffer` keeps the last few and
gives each image the one of its own stamp, else the newest (the same
calibration). :func:`image_intrinsics` checks it against the image; a
problem (an uncalibrated camera's zero ``K``, NaN, another image size or
camera frame) is one sentence for the node's throttled log, and that image's
faces are published without a position or TF frame.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, Optional, Sequence, Tuple

from cmcnn_ros.inference.face_pose import CameraIntrinsics, IntrinsicsError
from cmcnn_ros.ros.sync import ros_stamp_ns

#: CameraInfo messages kept: a few camera frames, enough to find an image's own while frames queue.
DEFAULT_KEEP = 10


class CameraInfoBuffer:
    """The newest ``CameraInfo`` messages of one topic; the one for an image by its stamp. Thread-safe.

    Args:
        keep: messages kept (oldest dropped first).
    """

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._items: Deque[Tuple[int, Any]] = deque(maxlen=int(keep))
        self._lock = threading.Lock()
        self.received = 0

    def add(self, msg: Any) -> None:
        with self._lock:
            self._items.append((ros_stamp_ns(msg), msg))
            self.received += 1

    def for_image(self, stamp_ns: int) -> Optional[Any]:
        """The message stamped ``stamp_ns`` (the image's own), else the newest; None before the first."""
        with self._lock:
            for stamp, msg in reversed(self._items):
                if stamp == stamp_ns:
                    return msg
            return self._items[-1][1] if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.received = 0


def image_intrinsics(msg: Any, image_shape: Sequence[int], image_frame_id: str) -> CameraIntrinsics:
    """The intrinsics of a ``CameraInfo`` (``k``, ``width``, ``height``, ``header.frame_id``) for one image.

    Raises:
        IntrinsicsError: a focal length that is zero, negative or not finite; a
            size other than the image's; another ``frame_id`` than the image's
            (the camera_info of another camera). The message names the problem.
    """
    intrinsics = CameraIntrinsics.from_matrix(list(msg.k), int(msg.width), int(msg.height))
    problem = intrinsics.size_problem(image_shape)
    if problem:
        raise IntrinsicsError(problem)
    frame = str(msg.header.frame_id)
    if frame and image_frame_id and frame != image_frame_id:
        raise IntrinsicsError(f"it is for frame '{frame}' but the colour image is in '{image_frame_id}' "
                              "(the camera_info of another camera)")
    return intrinsics
