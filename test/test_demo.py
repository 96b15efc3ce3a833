"""``cmcnn-demo`` end to end: synthetic bag -> fer_node in its own process -> replay over DDS -> report.

Real rclpy and Fast DDS on loopback in separate processes, the real renderer
and Recognizer. The first test checks the plumbing and the bookkeeping with a
randomly initialised checkpoint; the second runs the main job exactly as
``make demo`` does, with the shipped weights, and checks the accuracy it
reports. Kept short: 2-3 s bags at 5 fps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_demo_end_to_end(ros_env, random_checkpoint, tmp_path, compressed):
    """The raw bag, and the robot's kind (--compressed: JPEG + compressedDepth topics the node subscribes to)."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "cmcnn_synthetic.demo", "--weights", str(random_checkpoint), "--duration", "2",
         "--fps", "5", "--faces", "2", "--seed", "5", "--output-dir", str(out), "--no-progress",
         "--domain-id", ros_env["ROS_DOMAIN_ID"]] + (["--compressed"] if compressed else []),
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "expression" in proc.stdout and "end_to_end" in proc.stdout

    report = json.loads((out / "report.json").read_text())
    extra = report["extra"]
    assert extra["frames_published"] == 10
    suffix = "/compressedDepth" if compressed else ""
    assert extra["replay"]["published"]["/camera/depth_registered/image_raw" + suffix] == 10
    assert extra["node_diagnostics"]["inputs"] == ("colour compressed, depth compressedDepth" if compressed
                                                   else "colour raw, depth raw")
    assert extra["replay"]["clock_messages"] >= 10
    assert 1 <= extra["frames_with_results"] <= 10
    # Every result was matched to the labels by its stamp.
    assert report["frames"] == report["frames_labelled"] == extra["frames_with_results"]
    assert report["gt_faces"] >= report["frames"]                 # at least one face per frame
    assert report["matched"] + report["missed"] == report["gt_faces"]
    assert int(np.asarray(report["confusion"]).sum()) == report["matched"]
    lat = report["latency_ms"]["end_to_end"]
    assert lat["n"] == report["frames"] and 0 < lat["p50"] <= lat["p95"] < 30_000
    assert extra["node_diagnostics"].get("lifecycle state") == "active"
    for name in ("timeline.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "demo_bag" / "metadata.yaml").is_file()


def test_demo_with_default_weights_recognises_expressions(ros_env, tmp_path):
    out = tmp_path / "demo_default"
    proc = subprocess.run(
        [sys.executable, "-m", "cmcnn_synthetic.demo", "--duration", "3", "--fps", "5", "--faces", "3",
         "--seed", "3", "--output-dir", str(out), "--no-progress", "--domain-id", ros_env["ROS_DOMAIN_ID"]],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "exited with" not in proc.stderr          # the node shut down cleanly
    report = json.loads((out / "report.json").read_text())
    assert report["matched"] >= 25 and report["detection_rate"] >= 0.8
    # Chance is 1/7; the shipped weights score ~80-90% on synthetic faces.
    assert report["accuracy"] >= 0.6, report["per_class"]


def test_demo_without_weights_says_how_to_get_them(tmp_path, caplog):
    from cmcnn_synthetic import demo

    code = demo.main(["--weights", str(tmp_path / "none.pt"), "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "none.pt" in caplog.text and "cmcnn-train" in caplog.text
    assert not (tmp_path / "o").exists()   # failed before doing any work


def test_runtime_demo_without_a_bag_says_how_to_get_one(tmp_path, caplog):
    """cmcnn_ros's half of the demo takes a bag; it does not render one (that needs cmcnn_synthetic)."""
    from cmcnn_ros.tools import demo

    code = demo.main(["--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "no --bag given" in caplog.text and "cmcnn-demo" in caplog.text
    assert not (tmp_path / "o" / "demo_bag").exists()
