"""Shared base of the 3-D scan databases (BU-3DFE, Bosphorus).

Section III-B 4 of Ni et al. (IEEE TCDS 2023): the facial depth image of a
3-D scan is a gridfit surface z(x, y). A scan loader reads the points and
the texture, and :func:`~cmcnn_training.datasets.scan_depth.render_scan` puts
colour and depth on one orthographic grid (registered by construction),
giving a Kinect-like :class:`Sample` whose ``box`` is the scan's extent.

Rendering costs ~0.2-1 s per scan, so with ``cache_dir`` each rendered pair
is stored once as ``.npz`` keyed by the file's path, size, mtime and the
render settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .scan_depth import ScanDepthError, ScanRender, render_scan

from .common import DatasetError, Record, RecordDataset, Sample, resolve_classes, save_npz_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderSettings:
    """How scans become images (see :func:`render_scan`)."""

    size: int = 256
    margin: float = 0.08
    smoothness: float = 1.0
    regularizer: str = "gradient"
    fit_max_side: int = 160
    unit_m: float = 0.001
    nearest_m: float = 0.8


@dataclass
class ScanData:
    """Points of one scan with per-vertex texture coordinates and the texture image."""

    points: np.ndarray
    uv: Optional[np.ndarray]
    texture: Optional[np.ndarray]
    texture_v_origin: str = "bottom"


def scan_files(root: Path, suffix: str) -> List[Path]:
    """Files ending in ``suffix`` (case-insensitive) in root and its direct subfolders, sorted."""
    out: List[Path] = []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            with os.scandir(e.path) as sub:
                out.extend(Path(s.path) for s in sub if s.is_file() and s.name.lower().endswith(suffix))
        elif e.is_file() and e.name.lower().endswith(suffix):
            out.append(Path(e.path))
    return sorted(out)


def list_scans(root: Path, suffix: str, pattern: str, database: str, class_names: Sequence[str],
               record_for: Callable[[Path], Optional[Record]]) -> List[Record]:
    """The records of a scan database's subject folders.

    Args:
        root: dataset root (subject folders or scans directly below it).
        suffix: lower-case file-name ending of a scan, e.g. ``"_f3d.wrl"``.
        pattern: how the files are named in messages, e.g. ``"*_F3D.wrl"``.
        database: its name in messages, e.g. ``"BU-3DFE"``.
        class_names: the requested classes (for the message when none matched).
        record_for: a scan file -> its record, or None to skip it (other
            classes, action units, names that are not scans).

    Raises:
        DatasetError: root is not a folder, or no scan of the requested classes.
    """
    if not root.is_dir():
        raise DatasetError(f"{database} root {root} is not a folder")
    records = [r for r in map(record_for, scan_files(root, suffix)) if r is not None]
    if not records:
        raise DatasetError(f"no {database} scans ({pattern}) of classes {list(class_names)} under {root}")
    return records


class ScanDataset(RecordDataset):
    """Lazy dataset of 3-D scans rendered to registered colour + depth.

    A database sets :attr:`database`, :attr:`suffix` and :attr:`pattern` and
    implements :meth:`record_for` (which files are which samples) and
    :meth:`read_scan`.

    Args:
        root: folder with the subject folders (or the scan files directly).
        classes: classes to list (default all seven); scans of other classes are skipped.
        render: :class:`RenderSettings` (or a dict of its fields).
        cache_dir: optional folder for rendered ``.npz`` files.

    Raises:
        DatasetError: missing root, no scans of the classes, a scan name
            :meth:`record_for` refuses, bad render settings.
    """

    #: The database's name in messages, e.g. ``"BU-3DFE"``.
    database = "scans"
    #: Lower-case file-name ending of a scan, e.g. ``"_f3d.wrl"``.
    suffix = ""
    #: How the scan files are named in messages, e.g. ``"*_F3D.wrl"``.
    pattern = ""

    def __init__(self, root: Union[str, Path], classes: Optional[Iterable[str]] = None,
                 render: Union[RenderSettings, Dict[str, Any], None] = None,
                 cache_dir: Union[str, Path, None] = None) -> None:
        root = Path(root)
        class_names = resolve_classes(classes)
        records = list_scans(root, self.suffix, self.pattern, self.database, class_names,
                             lambda path: self.record_for(path, class_names))
        super().__init__(root, records, class_names)
        if render is None:
            render = RenderSettings()
        elif isinstance(render, dict):
            try:
                render = RenderSettings(**render)
            except TypeError as exc:
                raise DatasetError(f"render settings: {exc}; fields are {list(asdict(RenderSettings()))}") from None
        self.render = render
        self.cache_dir = Path(cache_dir) if cache_dir else None
        logger.info("%s %s: %d scans, %d subjects", self.database, root, len(records), len(set(self.subjects)))

    def record_for(self, path: Path, class_names: Sequence[str]) -> Optional[Record]:  # pragma: no cover - abstract
        """The record of a scan file, or None to skip it (other classes, names that are not scans).

        Raises:
            DatasetError: a scan name with an unknown code (names the file).
        """
        raise NotImplementedError

    def read_scan(self, record: Record) -> ScanData:  # pragma: no cover - abstract
        raise NotImplementedError

    def listing(self) -> List[Any]:
        settings = json.dumps(asdict(self.render), sort_keys=True)
        return [[r.source, r.label, r.subject, r.intensity, settings] for r in self.records]

    def render_record(self, record: Record) -> ScanRender:
        """Read and render one scan (no cache).

        Raises:
            DatasetError: unreadable scan/texture or a scan the fit rejects, naming the file.
        """
        scan = self.read_scan(record)
        s = self.render
        try:
            return render_scan(scan.points, uv=scan.uv, texture=scan.texture, size=s.size, margin=s.margin,
                               smoothness=s.smoothness, regularizer=s.regularizer,
                               fit_max_side=s.fit_max_side, unit_m=s.unit_m, nearest_m=s.nearest_m,
                               texture_v_origin=scan.texture_v_origin)
        except ScanDepthError as exc:
            raise DatasetError(f"{record.source}: {exc}") from None

    def _cache_path(self, record: Record) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        try:
            st = os.stat(record.source)
        except OSError:
            return None
        key = json.dumps([os.path.abspath(record.source), st.st_size, st.st_mtime_ns, asdict(self.render)],
                         sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.cache_dir / f"{Path(record.source).stem}-{digest}.npz"

    def load_record(self, record: Record) -> Sample:
        """Rendered sample (from the cache when present).

        Raises:
            DatasetError: see :meth:`render_record`.
        """
        cache = self._cache_path(record)
        colour = depth = None
        box: Optional[Tuple[int, int, int, int]] = None
        if cache is not None and cache.is_file():
            try:
                with np.load(cache) as z:
                    colour, depth, box = z["colour"], z["depth_m"], tuple(int(v) for v in z["box"])
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                logger.warning("ignoring unreadable cache file %s: %s", cache, exc)
                colour = None
        if colour is None:
            out = self.render_record(record)
            if out.colour is None:
                raise DatasetError(f"{record.source}: scan has no texture")
            colour, depth, box = out.colour, out.depth_m, out.box
            if cache is not None:
                save_npz_atomic(cache, colour=colour, depth_m=depth, box=np.array(box))
        return Sample(colour=colour, depth_m=depth, label=record.label, subject=record.subject,
                      intensity=record.intensity, source=record.source, box=box)
