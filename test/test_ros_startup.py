"""fer_node start-up as robots run it: namespaced params files, parameter errors, unknown overrides,
run-time parameter sets, the bad-message log throttle and non-finite scores (issue 10).

Real rclpy and DDS; the node runs in its own process (``ros_helpers/rosproc.py``) except where a
test drives one method of a real in-process node.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_helpers.rosproc import ROOT, NodeProcess, RosClient, claim_domain_id, ros_env, wait_until

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters


def _shipped_yaml_with(**values) -> str:
    """config/fer.yaml as shipped (same node key), with some values changed."""
    text = (ROOT / "config" / "fer.yaml").read_text()
    for name, value in values.items():
        text, n = re.subn(rf"^(    {name}): .*$", rf"\g<1>: {value}", text, flags=re.M)
        assert n == 1, name
    return text


def _value(pv):
    return {ParameterType.PARAMETER_INTEGER: pv.integer_value, ParameterType.PARAMETER_DOUBLE: pv.double_value,
            ParameterType.PARAMETER_STRING: pv.string_value, ParameterType.PARAMETER_BOOL: pv.bool_value}[pv.type]


def _set(client, node, name, value):
    kind = {int: ("PARAMETER_INTEGER", "integer_value"), float: ("PARAMETER_DOUBLE", "double_value"),
            str: ("PARAMETER_STRING", "string_value")}[type(value)]
    req = SetParameters.Request()
    req.parameters = [Parameter(name=name, value=ParameterValue(
        type=getattr(ParameterType, kind[0]), **{kind[1]: value}))]
    return client.call(SetParameters, f"{node}/set_parameters", req).results[0]


def test_params_file_applies_under_a_namespace_and_runtime_sets_are_checked(tmp_path):
    """Issue 10.1 + 10.5: the shipped params file's layout reaches /robot1/fer_node; values are read back over
    the parameter services; out-of-range and unknown-choice sets are refused like at start-up."""
    params = tmp_path / "my_fer.yaml"
    params.write_text(_shipped_yaml_with(redetect_interval=3, sync_slop=0.07, autostart="false",
                                         colour_topic='"/robot_cam/image"'))
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, tmp_path / "ns.log", {},
                       ros_args=["--params-file", str(params), "-r", "__ns:=/robot1"])
    client = RosClient(lease.domain_id)
    try:
        names = ["redetect_interval", "sync_slop", "colour_topic", "autostart", "sync_queue_size"]
        req = GetParameters.Request(names=names)
        resp = client.call(GetParameters, "/robot1/fer_node/get_parameters", req, timeout=30)
        got = dict(zip(names, (_value(v) for v in resp.values)))
        assert got == {"redetect_interval": 3, "sync_slop": 0.07, "colour_topic": "/robot_cam/image",
                       "autostart": False, "sync_queue_size": 10}, node.log()[-2000:]

        bad = _set(client, "/robot1/fer_node", "redetect_interval", 0)
        assert not bad.successful and "redetect_interval" in bad.reason
        bad = _set(client, "/robot1/fer_node", "sync_slop", 9.0)
        assert not bad.successful
        bad = _set(client, "/robot1/fer_node", "sync_policy", "fast")
        assert not bad.successful and bad.reason == ("parameter sync_policy: 'fast' is not one of 'approximate' "
                                                     "or 'exact' (default 'approximate')")
        assert _set(client, "/robot1/fer_node", "sync_slop", 0.08).successful
        resp = client.call(GetParameters, "/robot1/fer_node/get_parameters",
                           GetParameters.Request(names=["redetect_interval", "sync_slop", "sync_policy"]))
        assert [_value(v) for v in resp.values] == [3, 0.08, "approximate"]
        assert "has no section" not in node.log() and "is not a parameter" not in node.log()
    finally:
        client.close()
        assert node.stop() == 0, node.log()[-2000:]
        lease.release()


BAD_STARTS = [
    (["-p", "redetect_interval:=five"],
     "parameter redetect_interval: 'five' is a string, but redetect_interval takes an integer in [1, 100]"),
    (["-p", "redetect_interval:=5.0"],
     "parameter redetect_interval: 5.0 is a floating-point number, but redetect_interval takes an integer in "
     "[1, 100]; write it without a decimal point, e.g. redetect_interval: 5"),
    (["-p", "sync_slop:=1"],
     "parameter sync_slop: 1 is an integer, but sync_slop takes a floating-point number in [0.001, 5.0]; "
     "write it with a decimal point, e.g. sync_slop: 1.0"),
    (["-p", "redetect_interval:=0"], "parameter redetect_interval: 0 is outside [1, 100]; set a value in that range"),
    (["-p", "sync_policy:=fast"], "parameter sync_policy: 'fast' is not one of 'approximate' or 'exact'"),
    ("malformed", "line 4 column 4: invalid YAML"),
    ("missing", "does not exist; check the path given to --params-file"),
    ("rcl", "Couldn't parse params file"),
]


def test_bad_parameters_and_params_files_stop_start_up_with_one_line(tmp_path):
    """Issue 10.5: each case ends in exit 2 and one FATAL line naming the parameter (or file) and the fix."""
    lease = claim_domain_id()
    env = ros_env(lease.domain_id)
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("/**/fer_node:\n  ros__parameters:\n    redetect_interval: 5\n   sync_slop: [1\n")
    rcl_only = tmp_path / "rcl.yaml"   # valid YAML that rcl refuses (mixed-type list)
    rcl_only.write_text("/**/fer_node:\n  ros__parameters:\n    redetect_interval: [1, \"a\"]\n")
    files = {"malformed": malformed, "missing": tmp_path / "missing.yaml", "rcl": rcl_only}
    for args, expected in BAD_STARTS:
        if isinstance(args, str):
            args = ["--params-file", str(files[args])]
        run = subprocess.run([sys.executable, "-m", "cmcnn_ros.ros.fer_node", "--ros-args",
                              "-p", "autostart:=false", *args], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        fatal = [line for line in run.stderr.splitlines() if line.startswith("[FATAL] [fer_node]: ")]
        assert run.returncode == 2, (args, run.returncode, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout, (args, run.stderr)
        assert len(fatal) == 1 and expected in fatal[0], (args, run.stderr)
    lease.release()


def test_unknown_overrides_and_misnamed_sections_are_warned(tmp_path):
    """Issue 10.6: typos and a YAML keyed under another node name are named at start-up."""
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("fer_nod:\n  ros__parameters:\n    redetect_interval: 2\n")
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, tmp_path / "unknown.log",
                       {"autostart": False, "redetect_intervall": 3, "colour_topc": "/x"},
                       ros_args=["--params-file", str(wrong)])
    try:
        node.wait_for_log(r"parameter override 'colour_topc' is not a parameter of /fer_node and is ignored; "
                          r"did you mean 'colour_topic'\?", 30)
        node.wait_for_log(r"parameter override 'redetect_intervall' is not a parameter of /fer_node and is "
                          r"ignored; did you mean 'redetect_interval'\?", 5)
        node.wait_for_log(rf"params file {re.escape(str(wrong))} has no section for this node /fer_node "
                          r"\(its node keys: fer_nod\), so none of its values apply; key the section "
                          r"'/\*\*/fer_node:'", 5)
    finally:
        assert node.stop() == 0, node.log()[-2000:]
        lease.release()


# ---------------------------------------------------------------- in-process node: throttle, non-finite

@pytest.fixture
def fer_node_in_process(ros_domain_id):
    import rclpy

    from cmcnn_ros.ros.fer_node import FerNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-p", "autostart:=false", "-p", "bad_message_log_period:=60.0",
                                  "-p", "device:=cpu"])
    node = FerNode(context=ctx)
    yield node
    node._stop_processing()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def test_bad_message_throttle_logs_new_details_of_a_kind(fer_node_in_process, capfd):
    """Issue 10.9: a 4K/VGA mismatch after an earlier 320x240 one reaches the log; true repeats do not."""
    node = fer_node_in_process
    capfd.readouterr()

    def bad(c, d, stamp):
        reason = (f"colour is {c} but depth is {d}: the depth topic must carry depth registered to the colour "
                  "image (e.g. depth_registered/image_raw, depth_to_rgb/image_raw)")
        node._log_throttled("warning", f"skipping bad frame (stamp {stamp:.3f}): {reason}", detail=reason)

    bad("640x480", "320x240", 1.0)
    bad("640x480", "320x240", 1.1)           # same detail, new stamp: throttled
    bad("3840x2160", "640x480", 1.2)         # same kind, new detail: logged
    bad("3840x2160", "640x480", 1.3)
    time.sleep(0.2)
    logged = re.findall(r"colour is (\S+) but depth is (\S+):", capfd.readouterr().err)
    assert logged == [("640x480", "320x240"), ("3840x2160", "640x480")]
    for i in range(20):                      # a storm of ever-new sizes: 5 new details a period in all
        bad(f"{700 + i}x480", "640x480", 2.0 + i)
    time.sleep(0.2)
    assert len(re.findall(r"colour is (\S+) but depth is", capfd.readouterr().err)) == 5 - 1


def test_non_finite_scores_are_never_published(fer_node_in_process, overflowing_checkpoint):
    """Issue 10.7: a model answering NaN gives a skipped frame with the reason, no EmotionArray."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ros_helpers.frames import photo_frame
    from ros_helpers.rosproc import image_msg

    from lifecycle_msgs.msg import State

    node = fer_node_in_process
    node.set_parameters([rclpy_param("model_path", str(overflowing_checkpoint))])
    node.trigger_configure()
    assert node._state_machine.current_state[0] == State.PRIMARY_STATE_INACTIVE
    node.trigger_activate()
    import rclpy
    from cmcnn_ros.msg import EmotionArray

    listener = rclpy.create_node("listener", context=node.context)
    got = []
    listener.create_subscription(EmotionArray, "/fer_node/emotions", got.append, 10)
    assert wait_until(lambda: node._emotions_pub.get_subscription_count() > 0, 10)
    colour, depth = photo_frame(1)
    stamp = time.time_ns()
    node._process(image_msg(colour, "bgr8", stamp), image_msg(depth, "16UC1", stamp))
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(listener)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    listener.destroy_node()
    assert got == []
    kv = node._stats.key_values()
    assert kv["processed frames"] == "0" and kv["bad messages"] == "1"
    assert "non-finite scores for 1 of 1 faces" in node._stats.last_error
    assert "numerically broken" in node._stats.last_error


