"""CM-CNN checkpoint file: atomic save, validated load (format in docs/ARCHITECTURE.md).

One ``torch.save`` file holding only plain containers and tensors, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary unpickling)::

    {"format": "cmcnn_ros.checkpoint", "format_version": 1,
     "model_config": ModelConfig.to_dict(), "class_names": [...],
     "preprocessing": PreprocessingParams.to_dict(), "state_dict": {...},
     "metadata": {...}}

The preprocessing dict is stored as given: :mod:`cmcnn_ros.preprocessing`
owns its validation (``PreprocessingParams.from_dict``).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic_io import atomic_open
from .cmcnn import CMCNN, cmcnn
from .config import ModelConfig, ModelConfigError

logger = logging.getLogger(__name__)

FORMAT = "cmcnn_ros.checkpoint"
FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and the fix."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """Saving would overwrite an existing file and ``overwrite`` was not set."""


@dataclass
class LoadedCheckpoint:
    """Result of :func:`load_checkpoint`.

    Attributes:
        model: The network with loaded weights, in eval mode.
        model_config: Its configuration.
        class_names: Class names in output order (``len == num_classes``).
        preprocessing: The ``PreprocessingParams.to_dict()`` it was trained with.
        metadata: Free-form training metadata.
        path: The file it came from.
    """

    model: CMCNN
    model_config: ModelConfig
    class_names: List[str]
    preprocessing: Dict[str, Any]
    metadata: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None


# --------------------------------------------------------------------------- save
def save_checkpoint(
    path: PathLike,
    model: CMCNN,
    class_names: Sequence[str],
    preprocessing: Union[Mapping[str, Any], Any],
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, ``os.replace``).

    Args:
        path: Destination file (its folder is created if missing).
        model: A :class:`~cmcnn_ros.model.cmcnn.CMCNN`.
        class_names: One name per output class, in output order.
        preprocessing: ``PreprocessingParams`` (anything with ``to_dict()``)
            or its dict form.
        metadata: Plain data (dict/list/str/int/float/bool/None/tensors),
            e.g. dataset, epochs, accuracy.
        overwrite: Replace an existing file.

    Returns:
        The path written.

    Raises:
        CheckpointExistsError: ``path`` exists and ``overwrite`` is False.
        CheckpointError: bad model, class names, preprocessing or metadata,
            or the write failed (the old file, if any, is left intact).
    """
    path = Path(path)
    if not isinstance(model, CMCNN):
        raise CheckpointError(f"cannot save {path}: model must be a CMCNN, got {type(model).__name__}")
    if getattr(model, "is_fused", False):
        raise CheckpointError(
            f"cannot save {path}: the model was fused for inference (BatchNorm folded); save the unfused model"
        )
    names = _check_class_names(class_names, model.num_classes, f"cannot save {path}")
    if hasattr(preprocessing, "to_dict"):
        preprocessing = preprocessing.to_dict()
    if not isinstance(preprocessing, Mapping):
        raise CheckpointError(
            f"cannot save {path}: preprocessing must be a dict or have to_dict(), got {type(preprocessing).__name__}"
        )
    meta = dict(metadata or {})
    _check_plain(dict(preprocessing), f"cannot save {path}: preprocessing")
    _check_plain(meta, f"cannot save {path}: metadata")
    if path.exists() and not overwrite:
        raise CheckpointExistsError(f"{path} exists; pass overwrite=True to replace it")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "class_names": names,
        "preprocessing": dict(preprocessing),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(payload, fh)
    except Exception as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {exc}") from exc
    _fsync_dir(path.parent)
    logger.info("saved checkpoint %s (%d classes, modalities %s)", path, len(names), list(model.modalities))
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every platform lets you open a folder.
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- load
def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> LoadedCheckpoint:
    """Read and validate a checkpoint and rebuild its model (eval mode).

    Args:
        path: Checkpoint file.
        map_location: Device for the tensors (``torch.load`` semantics).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, not a
            cmcnn_ros checkpoint, from a newer format version, has an invalid
            model config or class list, or weights that do not match the
            config (missing/unexpected keys, wrong shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist" + ("" if not path.exists() else " as a file")
            + "; check the path (train one with cmcnn-train or use models/cmcnn_default.pt)"
        )
    try:
        payload = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a safe torch file: {_unsafe_reason(exc)}; re-save it with "
            "cmcnn_ros.model.checkpoint.save_checkpoint (plain containers and tensors only)"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a torch file ({_load_reason(exc)}); "
            "re-copy or re-save it"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a cmcnn_ros checkpoint (format {found!r}, expected {FORMAT!r}); "
            "save it with cmcnn_ros.model.checkpoint.save_checkpoint"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version is {version!r}, expected an int")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this cmcnn_ros supports "
            f"({FORMAT_VERSION}); upgrade cmcnn_ros"
        )
    if version < 1:
        raise CheckpointError(f"{path}: invalid format_version {version}")
    missing = [k for k in ("model_config", "class_names", "preprocessing", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; the file is incomplete, re-save it")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except ModelConfigError as exc:
        raise CheckpointError(f"{path}: invalid model_config: {exc}") from exc
    names = _check_class_names(payload["class_names"], config.num_classes, str(path))
    preprocessing = payload["preprocessing"]
    if not isinstance(preprocessing, dict):
        raise CheckpointError(f"{path}: preprocessing must be a dict, got {type(preprocessing).__name__}")
    metadata = payload.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict must be a dict, got {type(state).__name__}")
    model = cmcnn(config)
    _check_state_dict(model, state, path)
    _check_finite(state, path)
    model.load_state_dict(state, strict=True)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    logger.info("loaded checkpoint %s (modalities %s, classes %s)", path, list(config.modalities), names)
    return LoadedCheckpoint(model, config, names, dict(preprocessing), dict(metadata), path)


def _check_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(v.shape))
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:3]})")
        raise CheckpointError(
            f"{path}: weights do not match its model_config: {'; '.join(parts)}. "
            "The file was edited or saved by an incompatible version; re-train or re-save it"
        )


def _check_finite(state: Mapping[str, Any], path: Path) -> None:
    """Refuse NaN/inf weights: such a model answers NaN scores (seen after a diverged run)."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())}
    if bad:
        names = sorted(bad)
        raise CheckpointError(
            f"{path}: {sum(bad.values())} non-finite (NaN or inf) weights in {len(bad)} tensors "
            f"(e.g. {names[:3]}); the training diverged or the file was damaged: re-train (lower the "
            "learning rate) or use another checkpoint"
        )


