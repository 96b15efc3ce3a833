#!/usr/bin/env bash
# Set up cmcnn_ros on a machine WITHOUT a ROS 2 install (CI, a laptop, these
# machines): ROS 2 Kilted wheels from PyPI in a venv, messages built with CMake.
#
#   bash scripts/setup.sh          # or: make setup
#   source .ros_prefix/env.sh      # then python, pytest, ros2-less rclpy work
#
# Steps (each skipped when its inputs are unchanged, so a second run takes
# seconds and rebuilds nothing):
#   1. tools   : a Python 3.10-3.13 with venv, cmake >= 3.20, C and C++ compilers
#   2. venv    : .venv (created once)
#   3. python  : pinned requirements.txt, requirements-overrides.txt (--no-deps),
#                then this repo editable (pip install --no-deps -e .);
#                stamp: sha256 of those files + setup.py + pyproject.toml
#   4. osmesa  : Debian's libosmesa6 for headless rendering (apt-get when missing;
#                CMCNN_SKIP_APT=1 skips it)
#   5. msgs    : msg/*.msg -> .ros_prefix/install with CMakeLists.txt
#                (-DCMCNN_INSTALL_PYTHON=OFF), from a staged copy in
#                .ros_prefix/src, built in .ros_prefix/build,
#                installed into a temporary folder and moved into place only
#                when complete; stamp: sha256 of msg/, CMakeLists.txt,
#                package.xml, this script and the python stamp
#   6. env     : .ros_prefix/env.sh (written atomically, last)
#
# Environment knobs: CMCNN_PYTHON (interpreter for the venv, default: the first
# of python3.11 python3.12 python3.13 python3.10 python3 that fits),
# CMCNN_SKIP_APT=1, CMCNN_JOBS (parallel build jobs, default: nproc).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv"
STATE="$ROOT/.ros_prefix"
BUILD="$STATE/build"
STAGE="$STATE/src"
PREFIX="$STATE/install"
PYSRC="$STATE/pysrc"
ENV_FILE="$STATE/env.sh"
LOGS="$STATE/logs"
PY_STAMP="$VENV/.cmcnn_python.sha256"
MSG_STAMP="$STATE/msgs.sha256"

STEP_TAG="setup"
STEP_RERUN="bash scripts/setup.sh"
# say, fail, step, run_logged, hash_files and the ERR trap, shared with the
# other script (scripts/steps.sh).
. "$ROOT/scripts/steps.sh"

mkdir -p "$STATE" "$LOGS"

# One setup at a time per checkout: parallel `make test` runs would otherwise
# race on the venv and the prefix.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$STATE/.setup.lock"
  flock 9
fi

# ---------------------------------------------------------------- 1. tools
step "tools" ""
python_fits() {
  "$1" - <<'PY' >/dev/null 2>&1
import sys, venv, ensurepip  # noqa: F401  (venv+ensurepip: Debian splits them out)
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)
PY
}
PYTHON_BIN=""
# An existing, working venv (python runs and has pip) fixes the interpreter; a
# broken one (e.g. an interrupted creation, a moved checkout) is recreated.
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
  python_fits "$VENV/bin/python" || fail ".venv uses $("$VENV/bin/python" -V 2>&1), but the ROS 2 wheels need CPython 3.10-3.13." \
    "remove .venv (rm -rf .venv) and rerun; set CMCNN_PYTHON to choose the interpreter"
  PYTHON_BIN="$VENV/bin/python"
elif [[ -n "${CMCNN_PYTHON:-}" ]]; then
  python_fits "$CMCNN_PYTHON" || fail "CMCNN_PYTHON=$CMCNN_PYTHON is not a Python 3.10-3.13 with the venv and ensurepip modules." \
    "point CMCNN_PYTHON at such an interpreter, or on Debian/Ubuntu: apt-get install python3.11-venv"
  PYTHON_BIN="$CMCNN_PYTHON"
else
  for cand in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 && python_fits "$cand"; then PYTHON_BIN="$(command -v "$cand")"; break; fi
  done
  [[ -n "$PYTHON_BIN" ]] || fail "no Python 3.10-3.13 with the venv module found (the ROS 2 wheels exist for CPython 3.10-3.13)." \
    "install one, e.g. on Debian/Ubuntu: apt-get install python3.11 python3.11-venv python3.11-dev (or set CMCNN_PYTHON=/path/to/python3.11)"
fi
command -v cmake >/dev/null 2>&1 || fail "cmake not found (needed to build msg/*.msg)." \
  "install CMake >= 3.20, e.g. apt-get install cmake"
