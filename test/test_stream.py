"""The ROS-free expression stream (recognizer + tracker + smoothing) the node publishes from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, describe_scores, valence_arousal
from cmcnn_ros.inference.recognizer import FaceResult, NonFiniteScoresError, Recognizer
from cmcnn_ros.inference.stream import ExpressionStream, clip_box
from cmcnn_ros.inference.tracking import FaceTracker


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def frame(astronaut_frame):
    return astronaut_frame


def test_describe_scores_is_the_top_class_and_its_circumplex_point():
    scores = np.array([0.1, 0.0, 0.0, 0.6, 0.1, 0.1, 0.1], np.float32)
    expression, confidence, valence, arousal = describe_scores(scores, EXPRESSIONS_WITH_NEUTRAL)
    assert expression == "happy" and confidence == pytest.approx(0.6)
    assert (valence, arousal) == valence_arousal(scores, EXPRESSIONS_WITH_NEUTRAL)
    assert describe_scores([], EXPRESSIONS_WITH_NEUTRAL) == ("", 0.0, 0.0, 0.0)


def test_clip_box_keeps_boxes_inside_the_image():
    assert clip_box((-10, 5, 50, 20), (100, 200)) == (0, 5, 40, 20)
    assert clip_box((180, 90, 50, 20), (100, 200)) == (180, 90, 20, 10)
    assert clip_box((300, 300, 10, 10), (100, 200)) == (200, 100, 0, 0)


def test_stream_matches_the_recognizer_and_keeps_the_face_id(checkpoint, frame):
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu")
    reference = Recognizer.from_checkpoint(checkpoint, device="cpu").recognize(frame).faces
    stream = ExpressionStream(rec, FaceTracker())
    ids = []
    for step in range(3):
        result = stream.process(frame)
        assert len(result.faces) == 1
        face = result.faces[0]
        ids.append(face.face_id)
        # no smoothing: every field is the recognizer's (scores and what they say derived once), but the box
        for name in (f.name for f in dataclasses.fields(FaceResult) if f.name != "box"):
            np.testing.assert_array_equal(getattr(face, name), getattr(reference[0], name), err_msg=name)
        assert face.alignment == "mesh"  # not the field's default: a field the stream dropped would show here
        assert face.box == clip_box(reference[0].box, frame.shape[:2])
        assert face.is_new == (step == 0)
        assert result.tracked_ids == [face.face_id] and result.retired_ids == []
    assert ids == ["face1"] * 3
    stream.reset()
    assert stream.process(frame).faces[0].face_id == "face2"  # ids are never reused after a pause


def test_stream_derives_the_expression_from_smoothed_scores(checkpoint, frame):
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu")
    stream = ExpressionStream(rec, FaceTracker(smoothing=0.5))
    first = stream.process(frame).faces[0]
    flipped = cv2.convertScaleAbs(frame, alpha=0.6, beta=20)  # the same face, other scores
    raw = Recognizer.from_checkpoint(checkpoint, device="cpu").recognize(flipped).faces[0]
    second = stream.process(flipped).faces[0]
    assert second.face_id == first.face_id
    assert not np.allclose(raw.scores, first.scores)
    expected = (0.5 * first.scores + 0.5 * raw.scores).astype(np.float32)
    np.testing.assert_allclose(second.scores, expected, rtol=1e-6)
    assert (second.expression, second.confidence, second.valence, second.arousal) == \
        describe_scores(second.scores, stream.class_names)


def test_stream_tracks_nothing_when_the_model_answers_nan(overflowing_checkpoint, frame):
    stream = ExpressionStream.from_checkpoint(overflowing_checkpoint, device="cpu")
    with pytest.raises(NonFiniteScoresError, match="non-finite scores for 1 of 1 faces"):
        stream.process(frame)
    assert stream.tracker.tracks == []


def test_stream_defaults_are_the_nodes():
    from cmcnn_ros.ros.parameters import PARAMETERS

    import inspect

    sig = inspect.signature(ExpressionStream.from_checkpoint).parameters
    assert sig["redetect_interval"].default == PARAMETERS["redetect_interval"][0]
    assert sig["iou_threshold"].default == PARAMETERS["tracking_iou_threshold"][0]
    assert sig["max_missed"].default == PARAMETERS["tracking_max_missed"][0]
    assert sig["smoothing"].default == PARAMETERS["score_smoothing"][0]
    assert sig["backend"].default == PARAMETERS["inference_backend"][0]
    assert sig["preprocessing_threads"].default == PARAMETERS["preprocessing_threads"][0]
    assert sig["landmark_tracking"].default == PARAMETERS["landmark_tracking"][0]


def test_annotations_draw_on_a_copy_of_the_frame(frame):
    """The debug image and --annotate draw on a copy: the frame the stream read stays as it was."""
    from cmcnn_ros.inference.annotate import Annotation, draw_annotations

    before = frame.copy()
    out = draw_annotations(frame, [Annotation((100, 50, 200, 200), "face1 happy 0.90", ["happy 0.90"])])
    np.testing.assert_array_equal(frame, before)
    assert out.shape == frame.shape and np.any(out != before)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert draw_annotations(grey, []).shape == frame.shape
