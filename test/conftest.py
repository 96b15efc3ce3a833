"""Shared pytest helpers for tests that talk ROS 2 or need the setup's environment.

Reuse these instead of writing your own; they keep parallel test runs (several
engineers, CI) apart and DDS traffic on this machine.

Fixtures
--------
``ros_domain_id`` (function scope) -> int
    Reserves a ``ROS_DOMAIN_ID`` (1-101) no other test *process on this
    machine* holds (a file lock under the temp folder), and sets it together
    with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` in ``os.environ`` for the
    test, so an in-process ``rclpy.init()`` made inside the test uses it.
    Restored and released afterwards. Use it in every test that starts nodes::

        def test_my_node(ros_domain_id):
            rclpy.init()  # sees the reserved domain, loopback discovery only

``ros_env`` (function scope) -> dict[str, str]
    The environment of ``.ros_prefix/env.sh`` (venv, generated messages,
    typesupport libraries) plus this test's ``ROS_DOMAIN_ID`` and
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: pass it to any subprocess.

``run_python`` (function scope) -> callable
    ``run_python(code, timeout=60, check=True, env=None)`` runs a Python
    snippet in a separate interpreter with ``ros_env`` (or ``env``) and returns
    the ``subprocess.CompletedProcess`` (text stdout/stderr). With
    ``check=True`` a non-zero exit fails the test showing the snippet's stderr.

``start_python`` (function scope) -> callable
    ``start_python(code, env=None)`` starts a snippet in the background
    (``subprocess.Popen``, text pipes) with ``ros_env``; every process still
    running at the end of the test is killed.

``random_checkpoint`` / ``overflowing_checkpoint`` (session scope) -> Path
    A randomly initialised default-preset checkpoint; one whose finite
    weights overflow to NaN scores (for the non-finite guards).

Plain functions (``from conftest import ...`` also works, pytest puts this
folder on ``sys.path``): ``env_file_environment()``, ``run_python_snippet``,
``start_python_snippet``, ``REPO_ROOT``, ``ENV_FILE``.

Tests that need the env file fail with a clear message when
``.ros_prefix/env.sh`` is missing: run ``make setup`` (``make test`` does it).
"""

from __future__ import annotations

import fcntl
import functools
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = REPO_ROOT / ".ros_prefix" / "env.sh"

# Fast DDS maps a domain id to UDP ports; 0-101 is the portable range. 0 is
# left free for a developer's own nodes.
_DOMAIN_IDS = range(1, 102)
_LOCK_DIR = Path(tempfile.gettempdir()) / "cmcnn_ros_test_domains"


