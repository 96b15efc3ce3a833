"""fer_node's threads: the worker (or the pipeline's two stages) and the preprocessing lanes end with activity.

Deactivate ends every Python thread the node started (``fer_worker``, or
``fer_prepare`` and ``fer_publish``, and the ``cmcnn_lane`` helpers); cleanup also frees the network's
session, so after a configure/activate/deactivate/cleanup cycle the process
has exactly as many threads as after the cycle before (nothing accumulates);
Ctrl-C while frames flow through both stages exits cleanly with status 0.
Real node, real DDS, real models; the in-process node is fed through its
synchroniser callback (the path subscriptions take).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.frames import build_frames, photo_frame
from ros_helpers.rosproc import (ROOT, NodeProcess, RosClient, claim_domain_id, image_msg, ros_env,
                                 wait_until)

NODE_THREADS = ("fer_prepare", "fer_publish", "fer_worker", "cmcnn_lane")


def _node_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(NODE_THREADS))


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(params=[True, False], ids=["pipeline", "one_worker"])
def node_and_listener(request, ros_domain_id, random_checkpoint):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cmcnn_ros.msg import EmotionArray
    from cmcnn_ros.ros.fer_node import FerNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-p", "autostart:=false", "-p", "device:=cpu",
                                  "-p", f"model_path:={random_checkpoint}", "-p", "preprocessing_threads:=2",
                                  "-p", f"pipeline:={'true' if request.param else 'false'}"])
    node = FerNode(context=ctx)
    listener = rclpy.create_node("listener", context=ctx)
    got = []
    listener.create_subscription(EmotionArray, "/fer_node/emotions", got.append, 10)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(listener)
    yield node, got, executor
    executor.shutdown()
    listener.destroy_node()
    node._stop_processing()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _cycle(node, got, executor) -> None:
    """configure, activate, three 5-face frames through both stages, deactivate (checked), cleanup."""
    from rclpy.lifecycle import TransitionCallbackReturn

    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    names = _node_threads()
    pipeline = node.get_parameter("pipeline").value
    expected = ["fer_prepare", "fer_publish"] if pipeline else ["fer_worker"]
    assert [n for n in names if n.startswith("fer_")] == sorted(expected), names
    assert wait_until(lambda: node._emotions_pub.get_subscription_count() > 0, 10)
    got.clear()
    for step in range(3):
        colour, depth = photo_frame(5, jitter=2 * step)
        stamp = time.time_ns()
        node._on_pair(image_msg(colour, "bgr8", stamp), image_msg(depth, "16UC1", stamp))
        end = time.monotonic() + 20.0
        while len(got) <= step and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
    assert len(got) == 3 and all(len(m.faces) == 5 for m in got)
    assert any(name.startswith("cmcnn_lane") for name in _node_threads()), "five faces ran on the lanes"
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert _node_threads() == []
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert _node_threads() == [] and node._stream is None


def test_deactivate_and_cleanup_leave_no_thread_behind(node_and_listener):
    node, got, executor = node_and_listener
    _cycle(node, got, executor)          # the first cycle starts the libraries' own pools (torch, DDS)
    gc.collect()
    after_first = _native_threads()
    _cycle(node, got, executor)
    gc.collect()
    assert wait_until(lambda: _native_threads() <= after_first, 5), \
        f"{_native_threads()} threads after the second cycle, {after_first} after the first"


def test_ctrl_c_while_both_stages_work_exits_cleanly(tmp_path, random_checkpoint):
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, tmp_path / "node.log",
                       {"model_path": str(random_checkpoint), "device": "cpu", "pipeline": True,
                        "colour_topic": "/cam/color", "depth_topic": "/cam/depth"})
    pub, client = None, None
    try:
        from cmcnn_ros.msg import EmotionArray

        client = RosClient(lease.domain_id, "ctrl_c_listener")
        _, results = client.collector(EmotionArray, "/fer_node/emotions")
        node.wait_for_log(r"\] \[fer_node\]: active:.*pipeline: fer_prepare", 90)
        frames = build_frames(tmp_path / "five.npz", "five", count=4)
        pub = subprocess.Popen([sys.executable, str(ROOT / "test" / "ros_helpers" / "publish_frames.py"),
                                "--frames", str(frames), "--rate", "30", "--duration", "20",
                                "--colour-topic", "/cam/color", "--depth-topic", "/cam/depth"],
                               env=ros_env(lease.domain_id), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: len(results) >= 10, 40), node.log()[-3000:]   # both stages are busy
        node.proc.send_signal(signal.SIGINT)
        rc = node.proc.wait(15)
        log = node.log()
        assert rc == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert not _children(node.proc.pid)
    finally:
        if pub is not None:
            pub.kill()
            pub.wait(10)
        if client is not None:
            client.close()
        node.stop()
        lease.release()


def _children(pid: int):
    """Processes whose parent is ``pid`` (the node starts none; this checks it left none)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out