def rclpy_param(name, value):
    from rclpy.parameter import Parameter as P

    return P(name, value=value)


def test_the_node_publishes_exactly_what_the_stream_returns(fer_node_in_process, random_checkpoint):
    """Issue 11: the node only converts and publishes; the offline stream gives the same faces."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ros_helpers.frames import photo_frame
    from ros_helpers.rosproc import image_msg

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    import numpy as np

    from sensor_msgs.msg import CameraInfo

    from cmcnn_ros.inference.face_pose import CameraIntrinsics
    from cmcnn_ros.inference.stream import ExpressionStream
    from cmcnn_ros.msg import EmotionArray
    from cmcnn_ros.ros import conversions

    node = fer_node_in_process
    node.set_parameters([rclpy_param("model_path", str(random_checkpoint)), rclpy_param("score_smoothing", 0.5),
                         rclpy_param("camera_info_topic", "/cam/color/camera_info")])
    node.trigger_configure()
    node.trigger_activate()
    # The camera's CameraInfo as the subscription would hand it over (where the faces are: issue 17).
    info = CameraInfo(width=640, height=480)
    info.header.frame_id = "camera_color_optical_frame"
    info.k = [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
    node._camera_info.add(info)
    intrinsics = CameraIntrinsics(525.0, 525.0, 319.5, 239.5, width=640, height=480)
    listener = rclpy.create_node("listener", context=node.context)
    got = []
    listener.create_subscription(EmotionArray, "/fer_node/emotions", got.append, 10)
    assert wait_until(lambda: node._emotions_pub.get_subscription_count() > 0, 10)
    offline = ExpressionStream.from_checkpoint(random_checkpoint, device="cpu", smoothing=0.5)
    expected = []
    for step in range(3):
        colour, depth = photo_frame(5, jitter=3 * step)
        stamp = time.time_ns()
        pair = image_msg(colour, "bgr8", stamp), image_msg(depth, "16UC1", stamp)
        node._process(*pair)
        expected.append(offline.process(*conversions.frame_pair(*pair), depth_scale=1.0, intrinsics=intrinsics))
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(listener)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and len(got) < 3:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    listener.destroy_node()
    assert len(got) == 3
    for msg, result in zip(got, expected):
        assert list(msg.classes) == offline.class_names
        assert len(msg.faces) == len(result.faces) >= 1
        for e, face in zip(msg.faces, result.faces):
            assert e.face_id == face.face_id
            assert (e.roi.x_offset, e.roi.y_offset, e.roi.width, e.roi.height) == face.box
            assert list(e.scores) == [float(s) for s in face.scores]
            assert (e.expression, e.confidence) == (face.expression, face.confidence)
            # float32 message fields
            assert (e.valence, e.arousal) == (float(np.float32(face.valence)), float(np.float32(face.arousal)))
            assert e.depth_valid == face.depth_valid
            assert (e.position.x, e.position.y, e.position.z) == face.position and np.isfinite(face.position).all()
