"""FER2013 in its original one-file CSV format (``emotion,pixels,Usage``).

Goodfellow et al. (ICML 2013 workshop): 48x48 grey web faces, seven classes
(0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral), rows
tagged ``Training``, ``PublicTest`` or ``PrivateTest``. Read from a ``.csv``
or ``.csv.gz`` path the user gives; the data is never copied into the
repository.

The images are already face crops, so no detector runs on them: each face is
upsampled and padded (:func:`~.common.face_crop_frame`) and its box given, so
the package's FaceMesh landmarks and aligner frame it as the node frames a
detected face. FER2013 has no subject ids: each row is its own subject, and
the ``Usage`` column is the split (no subject-independent k-fold).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

from .common import DatasetError, Record, RecordDataset, Sample, face_crop_frame, resolve_classes

logger = logging.getLogger(__name__)

#: FER2013's label order.
FER2013_LABELS = ("angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
SIDE = 48


class Fer2013Dataset(RecordDataset):
    """FER2013 rows of some ``Usage`` values, decoded into memory (2.3 kB a face).

    Args:
        root: the ``fer2013.csv`` / ``fer2013.csv.gz`` file, or a folder holding one.
        usage: ``Usage`` values to keep (one name, a comma list, a sequence or
            ``"all"``); default ``Training``.
        classes: classes to keep (any spelling); rows of other classes are left out.
        on_error: ``"raise"`` (default): a row with the wrong pixel count, a
            label outside 0-6 or an unknown usage stops with its file and line;
            ``"skip"``: such rows are left out and counted in :attr:`skipped`.

    Raises:
        DatasetError: missing or unreadable file, bad header, bad rows (with ``on_error="raise"``).
    """

    name = "fer2013"
    #: Every sample is a face crop with its box given (as ImageFolderDataset(crops=True)).
    crops = True

    def __init__(self, root: Union[str, Path], usage: Union[str, Sequence[str]] = "Training",
                 classes: Optional[Iterable[str]] = None, on_error: str = "raise") -> None:
        path = _find_csv(Path(root))
        class_names = resolve_classes(classes)
        usages = _usages(usage)
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = path
        self.usage = usages
        self.skipped: List[str] = []
        records: List[Record] = []
        pixels: List[np.ndarray] = []
        for line, label_raw, pix, use in _rows(path):
            where = f"{path} line {line}"
            values, problem = _parse_row(label_raw, pix, use)
            if problem:
                if on_error == "skip":
                    self.skipped.append(f"{where}: {problem}")
                    continue
                raise DatasetError(f"{where}: {problem} (pass on_error='skip' / --skip-bad-rows to leave such "
                                   "rows out)")
            label = FER2013_LABELS[int(label_raw)]
            if use not in usages or label not in class_names:
                continue
            records.append(Record(source=f"{path}:{line}", label=label, subject=f"fer2013-{line}", intensity=None,
                                  extra={"line": line, "usage": use, "index": len(pixels)}))
            pixels.append(values.astype(np.uint8).reshape(SIDE, SIDE))
        if self.skipped:
            logger.warning("%s: skipped %d bad rows (first: %s)", path, len(self.skipped), self.skipped[0])
        if not records:
            raise DatasetError(f"{path}: no rows with Usage in {list(usages)} and classes {list(class_names)}")
        self._pixels = np.stack(pixels)
        super().__init__(path.parent, records, class_names)
        logger.info("%s: %d faces (%s)", path, len(records), ", ".join(usages))

    def listing(self) -> List[object]:
        return [[r.source, r.label, r.extra["usage"]] for r in self.records] + [["fer2013", str(self.path)]]

    def load_record(self, record: Record) -> Sample:
        frame, box = face_crop_frame(self._pixels[record.extra["index"]])
        return Sample(colour=frame, depth_m=None, label=record.label, subject=record.subject, intensity=None,
                      source=record.source, box=box)

    def face(self, i: int) -> np.ndarray:
        """The raw 48x48 face of sample ``i``."""
        return self._pixels[self.records[i].extra["index"]]


def _find_csv(root: Path) -> Path:
    if root.is_dir():
        for name in ("fer2013.csv", "fer2013.csv.gz"):
            if (root / name).is_file():
                return root / name
        raise DatasetError(f"{root} holds no fer2013.csv or fer2013.csv.gz")
    if not root.is_file():
        raise DatasetError(f"FER2013 file {root} does not exist (give the fer2013.csv[.gz] path)")
    return root


def _usages(usage: Union[str, Sequence[str]]) -> tuple:
    items = [u.strip() for u in usage.split(",")] if isinstance(usage, str) else [str(u).strip() for u in usage]
    if items == ["all"]:
        return USAGES
    lookup = {u.lower(): u for u in USAGES}
    out = []
    for u in items:
        if u.lower() not in lookup:
            raise DatasetError(f"unknown FER2013 usage {u!r}; expected {list(USAGES)} or 'all'")
        out.append(lookup[u.lower()])
    return tuple(out)


def _rows(path: Path):
    """``(line, emotion, pixels, usage)`` of each data row."""
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = [c.strip().lower() for c in next(reader, [])]
            if header[:2] != ["emotion", "pixels"]:
                raise DatasetError(f"{path} line 1: header {header} is not FER2013's 'emotion,pixels,Usage'")
            has_usage = len(header) > 2 and header[2] == "usage"
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                yield (reader.line_num, row[0].strip(), row[1] if len(row) > 1 else "",
                       row[2].strip() if has_usage and len(row) > 2 else "Training")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read FER2013 file {path}: {exc}") from None


def _parse_row(label: str, pixels: str, usage: str) -> "tuple[np.ndarray, str]":
    """The row's pixel values and ``""``, or an empty array and what is wrong with the row."""
    empty = np.zeros(0, np.int32)
    if label not in {str(i) for i in range(7)}:
        return empty, f"emotion {label!r} is not a label 0-6"
    if usage not in USAGES:
        return empty, f"Usage {usage!r} is not one of {list(USAGES)}"
    try:
        values = np.array(pixels.split(), dtype=np.int32)
    except ValueError:
        return empty, "pixel values are not integers"
    if values.size != SIDE * SIDE:
        return empty, f"{values.size} pixel values, expected {SIDE * SIDE} (48x48)"
    if values.min() < 0 or values.max() > 255:
        return empty, "pixel values outside 0-255"
    return values, ""
