"""The robot build path: a fresh copy of the package built with colcon, its installed node started.

What README.md's "On a robot" section does, minus rosdep: ``colcon build`` (pinned colcon packages
from PyPI, requirements.txt) of a copy of this repository in a temporary workspace, then
``source install/setup.bash`` and ``install/cmcnn_ros/lib/cmcnn_ros/fer_node`` with the installed
model (no ``model_path``), which must reach ``active`` and answer one frame over DDS. The build
uses the venv's ROS 2 wheels as the underlay (AMENT_PREFIX_PATH), and the node's environment
leaves out ``.ros_prefix`` so messages and code come from the colcon install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import REPO_ROOT, env_file_environment
from ros_helpers.frames import photo_frame
from ros_helpers.rosproc import NodeProcess, RosClient, claim_domain_id, image_msg, wait_until

from sensor_msgs.msg import Image

COLOUR, DEPTH = "/cam/color/image_raw", "/cam/depth_registered/image_raw"
PATH_VARS = ("PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH")


def _copy_package(dest: Path) -> None:
    """The files git knows (tracked, and new ones not ignored): what a fresh clone holds."""
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _base_env() -> Dict[str, str]:
    """The venv (python, colcon, the ROS 2 wheels) without this checkout's .ros_prefix."""
    env = dict(env_file_environment())
    own = str(REPO_ROOT / ".ros_prefix")
    for var in PATH_VARS:
        kept = [p for p in env.get(var, "").split(os.pathsep) if p and not p.startswith(own)]
        env[var] = os.pathsep.join(kept)
    venv = env["VIRTUAL_ENV"]
    env["AMENT_PREFIX_PATH"] = env["CMAKE_PREFIX_PATH"] = venv   # the underlay, as scripts/setup.sh builds
    return env


