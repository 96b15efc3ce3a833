"""The runtime package holds what the node needs, and nothing in it reaches the offline packages.

Dependencies point one way: ``cmcnn_synthetic`` (renderer) and ``cmcnn_training``
(trainer) import ``cmcnn_ros``, never the reverse, so a robot install without
them (the default colcon build) runs the node and its tools. Checked twice:

* at run time: a fresh interpreter imports the node, the recogniser and every
  ``cmcnn_ros.tools`` module of this checkout, and none of the renderer's
  libraries (pyrender, trimesh, PyOpenGL) or the offline packages is loaded
  (nor does the runtime package still hold the renderer or the scan fit);
* statically: no file under ``cmcnn_ros/`` imports them at all, not even
  lazily inside a function (which the first check cannot see).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import List

from conftest import REPO_ROOT, env_file_environment

OFFLINE = ("cmcnn_synthetic", "cmcnn_training")
# Offline code that used to ship inside the runtime package (now cmcnn_synthetic and
# cmcnn_training.datasets.scan_depth).
FORMER_OFFLINE_MODULES = ("cmcnn_ros.synthetic", "cmcnn_ros.preprocessing.scan_depth")
RENDERER = ("pyrender", "trimesh", "OpenGL")
RUNTIME = REPO_ROOT / "cmcnn_ros"


def _node_closure_modules() -> List[str]:
    tools = sorted(p.stem for p in (RUNTIME / "tools").glob("*.py") if p.stem != "__init__")
    return ["cmcnn_ros.ros.fer_node", "cmcnn_ros.inference.recognizer", "cmcnn_ros.tools"] + [
        f"cmcnn_ros.tools.{name}" for name in tools]


def test_node_and_tools_import_without_offline_code():
    modules = _node_closure_modules()
    assert {"cmcnn_ros.tools.bag_writer", "cmcnn_ros.tools.demo", "cmcnn_ros.tools.bag_evaluate"} <= set(modules)
    code = ("import importlib, importlib.util, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps({'cmcnn_ros': sys.modules['cmcnn_ros'].__file__,\n"
            f"    'loaded': sorted(n for n in sys.modules if n.split('.')[0] in {OFFLINE + RENDERER!r}),\n"
            f"    'shipped': [n for n in {FORMER_OFFLINE_MODULES!r} if importlib.util.find_spec(n)]}}))\n")
    env = dict(env_file_environment())  # a copy: the helper caches its dict
    # This checkout's cmcnn_ros first, whatever the venv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH",
                                                                               "").split(os.pathsep) if p])
    proc = subprocess.run([str(Path(env["VIRTUAL_ENV"]) / "bin" / "python"), "-c", code], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["cmcnn_ros"]).resolve() == (RUNTIME / "__init__.py").resolve()
    assert result["loaded"] == [], f"importing the node and its tools loaded {result['loaded']}"
    assert result["shipped"] == [], f"offline code in the runtime package: {result['shipped']}"


def _imported_names(tree: ast.AST):
    """(line, top-level module name) of every absolute import, and of importlib.import_module/__import__("...")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value.split(".")[0]


def test_no_runtime_file_imports_offline_packages():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 30 and RUNTIME / "ros" / "fer_node.py" in files
    offending = [f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
                 for path in files
                 for line, name in _imported_names(ast.parse(path.read_text(encoding="utf-8"), str(path)))
                 if name in OFFLINE + RENDERER]
    assert offending == [], "cmcnn_ros must not import the offline packages or the renderer:\n" + "\n".join(offending)