class _DomainLock:
    """An exclusive, process-wide reservation of one ROS_DOMAIN_ID."""

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        ids = list(_DOMAIN_IDS)
        random.shuffle(ids)
        for domain_id in ids:
            fd = os.open(_LOCK_DIR / f"{domain_id}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.domain_id = domain_id
            self._fd = fd
            return
        raise RuntimeError(f"all ROS_DOMAIN_IDs {_DOMAIN_IDS} are held by other test processes")

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


@functools.lru_cache(maxsize=1)
def env_file_environment() -> Dict[str, str]:
    """The environment after ``source .ros_prefix/env.sh`` in a bash shell.

    Raises:
        pytest.fail.Exception: the env file is missing or does not source.
    """
    if not ENV_FILE.is_file():
        pytest.fail(f"{ENV_FILE} is missing: run `make setup` (or `bash scripts/setup.sh`) first",
                    pytrace=False)
    proc = subprocess.run(
        ["bash", "-c", 'source "$1" >/dev/null && env -0', "bash", str(ENV_FILE)],
        capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(f"sourcing {ENV_FILE} failed: {proc.stderr.decode(errors='replace')}",
                    pytrace=False)
    env: Dict[str, str] = {}
    for entry in proc.stdout.split(b"\0"):
        if b"=" in entry:
            key, value = entry.split(b"=", 1)
            env[key.decode()] = value.decode(errors="replace")
    # Environment of bash itself, not of the env file.
    for key in ("SHLVL", "_", "PWD", "OLDPWD"):
        env.pop(key, None)
    return env


def _with_domain(env: Dict[str, str], domain_id: int) -> Dict[str, str]:
    out = dict(env)
    out["ROS_DOMAIN_ID"] = str(domain_id)
    out["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def _python(env: Dict[str, str]) -> str:
    venv = env.get("VIRTUAL_ENV")
    return str(Path(venv) / "bin" / "python") if venv else sys.executable


def run_python_snippet(code: str, env: Dict[str, str], timeout: float = 60,
                       check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a new process with ``env``; cwd is the repo root.

    Raises:
        pytest.fail.Exception: ``check`` and the snippet exited non-zero or timed out.
    """
    try:
        proc = subprocess.run([_python(env), "-c", code], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"snippet timed out after {timeout} s; stderr:\n{exc.stderr}", pytrace=False)
    if check and proc.returncode != 0:
        pytest.fail(f"snippet exited {proc.returncode}\n--- stdout:\n{proc.stdout}\n"
                    f"--- stderr:\n{proc.stderr}", pytrace=False)
    return proc


def start_python_snippet(code: str, env: Dict[str, str]) -> subprocess.Popen:
    """Start ``python -c code`` in the background with ``env`` (text pipes)."""
    return subprocess.Popen([_python(env), "-c", code], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def ros_domain_id(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A ROS_DOMAIN_ID reserved for this test, set in os.environ with LOCALHOST discovery."""
    lock = _DomainLock()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(lock.domain_id))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        yield lock.domain_id
    finally:
        lock.release()


@pytest.fixture
def ros_env(ros_domain_id: int) -> Dict[str, str]:
    """The env file's environment plus this test's ROS_DOMAIN_ID, for subprocesses."""
    return _with_domain(env_file_environment(), ros_domain_id)


@pytest.fixture
def run_python(ros_env: Dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """``run_python(code, timeout=60, check=True, env=None)`` with ``ros_env``."""

    def _run(code: str, timeout: float = 60, check: bool = True,
             env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return run_python_snippet(code, env if env is not None else ros_env, timeout, check)

    return _run


@pytest.fixture
def start_python(ros_env: Dict[str, str]) -> Iterator[Callable[..., subprocess.Popen]]:
    """``start_python(code, env=None)`` -> Popen; leftovers are killed after the test."""
    started: List[subprocess.Popen] = []

    def _start(code: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        proc = start_python_snippet(code, env if env is not None else ros_env)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-tensor tests.

    On a shared, loaded machine OpenMP worker threads spin-wait for a busy
    core and tiny models run many times slower; one thread avoids that. Use
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised default-preset CM-CNN checkpoint (7 classes).

    Costs the same per frame as the shipped weights, so the plumbing tests
    (node, bags, demo) use it; accuracy tests use ``models/cmcnn_default.pt``.
    """
    import torch

    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
    from cmcnn_ros.model.checkpoint import save_checkpoint
    from cmcnn_ros.model.cmcnn import cmcnn
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    return save_checkpoint(path, cmcnn(num_classes=7), EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams().to_dict())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised ``tiny``-preset CM-CNN checkpoint (7 classes): the cheapest real model."""
    import torch

    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
    from cmcnn_ros.model.checkpoint import save_checkpoint
    from cmcnn_ros.model.cmcnn import cmcnn
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, cmcnn(preset="tiny", num_classes=7), EXPRESSIONS_WITH_NEUTRAL,
                    PreprocessingParams().to_dict())
    return path


@pytest.fixture(scope="session")
def astronaut_frame():
    """The astronaut photograph (a real frontal face) in a 640x480 Kinect-sized BGR frame."""
    import cv2
    import numpy as np
    import skimage.data

    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:480, 64:576] = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)[:480]
    return frame


@pytest.fixture(scope="session")
def overflowing_checkpoint(tmp_path_factory) -> Path:
    """A loadable checkpoint (every weight finite) whose network answers NaN scores.

    Conv kernels alternate +-3e38: products overflow to +-inf and their sums to
    NaN, as a diverged but saved run can. For the "never publish / print a
    non-finite score" checks; a NaN *weight* is refused at load instead.
    """
    import torch

    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
    from cmcnn_ros.model.checkpoint import save_checkpoint
    from cmcnn_ros.model.cmcnn import cmcnn
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    torch.manual_seed(0)
    model = cmcnn(num_classes=7)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 4:
                param.view(-1)[::2] = 3e38
                param.view(-1)[1::2] = -3e38
    path = tmp_path_factory.mktemp("ckpt") / "overflowing.pt"
    return save_checkpoint(path, model, EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams().to_dict())
