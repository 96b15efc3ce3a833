"""Colour/depth synchronisation without message_filters, the latest-slot hand-off,
and a monitor that explains why streams never synchronise.

CM-CNN (Ni et al., IEEE TCDS 2023, Section III-B) needs each colour frame
paired with the depth frame registered to it. On a full ROS 2 install the node
uses ``message_filters.ApproximateTimeSynchronizer`` / ``TimeSynchronizer``;
the PyPI ROS 2 wheels lack message_filters, so :class:`ApproximateTimeSync`
and :class:`ExactTimeSync` reproduce their behaviour (same matching rule as
the Python message_filters implementation: a new message is paired with the
closest-in-time message of every other input when all stamps lie within
``slop``; matched messages leave the queues; each queue keeps at most
``queue_size`` messages, oldest dropped first). They are ROS-free and
thread-safe; stamps are integer nanoseconds from a caller-supplied function.

:class:`LatestSlot` is the "never build a backlog" hand-off between the sync
callback and the processing thread: it holds only the newest pair and counts
the ones overwritten before processing.

:class:`FollowSync` pairs another stream that follows the camera (a ROS4HRI
face detector's per-frame ``/humans/faces/tracked``) with the synchronised
pair of the image it was computed on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")
StampFn = Callable[[Any], int]

# Pairing defaults shared by the node's parameters (sync_slop,
# sync_queue_size) and the offline bag tools: one place, so a bag the node
# pairs is paired the same way offline. 50 ms is under two frame periods of a
# 30 Hz camera and covers the 25-35 ms depth lag of Kinect-style drivers.
DEFAULT_SLOP_S = 0.05
DEFAULT_QUEUE_SIZE = 10


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (rclpy or rosbags: anything with ``sec``/``nanosec``) as integer ns.

    The one conversion the node, the sync, the bag tools and the demo use, so
    a stamp keys the same frame everywhere.
    """
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ros_stamp_ns(msg: Any) -> int:
    """``header.stamp`` of a ROS message as integer nanoseconds."""
    return stamp_ns(msg.header.stamp)


class _TimeSyncBase:
    """Shared queueing for the two policies.

    Args:
        num_inputs: number of synchronised inputs (2 for colour + depth).
        queue_size: messages kept per input while waiting for partners (>= 1).
        callback: called with one message per input, in input order.
        stamp_fn: message -> stamp in integer nanoseconds.

    Raises:
        ValueError: num_inputs < 1 or queue_size < 1.
    """

    def __init__(self, num_inputs: int, queue_size: int, callback: Callable[..., None],
                 stamp_fn: StampFn = ros_stamp_ns) -> None:
        if num_inputs < 1:
            raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = int(queue_size)
        self._callback = callback
        self._stamp = stamp_fn
        self._queues: List[Dict[int, Any]] = [{} for _ in range(num_inputs)]
        self._lock = threading.Lock()

    def add(self, index: int, msg: Any) -> None:
        """Feed one message of input ``index``; may fire the callback once."""
        stamp = self._stamp(msg)
        with self._lock:
            queue = self._queues[index]
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            match = self._match(index, stamp)
            if match is None:
                return
            msgs = [q.pop(t) for q, t in zip(self._queues, match)]
        # Outside the lock so a slow callback never blocks other inputs.
        self._callback(*msgs)

    def _match(self, index: int, stamp: int) -> Optional[List[int]]:
        raise NotImplementedError


class ExactTimeSync(_TimeSyncBase):
    """Pairs messages with identical stamps (message_filters.TimeSynchronizer)."""

    def _match(self, index: int, stamp: int) -> Optional[List[int]]:
        if all(stamp in q for q in self._queues):
            return [stamp] * len(self._queues)
        return None