cmake_version="$(cmake --version | head -n1 | awk '{print $3}')"
if ! printf '3.20\n%s\n' "$cmake_version" | sort -V -C; then
  fail "cmake $cmake_version is too old (need >= 3.20)." "install a newer CMake, e.g. pip install cmake or your distribution's backports"
fi
CC_BIN="${CC:-$(command -v cc || command -v gcc || command -v clang || true)}"
CXX_BIN="${CXX:-$(command -v c++ || command -v g++ || command -v clang++ || true)}"
[[ -n "$CC_BIN" ]] || fail "no C compiler found (cc/gcc/clang); the message typesupport is C code." \
  "install one, e.g. apt-get install build-essential"
[[ -n "$CXX_BIN" ]] || fail "no C++ compiler found (c++/g++/clang++); the message typesupport has C++ parts." \
  "install one, e.g. apt-get install build-essential"
command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || \
  fail "neither make nor ninja found (CMake needs one to build)." "install make, e.g. apt-get install build-essential"

# ---------------------------------------------------------------- 2. venv
step "venv" "install the venv module for $PYTHON_BIN (Debian/Ubuntu: apt-get install python3.11-venv), then rerun"
if [[ "$PYTHON_BIN" != "$VENV/bin/python" ]]; then
  say "venv: creating .venv with $PYTHON_BIN"
  rm -rf "$VENV"
  if ! run_logged venv "$PYTHON_BIN" -m venv "$VENV"; then
    rm -rf "$VENV"   # a venv without pip would be mistaken for a good one
    false
  fi
else
  say "venv: up to date ($("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
fi
VPY="$VENV/bin/python"
PYVER="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

# ---------------------------------------------------------------- 3. python
step "python packages" "read the log above; a version pin that does not exist for Python $PYVER, or no network to PyPI, are the usual causes. Fix requirements.txt and rerun"
py_hash="$(hash_files "$ROOT/requirements.txt" "$ROOT/requirements-overrides.txt" "$ROOT/setup.py" "$ROOT/pyproject.toml")-py$PYVER"
if [[ -f "$PY_STAMP" && "$(cat "$PY_STAMP")" == "$py_hash" ]]; then
  say "python packages: up to date"
else
  say "python packages: installing (pinned requirements.txt; the first time takes a few minutes)"
  rm -f "$PY_STAMP"
  # setuptools < 80: colcon-core (requirements.txt, the colcon build test) requires it.
  run_logged pip-bootstrap "$VPY" -m pip install --disable-pip-version-check "pip==26.3" "setuptools==79.0.1" "wheel==0.48.0"
  run_logged pip-requirements "$VPY" -m pip install --disable-pip-version-check -r "$ROOT/requirements.txt"
  run_logged pip-overrides "$VPY" -m pip install --disable-pip-version-check --no-deps -r "$ROOT/requirements-overrides.txt"
  step "python packages (editable install of this repo)" "check setup.py; the log above names the error"
  run_logged pip-editable "$VPY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  printf '%s\n' "$py_hash" >"$PY_STAMP.tmp" && mv -f "$PY_STAMP.tmp" "$PY_STAMP"
  say "python packages: installed"
fi

# The message wheels' exported CMake targets name the include folders of the
# machine that built them (/opt/python/cpXY-cpXY/...); CMake refuses targets
# whose include folders do not exist. Point them at this venv's real folders.
# Checked every run (cheap) because reinstalling a wheel brings the paths back.
step "cmake exports" "the venv's Python headers or numpy are missing: install python$PYVER-dev (Debian/Ubuntu) and rerun"
CURRENT_LOG="$LOGS/fix-exports.log"
"$VPY" - "$VENV" >"$CURRENT_LOG" 2>&1 <<'PY'
"""Rewrite /opt/python/... include paths in the venv's exported .cmake files."""
import glob
import os
import re
import sys
import sysconfig

import numpy

venv = sys.argv[1]
include = sysconfig.get_paths()["include"]
if not os.path.isfile(os.path.join(include, "Python.h")):
    sys.exit(f"Python.h not found in {include}: the Python development headers are missing")
numpy_include = numpy.get_include()
py_re = re.compile(r"/opt/python/cp\d+-cp\d+/include/python\d+\.\d+")
np_re = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python\d+\.\d+/site-packages/numpy/(?:_core|core)/include")
changed = 0
for path in glob.glob(os.path.join(venv, "share", "*", "cmake", "*.cmake")):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if "/opt/python/" not in text:
        continue
    new = np_re.sub(numpy_include, py_re.sub(include, text))
    if new != text:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, path)
        changed += 1
