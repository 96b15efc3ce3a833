"""Smoke test of the whole offline pipeline: synthetic set -> cmcnn-train -> cmcnn-evaluate.

Generates a small synthetic set with the ``cmcnn-synth`` CLI (10 subjects, the
six basic expressions, the two highest intensities, near-frontal faces),
trains for real with the ``quick`` preset on 7 subjects and checks the
accuracy on the 3 held-out subjects is well above chance (>= 2.5x). Then
evaluates the written checkpoint with ``cmcnn-evaluate`` on the held-out
subjects: it must reproduce the trainer's number (same preprocessing params
from the checkpoint) and report the pose breakdown from ``truth.csv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cmcnn_ros.model.checkpoint import load_checkpoint
from cmcnn_synthetic import generate
from cmcnn_training import evaluate as evaluate_mod
from cmcnn_training import train as train_mod

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    rc = generate.main(["--out", str(root), "--subjects", "10", "--classes", "6", "--intensities", "3", "4",
                        "--per-class", "1", "--distance", "0.7", "1.1", "--yaw", "10", "--pitch", "8",
                        "--roll", "8", "--workers", "2", "--seed", "0", "--no-progress"])
    assert rc == 0
    return root


def test_quick_preset_learns_and_evaluate_agrees(synth_root, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    t0 = time.perf_counter()
    rc = train_mod.main(["--config", "quick", "--root", str(synth_root), "--output-dir", str(out),
                         "--cache-dir", str(cache), "--no-progress", "--seed", "0"])
    train_s = time.perf_counter() - t0
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    fold = metrics["folds"][0]
    acc = metrics["summary"]["accuracy_mean"]
    assert metrics["class_names"] == ["angry", "disgusted", "scared", "happy", "sad", "surprised"]
    assert len(fold["test_subjects"]) == 3 and not set(fold["test_subjects"]) & set(fold["train_subjects"])
    assert fold["test_count"] == 3 * NUM_CLASSES * 2
    assert acc >= 2.5 / NUM_CLASSES, f"held-out accuracy {acc:.3f} is not well above chance"
    assert metrics["dataset"]["crop_stats"]["kept"] == 120
    assert (out / "confusion_matrix.png").is_file()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.preprocessing["crop_size"] == 64 and list(ckpt.model_config.modalities) == ["grey", "lbp", "depth"]
    print(f"quick preset: held-out accuracy {acc:.3f}, {train_s:.0f}s")

    capsys.readouterr()
    ev_out = tmp_path / "eval"
    rc = evaluate_mod.main(["--checkpoint", str(out / "checkpoint.pt"), "--dataset", "kinect",
                            "--root", str(synth_root), "--subjects", *fold["test_subjects"],
                            "--output-dir", str(ev_out), "--cache-dir", str(cache), "--workers", "0",
                            "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == fold["test_count"]
    assert summary["accuracy"] == pytest.approx(acc, abs=1.01 / fold["test_count"])
    ev = json.loads((ev_out / "metrics.json").read_text())
    assert "yaw_deg" in ev["metrics"]["per_group"]
    assert any(k.endswith("(extreme)") for k in ev["metrics"]["per_group"]["yaw_deg"])
    # illumination breakdown from the light the generator drew for each frame
    assert "light_azimuth_deg" in ev["metrics"]["per_group"] and "ambient" in ev["metrics"]["per_group"]
    assert set(ev["metrics"]["per_intensity"]) == {"3", "4"}
    assert (ev_out / "confusion_matrix.png").is_file()

    # flip test-time averaging: the same faces, each scored with its mirror image (the node's flip_tta)
    rc = evaluate_mod.main(["--checkpoint", str(out / "checkpoint.pt"), "--dataset", "kinect",
                            "--root", str(synth_root), "--subjects", *fold["test_subjects"],
                            "--output-dir", str(tmp_path / "eval_flip"), "--cache-dir", str(cache),
                            "--workers", "0", "--no-progress", "--tta-flip"])
    assert rc == 0
    flip = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert flip["tta_flip"] and not summary["tta_flip"] and flip["count"] == summary["count"]
    assert flip["accuracy"] >= 2.0 / NUM_CLASSES
