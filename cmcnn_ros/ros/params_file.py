"""ROS 2 parameter files and overrides as ``rcl`` reads them, checked before the node starts.

Not part of the CM-CNN method (Ni et al., IEEE TCDS 2023); it is how
``fer_node`` turns configuration mistakes into one line that says what to fix
instead of an ``RCLError`` or a silent fall-back to defaults:

* :func:`params_files_in` finds the ``--params-file`` arguments of a command line,
* :func:`load_params_file` reads one (missing file, YAML error with line and
  column, wrong layout: :class:`ParamsFileError`),
* :func:`sections_for_node` applies rcl's node-name matching (``/**``,
  ``/*``, a leading ``/`` added to relative keys) to pick the sections that
  apply to a node's fully qualified name,
* :func:`closest_name` suggests the declared parameter a typo meant.

ROS-free (PyYAML only), so tests and tools use the same rules.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROS_PARAMETERS = "ros__parameters"


class ParamsFileError(ValueError):
    """A parameters file cannot be used; the message names the file, the place and the fix."""


def params_files_in(argv: Sequence[str]) -> List[str]:
    """The files given with ``--params-file`` inside ``--ros-args`` sections of ``argv``."""
    files: List[str] = []
    in_ros = False
    it = iter(list(argv))
    for arg in it:
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg == "--params-file":
            value = next(it, None)
            if value is not None:
                files.append(value)
    return files


def load_params_file(path: "str | Path") -> Dict[str, Any]:
    """Read a ROS 2 parameters YAML file.

    Returns:
        ``{node name key: {"ros__parameters": {...}}}`` as written.

    Raises:
        ParamsFileError: the file is missing or unreadable, is not valid YAML
            (line and column given), or is not laid out as
            ``<node name>: {ros__parameters: {...}}``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ParamsFileError(f"params file {p} does not exist; check the path given to --params-file "
                              "(or params_file:= in the launch file)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsFileError(f"params file {p} cannot be read ({exc}); check its permissions and encoding") \
            from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsFileError(f"params file {p}{where}: invalid YAML ({problem}); fix the YAML there "
                              "(indent with spaces, 'name: value' pairs)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsFileError(f"params file {p}: the top level must map node names to "
                              f"'{ROS_PARAMETERS}:' sections, e.g. '/**/fer_node:' (found a "
                              f"{type(data).__name__})")
    for key, section in data.items():
        if not isinstance(section, dict) or ROS_PARAMETERS not in section:
            raise ParamsFileError(f"params file {p}: node key {key!r} has no '{ROS_PARAMETERS}:' section; "
                                  f"write '{key}:' then an indented '{ROS_PARAMETERS}:' holding the parameters")
    return data


def node_key_matches(key: str, fqn: str) -> bool:
    """Whether a parameters-file node key applies to the node ``fqn`` (rcl's rule).

    A relative key gets a leading ``/``; ``/*`` matches one name token and
    ``/**`` any number (rclpy / rclcpp turn ``/*`` into ``(/\\w+)`` and match
    the whole fully qualified name). So ``fer_node`` matches ``/fer_node``
    only, ``/**/fer_node`` matches ``/fer_node`` and ``/robot1/fer_node``, and
    ``/**`` matches every node.
    """
    pattern = key if key.startswith("/") else "/" + key
    # Exactly rcl's substitution: the "*" left over from "/**" becomes the
    # regex repetition of the "(/\w+)" group.
    try:
        return re.fullmatch(pattern.replace("/*", r"(/\w+)"), fqn) is not None
    except re.error:
        return False


def sections_for_node(data: Dict[str, Any], fqn: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(key, parameters)`` of every section of ``data`` that applies to ``fqn``, in file order."""
    return [(key, dict(section.get(ROS_PARAMETERS) or {})) for key, section in data.items()
            if node_key_matches(str(key), fqn)]


def flatten(params: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested YAML maps as dotted parameter names (``a: {b: 1}`` -> ``a.b``), as rcl reads them."""
    out: Dict[str, Any] = {}
    for name, value in params.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def closest_name(name: str, declared: Iterable[str]) -> Optional[str]:
    """The declared parameter name most like ``name`` (a typo), or None."""
    hits = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
    return hits[0] if hits else None
