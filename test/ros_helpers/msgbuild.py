"""Build a ROS 2 message package into a prefix inside a test (CMake + rosidl from the venv's wheels).

The same steps as ``scripts/setup.sh`` uses for ``msg/*.msg``, for packages that exist only in a test:
the ROS4HRI test builds its own ``hri_msgs`` (REP-155 ``Expression``, ``IdsList`` and
``NormalizedRegionOfInterest2D``) this way, and the face-frame test its ``tf2_msgs`` (``TFMessage``, on
the venv's ``geometry_msgs``), so the node's output and input are checked against real generated
messages without the package shipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Mapping, Sequence

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>{name}</name>
  <version>0.0.0</version>
  <description>Test-only message package built by the cmcnn_ros test suite.</description>
  <maintainer email="tests@example.org">cmcnn_ros tests</maintainer>
  <license>MIT</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
{depends}
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

CMAKELISTS = """cmake_minimum_required(VERSION 3.20)
project({name} C CXX)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
{find_packages}
rosidl_generate_interfaces(${{PROJECT_NAME}} {files} DEPENDENCIES {dependencies})
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""


def venv_dir() -> Path:
    return Path(os.environ.get("VIRTUAL_ENV") or Path(sys.executable).resolve().parents[1])


def build_message_package(name: str, messages: Mapping[str, str], workdir: Path, timeout: float = 600,
                          dependencies: Sequence[str] = ("std_msgs",)) -> Path:
    """Generate, build and install message package ``name`` with ``messages`` (file stem -> definition).

    ``dependencies`` are the message packages the definitions use (installed in the venv, e.g.
    ``geometry_msgs`` for ``TransformStamped``).

    Returns:
        the install prefix (use :func:`prefix_env` to run code that imports the package).

    Raises:
        AssertionError: the build failed; the CMake log tail is in the message.
    """
    src, build, prefix = workdir / "src" / name, workdir / "build" / name, workdir / "install"
    (src / "msg").mkdir(parents=True, exist_ok=True)
    for stem, text in messages.items():
        (src / "msg" / f"{stem}.msg").write_text(textwrap.dedent(text).lstrip())
    files = " ".join(f'"msg/{stem}.msg"' for stem in messages)
    deps = list(dependencies)
    (src / "package.xml").write_text(PACKAGE_XML.format(
        name=name, depends="\n".join(f"  <depend>{d}</depend>" for d in deps)))
    (src / "CMakeLists.txt").write_text(CMAKELISTS.format(
        name=name, files=files, dependencies=" ".join(deps),
        find_packages="\n".join(f"find_package({d} REQUIRED)" for d in deps)))
    venv = venv_dir()
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DCMAKE_PREFIX_PATH={venv}",
         f"-DPython3_EXECUTABLE={venv / 'bin' / 'python'}", "-DPython3_FIND_VIRTUALENV=ONLY",
         "-DBUILD_TESTING=OFF"],
        ["cmake", "--build", str(build), "-j", "2"],
        ["cmake", "--install", str(build)],
    ]
    for cmd in steps:
        run = subprocess.run(["nice", "-n", "15", *cmd], env=env, capture_output=True, text=True, timeout=timeout)
        assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{(run.stdout + run.stderr)[-4000:]}"
    return prefix


def prefix_env(env: Mapping[str, str], prefix: Path) -> Dict[str, str]:
    """``env`` with an installed message prefix on the Python, library and ament paths."""
    out = dict(env)
    site = next(prefix.glob("lib/python3*/site-packages"))

    def front(key: str, value: Path) -> None:
        out[key] = os.pathsep.join([str(value)] + [p for p in out.get(key, "").split(os.pathsep) if p])

    front("PYTHONPATH", site)
    front("LD_LIBRARY_PATH", prefix / "lib")
    front("AMENT_PREFIX_PATH", prefix)
    return out