print(f"rewrote {changed} exported cmake files")
PY
CURRENT_LOG=""

# ---------------------------------------------------------------- 4. osmesa
step "osmesa" "install Debian/Ubuntu's libosmesa6 yourself (sudo apt-get install libosmesa6), or set CMCNN_SKIP_APT=1 to skip (the synthetic renderer then cannot run)"
if [[ "${CMCNN_SKIP_APT:-0}" == "1" ]]; then
  say "osmesa: skipped (CMCNN_SKIP_APT=1)"
elif [[ "$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null)" == *libOSMesa.so* ]]; then
  say "osmesa: up to date"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      fail "libosmesa6 is missing and installing it needs root." "$CURRENT_HINT"
    fi
  fi
  say "osmesa: installing libosmesa6 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show libosmesa6 >/dev/null 2>&1; then
    run_logged apt-update $SUDO apt-get update
  fi
  if ! run_logged apt-osmesa $SUDO apt-get install -y --no-install-recommends libosmesa6; then
    # Stale package lists (404s) are the usual cause: refresh once and retry.
    run_logged apt-update $SUDO apt-get update
    run_logged apt-osmesa $SUDO apt-get install -y --no-install-recommends libosmesa6
  fi
  say "osmesa: installed"
else
  fail "libOSMesa is missing and this is not a Debian/Ubuntu machine (no apt-get)." "$CURRENT_HINT"
fi

# ---------------------------------------------------------------- 5. msgs
step "messages" "read the CMake log above (.ros_prefix/logs/); run 'rm -rf .ros_prefix' and rerun if the build folder is stale"
msg_hash="$(hash_files "$ROOT"/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/package.xml" "$ROOT/scripts/setup.sh" "$PY_STAMP")"
if [[ -f "$MSG_STAMP" && "$(cat "$MSG_STAMP")" == "$msg_hash" && -d "$PREFIX" && -f "$ENV_FILE" ]]; then
  say "messages: up to date"
else
  say "messages: building msg/*.msg into .ros_prefix/install"
  rm -f "$MSG_STAMP"
  rm -rf "$STATE"/install.tmp.* "$PREFIX.old"   # leftovers of an interrupted run
  # A build tree made against another venv, interpreter or source folder is
  # not reused: CMake caches absolute paths.
  if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$STAGE" "$BUILD/CMakeCache.txt"; then
    rm -rf "$BUILD"
  fi
  if [[ -f "$BUILD/.py_hash" && "$(cat "$BUILD/.py_hash")" != "$(cat "$PY_STAMP")" ]]; then
    rm -rf "$BUILD"
  fi
  mkdir -p "$BUILD"
  cp "$PY_STAMP" "$BUILD/.py_hash"
  # CMake is pointed at a staged copy of the message sources, not at the repo:
  # rosidl exports the venv's numpy include folder, and CMake refuses to
  # export a folder inside the source tree (.venv is inside the repo).
  # Unchanged files keep their mtime so the build stays incremental.
  mkdir -p "$STAGE/msg"
  for f in CMakeLists.txt package.xml msg/*.msg; do
    cmp -s "$ROOT/$f" "$STAGE/$f" || cp -p "$ROOT/$f" "$STAGE/$f"
  done
  for f in "$STAGE"/msg/*; do
    [[ -e "$ROOT/msg/${f##*/}" ]] || rm -f "$f"
  done
  # ament_index lookups at configure time need the venv as an ament prefix.
  export AMENT_PREFIX_PATH="$VENV"
  export CMAKE_PREFIX_PATH="$VENV"
  export VIRTUAL_ENV="$VENV"
  export PATH="$VENV/bin:$PATH"
  run_logged cmake-configure cmake -S "$STAGE" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_PREFIX_PATH="$VENV" \
    -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" \
    -DPython3_EXECUTABLE="$VPY" -DPython3_FIND_VIRTUALENV=ONLY \
    -DCMCNN_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF
  run_logged cmake-build cmake --build "$BUILD" -j "${CMCNN_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  # Install into a temporary folder, then swap it in: an interrupted install
  # never leaves a prefix that looks complete. Files keep the final prefix
  # path because it was fixed at configure time.
  tmp_prefix="$STATE/install.tmp.$$"
  rm -rf "$tmp_prefix"
  run_logged cmake-install cmake --install "$BUILD" --prefix "$tmp_prefix"
  [[ -f "$tmp_prefix/lib/python$PYVER/site-packages/cmcnn_ros/msg/__init__.py" ]] || \
    fail "the install has no cmcnn_ros/msg Python module (rosidl_generator_py did not run?)." "$CURRENT_HINT"
  rm -rf "$PREFIX.old"
  if [[ -d "$PREFIX" ]]; then mv "$PREFIX" "$PREFIX.old"; fi
  mv "$tmp_prefix" "$PREFIX"
  rm -rf "$PREFIX.old"
  msg_built=1
