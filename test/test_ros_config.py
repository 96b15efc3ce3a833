"""config/fer.yaml mirrors the node's parameters; the launch file is valid Python
declaring the documented launch arguments.

launch/launch_ros are not installable from PyPI, so the launch file cannot be
executed here; it is checked by AST inspection only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fqn", ["/fer_node", "/robot1/fer_node", "/lab/robot1/fer_node"])
def test_yaml_mirrors_declared_parameters(fqn):
    """config/fer.yaml, read the way rcl reads it, gives the node its declared defaults under any namespace."""
    from cmcnn_ros.ros.parameters import PARAMETERS
    from cmcnn_ros.ros.params_file import load_params_file, sections_for_node

    sections = sections_for_node(load_params_file(ROOT / "config" / "fer.yaml"), fqn)
    assert len(sections) == 1, f"config/fer.yaml does not reach {fqn}"
    params = sections[0][1]
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
    assert {"model_path", "device", "colour_topic", "depth_topic", "colour_transport", "depth_transport",
            "face_source", "params_file", "use_sim_time"} <= declared
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {"LifecycleNode", "ChangeState", "OnStateTransition", "generate_launch_description"} <= names


def test_launch_passes_autostart_false_and_used_arguments():
    tree = _launch_tree()
    used = {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "LaunchConfiguration"}
    assert {"model_path", "device", "colour_topic", "depth_topic", "colour_transport", "depth_transport",
            "face_source", "params_file", "use_sim_time"} <= used
    src = (ROOT / "launch" / "fer.launch.py").read_text()
    assert '"autostart": False' in src
    assert "TRANSITION_CONFIGURE" in src and "TRANSITION_ACTIVATE" in src


@pytest.mark.parametrize("value", ["", "models/cmcnn_default.pt"])
def test_missing_default_model_is_a_clear_error(value, tmp_path, monkeypatch):
    from cmcnn_ros.ros.parameters import FerConfigError, model_file

    if (ROOT / "models" / "cmcnn_default.pt").exists():
        assert model_file(value) == ROOT / "models" / "cmcnn_default.pt"
    else:
        with pytest.raises(FerConfigError, match="set the parameter model_path"):
            model_file(value)


def test_absolute_model_path(tmp_path):
    from cmcnn_ros.ros.parameters import FerConfigError, model_file

    f = tmp_path / "m.pt"
    with pytest.raises(FerConfigError, match=str(f)):
        model_file(str(f))
    f.write_bytes(b"x")
    assert model_file(str(f)) == f


@pytest.mark.parametrize("key", ["fer_node", "/fer_node", "/**/fer_node", "/**", "/*/fer_node",
                                 "robot1/fer_node", "/robot1/other"])
def test_node_key_matching_agrees_with_rclpy(key, tmp_path, ros_domain_id):
    """params_file.node_key_matches is what rclpy applies: checked against rclpy itself."""
    import rclpy

    from cmcnn_ros.ros.params_file import node_key_matches

    f = tmp_path / "p.yaml"
    f.write_text(f"{key}:\n  ros__parameters:\n    redetect_interval: 7\n")
    for namespace in ("", "/robot1"):
        ctx = rclpy.Context()
        rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(f)])
        try:
            node = rclpy.create_node("fer_node", namespace=namespace, context=ctx,
                                     automatically_declare_parameters_from_overrides=True,
                                     start_parameter_services=False)
            applied = node.has_parameter("redetect_interval")
            fqn = node.get_fully_qualified_name()
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=ctx)
        assert node_key_matches(key, fqn) == applied, (key, fqn, applied)


def test_params_file_errors_name_file_and_line(tmp_path):
    from cmcnn_ros.ros.params_file import ParamsFileError, load_params_file, params_files_in

    with pytest.raises(ParamsFileError, match=r"params file .*nope.yaml does not exist"):
        load_params_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**/fer_node:\n  ros__parameters:\n    redetect_interval: 5\n   sync_slop: [1\n")
    with pytest.raises(ParamsFileError, match=r"bad.yaml line 4 column 4: invalid YAML"):
        load_params_file(bad)
    bad.write_text("/**/fer_node:\n  redetect_interval: 5\n")
    with pytest.raises(ParamsFileError, match="has no 'ros__parameters:' section"):
        load_params_file(bad)
    assert params_files_in(["fer_node", "--ros-args", "-p", "a:=1", "--params-file", "x.yaml", "--",
                            "--params-file", "not_ros.yaml", "--ros-args", "--params-file", "y.yaml"]) == \
        ["x.yaml", "y.yaml"]


def test_numeric_parameters_have_range_descriptors():
    """Ranges live in the descriptors, so `ros2 param set` is refused like a start-up value."""
    from cmcnn_ros.ros.parameters import PARAMETERS, parameter_problem

    for name, (default, _, extra) in PARAMETERS.items():
        if type(default) in (int, float):
            key = "integer_range" if type(default) is int else "floating_point_range"
            assert extra.get(key), name
            r = extra[key][0]
            assert r.from_value <= default <= r.to_value, name
            assert parameter_problem(name, default) is None
            assert "is outside" in parameter_problem(name, type(default)(r.to_value + 1))


@pytest.mark.parametrize("name,good,bad", [("colour_transport", "compressed", "compressedDepth"),
                                           ("depth_transport", "compressedDepth", "compressed")])
def test_transport_parameters_take_image_transport_names(name, good, bad):
    """The transports are closed choices, described with their values, refused otherwise at start-up and set."""
    from cmcnn_ros.ros.parameters import PARAMETERS, parameter_problem

    default, description, extra = PARAMETERS[name]
    assert default == "raw" and good in description and "image_transport" in description
    assert extra["additional_constraints"] == f"one of: raw, {good}"
    assert parameter_problem(name, "raw") is None and parameter_problem(name, good) is None
    assert parameter_problem(name, bad) == (f"parameter {name}: {bad!r} is not one of 'raw' or {good!r} "
                                            "(default 'raw')")
    assert "takes a string" in parameter_problem(name, 3)


def test_face_source_and_min_confidence_are_declared_with_their_choices_and_range():
    """Issue 17: face_source is a closed choice (start-up and set refuse others); min_confidence a probability."""
    from cmcnn_ros.ros.parameters import PARAMETERS, parameter_problem

    default, description, extra = PARAMETERS["face_source"]
    assert default == "own" and "ros4hri" in description and "/humans/faces/tracked" in description
    assert extra["additional_constraints"] == "one of: own, ros4hri"
    assert parameter_problem("face_source", "ros4hri") is None
    assert parameter_problem("face_source", "hri") == ("parameter face_source: 'hri' is not one of 'own' or "
                                                       "'ros4hri' (default 'own')")
    default, description, extra = PARAMETERS["min_confidence"]
    assert default == 0.0 and "unknown" in description
    r = extra["floating_point_range"][0]
    assert (r.from_value, r.to_value) == (0.0, 1.0)
    assert "is outside [0.0, 1.0]" in parameter_problem("min_confidence", 1.5)