def _check_class_names(names: Any, num_classes: int, where: str) -> List[str]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: class_names must be a list of strings, got {names!r}")
    if len(names) != num_classes:
        raise CheckpointError(
            f"{where}: {len(names)} class_names {list(names)} for a model with num_classes={num_classes}"
        )
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: class_names has repeats: {list(names)}")
    return list(names)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: dict keys must be str or int, got {k!r}")
            _check_plain(v, where)
        return
    raise CheckpointError(
        f"{where} holds a {type(value).__name__} ({value!r:.60}); only dict/list/tuple/str/int/float/bool/None/"
        "tensors are allowed so the file loads with weights_only=True"
    )


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain_text(exc: BaseException) -> str:
    """An exception's text on one line, without terminal escape codes (torch puts bold in some)."""
    return " ".join(_ANSI.sub("", str(exc)).split())


def _load_reason(exc: BaseException) -> str:
    """Why ``torch.load`` failed, as a complete first sentence (never cut mid-sentence)."""
    text = _plain_text(exc)
    if not text:
        return f"{type(exc).__name__}: the file ends before the data does" if isinstance(exc, EOFError) \
            else type(exc).__name__
    m = re.match(r"(.+?[.!?])(?:\s|$)", text)
    return f"{type(exc).__name__}: {m.group(1) if m else text}"


def _unsafe_reason(exc: BaseException) -> str:
    """What a ``weights_only`` load refused, e.g. "it holds the Python object argparse.Namespace"."""
    text = _plain_text(exc)
    m = re.search(r"GLOBAL (\S+?) (?:was not an allowed global|whose module)", text)
    if m:
        return f"it holds the Python object {m.group(1)}, which a safe (weights_only) load refuses"
    m = re.search(r"WeightsUnpickler error: (.+?[.!?])(?:\s|$)", text)
    return f"a safe (weights_only) load refused it ({m.group(1) if m else 'pickled Python objects'})"


__all__ = [
    "CheckpointError",
    "CheckpointExistsError",
    "FORMAT",
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "load_checkpoint",
    "save_checkpoint",
]