fi

# Source overlay: the generated message module and our source are both called
# cmcnn_ros. Python must find OUR package first (the editable install's
# finder runs after every sys.path entry, so it would lose against the
# generated package on PYTHONPATH); cmcnn_ros/__init__.py then extends its
# __path__ (pkgutil.extend_path) with the generated folder, so
# cmcnn_ros.msg resolves there. Symlinks only: nothing of ours is copied.
step "source overlay" ""
mkdir -p "$PYSRC"
for link in "cmcnn_ros:../../cmcnn_ros" "cmcnn_training:../../training/cmcnn_training" \
            "cmcnn_synthetic:../../synthetic/cmcnn_synthetic"; do
  name="${link%%:*}"; target="${link#*:}"
  if [[ "$(readlink "$PYSRC/$name" 2>/dev/null || true)" != "$target" ]]; then
    ln -sfn "$target" "$PYSRC/$name.tmp" && mv -Tf "$PYSRC/$name.tmp" "$PYSRC/$name"
  fi
done

# ---------------------------------------------------------------- 6. env
step "env file" ""
if [[ -n "${msg_built:-}" || ! -f "$ENV_FILE" ]]; then
  cat >"$ENV_FILE.tmp" <<EOF
# Generated by scripts/setup.sh (do not edit; rerun the script instead).
# Source it from bash or zsh:  source $ENV_FILE
# Activates the venv and makes the generated messages (cmcnn_ros.msg) and
# their typesupport libraries importable next to the editable source.
_cmcnn_prepend() {  # _cmcnn_prepend VAR DIR: put DIR first in VAR, once
  eval "_cmcnn_v=\\"\\\${\$1:-}\\""
  case ":\$_cmcnn_v:" in
    *":\$2:"*) ;;
    *) if [ -n "\$_cmcnn_v" ]; then export "\$1=\$2:\$_cmcnn_v"; else export "\$1=\$2"; fi ;;
  esac
  unset _cmcnn_v
}
export CMCNN_ROOT="$ROOT"
. "$VENV/bin/activate"
_cmcnn_prepend PYTHONPATH "$PREFIX/lib/python$PYVER/site-packages"
_cmcnn_prepend PYTHONPATH "$PYSRC"
_cmcnn_prepend LD_LIBRARY_PATH "$VENV/lib"
_cmcnn_prepend LD_LIBRARY_PATH "$PREFIX/lib"
_cmcnn_prepend AMENT_PREFIX_PATH "$VENV"
_cmcnn_prepend AMENT_PREFIX_PATH "$PREFIX"
_cmcnn_prepend CMAKE_PREFIX_PATH "$VENV"
_cmcnn_prepend CMAKE_PREFIX_PATH "$PREFIX"
unset -f _cmcnn_prepend
export ROS_VERSION=2
export ROS_PYTHON_VERSION=3
export ROS_DISTRO="\${ROS_DISTRO:-kilted}"
export RMW_IMPLEMENTATION="\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# These machines may only talk to themselves: keep DDS discovery on loopback.
# To reach a robot, export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET after sourcing.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Headless rendering for the synthetic data generator (pyrender).
export PYOPENGL_PLATFORM="\${PYOPENGL_PLATFORM:-osmesa}"
# Fast DDS's default shared-memory segment (512 kB) is smaller than one 640x480
# colour image: best-effort camera frames between processes were mostly lost.
export FASTDDS_DEFAULT_PROFILES_FILE="\${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds.xml}"
EOF
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
  say "env file: written"
else
  say "env file: up to date"
fi
if [[ -n "${msg_built:-}" ]]; then
  printf '%s\n' "$msg_hash" >"$MSG_STAMP.tmp" && mv -f "$MSG_STAMP.tmp" "$MSG_STAMP"
  say "messages: built"
fi

say "done. Everything is set up; use it with:  source ${ENV_FILE#"$ROOT"/}"
