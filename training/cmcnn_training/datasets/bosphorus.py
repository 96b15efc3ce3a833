"""Bosphorus loader: ``.bnt`` structured-light scans + ``.png`` texture (paper Section IV-A 3).

Bosphorus (Savran et al., 2008) holds 4666 textured scans of 105 subjects
in expressions, action units, poses and occlusions; the paper uses the six
basic emotions (60 subjects x 6 = 360 samples). Layout::

    ROOT/bs000/bs000_E_ANGER_0.bnt  (+ .png texture, .lm2/.lm3 landmarks)
    ROOT/bs000/bs000_N_N_0.bnt      neutral

Emotion codes ``E_ANGER E_DISGUST E_FEAR E_HAPPY E_SADNESS E_SURPRISE``;
other scans (``LFAU``/``UFAU``/``CAU`` action units, ``YR``/``PR``/``CR``
poses, ``O`` occlusions) are not expressions of the class set and are
skipped.

``.bnt`` layout (the database's ``read_bntfile.m``, little-endian)::

    uint16 nrows, uint16 ncols, float64 zmin,
    uint16 len, char[len] image file name,
    uint32 data_len, float64[data_len] data

``data`` is an ``(nrows*ncols, 5)`` matrix stored column-major (all x, then
all y, z, u, v); ``data_len`` must equal ``nrows*ncols*5``. Coordinates are
millimetres; (u, v) are texture coordinates normalised to [0, 1]; a point
whose z equals ``zmin`` is background (no data).

The v axis direction of (u, v) is not stated by the reader, so the loader
resolves it per scan from the sign of corr(y, v) (``texture_v_origin="auto"``
in :func:`~cmcnn_training.datasets.scan_depth.render_scan`), assuming the
scan's y axis points up.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from .common import DatasetError, Record, canonical_label, read_colour_image
from .scans import ScanData, ScanDataset

logger = logging.getLogger(__name__)

FILE_RE = re.compile(r"^(bs\d{3})_([A-Z]+)_([A-Z0-9]+)_(\d+)\.bnt$", re.IGNORECASE)
EMOTION_CODES = {"ANGER": "angry", "DISGUST": "disgusted", "FEAR": "scared", "HAPPY": "happy",
                 "SADNESS": "sad", "SURPRISE": "surprised"}


@dataclass
class BntScan:
    """Contents of a ``.bnt`` file.

    Attributes:
        nrows, ncols: range-image grid size.
        zmin: background marker value.
        image_file: texture file name stored in the header.
        data: ``(nrows*ncols, 5)`` float64 columns x, y, z, u, v.
    """

    nrows: int
    ncols: int
    zmin: float
    image_file: str
    data: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: points with scan data (z != zmin)."""
        return self.data[:, 2] != self.zmin


