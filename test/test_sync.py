"""ROS-free tests of the fallback synchronisers, the latest slot and the sync monitor."""

from __future__ import annotations

import threading

import pytest

from cmcnn_ros.ros.sync import ApproximateTimeSync, ExactTimeSync, FollowSync, LatestSlot, SyncMonitor

MS = 1_000_000


def ident(x):
    return x


def collect():
    out = []
    return out, (lambda *m: out.append(m))


def test_approximate_pairs_within_slop_and_picks_closest():
    out, cb = collect()
    s = ApproximateTimeSync(2, 10, 0.02, cb, stamp_fn=ident)
    s.add(0, 100 * MS)
    s.add(1, 130 * MS)          # 30 ms away: outside slop
    assert out == []
    s.add(0, 133 * MS)          # closest partner 130 -> fires once
    assert out == [(133 * MS, 130 * MS)]
    s.add(1, 101 * MS)          # 100 still queued, pairs now
    assert out[-1] == (100 * MS, 101 * MS)


def test_approximate_prefers_closest_of_several():
    out, cb = collect()
    s = ApproximateTimeSync(2, 10, 0.05, cb, stamp_fn=ident)
    for t in (100, 110, 120):
        s.add(1, t * MS)
    s.add(0, 112 * MS)
    assert out == [(112 * MS, 110 * MS)]


def test_matched_messages_are_consumed():
    out, cb = collect()
    s = ApproximateTimeSync(2, 10, 0.01, cb, stamp_fn=ident)
    s.add(0, 5 * MS)
    s.add(1, 5 * MS)
    s.add(1, 6 * MS)  # colour 5 already used
    assert out == [(5 * MS, 5 * MS)]


def test_queue_size_drops_oldest():
    out, cb = collect()
    s = ApproximateTimeSync(2, 2, 0.001, cb, stamp_fn=ident)
    for t in (1, 2, 3):
        s.add(0, t * 1000 * MS)
    s.add(1, 1000 * MS)         # 1 s was dropped from the 2-deep queue
    assert out == []
    s.add(1, 3000 * MS)
    assert out == [(3000 * MS, 3000 * MS)]


def test_exact_needs_equal_stamps():
    out, cb = collect()
    s = ExactTimeSync(2, 5, cb, stamp_fn=ident)
    s.add(0, 10)
    s.add(1, 11)
    assert out == []
    s.add(1, 10)
    assert out == [(10, 10)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSync(2, 5, 0.0, print)
    with pytest.raises(ValueError, match="queue_size"):
        ExactTimeSync(2, 0, print)


def test_three_inputs_like_message_filters():
    out, cb = collect()
    s = ApproximateTimeSync(3, 5, 0.01, cb, stamp_fn=ident)
    s.add(0, 100 * MS)
    s.add(2, 105 * MS)
    s.add(1, 120 * MS)
    assert out == []
    s.add(1, 102 * MS)
    assert out == [(100 * MS, 102 * MS, 105 * MS)]


def follow(slop=0.05, queue_size=10):
    out = []
    return out, FollowSync(queue_size, slop, lambda f, lead: out.append((f, lead)), frame_stamp=ident,
                           lead_stamp=ident)


def test_follow_pairs_each_lead_with_its_frame_when_the_detector_skips_frames():
    """A detector slower than the camera lists every other image: only those are paired, at once."""
    out, s = follow()
    for i in range(6):
        s.add_frame(i * 33 * MS)
        if i % 2 == 0:
            s.add_lead(i * 33 * MS)     # the detector's list of image i, after the image
    assert out == [(0, 0), (66 * MS, 66 * MS), (132 * MS, 132 * MS)]
    assert s.dropped_leads == 0


def test_follow_waits_for_a_frame_that_comes_after_its_lead():
    out, s = follow()
    s.add_frame(0)
    s.add_lead(0)
    s.add_lead(33 * MS)                 # the list came before its image (depth lagging)
    assert out == [(0, 0)]
    s.add_frame(33 * MS)
    assert out == [(0, 0), (33 * MS, 33 * MS)]


def test_follow_never_shifts_by_a_frame_after_a_lost_image():
    """The list of a lost image must not take the next image, or every later list would be one off."""
    out, s = follow()
    s.add_frame(0)
    s.add_lead(0)
    s.add_lead(33 * MS)                 # its image never arrived here
    s.add_frame(66 * MS)                # within slop of the orphan list, but its own list is on the way
    assert out == [(0, 0)]
    s.add_lead(66 * MS)
    s.add_frame(99 * MS)
    s.add_lead(99 * MS)
    assert out == [(0, 0), (66 * MS, 66 * MS), (99 * MS, 99 * MS)]
    assert s.dropped_leads == 1


def test_follow_takes_the_nearest_frame_when_stamps_differ_a_little():
    out, s = follow()
    s.add_frame(0)
    s.add_lead(5 * MS)                  # a detector that stamps 5 ms late: a nearer image could still come
    assert out == []
    s.add_frame(33 * MS)
    assert out == [(0, 5 * MS)]
    s.add_lead(200 * MS)                # no image within slop: dropped once a later image shows it is lost
    s.add_frame(300 * MS)
    assert out == [(0, 5 * MS)] and s.dropped_leads == 1


def test_follow_exact_policy_pairs_equal_stamps_only():
    out, s = follow(slop=None)
    s.add_frame(10)
    s.add_lead(11)
    s.add_frame(20)
    s.add_lead(20)
    assert out == [(20, 20)] and s.dropped_leads == 1
    with pytest.raises(ValueError, match="slop"):
        FollowSync(5, 0.0, print, frame_stamp=ident)


def test_monitor_names_a_silent_third_input_and_its_stamp_gap():
    clock = FakeClock()
    m = SyncMonitor([("colour", "/c"), ("depth", "/d"), ("tracked", "/humans/faces/tracked")], slop=0.05,
                    delay=3.0, clock=clock, subject="colour/depth pair with its tracked list")
    clock.t = 2.9
    m.observe(0, 1_000 * MS, "cam")
    m.observe(1, 1_000 * MS, "cam")
    clock.t = 3.0
    assert m.diagnose().startswith("no synchronised colour/depth pair with its tracked list for 3.0 s: "
                                   "no messages on the tracked topic '/humans/faces/tracked' (colour: 1, depth: 1")
    m.observe(2, 1_400 * MS, "cam")
    assert "colour and tracked stamps are 0.400 s apart at best, more than sync_slop 0.050 s" in m.diagnose()


def test_latest_slot_keeps_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(0) == 3
    assert slot.take(0.01) is None
    assert slot.dropped == 2 and slot.put_count == 3


def test_latest_slot_wakes_worker_and_close():
    slot: LatestSlot[str] = LatestSlot()
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take(5)))
    t.start()
    slot.put("x")
    t.join(2)
    assert got == ["x"]
    t = threading.Thread(target=lambda: got.append(slot.take(5)))
    t.start()
    slot.close()
    t.join(2)
    assert not t.is_alive() and got[-1] is None


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def monitor(slop=0.05):
    clock = FakeClock()
    m = SyncMonitor([("colour", "/c"), ("depth", "/d")], slop=slop, delay=3.0, clock=clock)
    return m, clock


