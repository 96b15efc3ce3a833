"""``cmcnn-train --resume``: a run killed mid-run continues to the same result (issue 20, section 1).

A real run of the ``quick`` preset (every new recipe lever on: weight EMA,
label smoothing, mixup, photometric augmentation, class weights, a
validation set with flip averaging) is SIGKILLed from outside while it
trains, resumed with ``--resume``, and must end with exactly the metrics,
learning curve and weights of the same run left alone. Bad resumes (no run,
another configuration, a corrupt state file) stop with one line and exit 2,
leaving the files as they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmcnn_ros.model.checkpoint import load_checkpoint
from cmcnn_synthetic import generate
from cmcnn_training import train as train_mod
from cmcnn_training.run_state import STATE_NAME

EPOCHS = 14


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    rc = generate.main(["--out", str(root), "--subjects", "6", "--classes", "6", "--intensities", "3", "4",
                        "--per-class", "1", "--distance", "0.7", "1.1", "--yaw", "10", "--pitch", "8",
                        "--roll", "8", "--workers", "1", "--seed", "0", "--no-progress"])
    assert rc == 0
    return root


def run_args(root: Path, out: Path, cache: Path) -> list:
    return ["--config", "quick", "--root", str(root), "--output-dir", str(out), "--cache-dir", str(cache),
            "--no-progress", "--epochs", str(EPOCHS), "--pretrain-epochs", "2", "--ema-decay", "0.9",
            "--label-smoothing", "0.1", "--mixup-alpha", "0.4", "--augment-photometric",
            "--class-weights", "sqrt_inverse", "--val", "kinect", "--tta-flip", "--calibrate", "--amp", "bf16",
            "--workers", "0"]


def saved_epoch(path: Path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None, 0
    fit = state["fit"] or {}
    return fit.get("stage"), fit.get("epoch", 0)


def kill_mid_training(args: list, state_path: Path, after_epoch: int) -> None:
    """Start the trainer as its own process and SIGKILL it once ``after_epoch`` fusion epochs are saved."""
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "cmcnn_training.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            stage, epoch = saved_epoch(state_path)
            if stage == "train" and epoch >= after_epoch:
                break
            assert proc.poll() is None, f"trainer ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            time.sleep(0.05)
        else:
            pytest.fail("the trainer saved no fusion epoch within 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    cache = base / "cache"
    whole, killed = base / "whole", base / "killed"
    assert train_mod.main(run_args(synth_root, whole, cache)) == 0
    kill_mid_training(run_args(synth_root, killed, cache), killed / STATE_NAME, after_epoch=4)
    return synth_root, whole, killed, cache


def test_a_killed_run_resumes_to_the_same_result(runs):
    _, whole, killed, _ = runs
    stage, epoch = saved_epoch(killed / STATE_NAME)
    assert stage == "train" and 4 <= epoch < EPOCHS and not (killed / "metrics.json").exists()

    assert train_mod.main(["--resume", str(killed), "--no-progress"]) == 0

    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["summary"]["accuracy_mean"] == a["summary"]["accuracy_mean"]
    assert b["summary"]["confusion_matrix_pooled"] == a["summary"]["confusion_matrix_pooled"]
    fa, fb = a["folds"][0], b["folds"][0]
    assert fb["final_train_loss"] == pytest.approx(fa["final_train_loss"], rel=1e-6, abs=1e-7)
    assert [r["epoch"] for r in fb["learning_curve"]] == list(range(1, EPOCHS + 1))
    assert fb["learning_curve"] == a["folds"][0]["learning_curve"]
    assert (killed / "learning_curve.png").is_file()
    assert b["calibration"]["temperature"] == a["calibration"]["temperature"]
    assert load_checkpoint(killed / "checkpoint.pt").model_config.temperature == b["calibration"]["temperature"]
    assert b["model_config"]["temperature"] == b["calibration"]["temperature"]   # metrics.json says what ships
    wa = load_checkpoint(whole / "checkpoint.pt").model.state_dict()
    wb = load_checkpoint(killed / "checkpoint.pt").model.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


def test_resume_of_a_finished_or_missing_run_exits_2(runs, tmp_path, caplog):
    _, whole, _, _ = runs
    assert train_mod.main(["--resume", str(whole)]) == 2
    assert "has finished" in caplog.text
    assert train_mod.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no run there" in caplog.text


def test_resume_refuses_another_configuration_and_a_corrupt_state(runs, tmp_path, caplog):
    root, _, _, cache = runs
    out = tmp_path / "run"
    kill_mid_training(run_args(root, out, cache), out / STATE_NAME, after_epoch=1)
    before = (out / STATE_NAME).read_bytes()

    assert train_mod.main(["--resume", str(out), "--epochs", str(EPOCHS + 5)]) == 2
    assert "another configuration" in caplog.text and "epochs" in caplog.text
    assert (out / STATE_NAME).read_bytes() == before

    # a fresh run into a folder with a run in progress is refused too
    assert train_mod.main(run_args(root, out, cache)) == 2
    assert "in progress" in caplog.text

    (out / STATE_NAME).write_bytes(before[: len(before) // 3])
    caplog.clear()
    assert train_mod.main(["--resume", str(out)]) == 2
    assert "corrupt or unreadable" in caplog.text and STATE_NAME in caplog.text
    assert len(caplog.records) == 1
    assert (out / STATE_NAME).read_bytes() == before[: len(before) // 3]
