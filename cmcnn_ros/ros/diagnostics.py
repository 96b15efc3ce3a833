"""Rates, latency percentiles and counters behind the node's ``/diagnostics``.

Not part of the paper's method (Ni et al., IEEE TCDS 2023); it is how the node
shows that the CM-CNN pipeline keeps up with the camera: input and processed
rates, dropped pairs, stamp-to-publish latency (p50/p95), bad messages, and
:class:`LogThrottle`, which keeps a storm of bad messages out of the log.
ROS-free and thread-safe; the node turns :meth:`PipelineStats.key_values`
into a ``diagnostic_msgs/DiagnosticStatus``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np


class RateMeter:
    """Events per second over a sliding window.

    Args:
        window: seconds of history.
        clock: monotonic time source.
    """

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = float(window)
        self._clock = clock
        self._times: Deque[float] = deque()

    def tick(self) -> None:
        self._times.append(self._clock())
        self._trim()

    def _trim(self) -> None:
        limit = self._clock() - self._window
        while self._times and self._times[0] < limit:
            self._times.popleft()

    def rate(self) -> float:
        """Hz over the window (0 with fewer than two events)."""
        self._trim()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class LatencyWindow:
    """The last ``size`` latencies (ms) and their percentiles."""

    def __init__(self, size: int = 300) -> None:
        self._values: Deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._values.append(float(ms))

    def percentiles(self, qs: Tuple[float, ...] = (50, 95)) -> Optional[List[float]]:
        if not self._values:
            return None
        return [float(v) for v in np.percentile(np.fromiter(self._values, float), qs)]


class PipelineStats:
    """All counters of one node run (reset on activation)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.input_rate = RateMeter(clock=self._clock)
            self.processed_rate = RateMeter(clock=self._clock)
            self.latency = LatencyWindow()
            self.processing = LatencyWindow()
            self.pairs = 0
            self.processed = 0
            self.dropped = 0
            self.bad_messages = 0
            self.zero_stamps = 0
            self.faces = 0
            self.faces_skipped = 0
            self.without_intrinsics = 0
            self.last_error = ""
            self.stages: Dict[str, LatencyWindow] = {}

    def on_pair(self, dropped: bool) -> None:
        with self._lock:
            self.pairs += 1
            self.dropped += int(dropped)
            self.input_rate.tick()

    def on_dropped(self) -> None:
        """A prepared frame replaced before the publishing stage took it (counted with the dropped pairs)."""
        with self._lock:
            self.dropped += 1

    def on_processed(self, latency_ms: float, processing_ms: float, faces: int) -> None:
        with self._lock:
            self.processed += 1
            self.faces += faces
            self.processed_rate.tick()
            self.latency.add(latency_ms)
            self.processing.add(processing_ms)

    def on_stages(self, timings: Dict[str, float]) -> None:
        """Milliseconds of each stage of one published frame (decode, detect, align, ..., publish)."""
        with self._lock:
            for name, ms in timings.items():
                self.stages.setdefault(name, LatencyWindow()).add(ms)

    def on_bad(self, reason: str) -> None:
        with self._lock:
            self.bad_messages += 1
            self.last_error = reason

    def on_faces_skipped(self, count: int) -> None:
        """Faces another detector announced that could not be processed (stale or bad roi, see the log)."""
        with self._lock:
            self.faces_skipped += int(count)

    def on_without_intrinsics(self) -> None:
        """A frame whose faces could not be located: no usable camera_info for it (see the log)."""
        with self._lock:
            self.without_intrinsics += 1

    def on_zero_stamp(self) -> None:
        with self._lock:
            self.zero_stamps += 1

    def key_values(self) -> Dict[str, str]:
        """Diagnostic key/value strings (stable keys, documented in the README)."""
        with self._lock:
            lat = self.latency.percentiles() or [float("nan")] * 2
            proc = self.processing.percentiles() or [float("nan")] * 2
            return {
                "input rate (Hz)": f"{self.input_rate.rate():.2f}",
                "processed rate (Hz)": f"{self.processed_rate.rate():.2f}",
                "synchronised pairs": str(self.pairs),
                "processed frames": str(self.processed),
                "dropped pairs": str(self.dropped),
                "latency p50 (ms)": f"{lat[0]:.1f}",
                "latency p95 (ms)": f"{lat[1]:.1f}",
                "processing p50 (ms)": f"{proc[0]:.1f}",
                "processing p95 (ms)": f"{proc[1]:.1f}",
                "bad messages": str(self.bad_messages),
                "zero stamps": str(self.zero_stamps),
                "faces published": str(self.faces),
                "followed faces skipped": str(self.faces_skipped),
                "frames without camera_info": str(self.without_intrinsics),
                "last bad message": self.last_error,
                "stage p50 (ms)": ", ".join(f"{name} {window.percentiles((50,))[0]:.1f}"
                                            for name, window in self.stages.items() if window.percentiles()),
            }


class LogThrottle:
    """Let a log line through at most once per period per kind, but always when its detail is new.

    The kind is the detail (default: the text) with numbers masked; the detail
    is what differs between two messages of a kind worth reading (e.g.
    3840x2160 vs 640x480 after an earlier 320x240). The last 32 details of each
    kind count as seen; at most 5 new details a period pass, so a storm of
    ever-changing sizes cannot flood the log.
    """

    def __init__(self) -> None:
        self._last: Dict[str, Tuple[float, int]] = {}  # kind -> (period start, new details let through)
        self._details: Dict[str, "OrderedDict[str, float]"] = {}
        self._lock = threading.Lock()

    def allow(self, text: str, period: float, detail: Optional[str] = None) -> bool:
        """Whether ``text`` should be logged now."""
        detail = text if detail is None else detail
        key = re.sub(r"\d+(\.\d+)?", "#", detail)[:160]
        now = time.monotonic()
        with self._lock:
            seen = self._details.setdefault(key, OrderedDict())
            new_detail = detail not in seen
            seen[detail] = now
            seen.move_to_end(detail)
            while len(seen) > 32:
                seen.popitem(last=False)
            last, extra = self._last.get(key, (-math.inf, 0))
            if now - last >= period:
                self._last[key] = (now, 0)
            elif new_detail and extra < 5:
                self._last[key] = (last, extra + 1)
            else:
                return False
        return True
