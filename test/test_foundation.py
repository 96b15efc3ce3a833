"""The package's build foundation: package.xml, entry points, scripts/setup.sh
(idempotence and clear failures), the venv import layout, and the colcon-style
CMake install (the same CMakeLists.txt a robot builds with colcon).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import ENV_FILE, REPO_ROOT, env_file_environment

SETUP_SH = REPO_ROOT / "scripts" / "setup.sh"
PREFIX = REPO_ROOT / ".ros_prefix" / "install"

REQUIRED_DEPS = {
    "build": {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"},
    "run": {
        "rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "message_filters", "cv_bridge",
        "launch_ros", "rosidl_default_runtime", "python3-opencv", "python3-numpy",
        "python3-scipy", "python3-skimage", "python3-torch", "python3-yaml", "python3-tqdm",
        "python3-matplotlib",
    },
    "test": {"python3-pytest"},
}


def _architecture_entry_points() -> Dict[str, str]:
    """command -> module:function from the table in docs/ARCHITECTURE.md."""
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\|\s*`([\w-]+)`\s*\|\s*`([\w.]+:\w+)`\s*\|", text, re.M))


def _setup_py_entry_points(kind: str) -> Dict[str, str]:
    """``kind`` "RUNTIME" or "OFFLINE": setup.py's ``<kind>_ENTRY_POINTS`` list."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == f"{kind}_ENTRY_POINTS" for t in node.targets):
            items: List[str] = ast.literal_eval(node.value)
            return {k.strip(): v.strip() for k, v in (item.split("=", 1) for item in items)}
    raise AssertionError(f"setup.py has no {kind}_ENTRY_POINTS list")


def _cmake_entry_points(kind: str) -> Dict[str, str]:
    """``kind`` "runtime" or "offline": the ``set(_<kind>_entry_points ...)`` list of CMakeLists.txt."""
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\(_{kind}_entry_points\n(.*?)\)", text, re.S)
    assert block, f"CMakeLists.txt has no _{kind}_entry_points list"
    return dict(re.findall(r'^\s*"([\w-]+)=([\w.]+:\w+)"\s*$', block.group(1), re.M))


def test_package_xml_validates_and_lists_dependencies() -> None:
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO_ROOT / "package.xml"))
    pkg.validate()  # raises InvalidPackage (e.g. for a maintainer e-mail like a@b.c)
    assert pkg.name == "cmcnn_ros" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {g.name for g in pkg.member_of_groups}
    build = {d.name for d in pkg.buildtool_depends + pkg.build_depends}
    run = {d.name for d in pkg.exec_depends}
    test = {d.name for d in pkg.test_depends}
    assert REQUIRED_DEPS["build"] <= build, REQUIRED_DEPS["build"] - build
    assert REQUIRED_DEPS["run"] <= run, REQUIRED_DEPS["run"] - run
    assert REQUIRED_DEPS["test"] <= test, REQUIRED_DEPS["test"] - test


def _setup_py_requirements() -> List[str]:
    """setup.py's ``install_requires`` and every extra's requirements, as written."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    found: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "EXTRAS_REQUIRE"
                                                for t in node.targets):
            found += [r for reqs in ast.literal_eval(node.value).values() for r in reqs]
        elif isinstance(node, ast.keyword) and node.arg == "install_requires":
            found += ast.literal_eval(node.value)
    return found


def _pins(path: Path) -> Dict[str, str]:
    """Canonical package name -> pinned version of a requirements file (``name==version`` lines)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", text)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return pins


@pytest.mark.parametrize("pins_file", ["requirements.txt", "requirements-distro.txt"])
def test_setup_py_bounds_admit_the_tested_versions(pins_file: str) -> None:
    """`pip install .` keeps the versions the tests ran with: requirements.txt's, and on a
    Jazzy robot Ubuntu 24.04's (requirements-distro.txt, `make test-distro`), instead of
    replacing the distribution's numpy or matplotlib under ROS."""
    from packaging.requirements import Requirement

    pins = _pins(REPO_ROOT / pins_file)
    requirements = [Requirement(r) for r in _setup_py_requirements()]
    assert len(requirements) >= 10 and "numpy" in pins, (requirements, pins)
    names = {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in requirements}
    if pins_file == "requirements.txt":   # every bound is checked against a real pin
        unpinned = set(names) - set(pins)
        assert not unpinned, f"setup.py names packages requirements.txt does not pin: {unpinned}"
    refused = [f"{r} refuses {name}=={pins[name]}" for name, r in names.items()
               if name in pins and not r.specifier.contains(pins[name], prereleases=True)]
    assert not refused, f"setup.py against {pins_file}: {refused}"


