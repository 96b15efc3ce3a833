"""ROS4HRI (REP-155) output of ``fer_node``: per-face expressions and the tracked-face list.

A ROS4HRI consumer (libhri, pyhri) learns face ids from ``/humans/faces/tracked``
(``hri_msgs/IdsList``) and only then subscribes to
``/humans/faces/<id>/expression`` (``hri_msgs/Expression``). Each face's
publisher is created when the face appears and destroyed when its track
ends, so a retired face's topic disappears. Active only where ``hri_msgs``
is installed.

Behind another face detector (``face_source: ros4hri``) the ids are that
detector's and so is ``/humans/faces/tracked``: only the expressions are
published here (``publish_tracked=False``), so the robot keeps one list of faces.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Sequence

from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

try:  # ROS4HRI output only where hri_msgs is installed
    from hri_msgs.msg import Expression as HriExpression  # type: ignore[import-not-found]
    from hri_msgs.msg import IdsList as HriIdsList  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    HriExpression = HriIdsList = None

# Transient local depth 1 keeps the newest message for a subscriber that
# arrives after the face id was announced (volatile subscribers are served as
# well), so a face's first expression is not lost.
HRI_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                     reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
HRI_TRACKED_TOPIC = "/humans/faces/tracked"


def face_topic(face_id: str, leaf: str) -> str:
    """A face's REP-155 topic, e.g. ``/humans/faces/<face_id>/roi`` or ``.../expression``."""
    return f"/humans/faces/{face_id}/{leaf}"


class HriPublisher:
    """The ROS4HRI publishers of one node.

    Args:
        node: the node that owns the publishers.
    """

    def __init__(self, node: Any) -> None:
        self._node = node
        self._faces: Dict[str, Any] = {}
        self._tracked: Any = None

    @property
    def active(self) -> bool:
        """Something was published and not yet released."""
        return bool(self._faces) or self._tracked is not None

    def publish(self, header: Any, faces: Sequence[Any], tracked_ids: Sequence[str],
                publish_tracked: bool = True) -> None:
        """Each face's expression, then the ids of every tracked face.

        Args:
            header: the colour image's header.
            faces: this frame's faces (``face_id``, ``expression``, ``valence``,
                ``arousal``, ``confidence``: a ``StreamFace`` or an ``Emotion``).
                An ``unknown`` expression (below ``min_confidence``) goes out as
                it is, with its confidence.
            tracked_ids: every live track; publishers of other faces are destroyed.
            publish_tracked: publish ``tracked_ids`` on ``/humans/faces/tracked``
                (false when another detector owns that list).
        """
        if HriExpression is None:
            return
        self.retire(set(self._faces) - set(tracked_ids))
        for face in faces:
            pub = self._faces.get(face.face_id)
            if pub is None:
                pub = self._node.create_publisher(HriExpression, face_topic(face.face_id, "expression"), HRI_QOS)
                self._faces[face.face_id] = pub
            out = HriExpression()
            out.header = header
            out.expression = face.expression
            out.valence, out.arousal, out.confidence = (float(face.valence), float(face.arousal),
                                                        float(face.confidence))
            pub.publish(out)
        if publish_tracked:
            self.publish_tracked(header, tracked_ids)

    def publish_tracked(self, header: Any, ids: Sequence[str]) -> None:
        if HriIdsList is None:
            return
        if self._tracked is None:
            self._tracked = self._node.create_publisher(HriIdsList, HRI_TRACKED_TOPIC, HRI_QOS)
        out = HriIdsList()
        out.header = header
        out.ids = list(ids)
        self._tracked.publish(out)

    def retire(self, face_ids: Iterable[str]) -> None:
        """Destroy the expression publishers of faces that left (their topics disappear)."""
        for fid in list(face_ids):
            pub = self._faces.pop(fid, None)
            if pub is not None:
                self._node.destroy_publisher(pub)

    def pause(self, header: Any, can_publish: bool) -> None:
        """No face is tracked any more: drop the per-face topics and say so on the tracked list."""
        self.retire(list(self._faces))
        if self._tracked is not None and can_publish:
            self.publish_tracked(header, [])

    def release(self) -> None:
        """Destroy every publisher (cleanup)."""
        self.retire(list(self._faces))
        if self._tracked is not None:
            self._node.destroy_publisher(self._tracked)
            self._tracked = None
