#!/usr/bin/env bash
# Run the ROS-free tests under the library versions of the oldest ROS 2
# distribution robots run (Jazzy: Ubuntu 24.04's numpy, OpenCV, SciPy, ...),
# so a change that breaks a Jazzy robot is seen before it ships (issue 18).
#
#   bash scripts/test_distro.sh [PYTEST_ARGS...]   # or: make test-distro
#
# Steps (the install is skipped when its inputs are unchanged, so a second run
# goes straight to pytest):
#   1. python  : the interpreter of .venv (the same Python as `make test`),
#                else CMCNN_PYTHON, else the first python3.11/3.12/3.10/python3;
#                3.10-3.12: numpy 1.26.4 has no wheels for 3.13, and on 3.12
#                pip builds matplotlib 3.6.3 from source (wheels up to 3.11)
#   2. venv    : .venv-distro (created once; recreated for another interpreter)
#   3. python packages: requirements.txt without the ROS 2 wheels (ros-*) and
#                without the packages requirements-distro.txt pins (a filtered
#                copy is generated, never hand-written), installed together
#                with requirements-distro.txt; then requirements-overrides.txt
#                (--no-deps) and this repo editable (--no-deps); then a check
#                that every pin is what got installed and that rclpy is absent.
#                stamp: sha256 of those files, setup.py, pyproject.toml, this
#                script and the Python version
#   4. pytest  : `pytest -m "not ros"` in .venv-distro, without the ROS
#                environment (test/conftest.py marks the tests that need ROS)
#
# Logs of each step: .venv-distro/logs/. Nothing outside .venv-distro is written.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv-distro"
LOGS="$VENV/logs"
STAMP="$VENV/.cmcnn_distro.sha256"
FILTERED="$VENV/requirements-filtered.txt"
FILTERED_OVERRIDES="$VENV/requirements-overrides-filtered.txt"
DISTRO_REQS="$ROOT/requirements-distro.txt"

STEP_TAG="test-distro"
STEP_RERUN="make test-distro"
# say, fail, step, run_logged, hash_files and the ERR trap, shared with the
# other script (scripts/steps.sh).
. "$ROOT/scripts/steps.sh"

# One install at a time per checkout (parallel runs would race on the venv).
# The lock is on this script, which always exists, so removing .venv-distro
# never orphans it; it is released before pytest, so test runs overlap freely.
if command -v flock >/dev/null 2>&1; then
  exec 9<"${BASH_SOURCE[0]}"
  flock 9
fi
started=$SECONDS

# ---------------------------------------------------------------- 1. python
step "python" ""
python_fits() {
  # 3.10-3.12: the distribution's pins (numpy 1.26.4, scipy 1.11.4) have no
  # wheels for 3.13 and do not build there. (Noble itself runs 3.12, where
  # matplotlib 3.6.3 has no wheel: pip builds it from source, which needs a
  # C++ compiler and minutes; 3.11 installs wheels only.)
  "$1" - <<'PY' >/dev/null 2>&1
import sys, venv, ensurepip  # noqa: F401  (venv+ensurepip: Debian splits them out)
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY
}
PYTHON_BIN=""
if [[ -n "${CMCNN_PYTHON:-}" ]]; then
  python_fits "$CMCNN_PYTHON" || fail "CMCNN_PYTHON=$CMCNN_PYTHON is not a Python 3.10-3.12 with the venv and ensurepip modules." \
    "point CMCNN_PYTHON at such an interpreter, e.g. CMCNN_PYTHON=python3.11"
  PYTHON_BIN="$CMCNN_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]] && base="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null)" \
     && [[ -x "$base" ]]; then
  # The same interpreter as `make test`, so the two runs differ only in the
  # libraries.
  python_fits "$base" || fail ".venv uses $("$base" -V 2>&1); the distribution's pins (numpy 1.26.4) need Python 3.10-3.12." \
    "set CMCNN_PYTHON to a Python 3.10-3.12, e.g. CMCNN_PYTHON=python3.11 make test-distro"
  PYTHON_BIN="$base"
else
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 && python_fits "$cand"; then PYTHON_BIN="$(command -v "$cand")"; break; fi
  done
  [[ -n "$PYTHON_BIN" ]] || fail "no Python 3.10-3.12 with the venv module found (numpy 1.26.4 has wheels for 3.9-3.12)." \
    "install one, e.g. on Debian/Ubuntu: apt-get install python3.11 python3.11-venv (or set CMCNN_PYTHON=/path/to/python3.11)"
fi
PYVER="$("$PYTHON_BIN" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"

# ---------------------------------------------------------------- 2. venv
step "venv" "install the venv module for $PYTHON_BIN (Debian/Ubuntu: apt-get install python${PYVER%.*}-venv), then rerun"
venv_version=""
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
  venv_version="$("$VENV/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
fi
if [[ "$venv_version" != "$PYVER" ]]; then
  # Missing, broken (an interrupted creation) or made with another Python.
  say "venv: creating .venv-distro with $PYTHON_BIN ($PYVER)"
  rm -rf "$VENV"
  mkdir -p "$LOGS"
  if ! run_logged venv "$PYTHON_BIN" -m venv "$VENV"; then
    rm -rf "$VENV/bin"   # a venv without pip would be mistaken for a good one
    false
  fi
else
  say "venv: up to date (Python $PYVER)"
fi
mkdir -p "$LOGS"
VPY="$VENV/bin/python"

