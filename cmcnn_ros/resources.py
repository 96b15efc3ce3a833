"""Files the package ships: default weights, the Fast DDS profile.

One lookup for every entry point (node, demo, CLI, evaluator), so the same
relative name resolves the same way whether the package runs from a source
checkout (pip editable install) or from a colcon install, where ``models/``
and ``config/`` live in the ament share directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

#: Default checkpoint, relative to the package share directory / checkout.
DEFAULT_MODEL = "models/cmcnn_default.pt"
#: Fast DDS profile with a shared-memory segment large enough for Kinect-size images.
FASTDDS_PROFILE = "config/fastdds.xml"

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_dirs() -> List[Path]:
    """Where shipped files may live: the ament share directory (colcon install), then the checkout."""
    dirs: List[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("cmcnn_ros")))
    except Exception:
        pass
    dirs.append(SOURCE_ROOT)
    return dirs


def candidate_paths(value: Union[str, Path, None], default: str) -> List[Path]:
    """Paths to try for a user-given file name (empty -> ``default``), in order.

    An absolute path is taken as is; a relative one is tried against the
    working directory (only when the user named it), then each share directory.
    """
    given = str(value).strip() if value is not None else ""
    path = Path(given or default).expanduser()
    if path.is_absolute():
        return [path]
    found = [Path.cwd() / path] if given else []
    return found + [d / path for d in share_dirs()]


def find_file(value: Union[str, Path, None], default: str) -> Optional[Path]:
    """The first existing candidate of :func:`candidate_paths`, or None."""
    for candidate in candidate_paths(value, default):
        if candidate.is_file():
            return candidate.resolve()
    return None


def find_checkpoint(value: Union[str, Path, None] = None) -> Path:
    """Find a checkpoint; empty/None means the shipped default weights.

    (The node's ``model_path`` parameter goes through
    ``cmcnn_ros.ros.parameters.model_file``, which reports a miss as a
    parameter error.)

    Raises:
        FileNotFoundError: no such file (the message lists where it looked and what to do).
    """
    path = find_file(value, DEFAULT_MODEL)
    if path is None:
        tried = ", ".join(str(c) for c in candidate_paths(value, DEFAULT_MODEL))
        raise FileNotFoundError(
            f"no CM-CNN checkpoint at {tried}. The default weights {DEFAULT_MODEL} ship with the "
            "repository (see models/MODEL_CARD.md); to train your own run `cmcnn-synth` then `cmcnn-train` "
            "(README: Training) and pass its path")
    return path


def cache_dir() -> Path:
    """Where derived files are cached (ONNX exports of checkpoints): never shipped, safe to delete.

    ``$CMCNN_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/cmcnn_ros``, else
    ``~/.cache/cmcnn_ros``. Not the checkout: a colcon install is read-only.
    """
    explicit = os.environ.get("CMCNN_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cmcnn_ros"


def fastdds_profile() -> Optional[Path]:
    """The shipped Fast DDS profile, if present."""
    return find_file(None, FASTDDS_PROFILE)