class ApproximateTimeSync(_TimeSyncBase):
    """Pairs messages whose stamps differ by less than ``slop`` seconds
    (message_filters.ApproximateTimeSynchronizer).

    Args:
        slop: largest stamp spread (seconds) of a matched set; > 0.

    Raises:
        ValueError: slop <= 0 or the base class arguments are bad.
    """

    def __init__(self, num_inputs: int, queue_size: int, slop: float,
                 callback: Callable[..., None], stamp_fn: StampFn = ros_stamp_ns) -> None:
        super().__init__(num_inputs, queue_size, callback, stamp_fn)
        if not slop > 0:
            raise ValueError(f"slop must be > 0 seconds, got {slop}")
        self.slop_ns = int(round(slop * 1e9))

    def _match(self, index: int, stamp: int) -> Optional[List[int]]:
        candidates: List[List[int]] = []
        for i, q in enumerate(self._queues):
            if i == index:
                continue
            near = sorted((s for s in q if abs(s - stamp) <= self.slop_ns),
                          key=lambda s: abs(s - stamp))
            if not near:
                return None
            candidates.append(near)
        for combo in itertools.product(*candidates):
            stamps = list(combo)
            stamps.insert(index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns:
                return stamps
        return None


class FollowSync:
    """Pairs each message of a stream that follows the camera with the frame it belongs to.

    A detector running on the same camera (ROS4HRI's ``hri_face_detect``)
    publishes one message per image it processed, stamped with that image's
    stamp (REP-155), some time after the image; it skips images when it is
    slower than the camera. Each such *lead* message is paired with the
    buffered *frame* (a synchronised colour/depth pair) nearest to it in stamp
    (equal stamps under the exact policy, at most ``slop`` apart otherwise),
    and only once no later message of either stream could be nearer: a frame
    at or after the lead's stamp has arrived (later frames are further away),
    and the lead is at or after the frame's stamp or a later lead has arrived.
    So a lead whose own frame was lost is never paired with the next frame
    while that frame's own lead is on its way, which would put every later
    lead one frame off. Paired frames and the frames before them leave the
    buffer; leads that can no longer be paired are dropped and counted.
    Thread-safe; ROS-free (stamps from ``stamp_fn``).

    Args:
        queue_size: frames and leads kept while waiting (>= 1, oldest dropped first).
        slop: largest stamp difference in seconds; None pairs equal stamps only.
        callback: called with ``(frame, lead)`` per pair, outside the lock.
        frame_stamp, lead_stamp: message -> integer nanoseconds.

    Raises:
        ValueError: queue_size < 1 or slop <= 0.
    """

    def __init__(self, queue_size: int, slop: Optional[float], callback: Callable[[Any, Any], None],
                 frame_stamp: StampFn, lead_stamp: StampFn = ros_stamp_ns) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop is not None and not slop > 0:
            raise ValueError(f"slop must be > 0 seconds, got {slop}")
        self.slop_ns = 0 if slop is None else int(round(slop * 1e9))
        self._callback = callback
        self._frame_stamp, self._lead_stamp = frame_stamp, lead_stamp
        self._frames: Deque[Tuple[int, Any]] = deque(maxlen=int(queue_size))
        self._leads: Deque[Tuple[int, Any]] = deque(maxlen=int(queue_size))
        self._lock = threading.Lock()
        self.dropped_leads = 0

    def add_frame(self, frame: Any) -> None:
        self._add(self._frames, self._frame_stamp(frame), frame)

    def add_lead(self, lead: Any) -> None:
        self._add(self._leads, self._lead_stamp(lead), lead)

    def _add(self, queue: Deque[Tuple[int, Any]], stamp: int, msg: Any) -> None:
        with self._lock:
            if queue is self._leads and len(queue) == queue.maxlen:
                self.dropped_leads += 1
            queue.append((stamp, msg))
            pairs = self._settle()
        for frame, lead in pairs:
            self._callback(frame, lead)

    def _settle(self) -> List[Tuple[Any, Any]]:
        pairs: List[Tuple[Any, Any]] = []
        while self._leads:
            lead_t, lead = self._leads[0]
            near = [(abs(t - lead_t), i) for i, (t, _) in enumerate(self._frames) if abs(t - lead_t) <= self.slop_ns]
            newest_frame = max((t for t, _ in self._frames), default=None)
            if not near:
                if newest_frame is not None and newest_frame > lead_t + self.slop_ns:
                    self._leads.popleft()      # its frame was lost or already taken: it cannot pair any more
                    self.dropped_leads += 1
                    continue
                break                          # its frame may still come
            gap, index = min(near)
            frame_t = self._frames[index][0]
            if any(abs(t - frame_t) < gap for t, _ in list(self._leads)[1:]):
                self._leads.popleft()          # a later lead is nearer to that frame: it takes it
                self.dropped_leads += 1
                continue
            frames_final = newest_frame >= lead_t
            leads_final = lead_t >= frame_t or len(self._leads) > 1
            if not (frames_final and leads_final):
                break
            self._leads.popleft()
            for _ in range(index):             # frames before the paired one: no later lead wants them
                self._frames.popleft()
            pairs.append((self._frames.popleft()[1], lead))
        return pairs


class LatestSlot(Generic[T]):
    """A one-item mailbox: ``put`` replaces, ``take`` waits for the newest.

    The sync callback puts each synchronised pair; the worker takes the newest
    when it is free. Items replaced before being taken are counted in
    ``dropped``, so the node never queues work and latency cannot grow.
    """

    def __init__(self) -> None:
        self._item: Optional[T] = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; return True when an unprocessed item was dropped."""
        with self._cond:
            dropped = self._full
            if dropped:
                self.dropped += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """Wait up to ``timeout`` s for an item; None on timeout or close."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> None:
        """Forget a pending item (deactivation); not counted as a drop."""
        with self._cond:
            self._item, self._full = None, False

    def close(self) -> None:
        """Wake a waiting ``take`` for shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _InputSeen:
    name: str
    topic: str
    count: int = 0
    zero_stamps: int = 0
    frame_ids: Dict[str, int] = field(default_factory=dict)
    stamps: Deque[int] = field(default_factory=lambda: deque(maxlen=60))
    last_arrival: Optional[float] = None  # monitor clock time of the newest message


class SyncMonitor:
    """Watches what arrives on each input and explains a synchronisation stall.

    Thread-safe. The node calls :meth:`observe` for every message,
    :meth:`paired` for every synchronised set and :meth:`diagnose`
    periodically; ``diagnose`` returns a warning when no set has been
    synchronised for ``delay`` seconds, naming what it saw: no messages on a
    topic, a topic (or all of them) gone silent for ``delay`` seconds after
    having sent messages, zero stamps, stamps further apart than the slop (by
    how much), never-equal stamps under the exact policy, differing frame ids.
    It judges from what arrived recently, not from running totals, so a
    camera that stops is reported as silent rather than as "not matching".

    Args:
        inputs: ``(name, topic)`` per input, e.g. ``[("colour", "/camera/color/image_raw"), ...]``;
            stamps of every other input are compared with the first one's.
        slop: the synchroniser's slop in seconds (None for the exact policy).
        delay: seconds without a synchronised set before warning.
        clock: monotonic time source (for tests).
        subject: what a synchronised set is, for the warning.
    """

    def __init__(self, inputs: Sequence[Tuple[str, str]], slop: Optional[float], delay: float,
                 clock: Callable[[], float] = time.monotonic, subject: str = "colour/depth pair") -> None:
        self._subject = subject
        self._inputs = [_InputSeen(n, t) for n, t in inputs]
        self._slop = slop
        self._delay = float(delay)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._last_pair: Optional[float] = None
        self.pairs = 0

    def reset(self) -> None:
        """Start a fresh observation window (on activation)."""
        with self._lock:
            for seen in self._inputs:
                seen.count = seen.zero_stamps = 0
                seen.frame_ids.clear()
                seen.stamps.clear()
                seen.last_arrival = None
            self._start = self._clock()
            self._last_pair = None
            self.pairs = 0

    def observe(self, index: int, stamp_ns: int, frame_id: str) -> None:
        with self._lock:
            seen = self._inputs[index]
            seen.count += 1
            if stamp_ns == 0:
                seen.zero_stamps += 1
            seen.frame_ids[frame_id] = seen.frame_ids.get(frame_id, 0) + 1
            seen.stamps.append(stamp_ns)
            seen.last_arrival = self._clock()

    def paired(self) -> None:
        with self._lock:
            self._last_pair = self._clock()
            self.pairs += 1

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return {s.name: s.count for s in self._inputs}

    def diagnose(self) -> Optional[str]:
        """A warning text when synchronisation has stalled, else None."""
        with self._lock:
            now = self._clock()
            since = self._last_pair if self._last_pair is not None else self._start
            if now - since < self._delay:
                return None
            waited = now - since
            head = (f"no synchronised {self._subject}" if self._last_pair is None
                    else f"no synchronised {self._subject} since the last one")
            reasons: List[str] = []
            never = [s for s in self._inputs if s.count == 0]
            # Inputs that sent messages once but nothing for `delay` seconds.
            stopped = [s for s in self._inputs if s.count and s.last_arrival is not None
                       and now - s.last_arrival >= self._delay]
            if stopped and len(stopped) + len(never) == len(self._inputs):
                quiet = ", ".join(f"{s.name} '{s.topic}' ({now - s.last_arrival:.1f} s ago, "
                                  f"{s.count} received)" for s in stopped)
                reasons.append(f"the inputs went silent: the last messages arrived on {quiet}"
                               + ("" if not never else " and none ever on "
                                  + ", ".join(f"{s.name} '{s.topic}'" for s in never))
                               + "; check that the camera driver is still running and publishing")
                return f"{head} for {waited:.1f} s: " + "; ".join(reasons)
            for s in never:
                others = ", ".join(f"{o.name}: {o.count}" for o in self._inputs if o is not s)
                reasons.append(f"no messages on the {s.name} topic '{s.topic}' ({others} received); "
                               "check the topic name / remapping and the publisher's QoS")
            for s in stopped:
                reasons.append(f"the {s.name} topic '{s.topic}' went silent {now - s.last_arrival:.1f} s "
                               f"ago ({s.count} received) while the others still publish; check its driver")
            for s in self._inputs:
                if s.zero_stamps:
                    reasons.append(f"{s.zero_stamps} of {s.count} {s.name} messages have a zero "
                                   "header.stamp; the driver must stamp its images")
            if not never and not stopped:
                reasons.extend(self._stamp_reasons())
                ids = [sorted(s.frame_ids) for s in self._inputs]
                if any(i != ids[0] for i in ids[1:]):
                    pairs = ", ".join(f"{s.name} {sorted(s.frame_ids)}" for s in self._inputs)
                    reasons.append(f"frame ids differ ({pairs}); the depth must be registered "
                                   "to the colour camera (e.g. depth_registered / depth_to_rgb)")
            if not reasons:
                reasons.append("messages arrive but none matched yet")
            return f"{head} for {waited:.1f} s: " + "; ".join(reasons)

    def _stamp_reasons(self) -> List[str]:
        stamped = [[t for t in s.stamps if t] for s in self._inputs]
        if any(not st for st in stamped) or len(stamped) < 2:
            return []
        out: List[str] = []
        for other, seen in zip(stamped[1:], self._inputs[1:]):
            closest = min(abs(a - b) for a, b in itertools.product(stamped[0], other)) / 1e9
            names = f"{self._inputs[0].name} and {seen.name}"
            if self._slop is None:
                if closest > 0:
                    out.append(f"{names} stamps are never equal (closest {closest * 1e3:.1f} ms apart) "
                               "under sync_policy 'exact'; use 'approximate'")
            elif closest >= self._slop:
                out.append(f"{names} stamps are {closest:.3f} s apart at best, more than "
                           f"sync_slop {self._slop:.3f} s; raise sync_slop or fix the clocks")
        return out
