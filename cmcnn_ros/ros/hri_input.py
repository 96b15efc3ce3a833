"""ROS4HRI input of ``fer_node`` (``face_source: ros4hri``): the faces another detector announces.

On a ROS4HRI robot a face detector (``hri_face_detect``) owns the face ids.
For every image it processes it publishes, stamped with that image's stamp
(REP-155), each face's ``/humans/faces/<id>/roi``
(``hri_msgs/NormalizedRegionOfInterest2D``: corners in [0, 1] of the image)
and then the ids of the faces it tracks on ``/humans/faces/tracked``
(``hri_msgs/IdsList``); a face it still tracks but did not find in that image
is listed without a new roi. libhri reads the same topics the same way: ids
from the list, then a subscription per id.

:class:`AnnouncedFaces` (ROS-free) keeps the recent rois of every announced
face and answers, for one image, the face boxes in its pixels and what was
skipped and why. :class:`HriFaceInput` holds the subscriptions: the tracked
list (handed to the node, which pairs it with its image through
:class:`~cmcnn_ros.ros.sync.FollowSync`) and one roi subscription per
announced id, created when the id is first listed and destroyed when it is
not listed any more. A face's first roi usually goes by before its id is
listed, so a new face is answered from its second processed image on.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

from cmcnn_ros.ros.hri import HRI_TRACKED_TOPIC, face_topic
from cmcnn_ros.ros.sync import ros_stamp_ns, stamp_ns

try:  # only where hri_msgs is installed; face_source: ros4hri refuses to configure without it
    from hri_msgs.msg import IdsList as HriIdsList  # type: ignore[import-not-found]
    from hri_msgs.msg import NormalizedRegionOfInterest2D as HriRoi  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    HriIdsList = HriRoi = None

Box = Tuple[int, int, int, int]
ROI_TYPE = "hri_msgs/msg/NormalizedRegionOfInterest2D"
# libhri subscribes with the system default QoS (reliable, volatile): a ROS4HRI
# publisher is reliable, and a volatile subscription also matches a transient
# local one (fer_node's own /humans/faces/tracked).
INPUT_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                       durability=QoSDurabilityPolicy.VOLATILE)
#: rois kept per face: about a second at 30 Hz, so an image the worker takes late still finds its own.
ROI_HISTORY = 30
#: Smallest face side (pixels) worth cropping; the crops are 48-148 px squares.
MIN_ROI_SIDE_PX = 8
#: Seconds an announced face may go without any roi before that is reported (its first
#: roi is normally missed: it is published before the id is listed).
NO_ROI_GRACE_S = 1.0
# rcl's topic names stop at 247 characters; /humans/faces/<id>/expression is the longest we use.
MAX_ID_LENGTH = 247 - len("/humans/faces//expression")
# A REP-155 id becomes a topic name token: letters, digits and underscores, not starting with a digit.
_ID_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Coordinates a hair outside [0, 1] are float rounding, not a face outside the image.
_EDGE_TOLERANCE = 1e-3


def face_id_problem(face_id: str) -> Optional[str]:
    """Why ``face_id`` cannot name the face's topics (``/humans/faces/<id>/...``), or None."""
    if not face_id:
        return "an empty face id"
    if not _ID_TOKEN.fullmatch(face_id):
        return (f"face id {face_id!r}, which cannot name a ROS topic (/humans/faces/<id>/roi takes letters, "
                "digits and underscores, not starting with a digit)")
    if len(face_id) > MAX_ID_LENGTH:
        return f"a face id of {len(face_id)} characters, too long to name a ROS topic (at most {MAX_ID_LENGTH})"
    return None


def usable_face_ids(ids: Iterable[Any]) -> Tuple[List[str], List[str]]:
    """The ids of a tracked list that can name topics, each once, and what is wrong with the others."""
    out: List[str] = []
    problems: List[str] = []
    for fid in (str(i) for i in ids):
        problem = face_id_problem(fid)
        if problem:
            problems.append(problem)
        elif fid not in out:
            out.append(fid)
    return out, problems


def roi_box(xmin: float, ymin: float, xmax: float, ymax: float, width: int, height: int) -> Tuple[Optional[Box], str]:
    """A REP-155 normalised roi as an ``(x, y, w, h)`` box in the pixels of a ``width`` x ``height`` image.

    Returns:
        ``(box, "")``, or ``(None, what is wrong)`` for coordinates that are not
        finite, outside [0, 1] (the face is not in this image), in the wrong
        order, or a box under :data:`MIN_ROI_SIDE_PX` pixels.
    """
    coords = (xmin, ymin, xmax, ymax)
    text = f"({xmin:.3g}, {ymin:.3g})-({xmax:.3g}, {ymax:.3g})"
    if not all(math.isfinite(c) for c in coords):
        return None, f"roi {text} is not finite"
    if not all(-_EDGE_TOLERANCE <= c <= 1.0 + _EDGE_TOLERANCE for c in coords):
        pixels = max(coords) > 2.0   # far beyond the image: most likely pixel coordinates
        return None, (f"roi {text} lies outside the image: REP-155 roi corners are normalised to [0, 1] "
                      "of the image" + (" (is the detector publishing pixels?)" if pixels else ""))
    if not (xmax > xmin and ymax > ymin):
        return None, f"roi {text} is empty or inverted: (xmin, ymin) must be the top-left corner"
    x0, y0 = max(0, int(math.floor(xmin * width))), max(0, int(math.floor(ymin * height)))
    x1, y1 = min(width, int(math.ceil(xmax * width))), min(height, int(math.ceil(ymax * height)))
    if min(x1 - x0, y1 - y0) < MIN_ROI_SIDE_PX:
        return None, f"roi {text} is {x1 - x0}x{y1 - y0} pixels of a {width}x{height} image, too small to crop"
    return (x0, y0, x1 - x0, y1 - y0), ""


