"""Generic Kinect RGB-D folder loader (VT-KFER, CCZU-FER, recordings, the synthetic benchmark).

The paper's Kinect databases (Section IV-A: VT-KFER, Kinect 1.0; CCZU-FER,
Kinect 2.0 with depth mapped to colour) come as registered colour + depth
frames. Converted to the layout of ARCHITECTURE.md, one loader serves them,
users' own recordings and the synthetic ICT-FaceKit benchmark::

    ROOT/labels.csv        colour,depth,label,subject,intensity,box_x,box_y,box_w,box_h
    ROOT/colour/*.png|jpg  8-bit colour
    ROOT/depth/*.png       16-bit depth registered to colour (0 = no reading)
    ROOT/intrinsics.yaml   optional: fx, fy, cx, cy, width, height, depth_unit_m

Paths in ``labels.csv`` are relative to ROOT; ``depth``, ``intensity`` and
the ``box_*`` columns may be empty (a box is all four or none). The CSV is
read with the ``csv`` module and every referenced file is checked at
construction, so a bad row fails early with its line number.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import yaml

from .common import (DatasetError, Record, RecordDataset, Sample, canonical_label, check_registered,
                     read_colour_image, read_depth_png, resolve_classes)

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
INTRINSICS_FILE = "intrinsics.yaml"
REQUIRED_COLUMNS = ("colour", "label", "subject")
OPTIONAL_COLUMNS = ("depth", "intensity", "box_x", "box_y", "box_w", "box_h")
BOX_COLUMNS = ("box_x", "box_y", "box_w", "box_h")
# American spellings accepted in the header.
_COLUMN_ALIASES = {"color": "colour"}
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy", "width", "height", "depth_unit_m")


def read_intrinsics(path: Union[str, Path]) -> Dict[str, float]:
    """Parse ``intrinsics.yaml`` (all keys optional; ``depth_unit_m`` defaults to 0.001).

    Raises:
        DatasetError: not a YAML mapping, unknown keys, non-numeric or non-positive unit.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must be a YAML mapping of {list(INTRINSICS_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(INTRINSICS_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown keys {unknown}; allowed {list(INTRINSICS_KEYS)}")
    out: Dict[str, float] = {}
    for k, v in data.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: {k} must be a number, got {v!r}") from None
    unit = out.setdefault("depth_unit_m", 0.001)
    if not unit > 0:
        raise DatasetError(f"{path}: depth_unit_m must be positive, got {unit}")
    return out


def _header(fieldnames: Optional[List[str]], path: Path) -> List[str]:
    if not fieldnames:
        raise DatasetError(f"{path} is empty; expected the header {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    cols = [_COLUMN_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in fieldnames]
    unknown = [c for c in cols if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if unknown or missing or dupes:
        raise DatasetError(
            f"{path}: malformed header {fieldnames}: "
            + "; ".join(p for p in (f"unknown columns {unknown}" if unknown else "",
                                     f"missing columns {missing}" if missing else "",
                                     f"duplicate columns {dupes}" if dupes else "") if p)
            + f". Expected {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    present_box = [c for c in BOX_COLUMNS if c in cols]
    if present_box and len(present_box) != 4:
        raise DatasetError(f"{path}: header has {present_box}; box columns come as all four {list(BOX_COLUMNS)}")
    return cols


class KinectFolderDataset(RecordDataset):
    """Registered colour + 16-bit depth frames listed in ``labels.csv``.

    Args:
        root: dataset folder.
        classes: allowed classes (any spelling); default all seven.
        skip_other_labels: drop rows whose (known) label is outside
            ``classes`` instead of raising.
        check_files: check at construction that every referenced file exists.

    Raises:
        DatasetError: missing ``labels.csv``, malformed header, bad row (names
            the line), missing file, unknown label or one outside ``classes``,
            invalid ``intrinsics.yaml``.
    """

    name = "kinect_folder"

    def __init__(self, root: Union[str, Path], classes: Optional[Iterable[str]] = None,
                 skip_other_labels: bool = False, check_files: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset root {root} is not a folder")
        class_names = resolve_classes(classes)
        ipath = root / INTRINSICS_FILE
        self.intrinsics: Optional[Dict[str, float]] = read_intrinsics(ipath) if ipath.is_file() else None
        self.depth_unit_m = self.intrinsics["depth_unit_m"] if self.intrinsics else 0.001
        records = self._read_labels(root, class_names, skip_other_labels, check_files)
        super().__init__(root, records, class_names)
        logger.info("%s: %d samples, %d subjects", root, len(records), len({r.subject for r in records}))

    @staticmethod
    def _read_labels(root: Path, classes: tuple, skip_other: bool, check_files: bool) -> List[Record]:
        path = root / LABELS_FILE
        if not path.is_file():
            raise DatasetError(f"{path} not found: a Kinect folder dataset needs labels.csv "
                               f"({','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
        records: List[Record] = []
        root_s = str(root)
        checked: Dict[str, bool] = {}

        def exists(rel: str) -> bool:
            # Rows often share files (and 10k Path objects are slow): one stat per distinct path.
            if rel not in checked:
                checked[rel] = os.path.isfile(os.path.join(root_s, rel))
            return checked[rel]

        try:
            fh = open(path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise DatasetError(f"cannot open {path}: {exc}") from None
        with fh:
            reader = csv.reader(fh)
            try:
                cols = _header(next(reader, None), path)
            except csv.Error as exc:
                raise DatasetError(f"{path}: malformed CSV header: {exc}") from None
            pos = {c: i for i, c in enumerate(cols)}
            line = 1
            try:
                for row in reader:
                    line = reader.line_num
                    if not row or all(not c.strip() for c in row):
                        continue
                    where = f"{path} line {line}"
                    if len(row) != len(cols):
                        raise DatasetError(f"{where}: {len(row)} fields, header has {len(cols)}")
                    get = lambda c: row[pos[c]].strip() if c in pos else ""  # noqa: E731, B023
                    colour = get("colour")
                    if not colour:
                        raise DatasetError(f"{where}: empty colour path")
                    raw_label = get("label")
                    try:
                        label = canonical_label(raw_label, classes, where)
                    except DatasetError:
                        if skip_other and raw_label.lower() and _known(raw_label):
                            continue
                        raise
                    subject = get("subject")
                    if not subject:
                        raise DatasetError(f"{where}: empty subject")
                    intensity: Optional[int] = None
                    if get("intensity"):
                        try:
                            intensity = int(float(get("intensity")))
                        except ValueError:
                            raise DatasetError(f"{where}: intensity {get('intensity')!r} is not a number") from None
                    box = None
                    vals = [get(c) for c in BOX_COLUMNS]
                    if any(vals):
                        if not all(vals):
                            raise DatasetError(f"{where}: box needs all of {list(BOX_COLUMNS)} or none, got {vals}")
                        try:
                            box = tuple(int(round(float(v))) for v in vals)
                        except ValueError:
                            raise DatasetError(f"{where}: box values {vals} are not numbers") from None
                        if box[2] <= 0 or box[3] <= 0:
                            raise DatasetError(f"{where}: box width/height must be positive, got {box}")
                    depth = get("depth") or None
                    if check_files:
                        for kind, rel in (("colour", colour), ("depth", depth)):
                            if rel is not None and not exists(rel):
                                raise DatasetError(f"{where}: {kind} file {os.path.join(root_s, rel)} does not exist")
                    records.append(Record(
                        source=os.path.join(root_s, colour), label=label, subject=subject, intensity=intensity,
                        extra={"depth": os.path.join(root_s, depth) if depth else None, "box": box, "line": line}))
            except csv.Error as exc:
                raise DatasetError(f"{path} line {line}: malformed CSV: {exc}") from None
        if not records:
            raise DatasetError(f"{path} lists no samples")
        return records

    def listing(self) -> List[Any]:
        return [[r.source, r.extra["depth"], r.label, r.subject, r.intensity,
                 list(r.extra["box"]) if r.extra["box"] else None] for r in self.records]

    def load_record(self, record: Record) -> Sample:
        """Decode one row's colour and depth.

        Raises:
            DatasetError: undecodable files, non-16-bit depth, size mismatch.
        """
        where = f"{self.root / LABELS_FILE} line {record.extra['line']}"
        try:
            colour = read_colour_image(record.source)
            depth_path = record.extra["depth"]
            depth = read_depth_png(depth_path, self.depth_unit_m) if depth_path else None
            check_registered(colour, depth, record.source, depth_path or "")
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        return Sample(colour=colour, depth_m=depth, label=record.label, subject=record.subject,
                      intensity=record.intensity, source=record.source, box=record.extra["box"])


def _known(label: str) -> bool:
    from cmcnn_ros.classes import canonical_name

    try:
        canonical_name(label)
        return True
    except ValueError:
        return False
