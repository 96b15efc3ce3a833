"""The trainer's layout (issue 11): entry points share helpers through utils/builders/fitting/selection, never
through ``cmcnn_training.train``; one logging setup and one device check for every command."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmcnn_ros.device import DEVICE_CHOICES, resolve_device

TRAINER = Path(__file__).resolve().parents[1] / "training" / "cmcnn_training"

#: The modules of cmcnn-evaluate and cmcnn-reproduce, and the trainer modules they share.
NON_TRAIN_MODULES = ("cmcnn_training.evaluate", "cmcnn_training.calibrate", "cmcnn_training.reproduce.cli",
                     "cmcnn_training.reproduce.sweep",
                     "cmcnn_training.reproduce.report", "cmcnn_training.distributed", "cmcnn_training.mixing",
                     "cmcnn_training.datasets.protocols")


def test_evaluate_and_reproduce_do_not_load_the_train_module():
    code = ("import importlib, json, sys\n"
            f"for name in {NON_TRAIN_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cmcnn_training'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cmcnn_training.evaluate" in loaded and "cmcnn_training.reproduce.sweep" in loaded
    assert "cmcnn_training.train" not in loaded


def _imports_train(source: str, package: str, where: str) -> list:
    """Import statements of a module of ``package`` (module level or inside functions) naming the train module."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target + "." + a.name for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if "cmcnn_training.train" in names:
            hits.append(f"{where}:{node.lineno}")
    return sorted(hits)


def _scan(path: Path) -> list:
    package = ".".join(path.relative_to(TRAINER.parent).with_suffix("").parts[:-1])
    return _imports_train(path.read_text(encoding="utf-8"), package, path.name)


def test_no_trainer_module_imports_train_even_lazily():
    modules = [p for p in TRAINER.rglob("*.py") if p != TRAINER / "train.py"]
    assert len(modules) > 20 and TRAINER / "evaluate.py" in modules
    assert [hit for p in modules for hit in _scan(p)] == []


def test_import_scan_sees_relative_and_absolute_imports():
    # The scan above must be able to fail: every spelling of an import of train is found.
    source = ("def f():\n    from ..train import fit\n\nimport cmcnn_training.train\n"
              "from .. import train\nfrom ..utils import git_commit\n")
    assert _imports_train(source, "cmcnn_training.reproduce", "m.py") == ["m.py:2", "m.py:4", "m.py:5"]
    assert _imports_train("from .train import main\n", "cmcnn_training", "e.py") == ["e.py:1"]


def _logging_state(**kwargs) -> dict:
    code = ("import json, logging\n"
            "from cmcnn_ros.tools import configure_logging\n"
            f"configure_logging(**{kwargs!r})\n"
            "root = logging.getLogger()\n"
            "print(json.dumps({'level': root.level, 'format': root.handlers[0].formatter._fmt}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout)


def test_configure_logging_takes_level_names_for_the_trainer():
    assert _logging_state(level="warning") == {"level": 30, "format": "%(levelname)s %(name)s: %(message)s"}
    assert _logging_state(level="DEBUG", timestamps=True) == {
        "level": 10, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    assert _logging_state(verbose=True)["level"] == 10      # the console tools' spelling is unchanged
    assert _logging_state(level="loud") == {
        "error": "ValueError: logging level 'loud' is not one of debug, info, warning, error, critical"}


def test_one_device_check():
    assert DEVICE_CHOICES == ("auto", "cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^unknown device 'mps': use auto, cpu, cuda or cuda:N$"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match="was asked for but CUDA is not available here; use auto or cpu"):
                resolve_device(name)
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_train_and_evaluate_refuse_an_unknown_device_in_one_line(tmp_path, caplog):
    from cmcnn_training import evaluate, train

    (tmp_path / "data").mkdir()
    assert train.main(["--config", "quick", "--root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "o"),
                       "--device", "mps", "--no-progress"]) == 2
    assert "unknown device 'mps'" in caplog.text
    caplog.clear()
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pt"), "--root", str(tmp_path / "data"),
                          "--device", "mps", "--no-progress"]) == 2
    assert "unknown device 'mps'" in caplog.text
