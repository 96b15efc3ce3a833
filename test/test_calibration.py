"""Temperature scaling (issue 17, section 3): the fit, the ECE, and the calibrated checkpoint everyone loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmcnn_ros.model import cmcnn, preset_config
from cmcnn_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmcnn_ros.model.cmcnn import class_probabilities
from cmcnn_ros.model.config import ModelConfigError
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_synthetic import generate
from cmcnn_training import calibrate as calibrate_mod
from cmcnn_training.calibration import (CalibrationError, calibration_report, fit_temperature, log_probs, softmax_t,
                                        split_for_fitting)


def sampled(n: int, t_true: float, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / t_true): calibrated exactly at t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, (n, 7))
    p = softmax_t(z, t_true)
    y = np.array([rng.choice(7, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_generated_the_labels(t_true):
    z, y = sampled(6000, t_true)
    assert fit_temperature(z, y) == pytest.approx(t_true, rel=0.08)


def test_scaling_lowers_ece_and_nll_and_never_changes_the_class():
    z, y = sampled(4000, 2.5, seed=1)   # the raw logits are over-confident
    t = fit_temperature(z, y)
    before, after = calibration_report(softmax_t(z, 1.0), y), calibration_report(softmax_t(z, t), y)
    assert before.ece > 0.1 and after.ece < 0.03 and after.nll < before.nll
    assert after.accuracy == before.accuracy
    assert np.array_equal(softmax_t(z, t).argmax(1), z.argmax(1))
    # log-probabilities stand in for logits: the same fit from probabilities alone
    assert fit_temperature(log_probs(softmax_t(z, 1.0)), y) == pytest.approx(t, rel=1e-3)


def test_ece_by_hand():
    # two bins: 0.9-confident faces right 3 of 4 times, 0.6-confident right 2 of 2
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    rep = calibration_report(probs, y, bins=10)
    assert rep.ece == pytest.approx(4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6))
    assert rep.max_gap == pytest.approx(0.4) and rep.accuracy == pytest.approx(5 / 6)
    assert sum(rep.bin_counts) == 6
    with pytest.raises(CalibrationError):
        calibration_report(probs, y[:3])


def test_split_is_stratified_and_disjoint():
    y = np.array([0] * 10 + [1] * 4 + [2] * 2)
    fit, rep = split_for_fitting(y, 0.5, seed=3)
    assert not set(fit) & set(rep) and len(fit) + len(rep) == len(y)
    assert [int((y[fit] == c).sum()) for c in range(3)] == [5, 2, 1]


def test_the_temperature_lives_in_the_model_config():
    cfg = preset_config("tiny", modalities=("grey", "lbp", "depth"), num_classes=7, input_size=32)
    model = cmcnn(cfg.replace(temperature=2.0)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.predict_proba(x), torch.softmax(model(x) / 2.0, dim=1), atol=1e-6)
        assert torch.allclose(class_probabilities(model(x), 2.0), model.predict_proba(x))
    with pytest.raises(ModelConfigError, match="temperature"):
        cfg.replace(temperature=0.0)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calib") / "set"
    assert generate.main(["--out", str(root), "--subjects", "4", "--classes", "6", "--intensities", "3", "4",
                          "--per-class", "1", "--distance", "0.7", "1.0", "--yaw", "8", "--pitch", "6",
                          "--roll", "6", "--workers", "1", "--seed", "2", "--no-progress"]) == 0
    return root


def test_cmcnn_calibrate_writes_a_checkpoint_that_publishes_calibrated_scores(synth_root, tmp_path, capsys):
    cfg = preset_config("tiny", modalities=("grey", "lbp", "depth"), num_classes=6, input_size=32)
    torch.manual_seed(0)
    model = cmcnn(cfg).eval()
    with torch.no_grad():  # an over-confident network: large logits
        model.fc.weight.mul_(40.0)
    src, out = tmp_path / "in.pt", tmp_path / "out" / "calibrated.pt"
    names = ["angry", "disgusted", "scared", "happy", "sad", "surprised"]
    save_checkpoint(src, model, names, PreprocessingParams.from_dict({"crop_size": 32}).to_dict())
    argv = ["--checkpoint", str(src), "--output", str(out), "--dataset", "kinect", "--root", str(synth_root),
            "--box-mode", "gt", "--report", f"kinect:{synth_root}:gt", "--cache-dir", str(tmp_path / "cache"),
            "--workers", "0", "--no-progress"]
    capsys.readouterr()
    assert calibrate_mod.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    doc = json.loads((out.parent / "calibration.json").read_text())
    t = doc["temperature"]
    assert summary["temperature"] == t and t != 1.0
    loaded = load_checkpoint(out)
    assert loaded.model_config.temperature == pytest.approx(t)
    assert loaded.metadata["calibration"]["temperature"] == pytest.approx(t)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        raw = load_checkpoint(src).model.eval()
        assert torch.allclose(loaded.model.eval().predict_proba(x), torch.softmax(raw(x) / t, dim=1), atol=1e-5)
    names_of_sets = [s["name"] for s in doc["sets"]]
    assert len(names_of_sets) == 3 and all((out.parent / f"reliability_{n}.png").is_file() for n in names_of_sets)
    held_out = doc["sets"][0]
    assert held_out["after"]["accuracy"] == held_out["before"]["accuracy"]
    everything = doc["sets"][1]
    assert everything["after"]["nll"] <= everything["before"]["nll"] + 1e-9
    # an existing output is never replaced without --overwrite
    before = out.read_bytes()
    assert calibrate_mod.main(argv) == 2
    assert out.read_bytes() == before
    # the already calibrated checkpoint, scored again from the raw network (--from-temperature 1):
    # the same split fits the same temperature, and "before" is the uncalibrated network again
    again = tmp_path / "again" / "calibrated.pt"
    assert calibrate_mod.main(["--checkpoint", str(out), "--output", str(again), "--dataset", "kinect",
                               "--root", str(synth_root), "--box-mode", "gt", "--cache-dir", str(tmp_path / "cache"),
                               "--workers", "0", "--no-progress", "--from-temperature", "1"]) == 0
    redo = json.loads((again.parent / "calibration.json").read_text())
    assert redo["temperature_before"] == 1.0 and redo["temperature"] == pytest.approx(t, rel=1e-3)
    assert redo["sets"][0]["before"]["ece"] == pytest.approx(held_out["before"]["ece"], abs=1e-6)
    assert calibrate_mod.main(["--checkpoint", str(out), "--output", str(tmp_path / "x.pt"), "--root",
                               str(synth_root), "--from-temperature", "0"]) == 2
