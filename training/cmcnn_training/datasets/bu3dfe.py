"""BU-3DFE loader: VRML 2.0 face scans + 2-D texture (paper Section IV-A 2).

BU-3DFE (Yin et al., FG 2006) holds 2500 textured 3-D scans of 100 subjects
(56 F, 44 M): neutral plus six expressions at four intensities. The
distribution's layout::

    ROOT/F0001/F0001_AN01WH_F3D.wrl    VRML 2.0 cropped face mesh
    ROOT/F0001/F0001_AN01WH_F2D.bmp    its texture image

File names encode subject (``F``/``M`` + 4 digits), expression (``AN DI FE
HA SA SU``; ``NE`` neutral), intensity (``01``-``04``; ``00`` neutral) and a
race/ethnicity code (``WH BL AE AM LA IN``). The ``.wrl`` holds one
``IndexedFaceSet`` with ``Coordinate { point [x y z, ...] }``,
``TextureCoordinate { point [u v, ...] }``, ``coordIndex`` and
``texCoordIndex`` (faces separated by -1) and ``ImageTexture { url "..." }``.
Coordinates are millimetres, y up, z toward the viewer; texture coordinates
follow VRML (v = 0 is the bottom image row).

Each scan becomes colour + depth on one orthographic grid (the paper's
gridfit depth, :mod:`cmcnn_training.datasets.scan_depth`): texture
coordinates are attached to vertices through ``texCoordIndex`` and fitted on
the same grid as z, then the texture is sampled there.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .common import DatasetError, Record, canonical_label, read_colour_image
from .scans import ScanData, ScanDataset

logger = logging.getLogger(__name__)

FILE_RE = re.compile(r"^([FM]\d{4})_([A-Z]{2})(\d{2})([A-Z]{2})_F3D\.wrl$", re.IGNORECASE)
EXPRESSION_CODES = {"AN": "angry", "DI": "disgusted", "FE": "scared", "HA": "happy", "SA": "sad",
                    "SU": "surprised", "NE": "neutral"}
RACE_CODES = {"WH": "White", "BL": "Black", "AE": "East-Asian", "AM": "Middle-East Asian",
              "LA": "Hispanic/Latino", "IN": "Indian"}

_COORD_RE = re.compile(r"(?<![A-Za-z_])Coordinate\s*\{\s*point\s*\[([^\]]*)\]")
_TEXCOORD_RE = re.compile(r"TextureCoordinate\s*\{\s*point\s*\[([^\]]*)\]")
_COORD_INDEX_RE = re.compile(r"(?<![A-Za-z_])coordIndex\s*\[([^\]]*)\]")
_TEXCOORD_INDEX_RE = re.compile(r"texCoordIndex\s*\[([^\]]*)\]")
_URL_RE = re.compile(r"url\s*\[?\s*\"([^\"]+)\"")


@dataclass
class VrmlMesh:
    """Geometry of a VRML ``IndexedFaceSet``.

    Attributes:
        points: ``(N, 3)`` float64 vertices.
        tex_coords: ``(M, 2)`` texture coordinates or None.
        coord_index: flat ``coordIndex`` (-1 ends a face) or None.
        tex_coord_index: flat ``texCoordIndex`` or None.
        texture_url: ``ImageTexture`` url or None.
    """

    points: np.ndarray
    tex_coords: Optional[np.ndarray]
    coord_index: Optional[np.ndarray]
    tex_coord_index: Optional[np.ndarray]
    texture_url: Optional[str]

    def vertex_uv(self, where: str = "mesh") -> Optional[np.ndarray]:
        """``(N, 2)`` texture coordinate per vertex (NaN for vertices no face uses).

        Raises:
            DatasetError: indices out of range or inconsistent index lists.
        """
        if self.tex_coords is None:
            return None
        n, m = len(self.points), len(self.tex_coords)
        if self.tex_coord_index is None or self.coord_index is None:
            # VRML: without texCoordIndex, texture coordinates follow coordIndex.
            if m != n:
                raise DatasetError(f"{where}: {m} texture coordinates for {n} points and no texCoordIndex")
            return self.tex_coords.copy()
        ci, ti = self.coord_index, self.tex_coord_index
        if len(ci) != len(ti):
            raise DatasetError(f"{where}: coordIndex has {len(ci)} entries but texCoordIndex {len(ti)}")
        sel = (ci >= 0) & (ti >= 0)
        ci, ti = ci[sel], ti[sel]
        if ci.size and (ci.max() >= n or ti.max() >= m):
            raise DatasetError(f"{where}: face indices out of range ({n} points, {m} texture coordinates)")
        uv = np.full((n, 2), np.nan)
        uv[ci] = self.tex_coords[ti]
        return uv


def _numbers(block: str, per: int, what: str, path: Path) -> np.ndarray:
    try:
        flat = np.array(block.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{path}: {what} holds a value that is not a number (corrupt file)") from None
    if flat.size % per:
        raise DatasetError(f"{path}: {what} has {flat.size} numbers, not a multiple of {per} (truncated?)")
    return flat.reshape(-1, per)


def read_vrml_mesh(path: Union[str, Path]) -> VrmlMesh:
    """Parse the first ``IndexedFaceSet`` of a VRML 2.0 file.

    Raises:
        DatasetError: missing/unreadable file, not VRML, truncated (unbalanced
            braces, missing lists), non-numeric values, bad indices.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise DatasetError(f"cannot read scan {path}: {exc}") from None
    if not text.lstrip().startswith("#VRML"):
        raise DatasetError(f"{path} is not a VRML file (no '#VRML' header)")
    body = re.sub(r"#[^\n]*", "", text)  # comments
    if body.count("{") != body.count("}") or body.count("[") != body.count("]"):
        raise DatasetError(f"{path}: unbalanced braces/brackets; the file is truncated or corrupt")
    cm = _COORD_RE.search(body)
    if cm is None:
        raise DatasetError(f"{path}: no 'Coordinate {{ point [ ... ] }}' list")
    points = _numbers(cm.group(1), 3, "Coordinate point", path)
    if len(points) < 3:
        raise DatasetError(f"{path}: only {len(points)} points")
    tm = _TEXCOORD_RE.search(body)
    tex = _numbers(tm.group(1), 2, "TextureCoordinate point", path) if tm else None
    ci = _COORD_INDEX_RE.search(body)
    ti = _TEXCOORD_INDEX_RE.search(body)
    coord_index = _numbers(ci.group(1), 1, "coordIndex", path).ravel().astype(np.int64) if ci else None
    tex_index = _numbers(ti.group(1), 1, "texCoordIndex", path).ravel().astype(np.int64) if ti else None
    if coord_index is not None and coord_index.size and coord_index.max() >= len(points):
        raise DatasetError(f"{path}: coordIndex refers to point {coord_index.max()} of {len(points)}")
    um = _URL_RE.search(body)
    if len(_COORD_RE.findall(body)) > 1:
        logger.debug("%s: several Coordinate nodes; using the first", path)
    return VrmlMesh(points=points, tex_coords=tex, coord_index=coord_index, tex_coord_index=tex_index,
                    texture_url=um.group(1) if um else None)


