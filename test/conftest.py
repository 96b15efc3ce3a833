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

The ``ros`` marker
------------------
``ROS_TESTS`` below lists, by hand, the tests that need ROS 2 (rclpy, the
generated ``cmcnn_ros.msg``, other message packages, what ``make setup``
builds (``.venv``, ``.ros_prefix/env.sh``) or node processes); this file marks
them ``ros``. ``make test`` runs every test, marked or not. ``make
test-distro`` runs ``pytest -m "not ros"`` in a venv with ROS 2 Jazzy's
library versions and no ROS (``scripts/test_distro.sh``).
A new test that takes a ROS fixture (``ros_domain_id``, ``ros_env``,
``run_python``, ``start_python``) must be listed, or collection stops and
says so; one that imports ROS inside its body fails under ``make test-distro``.
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
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional

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


# ---------------------------------------------------------------- the ros marker
# The tests that need ROS 2, reviewed one by one (issue 18): everything else is
# the ROS-free core (cmcnn_ros outside cmcnn_ros/ros and the example node, the
# trainer, the renderer) and must also pass under the older libraries a Jazzy
# robot has, which `make test-distro` checks with `pytest -m "not ros"`.
# Listed rather than guessed from imports so that leaving a test out of the
# distro run is a decision someone reviewed, not a side effect.
# Module -> None (every test in it: it imports ROS at module level, so it is
# not even collected when the -m expression leaves `ros` out) or the names of
# its tests that need ROS (the others run in both).
ROS_TESTS: Dict[str, Optional[FrozenSet[str]]] = {
    # the ROS4HRI input's helpers import the node's ROS side (rclpy)
    "test_hri_input.py": None,
    # the node's worker threads and lanes, started and stopped through its lifecycle
    "test_node_threads.py": None,
    # a subprocess with the env file's environment (run_python) to hide onnxruntime
    "test_backends.py": frozenset({"test_without_onnxruntime_auto_runs_torch_and_onnxruntime_says_what_to_install"}),
    # colcon build over the Kilted wheels, then the built node runs
    "test_colcon_build.py": None,
    # the demo end to end (node and replayer processes on DDS), and the runtime
    # demo, which checks for rclpy before its arguments; cmcnn-demo's weights
    # check is ROS-free
    "test_demo.py": frozenset({"test_demo_end_to_end", "test_demo_with_default_weights_recognises_expressions",
                               "test_runtime_demo_without_a_bag_says_how_to_get_one"}),
    # the behaviour-tree node (rclpy) against fer_node
    "test_emotion_tree_ros.py": None,
    # fer_node processes with rclpy publishers/clients in the test
    "test_ros_compressed.py": None,
    "test_ros_hri.py": None,
    # fer_node with a camera_info topic, its face frames on /tf (tf2_msgs built in the test)
    "test_ros_face_frames.py": None,
    "test_ros_node.py": None,
    "test_ros_startup.py": None,
    # the rclpy bag replayer (bag reading and evaluation are ROS-free)
    "test_bags.py": frozenset({"test_replayer_publishes_bag_with_clock", "test_replayer_rejects_bad_options",
                               "test_mcap_folder_without_metadata_replays"}),
    "test_bags_compressed.py": frozenset({"test_replayer_plays_compressed_topics_as_recorded",
                                          "test_replayer_decompresses_a_ros1_robot_bag"}),
    # sensor_msgs' own Image class (the rosbags classes are ROS-free)
    "test_conversions.py": frozenset({"test_works_with_rclpy_messages"}),
    # what `make setup` builds: the env file, scripts/setup.sh runs (which find
    # their interpreter through .venv), the colcon-style CMake install
    "test_foundation.py": frozenset({"test_venv_layout_has_no_generic_training_module",
                                     "test_second_setup_run_rebuilds_nothing",
                                     "test_setup_stops_clearly_when_a_tool_is_missing",
                                     "test_colcon_style_install_layout"}),
    # the generated messages, and cmcnn_ros.ros.messages (sensor_msgs)
    "test_messages.py": frozenset({"test_generated_module_imports_from_fresh_shell",
                                   "test_round_trip_between_processes",
                                   "test_every_face_field_reaches_the_message_or_is_left_out_on_purpose",
                                   "test_an_unknown_position_is_published_as_nan"}),
    # imports fer_node (rclpy) with the env file's environment
    "test_package_layout.py": frozenset({"test_node_and_tools_import_without_offline_code"}),
    # cmcnn_ros.ros.parameters (rcl_interfaces' range descriptors), and rclpy itself
    "test_ros_config.py": frozenset({"test_yaml_mirrors_declared_parameters",
                                     "test_missing_default_model_is_a_clear_error",
                                     "test_absolute_model_path", "test_node_key_matching_agrees_with_rclpy",
                                     "test_numeric_parameters_have_range_descriptors",
                                     "test_transport_parameters_take_image_transport_names",
                                     "test_face_source_and_min_confidence_are_declared_with_their_choices_and_range"}),
    # the node's declared defaults (cmcnn_ros.ros.parameters) against the ROS-free ones
    "test_stream.py": frozenset({"test_stream_defaults_are_the_nodes"}),
    "test_sync.py": frozenset({"test_sync_defaults_shared_by_node_and_bag_tools"}),
}
# Fixtures that only make sense with ROS: a test that takes one (directly or
# through another fixture) and is not in ROS_TESTS stops collection.
ROS_FIXTURES = frozenset({"ros_domain_id", "ros_env", "run_python", "start_python"})
_TEST_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ros: needs ROS 2 (rclpy, messages, env file, node processes); "
                                       "listed in test/conftest.py ROS_TESTS; `make test-distro` runs -m 'not ros'")
    missing = sorted(name for name in ROS_TESTS if not (_TEST_DIR / name).is_file())
    if missing:
        raise pytest.UsageError(f"test/conftest.py ROS_TESTS names {missing}, which are not in test/: "
                                "remove or rename the entries")


def _deselects_ros(config: pytest.Config) -> bool:
    """Whether the ``-m`` expression leaves out a test whose only mark is ``ros``."""
    markexpr = config.getoption("markexpr", default="")
    if not markexpr:
        return False
    # pytest's own -m parser, so "not ros", "not ros and not slow", ... all work.
    from _pytest.mark.expression import Expression

    return not Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "ros")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    # A whole-module entry imports ROS at module level: importing it without
    # ROS would be a collection error although every test in it is deselected.
    if (collection_path.parent == _TEST_DIR and collection_path.name in ROS_TESTS
            and ROS_TESTS[collection_path.name] is None and _deselects_ros(config)):
        return True
    return None


@pytest.hookimpl(tryfirst=True)   # before -m/-k deselect: every collected test is marked
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    problems: List[str] = []
    checked_modules = set()
    for item in items:
        module = item.path.name
        if item.path.parent != _TEST_DIR:
            continue
        names = ROS_TESTS.get(module, frozenset())
        if module not in checked_modules and names:
            checked_modules.add(module)
            stale = sorted(n for n in names if not hasattr(item.module, n))
            if stale:
                problems.append(f"ROS_TESTS[{module!r}] names {stale}, which {module} does not define")
        if names is None or getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.ros)
        else:
            uses = sorted(ROS_FIXTURES & set(getattr(item, "fixturenames", ())))
            if uses:
                problems.append(f"{item.nodeid} uses {', '.join(uses)} but is not in ROS_TESTS")
    if problems:
        raise pytest.UsageError("test/conftest.py ROS_TESTS is out of date (it decides what `make test-distro` "
                                "leaves out): " + "; ".join(problems) + ". Add the ROS tests there, drop stale names.")


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