@dataclass(frozen=True)
class Roi:
    """One received roi: the stamp and frame of the image it was found in, its normalised corners."""

    stamp_ns: int
    frame_id: str
    corners: Tuple[float, float, float, float]   # xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class SkippedFace:
    """An announced face that one image could not be answered for.

    Attributes:
        face_id: the detector's id.
        kind: ``"no roi"`` (none received yet), ``"stale roi"`` (none within
            ``sync_slop`` of the image), ``"other camera"`` (roi of another
            frame id) or ``"bad roi"`` (unusable coordinates).
        reason: one line naming the topic and what was wrong.
        report: worth a log line (a missed first roi and a face the detector
            kept without finding it in this image are routine: counted only).
    """

    face_id: str
    kind: str
    reason: str
    report: bool


class AnnouncedFaces:
    """The rois of the faces another detector announces, read back per image. Thread-safe, ROS-free.

    Args:
        history: rois kept per face.
        clock: monotonic seconds (for the no-roi grace period).
    """

    def __init__(self, history: int = ROI_HISTORY, clock: Callable[[], float] = time.monotonic) -> None:
        self._history = int(history)
        self._clock = clock
        self._rois: Dict[str, Deque[Roi]] = {}
        self._announced_at: Dict[str, float] = {}
        self._lock = threading.Lock()

    def announce(self, face_ids: Iterable[str]) -> List[str]:
        """The detector's current ids; faces not among them are forgotten. Returns the ids new to it."""
        ids = list(dict.fromkeys(face_ids))
        with self._lock:
            for fid in [f for f in self._announced_at if f not in ids]:
                del self._announced_at[fid]
                self._rois.pop(fid, None)
            new = [fid for fid in ids if fid not in self._announced_at]
            for fid in new:
                self._announced_at[fid] = self._clock()
                self._rois[fid] = deque(maxlen=self._history)
            return new

    def add_roi(self, face_id: str, roi: Roi) -> bool:
        """Keep one roi of an announced face (False, and ignored, for any other face)."""
        with self._lock:
            rois = self._rois.get(face_id)
            if rois is None:
                return False
            rois.append(roi)
            return True

    def clear(self) -> None:
        with self._lock:
            self._rois.clear()
            self._announced_at.clear()

    def faces_at(self, stamp_ns: int, frame_id: str, shape: Tuple[int, int], face_ids: Sequence[str],
                 slop_s: float) -> Tuple[List[Tuple[str, Box]], List[SkippedFace]]:
        """The boxes of ``face_ids`` in the image stamped ``stamp_ns`` (``shape`` ``(h, w)``, ``frame_id``).

        Each face takes its roi nearest to the image's stamp; a roi more than
        ``slop_s`` from it belongs to another image (the detector kept the face
        without finding it in this one), a roi of another frame id to another
        camera: such faces are skipped, as are unusable rois.

        Returns:
            ``([(face_id, (x, y, w, h)), ...], [SkippedFace, ...])``.
        """
        faces: List[Tuple[str, Box]] = []
        skipped: List[SkippedFace] = []
        now = self._clock()
        with self._lock:
            snapshot = {fid: (list(self._rois.get(fid, ())), self._announced_at.get(fid, now)) for fid in face_ids}
        for fid, (rois, announced_at) in snapshot.items():
            topic = face_topic(fid, "roi")
            if not rois:
                waited = now - announced_at
                skipped.append(SkippedFace(fid, "no roi", f"face {fid!r} has been listed on {HRI_TRACKED_TOPIC} "
                                           f"for {waited:.1f} s but nothing arrived on {topic}",
                                           waited >= NO_ROI_GRACE_S))
                continue
            roi = min(rois, key=lambda r: abs(r.stamp_ns - stamp_ns))
            gap = (stamp_ns - roi.stamp_ns) / 1e9
            if abs(gap) > slop_s:
                when = "older" if gap > 0 else "newer"
                skipped.append(SkippedFace(fid, "stale roi", f"{topic}: the nearest roi is {abs(gap):.3f} s {when} "
                                           f"than the image, more than sync_slop {slop_s:.3f} s", False))
                continue
            if roi.frame_id and frame_id and roi.frame_id != frame_id:
                skipped.append(SkippedFace(fid, "other camera", f"{topic}: roi in frame {roi.frame_id!r}, the "
                                           f"colour image in {frame_id!r}; the face detector must read the "
                                           "colour_topic's camera", True))
                continue
            box, problem = roi_box(*roi.corners, width=int(shape[1]), height=int(shape[0]))
            if box is None:
                skipped.append(SkippedFace(fid, "bad roi", f"{topic}: {problem}", True))
                continue
            faces.append((fid, box))
        return faces, skipped


