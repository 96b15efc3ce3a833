"""Helpers for tests and benchmarks that run fer_node in its own process.

* :func:`claim_domain_id` - a ROS_DOMAIN_ID nobody else on this machine holds
  (an flock'ed file per id), so parallel runs never see each other.
* :class:`NodeProcess` - ``python -m cmcnn_ros.ros.fer_node`` with parameters,
  its log in a file, log polling, RSS.
* :class:`RosClient` - an rclpy context/node on a given domain with a
  background executor, for publishing frames and receiving results.
* :func:`image_msg` - a ``sensor_msgs/Image`` from an array (raw fields can
  be overridden to make bad messages).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Without it Fast DDS loses most best-effort 640x480 images (see the file).
FASTDDS_PROFILE = str(ROOT / "config" / "fastdds.xml")


class DomainLease:
    """Holds an flock on ``/tmp/cmcnn_ros_domain_<id>.lock`` until released."""

    def __init__(self, domain_id: int, fd: int) -> None:
        self.domain_id, self._fd = domain_id, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def claim_domain_id(first: int = 120, last: int = 200) -> DomainLease:
    """Claim a free ROS_DOMAIN_ID in ``[first, last]`` (Fast DDS allows 0-232).

    Raises:
        RuntimeError: every id in the range is held.
    """
    for did in range(first, last + 1):
        fd = os.open(f"/tmp/cmcnn_ros_domain_{did}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return DomainLease(did, fd)
    raise RuntimeError(f"no free ROS_DOMAIN_ID in {first}..{last}")


def ros_env(domain_id: int) -> Dict[str, str]:
    """The environment for a process on ``domain_id``, DDS kept on loopback."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", FASTDDS_PROFILE)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _param_arg(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value if value else "''"
    else:
        text = repr(value)
    return f"{name}:={text}"


class NodeProcess:
    """fer_node (or another node module) in a child process.

    Args:
        domain_id: ROS_DOMAIN_ID for the child.
        log_path: file receiving the child's stdout and stderr.
        params: ``-p name:=value`` parameters.
        remaps: ``-r from:=to`` remappings.
        module: the node's module, run with ``python -m`` when ``command`` is not given.
        ros_args: more ``--ros-args`` arguments (``--params-file F``, ``-r __ns:=/robot1``).
        command: the executable (default ``python -m <module>``).
        env: the child's environment (default :func:`ros_env` of ``domain_id``).
        cwd: the child's working folder (default the repository root).
    """

    def __init__(self, domain_id: int, log_path: Path, params: Dict[str, Any],
                 remaps: Optional[Dict[str, str]] = None, ros_args: Sequence[str] = (),
                 command: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[Path] = None, module: str = "cmcnn_ros.ros.fer_node") -> None:
        cmd = list(command or [sys.executable, "-m", module]) + ["--ros-args"]
        for k, v in params.items():
            cmd += ["-p", _param_arg(k, v)]
        for k, v in (remaps or {}).items():
            cmd += ["-r", f"{k}:={v}"]
        cmd += list(ros_args)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env if env is not None else ros_env(domain_id), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(cwd or ROOT))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """Wait until ``pattern`` (regex) appears in the log past offset ``after``.

        Raises:
            AssertionError: timeout or the process died; the log is included.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.log()[after:])
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in node log within {timeout} s "
                             f"(exit {self.proc.poll()}):\n{self.log()[-4000:]}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def stamp_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def image_msg(array: np.ndarray, image_encoding: str, stamp_ns: int, frame_id: str = "camera_color_optical_frame",
              **override: Any) -> Any:
    """``sensor_msgs/Image`` holding ``array``; ``override`` replaces raw fields."""
    from sensor_msgs.msg import Image

    from cmcnn_ros.ros.conversions import array_to_image_fields

    fields = array_to_image_fields(array, image_encoding)
    fields.update(override)
    msg = Image(height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                is_bigendian=fields["is_bigendian"], step=fields["step"])
    msg.data = fields["data"]
    msg.header.stamp = stamp_msg(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


class RosClient:
    """rclpy context + node on ``domain_id`` spun in a background thread."""

    def __init__(self, domain_id: int, name: str = "fer_test_client") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", FASTDDS_PROFILE)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def collector(self, msg_type: Any, topic: str, qos: Any = 10) -> Tuple[Any, List[Tuple[int, Any]]]:
        """Subscribe; received ``(receive_time_ns, msg)`` pairs land in the returned list."""
        out: List[Tuple[int, Any]] = []
        sub = self.node.create_subscription(msg_type, topic, lambda m: out.append((time.time_ns(), m)), qos)
        return sub, out

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        cli = self.node.create_client(srv_type, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available")
            fut = cli.call_async(request)
            end = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.02)
            if not fut.done():
                raise AssertionError(f"service {name} did not answer in {timeout} s")
            return fut.result()
        finally:
            self.node.destroy_client(cli)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2.0)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