def read_bnt(path: Union[str, Path]) -> BntScan:
    """Read a Bosphorus ``.bnt`` file.

    Raises:
        DatasetError: missing/unreadable, truncated header or data, or a
            header whose ``data_len`` is not ``nrows*ncols*5``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read scan {path}: {exc}") from None
    off = 0

    def take(fmt: str, what: str) -> tuple:
        nonlocal off
        size = struct.calcsize(fmt)
        if off + size > len(raw):
            raise DatasetError(f"{path}: truncated .bnt file (ends inside the {what}, {len(raw)} bytes)")
        vals = struct.unpack_from(fmt, raw, off)
        off += size
        return vals

    nrows, ncols, zmin, name_len = take("<HHdH", "header")
    (name_bytes,) = take(f"<{name_len}s", "image file name")
    (data_len,) = take("<I", "data length")
    n = nrows * ncols
    if data_len != n * 5:
        raise DatasetError(f"{path}: inconsistent .bnt header: data length {data_len} != nrows*ncols*5 = "
                           f"{nrows}*{ncols}*5 (corrupt file)")
    if n == 0:
        raise DatasetError(f"{path}: empty .bnt scan (nrows={nrows}, ncols={ncols})")
    need = off + 8 * data_len
    if len(raw) < need:
        raise DatasetError(f"{path}: truncated .bnt file: {len(raw)} bytes, header announces {need}")
    data = np.frombuffer(raw, dtype="<f8", count=data_len, offset=off).reshape(5, n).T.copy()
    return BntScan(nrows=int(nrows), ncols=int(ncols), zmin=float(zmin),
                   image_file=name_bytes.decode("latin-1").rstrip("\0"), data=data)


def write_bnt(path: Union[str, Path], data: np.ndarray, nrows: int, ncols: int, zmin: float,
              image_file: str) -> None:
    """Write a ``.bnt`` file in the layout :func:`read_bnt` reads (tests, conversions).

    Args:
        data: ``(nrows*ncols, 5)`` x, y, z, u, v.
    """
    data = np.asarray(data, dtype="<f8")
    if data.shape != (nrows * ncols, 5):
        raise DatasetError(f"data must be ({nrows * ncols}, 5), got {data.shape}")
    name = image_file.encode("latin-1")
    head = struct.pack(f"<HHdH{len(name)}sI", nrows, ncols, zmin, len(name), name, data.size)
    Path(path).write_bytes(head + data.T.tobytes())


def parse_bosphorus_name(name: str) -> Optional[Dict[str, Any]]:
    """``{"subject", "kind", "code", "take"}`` from a ``.bnt`` name, None if it is not one."""
    m = FILE_RE.match(name)
    if m is None:
        return None
    subject, kind, code, take = m.groups()
    return {"subject": subject.lower(), "kind": kind.upper(), "code": code.upper(), "take": int(take)}


class BosphorusDataset(ScanDataset):
    """Bosphorus emotion (and neutral) scans rendered to registered colour + depth (lazy).

    Args:
        root: folder with the ``bsNNN`` subject folders (or the files directly).
        classes: classes to list (default all seven); other scans are skipped.
        render: :class:`RenderSettings` or a dict of them.
        cache_dir: optional cache of rendered pairs.

    Raises:
        DatasetError: missing root, no scans, an ``E_`` scan with an unknown emotion code.
    """

    name = "bosphorus"
    database = "Bosphorus"
    suffix = ".bnt"
    pattern = "*.bnt"

    def record_for(self, path: Path, class_names: Sequence[str]) -> Optional[Record]:
        info = parse_bosphorus_name(path.name)
        if info is None:
            logger.debug("skipping %s: not a Bosphorus scan name", path)
            return None
        if info["kind"] == "E":
            if info["code"] not in EMOTION_CODES:
                raise DatasetError(f"{path}: unknown Bosphorus emotion code E_{info['code']}; expected "
                                   f"{['E_' + c for c in EMOTION_CODES]}")
            label = EMOTION_CODES[info["code"]]
        elif info["kind"] == "N" and info["code"] == "N":
            label = "neutral"
        else:
            return None  # action units, poses, occlusions
        if label not in class_names:
            return None
        return Record(source=str(path), label=canonical_label(label, class_names, str(path)),
                      subject=info["subject"], intensity=None, extra={"take": info["take"]})

    def read_scan(self, record: Record) -> ScanData:
        src = Path(record.source)
        scan = read_bnt(src)
        candidates = [src.with_suffix(".png")]
        if scan.image_file:
            candidates.append(src.parent / Path(scan.image_file.replace("\\", "/")).name)
        texture_path = next((c for c in candidates if c.is_file()), None)
        if texture_path is None:
            raise DatasetError(f"{src}: texture image not found (tried {[str(c) for c in candidates]})")
        texture = read_colour_image(texture_path, what="texture image")
        d = scan.data[scan.valid]
        if len(d) < 3:
            raise DatasetError(f"{src}: only {len(d)} points with data")
        return ScanData(points=d[:, :3], uv=d[:, 3:5], texture=texture, texture_v_origin="auto")
