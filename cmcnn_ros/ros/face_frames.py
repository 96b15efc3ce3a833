"""REP-155 face frames of ``fer_node``: one TF frame ``face_<face_id>`` per located face.

REP-155 ("Face and Gaze Frames"): a head-pose estimator publishes each face's
6-D pose as the TF frame ``face_<faceID>``, parent the sensor frame it was
estimated in, origin at the sellion, ``x`` out of the face, ``z`` to the
scalp. Here the parent is the colour image's ``header.frame_id`` (its optical
frame, REP-103), the stamp the image's, and the pose the face's
``position`` / ``orientation`` (:mod:`cmcnn_ros.inference.face_pose`). A face
without both (no valid depth on it, no landmarks) gets no frame: a frame
without a measured position or orientation would be a guess.

How the transforms go out, in order of preference: ``tf2_ros``'s
``TransformBroadcaster`` (every ROS 2 install has it); where only the
``tf2_msgs`` Python package exists, ``tf2_msgs/TFMessage`` on ``/tf`` with the
broadcaster's QoS (what the broadcaster itself publishes); with neither
(the PyPI wheels have no tf2), nothing, and :attr:`FaceFramePublisher.backend`
says so for the node's one log line.
"""

from __future__ import annotations

import math
from typing import Any, List, Sequence

from geometry_msgs.msg import TransformStamped
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

#: tf2_ros's DynamicBroadcasterQoS: what a TransformBroadcaster publishes /tf with.
TF_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                    durability=QoSDurabilityPolicy.VOLATILE)
TF_TOPIC = "/tf"
NO_TF = "none"


def face_frame_id(face_id: str) -> str:
    """REP-155's TF frame name of a face, ``face_<faceID>``."""
    return f"face_{face_id}"


def face_transforms(header: Any, faces: Sequence[Any]) -> List[TransformStamped]:
    """One ``TransformStamped`` per face with a finite ``position`` and ``orientation``, parent ``header``'s frame."""
    out: List[TransformStamped] = []
    for face in faces:
        if not all(math.isfinite(c) for c in tuple(face.position) + tuple(face.orientation)):
            continue
        t = TransformStamped()
        t.header.stamp = header.stamp
        t.header.frame_id = header.frame_id
        t.child_frame_id = face_frame_id(face.face_id)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
            float(c) for c in face.position)
        (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
         t.transform.rotation.w) = (float(c) for c in face.orientation)
        out.append(t)
    return out


class FaceFramePublisher:
    """The face frames of one node: :meth:`start` picks how, :meth:`publish` sends a frame's faces.

    Args:
        node: the node that owns the broadcaster or publisher.
    """

    def __init__(self, node: Any) -> None:
        self._node = node
        self._send: Any = None
        self._publisher: Any = None
        self.backend = NO_TF

    def start(self) -> str:
        """Create the broadcaster (or the ``/tf`` publisher) once; returns :attr:`backend`."""
        if self._send is not None:
            return self.backend
        try:
            from tf2_ros import TransformBroadcaster  # type: ignore[import-not-found]
        except ImportError:
            TransformBroadcaster = None
        if TransformBroadcaster is not None:
            broadcaster = TransformBroadcaster(self._node)
            self._publisher = getattr(broadcaster, "pub_tf", None)
            self._send, self.backend = broadcaster.sendTransform, "tf2_ros TransformBroadcaster"
            return self.backend
        try:
            from tf2_msgs.msg import TFMessage  # type: ignore[import-not-found]
        except ImportError:
            self.backend = NO_TF
            return self.backend
        publisher = self._node.create_publisher(TFMessage, TF_TOPIC, TF_QOS)
        self._publisher = publisher
        self._send = lambda transforms: publisher.publish(TFMessage(transforms=transforms))
        self.backend = f"tf2_msgs/TFMessage on {TF_TOPIC}"
        return self.backend

    @property
    def active(self) -> bool:
        return self._send is not None

    def publish(self, header: Any, faces: Sequence[Any]) -> int:
        """The frames of this image's located faces; returns how many went out (0 without a backend)."""
        if self._send is None or not header.frame_id:
            return 0
        transforms = face_transforms(header, faces)
        if transforms:
            self._send(transforms)
        return len(transforms)

    def release(self) -> None:
        """Destroy the ``/tf`` publisher (cleanup); :meth:`start` makes a new one."""
        if self._publisher is not None:
            self._node.destroy_publisher(self._publisher)
        self._send = self._publisher = None
        self.backend = NO_TF