def test_entry_points_agree_everywhere() -> None:
    """docs/ARCHITECTURE.md, setup.py and CMakeLists.txt name the same commands.

    colcon installs the runtime list by default and the offline list only with
    CMCNN_INSTALL_OFFLINE=ON, so each list must agree on its own; runtime
    commands come from cmcnn_ros, offline ones from the offline packages.
    """
    documented = _architecture_entry_points()
    runtime, offline = _setup_py_entry_points("RUNTIME"), _setup_py_entry_points("OFFLINE")
    assert "fer_node" in runtime and len(documented) >= 9
    assert not set(runtime) & set(offline)
    assert {**runtime, **offline} == documented
    assert _cmake_entry_points("runtime") == runtime
    assert _cmake_entry_points("offline") == offline
    assert all(target.startswith("cmcnn_ros.") for target in runtime.values()), runtime
    assert all(target.split(".")[0] in ("cmcnn_training", "cmcnn_synthetic") for target in offline.values()), offline


def test_venv_layout_has_no_generic_training_module() -> None:
    """Both packages import with the env; no top-level `training` leaks in."""
    env = env_file_environment()
    code = ("import importlib.util as u, json, cmcnn_ros\n"
            "print(json.dumps({n: u.find_spec(n) is not None for n in"
            " ('training', 'cmcnn_ros', 'cmcnn_ros.msg')}))\n")
    proc = subprocess.run([str(Path(env["VIRTUAL_ENV"]) / "bin" / "python"), "-c", code],
                          env=env, cwd="/", capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == \
        '{"training": false, "cmcnn_ros": true, "cmcnn_ros.msg": true}'
    site = Path(env["VIRTUAL_ENV"]) / "lib"
    assert not list(site.glob("python3*/site-packages/training")), "a top-level `training` is installed"


def test_second_setup_run_rebuilds_nothing() -> None:
    """Run scripts/setup.sh again: every step reports up to date, the prefix is untouched."""
    if not (ENV_FILE.is_file() and PREFIX.is_dir()):
        pytest.fail("run `make setup` first: no .ros_prefix/env.sh / install", pytrace=False)
    subprocess.run(["bash", str(SETUP_SH)], capture_output=True, timeout=900, check=True)
    before = {p: p.stat().st_mtime_ns for p in (PREFIX, ENV_FILE, PREFIX / "lib")}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SETUP_SH)], capture_output=True, text=True,
                          timeout=120, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    for step in ("venv", "python packages", "messages", "env file"):
        assert f"[setup] {step}: up to date" in proc.stdout, proc.stdout
    assert "building" not in proc.stdout and "installing" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert elapsed < 30, f"an up-to-date setup took {elapsed:.1f} s"


def _bin_without(tmp_path: Path, tools: List[str]) -> str:
    """A PATH folder linking only the given tools (found on the current PATH)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    return str(bindir)


@pytest.mark.parametrize("missing, expected", [
    ("cmake", "cmake not found"),
    ("compiler", "no C compiler found"),
])
def test_setup_stops_clearly_when_a_tool_is_missing(tmp_path: Path, missing: str,
                                                    expected: str) -> None:
    """No cmake / no C compiler: the script names the step and what to do, changes nothing."""
    basics = ["dirname", "mkdir", "flock", "cat", "head", "awk", "sort", "id", "make"]
    if missing == "compiler":
        basics.append("cmake")
    path = _bin_without(tmp_path, basics)
    env = {"PATH": path, "HOME": str(tmp_path)}
    stamp = REPO_ROOT / ".ros_prefix" / "msgs.sha256"
    before = stamp.stat().st_mtime_ns if stamp.exists() else None
    proc = subprocess.run([shutil.which("bash"), str(SETUP_SH)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert 'ERROR in step "tools"' in proc.stderr and expected in proc.stderr, proc.stderr
    assert "What to do:" in proc.stderr
    assert (stamp.stat().st_mtime_ns if stamp.exists() else None) == before


def _cmake_install(src: Path, build: Path, log: Path, env: dict, mode: str, *configure: str) -> None:
    """Configure (with ``configure`` options), build and install, logging to ``log``; assert each step."""
    with log.open(mode) as out:
        for cmd in (["cmake", "-S", str(src), "-B", str(build), *configure],
                    ["cmake", "--build", str(build), "-j", str(min(2, os.cpu_count() or 1))],
                    ["cmake", "--install", str(build)]):
            rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=600, check=False).returncode
            assert rc == 0, f"{' '.join(cmd[:2])} failed:\n{log.read_text()[-3000:]}"


def _copy_sources(dest: Path) -> None:
    """What colcon sees of the package: the tracked inputs, without the venv."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("CMakeLists.txt", "package.xml"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for name in ("msg", "cmcnn_ros", "training", "synthetic", "launch", "config", "models"):
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore)