# ---------------------------------------------------------------- 3. packages
step "python packages" "read the log above; a pin in requirements-distro.txt that does not exist for Python $PYVER, or a package of requirements.txt that refuses the older libraries, are the usual causes"
py_hash="$(hash_files "$ROOT/requirements.txt" "$ROOT/requirements-overrides.txt" "$DISTRO_REQS" \
  "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/scripts/test_distro.sh")-py$PYVER"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$py_hash" ]]; then
  say "python packages: up to date"
else
  say "python packages: installing requirements.txt without ROS, with requirements-distro.txt's pins (the first time takes a few minutes)"
  rm -f "$STAMP"
  step "python packages (filtering requirements.txt)" "fix the line named above in requirements-distro.txt (one 'name==version' a line)"
  CURRENT_LOG="$LOGS/filter.log"
  "$VPY" - "$DISTRO_REQS" "$ROOT/requirements.txt" "$FILTERED" "$ROOT/requirements-overrides.txt" "$FILTERED_OVERRIDES" \
    >"$CURRENT_LOG" 2>&1 <<'PY'
"""Write requirements.txt (and the overrides) without the ROS wheels and without the distro's packages."""
import re
import sys

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name):
    """PEP 503 name: PyYAML, pyyaml and py_yaml are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if text:
                yield number, text


distro_path, *pairs = sys.argv[1:]
pinned = {}
for number, text in requirement_lines(distro_path):
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", text)
    if not match:
        sys.exit(f"{distro_path}:{number}: {text!r} is not 'name==version'")
    pinned[canonical(match.group(1))] = match.group(2)
for source, target in zip(pairs[::2], pairs[1::2]):
    kept, dropped = [], []
    for number, text in requirement_lines(source):
        match = NAME.match(text)
        if not match:
            sys.exit(f"{source}:{number}: cannot read a package name in {text!r}")
        name = canonical(match.group(1))
        # ros-*: the ROS 2 wheels on PyPI (rclpy, message packages, ament):
        # a Jazzy robot has its own, and the tests that need them are marked ros.
        if name.startswith("ros-") or name in pinned:
            dropped.append(text)
        else:
            kept.append(text)
    with open(target, "w", encoding="utf-8") as f:
        f.write(f"# Generated by scripts/test_distro.sh from {source}; do not edit.\n")
        f.write("".join(f"{t}\n" for t in kept))
    print(f"{source}: kept {len(kept)}, dropped {len(dropped)}: {', '.join(dropped)}")
PY
  step "python packages" "read the log above; a pin in requirements-distro.txt that does not exist for Python $PYVER, or a package of requirements.txt that refuses the older libraries, are the usual causes"
  # The pip scripts/setup.sh bootstraps (keep the two in step); setuptools
  # comes with requirements.txt (colcon-core's setuptools < 80).
  run_logged pip-bootstrap "$VPY" -m pip install --disable-pip-version-check "pip==26.3"
  # One resolution of both files: a package of requirements.txt that refuses
  # a distro pin stops here, with pip naming the conflict.
  run_logged pip-requirements "$VPY" -m pip install --disable-pip-version-check -r "$FILTERED" -r "$DISTRO_REQS"
  run_logged pip-overrides "$VPY" -m pip install --disable-pip-version-check --no-deps -r "$FILTERED_OVERRIDES"
  step "python packages (editable install of this repo)" "check setup.py; the log above names the error"
  run_logged pip-editable "$VPY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  step "python packages (check)" "the venv does not hold the pinned versions (see above): remove .venv-distro (rm -rf .venv-distro) and rerun"
  CURRENT_LOG="$LOGS/check.log"
  "$VPY" - "$DISTRO_REQS" >"$CURRENT_LOG" 2>&1 <<'PY'
"""Every distro pin is what is installed, and no ROS 2 Python is importable."""
import importlib.metadata
import importlib.util
import re
import sys

wrong = []
for line in open(sys.argv[1], encoding="utf-8"):
    text = line.split("#", 1)[0].strip()
    if text:
        name, version = text.split("==")
        # The local torch wheel is 2.13.0+cpu: the pin names the release.
        got = importlib.metadata.version(name)
        if re.sub(r"\+.*", "", got) != version:
            wrong.append(f"{name} {got} (pinned {version})")
if importlib.util.find_spec("rclpy") is not None:
    wrong.append("rclpy is importable (the ROS wheels were meant to be left out)")
if wrong:
    sys.exit("not as pinned: " + "; ".join(wrong))
print("all distro pins installed; no rclpy")
PY
  printf '%s\n' "$py_hash" >"$STAMP.tmp" && mv -f "$STAMP.tmp" "$STAMP"
  say "python packages: installed ($((SECONDS - started)) s)"
fi
CURRENT_LOG=""
exec 9<&- 2>/dev/null || true

# ---------------------------------------------------------------- 4. pytest
step "pytest" ""
trap - ERR
say "pytest -m 'not ros' with $("$VPY" - <<'PY'
import importlib.metadata as m
print(", ".join(f"{n} {m.version(n)}" for n in ("numpy", "opencv-python-headless", "scikit-image", "scipy",
                                                 "matplotlib", "PyYAML", "Pillow", "torch", "ai-edge-litert")))
PY
)"
cd "$ROOT"
# Without the ROS environment of .ros_prefix/env.sh, should the caller's shell
# have sourced it: its PYTHONPATH and libraries would bring rclpy and Kilted's
# builds back in.
exec env -u PYTHONPATH -u PYTHONHOME -u LD_LIBRARY_PATH -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH \
  -u ROS_DISTRO -u ROS_VERSION -u ROS_PYTHON_VERSION -u RMW_IMPLEMENTATION \
  VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}" \
  "$VPY" -m pytest -m "not ros" "$@"
