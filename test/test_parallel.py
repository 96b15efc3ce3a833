"""Lanes: a frame's independent jobs on a few threads give the results of one thread, in order."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from cmcnn_ros.inference import ExpressionStream, Recognizer
from cmcnn_ros.parallel import MAX_LANES, Lanes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.frames import photo_frame


def test_map_keeps_order_uses_helpers_and_stops():
    lanes = Lanes(2, name="test_lane")
    seen = set()

    def job(i):
        seen.add(threading.current_thread().name)
        time.sleep(0.01)   # long enough that both lanes take jobs
        return i * i

    assert lanes.map(job, range(8)) == [i * i for i in range(8)]
    assert threading.current_thread().name in seen and any(n.startswith("test_lane") for n in seen)
    assert lanes.running
    lanes.stop()
    assert not lanes.running and not [t for t in threading.enumerate() if t.name.startswith("test_lane")]
    assert lanes.map(job, [3, 4]) == [9, 16]   # starts again on demand
    lanes.stop()


def test_one_lane_starts_no_thread_and_errors_surface_after_all_jobs():
    before = threading.active_count()
    assert Lanes(1).map(lambda x: x + 1, [1, 2]) == [2, 3]
    assert threading.active_count() == before
    lanes = Lanes(2, name="err_lane")
    done = []

    def job(i):
        if i == 1:
            raise ValueError("job 1 failed")
        time.sleep(0.02)
        done.append(i)
        return i

    with pytest.raises(ValueError, match="job 1 failed"):
        lanes.map(job, range(4))
    assert sorted(done) == [0, 2, 3]   # every other job finished before the error was raised
    lanes.stop()


@pytest.mark.parametrize("count", [0, MAX_LANES + 1, 1.5, True])
def test_bad_lane_counts_are_refused(count):
    with pytest.raises(ValueError, match="lanes must be an integer in"):
        Lanes(count)


def test_recognizer_results_do_not_depend_on_the_number_of_lanes(tiny_checkpoint):
    """Five faces, full detection (whole frame + tiles on the lanes) and tracking frames: identical output."""
    runs = {}
    for lanes in (1, 2, 3):
        stream = ExpressionStream(Recognizer.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch",
                                                             redetect_interval=3, preprocessing_threads=lanes))
        out = []
        for step in range(4):
            colour, depth = photo_frame(5, jitter=2 * step)
            out.append([(f.box, f.roll, f.face_id, f.scores.tobytes()) for f in stream.process(colour, depth).faces])
        stream.stop_threads()
        runs[lanes] = out
    assert len(runs[1][0]) == 5
    assert runs[1] == runs[2] == runs[3]


def test_recognizer_refuses_a_bad_thread_count(tiny_checkpoint):
    from cmcnn_ros.inference import RecognizerError

    with pytest.raises(RecognizerError, match="preprocessing_threads: lanes must be an integer"):
        Recognizer.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", preprocessing_threads=0)