@pytest.fixture(scope="module")
def colcon_ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    _copy_package(ws / "src" / "cmcnn_ros")
    env = dict(_base_env(), COLCON_HOME=str(ws / ".colcon"))
    py = Path(env["VIRTUAL_ENV"]) / "bin" / "python"
    colcon = Path(env["VIRTUAL_ENV"]) / "bin" / "colcon"
    assert colcon.is_file(), "colcon is not installed in the venv: run `make setup` (requirements.txt pins it)"
    t0 = time.monotonic()
    run = subprocess.run(
        ["nice", "-n", "15", str(colcon), "build", "--packages-select", "cmcnn_ros",
         "--event-handlers", "console_direct-", "--parallel-workers", "1",
         "--cmake-args", f"-DPython3_EXECUTABLE={py}", "-DPython3_FIND_VIRTUALENV=ONLY", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    logs = sorted((ws / "log").glob("latest_build/cmcnn_ros/*.log"))
    tail = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
    assert run.returncode == 0, f"colcon build failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{tail}"
    print(f"colcon build: {time.monotonic() - t0:.1f} s")
    return ws


def _installed_env(ws: Path, domain_id: int) -> Dict[str, str]:
    """The environment after ``source install/setup.bash`` on top of the venv."""
    proc = subprocess.run(["bash", "-c", 'source install/setup.bash >/dev/null && env -0'], cwd=ws,
                          env=_base_env(), capture_output=True, check=True, timeout=60)
    env = dict(entry.split("=", 1) for entry in proc.stdout.decode().split("\0") if "=" in entry)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0",
               FASTDDS_DEFAULT_PROFILES_FILE=str(ws / "install/cmcnn_ros/share/cmcnn_ros/config/fastdds.xml"))
    return env


def test_colcon_install_layout(colcon_ws):
    """The robot install holds the node, its tools and data; the offline packages stay out (README: On a robot)."""
    install = colcon_ws / "install" / "cmcnn_ros"
    for tool in ("fer_node", "cmcnn-recognize", "cmcnn-bag-evaluate", "cmcnn-bag-replay", "cmcnn-explain",
                 "cmcnn-emotion-tree"):
        assert os.access(install / "lib" / "cmcnn_ros" / tool, os.X_OK), tool
    for tool in ("cmcnn-demo", "cmcnn-bag-write", "cmcnn-synth", "cmcnn-train", "cmcnn-evaluate", "cmcnn-calibrate",
                 "cmcnn-reproduce"):
        assert not (install / "lib" / "cmcnn_ros" / tool).exists(), f"offline {tool} in the robot install"
    site = next(install.glob("lib/python3*/site-packages"))
    for package in ("cmcnn_training", "cmcnn_synthetic"):
        assert not (site / package).exists(), f"offline {package} in the robot install"
    share = install / "share" / "cmcnn_ros"
    for rel in ("models/cmcnn_default.pt", "models/detection/face_detection_full_range.tflite",
                "models/detection/face_landmark.tflite", "models/detection/LICENSE", "launch/fer.launch.py",
                "config/fer.yaml", "config/fastdds.xml", "package.xml"):
        assert (share / rel).is_file(), rel
    env = _installed_env(colcon_ws, 0)
    where = subprocess.run([env.get("VIRTUAL_ENV", "") + "/bin/python", "-c",
                            "import cmcnn_ros, cmcnn_ros.msg, cmcnn_ros.ros.fer_node, cmcnn_ros.resources as r; "
                            "print(cmcnn_ros.__file__); print(cmcnn_ros.msg.__file__); "
                            "print(cmcnn_ros.ros.fer_node.__file__); print(r.find_checkpoint(''))"],
                           cwd=colcon_ws, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(install)), f"{line} is not from the colcon install"


def test_installed_fer_node_reaches_active_and_answers_a_frame(colcon_ws, tmp_path):
    lease = claim_domain_id()
    exe = colcon_ws / "install" / "cmcnn_ros" / "lib" / "cmcnn_ros" / "fer_node"
    node = NodeProcess(lease.domain_id, tmp_path / "installed_node.log",
                       {"device": "cpu", "colour_topic": COLOUR, "depth_topic": DEPTH},
                       command=[str(exe)], env=_installed_env(colcon_ws, lease.domain_id), cwd=colcon_ws)
    client = None
    try:
        m = node.wait_for_log(r"configured: model (\S+) on cpu", 120)
        assert m.group(1) == str(colcon_ws / "install/cmcnn_ros/share/cmcnn_ros/models/cmcnn_default.pt")
        node.wait_for_log(r"\] \[fer_node\]: active:", 60)
        from cmcnn_ros.msg import EmotionArray

        client = RosClient(lease.domain_id)
        pub_c = client.node.create_publisher(Image, COLOUR, 10)
        pub_d = client.node.create_publisher(Image, DEPTH, 10)
        sub, results = client.collector(EmotionArray, "/fer_node/emotions")
        assert wait_until(lambda: pub_c.get_subscription_count() > 0 and pub_d.get_subscription_count() > 0
                          and sub.get_publisher_count() > 0, 30), node.log()[-3000:]
        colour, depth = photo_frame(1)
        answer = None
        for _ in range(3):   # a first frame may race the last step of discovery
            ns = time.time_ns()
            pub_c.publish(image_msg(colour, "bgr8", ns))
            pub_d.publish(image_msg(depth, "16UC1", ns))
            if wait_until(lambda: any(r.header.stamp.sec * 10**9 + r.header.stamp.nanosec == ns  # noqa: B023
                                      for _, r in results), 10):
                answer = next(r for _, r in results if r.header.stamp.sec * 10**9 + r.header.stamp.nanosec == ns)
                break
        assert answer is not None, node.log()[-3000:]
        assert len(answer.faces) == 1 and answer.faces[0].expression in answer.classes
        assert answer.faces[0].depth_valid
    finally:
        if client is not None:
            client.close()
        rc = node.stop()
        lease.release()
    assert rc == 0, node.log()[-2000:]
