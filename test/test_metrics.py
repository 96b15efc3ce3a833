"""Metrics of the offline protocols against hand-computed values (paper Section IV-A, IV-E)."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from cmcnn_ros.atomic_io import atomic_open, write_bytes_atomic, write_json_atomic
from cmcnn_ros.plots import PlotError, plot_confusion_matrix
from cmcnn_training.metrics import (MetricsError, band_labels, compute_metrics, confusion_matrix,
                                    per_class_accuracy, summarise_folds)

CLASSES = ["angry", "happy", "sad"]
# true:  a a a h h s s s s
# pred:  a h a h h s a s h
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 1]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0],
                           [0, 2, 0],
                           [1, 1, 2]]
    assert cm.sum() == len(Y_TRUE)


def test_per_class_accuracy_by_hand_and_empty_class():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)  # class 3 never occurs
    pc = per_class_accuracy(cm)
    assert pc[:3] == pytest.approx([2 / 3, 1.0, 0.5])
    assert math.isnan(pc[3])


def test_compute_metrics_accuracy_intensity_and_groups():
    intensities = [1, 2, 2, 1, 2, 1, 2, None, -1]
    yaw = [0.0, 40.0, -2.0, 5.0, -45.0, 1.0, 30.0, -35.0, 3.0]
    m = compute_metrics(Y_TRUE, Y_PRED, CLASSES, intensities=intensities, extra_columns={"yaw": yaw})
    assert m.accuracy == pytest.approx(6 / 9)
    assert m.count == 9
    assert m.per_class == pytest.approx({"angry": 2 / 3, "happy": 1.0, "sad": 0.5})
    # intensity 1: rows 0,3,5 all correct; 2: rows 1,2,4,6 -> 2 of 4; unknown: rows 7,8 -> 1 of 2
    assert m.per_intensity["1"].accuracy == pytest.approx(1.0)
    assert m.per_intensity["1"].count == 3
    assert m.per_intensity["2"].accuracy == pytest.approx(0.5)
    assert m.per_intensity["unknown"].count == 2
    bands = m.per_group["yaw"]
    extreme = [k for k in bands if k.endswith("(extreme)")]
    assert len(extreme) == 1 and k_startswith_abs(extreme[0])
    # |yaw| top tercile = {40, 45, 35} -> rows 1 (wrong), 4 (right), 7 (right)
    assert bands[extreme[0]].count == 3
    assert bands[extreme[0]].accuracy == pytest.approx(2 / 3)
    d = m.to_dict()
    assert d["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]


def k_startswith_abs(name: str) -> bool:
    return name.startswith("|yaw|")


def test_band_labels_categorical_and_constant():
    assert band_labels(["dark", "dark", "bright", ""], "light") == ["dark", "dark", "bright", "missing"]
    assert band_labels([1.0, 1.0, 1.0], "light") is None


def test_bad_inputs_raise_metrics_error():
    with pytest.raises(MetricsError, match="differ in length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(MetricsError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 2)
    with pytest.raises(MetricsError, match="intensities"):
        compute_metrics([0, 1], [0, 1], ["a", "b"], intensities=[1])


def test_summarise_folds_mean_std_and_pooled():
    f1 = compute_metrics([0, 0, 1, 1], [0, 0, 1, 0], ["a", "b"], intensities=[3, 4, 3, 4])   # 0.75
    f2 = compute_metrics([0, 1], [1, 1], ["a", "b"], intensities=[4, 4])                    # 0.5
    s = summarise_folds([f1, f2])
    assert s["accuracy_mean"] == pytest.approx(0.625)
    assert s["accuracy_std"] == pytest.approx(0.125)
    assert s["accuracy_pooled"] == pytest.approx(4 / 6)
    assert s["confusion_matrix_pooled"] == [[2, 1], [1, 2]]
    assert s["per_class_mean"]["a"] == pytest.approx((1.0 + 0.0) / 2)
    # intensity 3: rows (0->0 ok, 1->1 ok) = 2/2; intensity 4: f1 (ok, wrong) + f2 (wrong, ok) = 2/4
    assert s["per_intensity_pooled"] == {"3": {"accuracy": 1.0, "count": 2}, "4": {"accuracy": 0.5, "count": 4}}


def test_json_and_png_written_atomically(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json_atomic(path, {"acc": np.float32(0.5), "nan": float("nan"), "arr": np.arange(3)})
    assert json.loads(path.read_text()) == {"acc": 0.5, "nan": None, "arr": [0, 1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temp file left
    png = tmp_path / "cm.png"
    plot_confusion_matrix(confusion_matrix(Y_TRUE, Y_PRED, 3), CLASSES, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PlotError):
        plot_confusion_matrix(np.zeros((2, 2)), CLASSES, png)


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path):
    def mode(name):
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        write_bytes_atomic(tmp_path / "atomic.bin", b"x")
        with atomic_open(tmp_path / "atomic.txt", "w") as fh:
            fh.write("x")
        write_bytes_atomic(tmp_path / "shared.bin", b"x", file_mode=0o644)
    finally:
        os.umask(old)
    assert mode("plain.txt") == mode("atomic.bin") == mode("atomic.txt") == 0o640  # not mkstemp's 0600
    assert mode("shared.bin") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.bin", "atomic.txt", "plain.txt", "shared.bin"]
