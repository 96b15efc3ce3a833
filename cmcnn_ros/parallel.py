"""Lanes: independent jobs of one frame run side by side on a few threads.

A frame's expensive steps split into independent jobs: BlazeFace on the
whole frame and on each tile, FaceMesh and the crops of each face. The
models' runtimes (LiteRT, OpenCV, ONNX Runtime) release the GIL while they
compute, so on a 2-core robot computer two threads finish such a batch in
about half the time (measured: README, Benchmarks). Each job's result lands
in its own slot, so the output, and everything computed from it, is the same
for any number of lanes.

The calling thread is one of the lanes: ``Lanes(1)`` starts no thread, and
``Lanes(2)`` one helper, made on first use. :meth:`Lanes.stop` ends the
helpers (a paused node keeps no thread); the next :meth:`Lanes.map` starts
them again.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Most lanes any caller may ask for (a robot computer's cores, with room).
MAX_LANES = 16
#: The node's and the expression stream's default: on video with several faces two
#: lanes kept the 5-face latency lower on the 2-core machines it was measured on
#: (README, Benchmarks); one more thread costs little on one core.
DEFAULT_LANES = 2


class Lanes:
    """Run the jobs of one call on up to ``count`` threads (the caller's and ``count - 1`` helpers).

    Jobs must not share unguarded mutable state; the models they call keep
    one interpreter per thread (:class:`~cmcnn_ros.preprocessing.tflite.TFLiteModel`).

    Args:
        count: lanes, 1 (no helper thread) to :data:`MAX_LANES`.
        name: helper thread name prefix (seen in ``ps -T``, ``py-spy``, thread dumps).

    Raises:
        ValueError: ``count`` out of range.
    """

    def __init__(self, count: int = 1, name: str = "cmcnn_lane") -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_LANES:
            raise ValueError(f"lanes must be an integer in [1, {MAX_LANES}], got {count!r}")
        self.count = count
        self.name = name
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
        """``[fn(item) for item in items]``, the items shared out over the lanes; results in order.

        The first exception of a job is raised once every job has finished
        (no job is left running behind the caller's back).
        """
        items = list(items)
        if self.count == 1 or len(items) < 2:
            return [fn(item) for item in items]
        results: List[object] = [None] * len(items)
        errors: List[BaseException] = []
        next_index = iter(range(len(items)))
        take = threading.Lock()

        def work() -> None:
            while True:
                with take:
                    i = next(next_index, None)
                if i is None:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as exc:
                    errors.append(exc)

        helpers = [self._executor().submit(work) for _ in range(min(self.count, len(items)) - 1)]
        work()
        for helper in helpers:
            helper.result()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.count - 1, thread_name_prefix=self.name)
            return self._pool

    def stop(self) -> None:
        """End the helper threads (waits for a running call); the next :meth:`map` starts new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        """Whether helper threads may be alive (started and not stopped)."""
        return self._pool is not None
