"""The runtime package's layering (docs/ARCHITECTURE.md): imports point one way and run in no circle.

Read from the source with ``ast`` (every import, including those inside
functions), so a lazy import cannot hide an upward dependency. That nothing
here reaches the offline packages is ``test_package_layout.py``'s check.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cmcnn_ros"

# Lower number = lower layer; a module may import only its own layer or lower ones.
LAYERS = {
    "cmcnn_ros.classes": 0, "cmcnn_ros.boxes": 0, "cmcnn_ros.atomic_io": 0, "cmcnn_ros.resources": 0,
    "cmcnn_ros.device": 0, "cmcnn_ros.plots": 0, "cmcnn_ros.modalities": 0, "cmcnn_ros.parallel": 0,
    "cmcnn_ros.preprocessing": 1,
    "cmcnn_ros.model": 1,
    "cmcnn_ros.inference": 2,
    "cmcnn_ros.ros": 3,
    "cmcnn_ros.tools": 4,
    "cmcnn_ros.examples": 4,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Set[str]:
    """Absolute names of the cmcnn_ros modules ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # "from pkg import module"
    return {m for m in out if m.split(".")[0] == "cmcnn_ros"}


def _graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name}
    return graph


def _layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS and docs/ARCHITECTURE.md")


def test_every_module_has_a_layer():
    for module in _graph():
        if module in ("cmcnn_ros", "cmcnn_ros.msg") or module.startswith("cmcnn_ros.msg."):
            continue
        _layer(module)


def test_imports_never_point_upward():
    upward = []
    for module, deps in _graph().items():
        if module == "cmcnn_ros":
            continue
        for dep in deps:
            if dep == "cmcnn_ros" or dep.startswith("cmcnn_ros.msg"):
                continue
            if _layer(dep) > _layer(module):
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports that run upward: " + ", ".join(sorted(upward))


def test_no_import_cycles():
    graph = {m: {d for d in deps if not graph_package_init(d, m)} for m, deps in _graph().items()}
    state: Dict[str, int] = {}
    stack: list = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def graph_package_init(dep: str, module: str) -> bool:
    """A package's ``__init__`` re-exporting its own modules is not a cycle with them."""
    return module.startswith(dep + ".")