def test_colcon_style_install_layout(tmp_path: Path) -> None:
    """CMakeLists.txt with CMCNN_INSTALL_PYTHON=ON (what colcon runs) installs a usable package.

    Messages and our source share one cmcnn_ros folder there; our __init__.py
    must win over the generator's empty one, and both must import. The
    offline packages (trainer, renderer) and their commands are installed only
    with CMCNN_INSTALL_OFFLINE=ON.
    """
    env = dict(env_file_environment())
    venv = env["VIRTUAL_ENV"]
    env["AMENT_PREFIX_PATH"] = venv
    src, build, install = tmp_path / "src", tmp_path / "build", tmp_path / "install"
    src.mkdir()
    _copy_sources(src)
    log = tmp_path / "cmake.log"
    _cmake_install(src, build, log, env, "w", f"-DCMAKE_INSTALL_PREFIX={install}",
                   f"-DCMAKE_PREFIX_PATH={venv}", f"-DPython3_EXECUTABLE={venv}/bin/python", "-DBUILD_TESTING=OFF")

    site = next(install.glob("lib/python3*/site-packages"))
    init = site / "cmcnn_ros" / "__init__.py"
    assert init.read_text() == (REPO_ROOT / "cmcnn_ros" / "__init__.py").read_text()
    assert (site / "cmcnn_ros" / "msg" / "_emotion_array.py").is_file()
    assert (site / "cmcnn_ros" / "classes.py").is_file()
    assert not (site / "training").exists()
    for offline in ("cmcnn_training", "cmcnn_synthetic", "synthetic"):
        assert not (site / offline).exists(), f"{offline} is in the robot install"
    assert not (site / "cmcnn_ros" / "synthetic").exists()
    assert not (site / "cmcnn_ros" / "preprocessing" / "scan_depth.py").exists()
    for tool in ("cmcnn-train", "cmcnn-synth", "cmcnn-bag-write", "cmcnn-demo"):
        assert not (install / "lib" / "cmcnn_ros" / tool).exists(), f"{tool} is in the robot install"
    fer_node = install / "lib" / "cmcnn_ros" / "fer_node"
    assert os.access(fer_node, os.X_OK)
    assert "from cmcnn_ros.ros.fer_node import main" in fer_node.read_text()
    assert (install / "share" / "cmcnn_ros" / "package.xml").is_file()
    assert (install / "share" / "ament_index" / "resource_index" / "rosidl_interfaces"
            / "cmcnn_ros").is_file()
    for name in ("launch", "config", "models"):
        if (REPO_ROOT / name).is_dir() and any((REPO_ROOT / name).iterdir()):
            assert (install / "share" / "cmcnn_ros" / name).is_dir()

    # Import from the install alone, as `source install/setup.bash` would allow.
    run_env = dict(env)
    run_env["PYTHONPATH"] = str(site)
    run_env["LD_LIBRARY_PATH"] = f"{install / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    run_env["AMENT_PREFIX_PATH"] = f"{install}:{venv}"
    code = ("import cmcnn_ros, cmcnn_ros.classes\n"
            "from cmcnn_ros.msg import Emotion, EmotionArray\n"
            "m = EmotionArray(faces=[Emotion(face_id='a', scores=[0.5])])\n"
            "print(cmcnn_ros.__file__, m.faces[0].scores[0])\n")
    proc = subprocess.run([f"{venv}/bin/python", "-c", code], env=run_env, cwd="/",
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(init), "0.5"]

    # A workstation build asks for the offline packages too (same build folder, reconfigured).
    offline_install = tmp_path / "install_offline"
    _cmake_install(src, build, log, env, "a", f"-DCMAKE_INSTALL_PREFIX={offline_install}",
                   "-DCMCNN_INSTALL_OFFLINE=ON")
    site = next(offline_install.glob("lib/python3*/site-packages"))
    assert (site / "cmcnn_training" / "train.py").is_file()
    assert (site / "cmcnn_training" / "datasets" / "scan_depth.py").is_file()
    for rel in ("generate.py", "bags.py", "demo.py", "data/ict_facekit_light.npz", "data/LICENSE"):
        assert (site / "cmcnn_synthetic" / rel).is_file(), rel
    demo = offline_install / "lib" / "cmcnn_ros" / "cmcnn-demo"
    assert os.access(demo, os.X_OK) and "from cmcnn_synthetic.demo import main" in demo.read_text()
    assert os.access(offline_install / "lib" / "cmcnn_ros" / "fer_node", os.X_OK)
