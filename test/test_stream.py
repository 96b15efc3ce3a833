"""The ROS-free expression stream (recognizer + tracker + smoothing) the node publishes from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, UNKNOWN_EXPRESSION, describe_scores, valence_arousal
from cmcnn_ros.inference.recognizer import FaceResult, NonFiniteScoresError, Recognizer
from cmcnn_ros.inference.stream import ExpressionStream, clip_box
from cmcnn_ros.inference.tracking import FaceTracker, TrackingError


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


def test_describe_scores_says_unknown_below_min_confidence_and_keeps_the_rest():
    scores = np.array([0.125, 0.0, 0.0, 0.5, 0.25, 0.0625, 0.0625], np.float32)   # exact in float32
    sure = describe_scores(scores, EXPRESSIONS_WITH_NEUTRAL, min_confidence=0.5)
    guess = describe_scores(scores, EXPRESSIONS_WITH_NEUTRAL, min_confidence=0.51)
    assert sure.expression == "happy"                        # at the threshold: the class
    assert guess.expression == UNKNOWN_EXPRESSION == "unknown"
    assert guess[1:] == sure[1:] and guess.confidence == 0.5   # confidence, valence, arousal kept


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


def test_min_confidence_makes_a_face_unknown_and_can_change_between_frames(checkpoint, frame):
    stream = ExpressionStream(Recognizer.from_checkpoint(checkpoint, device="cpu"), FaceTracker())
    plain = stream.process(frame).faces[0]
    assert plain.expression != UNKNOWN_EXPRESSION
    stream.min_confidence = min(1.0, plain.confidence + 1e-3)   # just above this face's confidence
    guess = stream.process(frame).faces[0]
    assert guess.expression == UNKNOWN_EXPRESSION and guess.face_id == plain.face_id
    np.testing.assert_array_equal(guess.scores, plain.scores)
    assert (guess.confidence, guess.valence, guess.arousal) == (plain.confidence, plain.valence, plain.arousal)
    with pytest.raises(TrackingError, match="min_confidence must be in"):
        ExpressionStream(stream.recognizer, min_confidence=1.5)


def test_process_faces_answers_another_detectors_boxes_under_its_ids(checkpoint, frame):
    """face_source ros4hri: the boxes and ids are the detector's; alignment, crops and network are ours."""
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu")
    detected = rec.recognize(frame).faces[0].box
    # Another detector frames the face its own way (here: a looser box around ours).
    x, y, w, h = detected
    theirs = (x - w // 8, y - h // 8, w + w // 4, h + h // 4)
    reference = Recognizer.from_checkpoint(checkpoint, device="cpu").recognize(frame, boxes=[theirs]).faces[0]
    stream = ExpressionStream(rec, FaceTracker(smoothing=0.5))
    first = stream.process_faces(frame, [("abcde", theirs)], ["abcde", "fghij"])
    assert [f.face_id for f in first.faces] == ["abcde"] and first.faces[0].is_new
    assert first.tracked_ids == ["abcde", "fghij"] and first.retired_ids == []
    for name in (f.name for f in dataclasses.fields(FaceResult) if f.name != "box"):
        np.testing.assert_array_equal(getattr(first.faces[0], name), getattr(reference, name), err_msg=name)
    assert first.faces[0].alignment == "mesh"            # re-framed by FaceMesh like a detected face
    assert first.faces[0].box == clip_box(reference.box, frame.shape[:2])
    assert stream.tracker.tracks == []                   # no track, no id of ours
    # The next frame: smoothed per id; a face the detector stopped listing is retired.
    flipped = cv2.convertScaleAbs(frame, alpha=0.6, beta=20)
    raw = Recognizer.from_checkpoint(checkpoint, device="cpu").recognize(flipped, boxes=[theirs]).faces[0]
    second = stream.process_faces(flipped, [("abcde", theirs)], ["abcde"])
    assert not second.faces[0].is_new and second.retired_ids == []
    np.testing.assert_allclose(second.faces[0].scores, (0.5 * first.faces[0].scores + 0.5 * raw.scores), rtol=1e-6)
    third = stream.process_faces(flipped, [], [])
    assert third.faces == [] and third.tracked_ids == [] and third.retired_ids == ["abcde"]
    again = stream.process_faces(frame, [("abcde", theirs)], ["abcde"]).faces[0]
    assert again.is_new                                  # the detector re-used the id: scores start afresh
    np.testing.assert_array_equal(again.scores, reference.scores)
    with pytest.raises(TrackingError, match="appears twice"):
        stream.process_faces(frame, [("a", theirs), ("a", theirs)], ["a"])


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
    assert sig["min_confidence"].default == PARAMETERS["min_confidence"][0]
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