class HriFaceInput:
    """The subscriptions of ``face_source: ros4hri``: ``/humans/faces/tracked`` and each listed face's roi.

    Args:
        node: the subscribing node.
        on_tracked: called with every tracked list (in the executor's thread),
            after the roi subscriptions of its ids exist.
        log: ``log(level, text, detail)``: the node's throttled logger.
    """

    def __init__(self, node: Any, on_tracked: Callable[[Any], None],
                 log: Callable[[str, str, Optional[str]], None]) -> None:
        self._node = node
        self._on_tracked = on_tracked
        self._log = log
        self.faces = AnnouncedFaces()
        self._tracked_sub: Any = None
        self._roi_subs: Dict[str, Any] = {}

    @staticmethod
    def available() -> bool:
        """Whether ``hri_msgs`` (with REP-155's ``NormalizedRegionOfInterest2D``) is installed."""
        return HriRoi is not None

    def start(self) -> None:
        self._tracked_sub = self._node.create_subscription(HriIdsList, HRI_TRACKED_TOPIC, self._tracked, INPUT_QOS)

    def stop(self) -> None:
        for sub in [self._tracked_sub, *self._roi_subs.values()]:
            if sub is not None:
                self._node.destroy_subscription(sub)
        self._tracked_sub, self._roi_subs = None, {}
        self.faces.clear()

    def _tracked(self, msg: Any) -> None:
        ids, problems = usable_face_ids(msg.ids)
        for problem in problems:
            self._log("warning", f"{HRI_TRACKED_TOPIC} lists {problem}: that face is skipped", None)
        self.faces.announce(ids)
        for fid in [f for f in self._roi_subs if f not in ids]:
            self._node.destroy_subscription(self._roi_subs.pop(fid))
        for fid in ids:
            if fid not in self._roi_subs:
                try:
                    self._roi_subs[fid] = self._node.create_subscription(
                        HriRoi, face_topic(fid, "roi"), lambda m, fid=fid: self._roi(fid, m), INPUT_QOS)
                except Exception as exc:
                    self._log("warning", f"{HRI_TRACKED_TOPIC} lists face id {fid!r}, but "
                              f"{face_topic(fid, 'roi')} cannot be subscribed to "
                              f"({str(exc).strip().splitlines()[0]}): that face is skipped",
                              None)
        self._on_tracked(msg)

    def _roi(self, face_id: str, msg: Any) -> None:
        self.faces.add_roi(face_id, Roi(ros_stamp_ns(msg), str(msg.header.frame_id),
                                        (float(msg.xmin), float(msg.ymin), float(msg.xmax), float(msg.ymax))))

    def faces_for(self, tracked: Any, image_header: Any, shape: Tuple[int, int],
                  slop_s: float) -> Tuple[List[Tuple[str, Box]], List[str], int]:
        """The faces of one tracked list in its image.

        Args:
            tracked: the ``IdsList`` paired with the image.
            image_header: the colour image's header.
            shape: the colour image's ``(h, w)``.
            slop_s: largest roi/image stamp difference (``sync_slop``).

        Returns:
            ``(faces, ids, skipped)``: ``(face_id, box)`` of the faces to
            recognise, every usable id of the list, and how many listed faces
            were skipped (each in the log, throttled, or at debug level when routine).
        """
        stamp = stamp_ns(image_header.stamp)
        ids = usable_face_ids(tracked.ids)[0]
        faces, skipped = self.faces.faces_at(stamp, str(image_header.frame_id), shape, ids, slop_s)
        for s in skipped:
            text = f"face {s.face_id!r} skipped in the image stamped {stamp / 1e9:.3f}: {s.reason}"
            if s.kind == "no roi" and s.report:
                text += self._roi_publishers(s.face_id)
            if s.report:
                self._log("warning", text, f"{s.kind}: {s.reason}")
            else:
                self._node.get_logger().debug(text)
        return faces, ids, len(skipped)

    def _roi_publishers(self, face_id: str) -> str:
        """Why a face's roi topic stays silent, from the ROS graph."""
        topic = face_topic(face_id, "roi")
        types = sorted({i.topic_type for i in self._node.get_publishers_info_by_topic(topic)})
        if not types:
            return "; nothing publishes it: the face detector must publish each listed face's roi (REP-155)"
        if ROI_TYPE not in types:
            return (f"; it is published as {', '.join(types)}, not {ROI_TYPE} (REP-155's roi type in ROS 2)")
        return "; it is published as expected: check its QoS (reliable, as libhri reads it)"
