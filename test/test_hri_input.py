"""What face_source ros4hri reads from a ROS4HRI detector, without ROS: rois to boxes, ids, stale rois.

The node end to end (a detector process, fer_node, a consumer) is in test_ros_hri.py.
"""

from __future__ import annotations

import math

import pytest

from cmcnn_ros.ros.hri_input import AnnouncedFaces, Roi, face_id_problem, roi_box, usable_face_ids

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_roi_box_turns_normalised_corners_into_pixels():
    assert roi_box(0.25, 0.5, 0.5, 1.0, width=640, height=480) == ((160, 240, 160, 240), "")
    assert roi_box(0.0, 0.0, 1.0, 1.0, 640, 480) == ((0, 0, 640, 480), "")
    assert roi_box(-1e-4, 0.2, 0.3, 1.0004, 640, 480)[0] == (0, 96, 192, 384)   # float rounding at the edge


@pytest.mark.parametrize("corners, text", [
    ((0.9, 0.1, 1.3, 0.4), "lies outside the image: REP-155 roi corners are normalised to [0, 1]"),
    ((120.0, 40.0, 260.0, 200.0), "(is the detector publishing pixels?)"),
    ((-0.2, 0.1, 0.3, 0.4), "lies outside the image"),
    ((math.nan, 0.1, 0.3, 0.4), "is not finite"),
    ((0.5, 0.1, 0.3, 0.4), "is empty or inverted"),
    ((0.5, 0.5, 0.505, 0.51), "is 4x5 pixels of a 640x480 image, too small to crop"),
])
def test_roi_box_refuses_what_cannot_be_a_face_in_this_image(corners, text):
    box, problem = roi_box(*corners, width=640, height=480)
    assert box is None and text in problem
    assert ("pixels?" in problem) == (max(corners) > 2.0)


def test_face_ids_must_name_topics():
    assert face_id_problem("f00012") is None and face_id_problem("abcde") is None
    assert "cannot name a ROS topic" in face_id_problem("9lives")
    assert "cannot name a ROS topic" in face_id_problem("face/1")
    assert face_id_problem("") == "an empty face id"
    assert "too long to name a ROS topic" in face_id_problem("a" * 300)
    ids, problems = usable_face_ids(["abc", "9lives", "abc", "", "f1"])
    assert ids == ["abc", "f1"] and len(problems) == 2


def test_faces_at_takes_each_faces_roi_of_the_image_and_says_why_others_are_skipped():
    clock = FakeClock()
    faces = AnnouncedFaces(clock=clock)
    assert faces.announce(["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d", "e"]
    t = 10_000 * MS
    faces.add_roi("a", Roi(t - 33 * MS, "cam", (0.1, 0.1, 0.3, 0.4)))
    faces.add_roi("a", Roi(t, "cam", (0.2, 0.1, 0.4, 0.4)))               # this image's roi: taken
    faces.add_roi("a", Roi(t + 33 * MS, "cam", (0.3, 0.1, 0.5, 0.4)))
    faces.add_roi("b", Roi(t - 200 * MS, "cam", (0.5, 0.1, 0.7, 0.4)))    # kept by the detector, not seen now
    faces.add_roi("c", Roi(t, "other_cam", (0.5, 0.5, 0.7, 0.9)))
    faces.add_roi("d", Roi(t, "cam", (0.9, 0.5, 1.4, 0.9)))
    assert not faces.add_roi("ghost", Roi(t, "cam", (0.1, 0.1, 0.2, 0.2)))   # never announced: ignored
    found, skipped = faces.faces_at(t, "cam", (480, 640), ["a", "b", "c", "d", "e", "ghost"], slop_s=0.05)
    assert found == [("a", (128, 48, 128, 144))]
    why = {s.face_id: (s.kind, s.report) for s in skipped}
    assert why == {"b": ("stale roi", False), "c": ("other camera", True), "d": ("bad roi", True),
                   "e": ("no roi", False), "ghost": ("no roi", False)}
    by_id = {s.face_id: s.reason for s in skipped}
    assert by_id["b"] == ("/humans/faces/b/roi: the nearest roi is 0.200 s older than the image, more than "
                          "sync_slop 0.050 s")
    assert "/humans/faces/d/roi: roi (0.9, 0.5)-(1.4, 0.9) lies outside the image" in by_id["d"]
    assert "roi in frame 'other_cam', the colour image in 'cam'" in by_id["c"]
    # A face that never gets a roi is worth a log line once the grace period is over.
    clock.t = 1.5
    _, skipped = faces.faces_at(t, "cam", (480, 640), ["e"], slop_s=0.05)
    assert skipped[0].report and skipped[0].reason == ("face 'e' has been listed on /humans/faces/tracked for "
                                                       "1.5 s but nothing arrived on /humans/faces/e/roi")
    # Not listed any more: forgotten (a later list naming it again starts afresh).
    faces.announce(["a"])
    found, skipped = faces.faces_at(t, "cam", (480, 640), ["b"], slop_s=0.05)
    assert found == [] and skipped[0].kind == "no roi"
