"""Greedy IoU tracker and EMA smoothing (ROS-free)."""

from __future__ import annotations

import numpy as np
import pytest

from cmcnn_ros.inference.tracking import FaceTracker, TrackingError, iou


def test_iou_values():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_ids_stable_while_faces_move():
    tr = FaceTracker(iou_threshold=0.3)
    a = tr.update([(100, 100, 80, 80), (400, 100, 80, 80)])
    assert [f.face_id for f in a] == ["face1", "face2"] and all(f.is_new for f in a)
    b = tr.update([(405, 102, 80, 80), (104, 101, 80, 80)])  # order swapped, moved a bit
    assert [f.face_id for f in b] == ["face2", "face1"] and not any(f.is_new for f in b)


def test_greedy_takes_best_overlap_first():
    tr = FaceTracker(iou_threshold=0.1)
    tr.update([(0, 0, 100, 100)])
    out = tr.update([(60, 0, 100, 100), (5, 0, 100, 100)])
    assert out[1].face_id == "face1" and out[0].face_id == "face2"


def test_lost_face_gets_new_id_after_max_missed():
    tr = FaceTracker(max_missed=2)
    tr.update([(0, 0, 50, 50)])
    tr.update([])
    tr.update([])
    assert tr.update([(0, 0, 50, 50)])[0].face_id == "face1"  # survived 2 misses
    for _ in range(3):
        tr.update([])
    assert tr.removed == ["face1"]
    assert tr.update([(0, 0, 50, 50)])[0].face_id == "face2"


def test_ema_smoothing():
    tr = FaceTracker(smoothing=0.5)
    box = (10, 10, 50, 50)
    s0 = tr.update([box], [np.array([1.0, 0.0])])[0].scores
    np.testing.assert_allclose(s0, [1.0, 0.0])
    s1 = tr.update([box], [np.array([0.0, 1.0])])[0].scores
    np.testing.assert_allclose(s1, [0.5, 0.5])
    s2 = tr.update([box], [np.array([0.0, 1.0])])[0].scores
    np.testing.assert_allclose(s2, [0.25, 0.75])


def test_no_smoothing_passes_raw_scores():
    tr = FaceTracker(smoothing=0.0)
    tr.update([(0, 0, 9, 9)], [np.array([0.2])])
    np.testing.assert_allclose(tr.update([(0, 0, 9, 9)], [np.array([0.9])])[0].scores, [0.9])


@pytest.mark.parametrize("kwargs,msg", [
    ({"iou_threshold": 0.0}, "iou_threshold"),
    ({"max_missed": -1}, "max_missed"),
    ({"smoothing": 1.0}, "smoothing"),
])
def test_bad_parameters(kwargs, msg):
    with pytest.raises(TrackingError, match=msg):
        FaceTracker(**kwargs)


def test_scores_length_mismatch():
    with pytest.raises(TrackingError, match="2 boxes but 1 score"):
        FaceTracker().update([(0, 0, 1, 1), (5, 5, 1, 1)], [np.zeros(3)])
