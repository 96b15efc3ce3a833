"""config/fer.yaml mirrors the node's parameters; the launch file is valid Python
declaring the documented launch arguments.

launch/launch_ros are not installable from PyPI, so the launch file cannot be
executed here; it is checked by AST inspection only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_mirrors_declared_parameters():
    from cmcnn_ros.ros.fer_node import NODE_NAME, PARAMETERS

    data = yaml.safe_load((ROOT / "config" / "fer.yaml").read_text())
    params = data[NODE_NAME]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, (default, description, _) in PARAMETERS.items():
        assert params[name] == default, name
        assert type(params[name]) is type(default), name
        assert len(description) > 20, name


def test_yaml_has_a_comment_per_parameter():
    lines = (ROOT / "config" / "fer.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s and not s.startswith("#") and line.startswith("    ") and ":" in s:
            assert lines[i - 1].strip().startswith("#"), f"no comment above {s!r}"


def _launch_tree():
    return ast.parse((ROOT / "launch" / "fer.launch.py").read_text())


def test_launch_declares_arguments():
    tree = _launch_tree()
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    assert {"model_path", "device", "colour_topic", "depth_topic", "params_file",
            "use_sim_time"} <= declared
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {"LifecycleNode", "ChangeState", "OnStateTransition", "generate_launch_description"} <= names


def test_launch_passes_autostart_false_and_used_arguments():
    tree = _launch_tree()
    used = {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "LaunchConfiguration"}
    assert {"model_path", "device", "colour_topic", "depth_topic", "params_file", "use_sim_time"} <= used
    src = (ROOT / "launch" / "fer.launch.py").read_text()
    assert '"autostart": False' in src
    assert "TRANSITION_CONFIGURE" in src and "TRANSITION_ACTIVATE" in src


@pytest.mark.parametrize("value", ["", "models/cmcnn_default.pt"])
def test_missing_default_model_is_a_clear_error(value, tmp_path, monkeypatch):
    from cmcnn_ros.ros.fer_node import FerConfigError, resolve_model_path

    if (ROOT / "models" / "cmcnn_default.pt").exists():
        assert resolve_model_path(value) == ROOT / "models" / "cmcnn_default.pt"
    else:
        with pytest.raises(FerConfigError, match="set the parameter model_path"):
            resolve_model_path(value)


def test_absolute_model_path(tmp_path):
    from cmcnn_ros.ros.fer_node import FerConfigError, resolve_model_path

    f = tmp_path / "m.pt"
    with pytest.raises(FerConfigError, match=str(f)):
        resolve_model_path(str(f))
    f.write_bytes(b"x")
    assert resolve_model_path(str(f)) == f