def parse_bu3dfe_name(name: str) -> Optional[Dict[str, Any]]:
    """``{"subject", "code", "intensity", "race"}`` from a ``*_F3D.wrl`` name, None if it is not one."""
    m = FILE_RE.match(name)
    if m is None:
        return None
    subject, code, level, race = m.groups()
    return {"subject": subject.upper(), "code": code.upper(), "intensity": int(level), "race": race.upper()}


class BU3DFEDataset(ScanDataset):
    """BU-3DFE scans rendered to registered colour + depth (lazy).

    Args:
        root: folder with the subject folders (or the ``*_F3D.wrl`` files directly).
        classes: classes to list (default all seven); scans of other
            expressions (e.g. neutral when only six are asked) are skipped.
        render: :class:`RenderSettings` or a dict of them.
        cache_dir: optional cache of rendered pairs.

    Raises:
        DatasetError: missing root, no scans, a ``*_F3D.wrl`` with an unknown
            expression code or intensity, a missing texture image.
    """

    name = "bu3dfe"
    database = "BU-3DFE"
    suffix = "_f3d.wrl"
    pattern = "*_F3D.wrl"

    def record_for(self, path: Path, class_names: Sequence[str]) -> Optional[Record]:
        info = parse_bu3dfe_name(path.name)
        if info is None:
            logger.debug("skipping %s: not a BU-3DFE scan name", path)
            return None
        code = info["code"]
        if code not in EXPRESSION_CODES:
            raise DatasetError(f"{path}: unknown BU-3DFE expression code {code!r}; expected "
                               f"{sorted(EXPRESSION_CODES)}")
        neutral = code == "NE"
        if (neutral and info["intensity"] != 0) or (not neutral and not 1 <= info["intensity"] <= 4):
            raise DatasetError(f"{path}: intensity {info['intensity']:02d} is invalid for {code}")
        label = EXPRESSION_CODES[code]
        if label not in class_names:
            return None
        return Record(source=str(path), label=canonical_label(label, class_names, str(path)),
                      subject=info["subject"], intensity=info["intensity"], extra={"race": info["race"]})

    @property
    def races(self) -> List[str]:
        return [r.extra["race"] for r in self.records]

    def texture_path(self, record: Record, mesh: VrmlMesh) -> Path:
        """The ``ImageTexture`` url next to the scan, else the ``*_F2D.bmp`` sibling.

        Raises:
            DatasetError: neither exists.
        """
        src = Path(record.source)
        candidates = []
        if mesh.texture_url:
            candidates.append(src.parent / os.path.basename(mesh.texture_url.replace("\\", "/")))
        candidates.append(src.with_name(re.sub(r"_F3D\.wrl$", "_F2D.bmp", src.name, flags=re.IGNORECASE)))
        for c in candidates:
            if c.is_file():
                return c
        raise DatasetError(f"{src}: texture image not found (tried {[str(c) for c in candidates]})")

    def read_scan(self, record: Record) -> ScanData:
        mesh = read_vrml_mesh(record.source)
        uv = mesh.vertex_uv(record.source)
        if uv is None:
            raise DatasetError(f"{record.source}: no TextureCoordinate list; cannot register colour")
        texture = read_colour_image(self.texture_path(record, mesh), what="texture image")
        return ScanData(points=mesh.points, uv=uv, texture=texture, texture_v_origin="bottom")