def test_monitor_quiet_before_delay_and_after_pairs():
    m, clock = monitor()
    clock.t = 2.0
    assert m.diagnose() is None
    m.paired()
    clock.t = 4.0
    assert m.diagnose() is None
    clock.t = 5.5
    assert "since the last one for 3.5 s" in m.diagnose()


def test_monitor_names_silent_topic():
    m, clock = monitor()
    for i in range(5):
        clock.t = 3.0 + 0.1 * i   # colour still streaming
        m.observe(0, (i + 1) * 33 * MS, "cam")
    clock.t = 3.5
    msg = m.diagnose()
    assert "no messages on the depth topic '/d' (colour: 5 received)" in msg


def test_monitor_zero_stamps_and_gap_and_frame_ids():
    m, clock = monitor()
    clock.t = 2.5   # both inputs still streaming when the warning comes
    m.observe(0, 0, "rgb")
    m.observe(0, 1_000 * MS, "rgb")
    m.observe(1, 1_250 * MS, "depth")
    clock.t = 3.0
    msg = m.diagnose()
    assert "1 of 2 colour messages have a zero header.stamp" in msg
    assert "0.250 s apart at best, more than sync_slop 0.050 s" in msg
    assert "frame ids differ (colour ['rgb'], depth ['depth'])" in msg


def test_monitor_exact_policy_hint():
    m, clock = monitor(slop=None)
    clock.t = 9
    m.observe(0, 1_000 * MS, "c")
    m.observe(1, 1_004 * MS, "c")
    clock.t = 10
    assert "never equal (closest 4.0 ms apart) under sync_policy 'exact'" in m.diagnose()


def test_monitor_says_inputs_went_silent_when_the_camera_stops():
    """Issue 10.3: after pairs flowed, a stopped camera is "silent", not "not matching"."""
    m, clock = monitor()
    for i in range(30):                      # 1 s of paired 30 Hz frames
        clock.t = i / 30
        m.observe(0, i * 33 * MS, "cam")
        m.observe(1, i * 33 * MS, "cam")
        m.paired()
    clock.t = 1.0 + 3.2                      # then nothing for 3.2 s
    msg = m.diagnose()
    assert msg is not None
    assert "messages arrive but none matched" not in msg
    assert "the inputs went silent" in msg
    assert "colour '/c' (3.2 s ago, 30 received)" in msg and "depth '/d' (3.2 s ago, 30 received)" in msg


def test_monitor_names_the_one_input_that_stopped():
    m, clock = monitor()
    for i in range(30):
        clock.t = i / 30
        m.observe(0, i * 33 * MS, "cam")
        m.observe(1, i * 33 * MS, "cam")
        m.paired()
    for i in range(120):                     # colour goes on alone for 4 s
        clock.t = 1.0 + i / 30
        m.observe(0, (30 + i) * 33 * MS, "cam")
    msg = m.diagnose()
    assert "the depth topic '/d' went silent 4.0 s ago (30 received) while the others still publish" in msg
    assert "inputs went silent" not in msg


def test_sync_defaults_shared_by_node_and_bag_tools():
    """Issue 10.8: the node's sync parameters and the bag tools' defaults come from one place."""
    import inspect

    from cmcnn_ros.ros import sync
    from cmcnn_ros.ros.parameters import PARAMETERS
    from cmcnn_ros.tools import bag_evaluate, bag_io

    assert PARAMETERS["sync_slop"][0] == sync.DEFAULT_SLOP_S == 0.05
    assert PARAMETERS["sync_queue_size"][0] == sync.DEFAULT_QUEUE_SIZE
    assert bag_evaluate.EvaluateOptions().slop_s == sync.DEFAULT_SLOP_S
    assert bag_evaluate.get_args_parser().parse_args(["x"]).slop == sync.DEFAULT_SLOP_S
    params = inspect.signature(bag_io.iter_frame_pairs).parameters
    assert params["slop_s"].default == sync.DEFAULT_SLOP_S
    assert params["queue_size"].default == sync.DEFAULT_QUEUE_SIZE
