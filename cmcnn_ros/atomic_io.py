"""Atomic file writes: a reader, or a crash, sees the old file or the whole new one.

Everything the package writes for others to read (checkpoints, datasets,
metrics, caches, figures, benchmark results) goes through a temporary file
in the destination folder, ``fsync`` and ``os.replace``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _create_temp(path: Path) -> Tuple[int, Path]:
    """A new, empty file beside ``path``, with the permissions a plain ``open(path, "w")`` would give.

    Not ``tempfile.mkstemp``: it makes 0600 files, so a checkpoint or dataset
    written for others could not be read by them. Created with 0666 and
    ``O_EXCL``, the process umask applies as it does for ``open``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", file_mode: Optional[int] = None, **open_kw) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Args:
        path: destination; its folder is created if missing.
        mode: a write mode, ``"wb"`` or ``"w"``.
        file_mode: permission bits for the result; default: what ``open``
            gives a new file (0666 less the umask).
        **open_kw: passed to ``os.fdopen`` (e.g. ``newline=""`` for csv).

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if file_mode is not None:
            os.chmod(tmp, file_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: PathLike, data: bytes, file_mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", file_mode=file_mode) as fh:
        fh.write(data)


def write_text_atomic(path: PathLike, text: str, file_mode: Optional[int] = None) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), file_mode=file_mode)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON is strict (json.loads-able anywhere)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Serialise ``obj`` as indented strict JSON (NaN -> null) and write it atomically."""
    # Round-trip through default= first so numpy values become Python floats,
    # then map non-finite floats to None.
    plain = json.loads(json.dumps(obj, default=_json_default, allow_nan=True))
    text = json.dumps(_finite_or_none(plain), indent=2, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))
