"""Common sample format of the RGB-D expression databases (paper Section IV-A).

Every loader (Kinect folder, BU-3DFE, Bosphorus) yields :class:`Sample`
objects in one format so the trainer runs the node's own
``FacePreprocessor`` on them (ARCHITECTURE.md "Dataset samples"):

* ``colour``: ``uint8`` HxWx3 BGR (or HxW grey);
* ``depth_m``: ``float32`` HxW metres registered to colour, 0/NaN = no reading, or None;
* ``label``: canonical class name (:func:`cmcnn_ros.classes.canonical_name`);
* ``subject``, ``intensity`` (int or None), ``source`` (file path), optional ``box``.

Datasets are lazy sequences: the listing (labels, subjects, intensities,
sources) is built at construction without decoding any image; files are read
on ``__getitem__``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, overload

import cv2
import numpy as np

from cmcnn_ros.atomic_io import atomic_open
from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name
from cmcnn_ros.preprocessing.depth import depth_array_to_metres

logger = logging.getLogger(__name__)

BoxT = Tuple[int, int, int, int]


class DatasetError(ValueError):
    """A dataset file or row is missing, malformed or inconsistent; the message names it."""


@dataclass
class Sample:
    """One labelled RGB-D frame (see the module docstring for the fields)."""

    colour: np.ndarray
    depth_m: Optional[np.ndarray]
    label: str
    subject: str
    intensity: Optional[int]
    source: str
    box: Optional[BoxT] = None


@dataclass(frozen=True)
class Record:
    """Listing entry of one sample: what is known without decoding files.

    Attributes:
        source: main file (colour image or scan) as a string path.
        label: canonical class name.
        subject: subject id.
        intensity: expression intensity or None.
        extra: loader-specific fields (depth path, box, texture path, row ...).
    """

    source: str
    label: str
    subject: str
    intensity: Optional[int]
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def resolve_classes(classes: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """Canonical class names, order kept, duplicates removed.

    Args:
        classes: names in any known spelling, or None for all seven classes.

    Raises:
        DatasetError: an unknown name or an empty list.
    """
    if classes is None:
        return tuple(EXPRESSIONS_WITH_NEUTRAL)
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    out: List[str] = []
    for c in classes:
        try:
            name = canonical_name(c)
        except ValueError as exc:
            raise DatasetError(f"requested class {c!r} is not an expression name: {exc}") from None
        if name not in out:
            out.append(name)
    if not out:
        raise DatasetError("the class list is empty")
    return tuple(out)


def canonical_label(raw: str, classes: Sequence[str], where: str) -> str:
    """Canonical name of ``raw``, checked against ``classes``.

    Args:
        raw: label as written in the database.
        classes: allowed canonical names.
        where: file/row to name in the error.

    Raises:
        DatasetError: unknown label, or a label outside ``classes``.
    """
    try:
        name = canonical_name(raw)
    except ValueError:
        raise DatasetError(f"{where}: unknown expression label {raw!r}") from None
    if name not in classes:
        raise DatasetError(f"{where}: label {raw!r} ({name}) is not in the requested classes {list(classes)}")
    return name


def read_colour_image(path: Union[str, Path], what: str = "colour image") -> np.ndarray:
    """Read an 8-bit image as BGR ``HxWx3`` (alpha dropped) or grey ``HxW``.

    Raises:
        DatasetError: missing, undecodable (truncated/corrupt) or not 8-bit.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{what} {path} does not exist")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DatasetError(f"cannot decode {what} {path} (truncated or not an image)")
    if img.dtype != np.uint8:
        raise DatasetError(f"{what} {path} must be 8-bit, got {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        elif img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] != 3:
            raise DatasetError(f"{what} {path} has {img.shape[2]} channels; expected 1, 3 or 4")
    return img


def read_depth_png(path: Union[str, Path], unit_m: float = 0.001) -> np.ndarray:
    """Read a 16-bit depth PNG (``unit_m`` metres per count, 0 = no reading) as float32 metres.

    Raises:
        DatasetError: missing, undecodable, or not single-channel 16-bit.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DatasetError(f"depth image {path} does not exist")
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise DatasetError(f"cannot decode depth image {path} (truncated or not an image)")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f"depth image {path} must be single-channel 16-bit (millimetres), got "
                           f"{raw.dtype} with shape {raw.shape}")
    return depth_array_to_metres(raw, unit_m)


def check_registered(colour: np.ndarray, depth_m: Optional[np.ndarray], colour_path: str,
                     depth_path: str) -> None:
    """Raise :class:`DatasetError` when colour and depth differ in size."""
    if depth_m is not None and depth_m.shape[:2] != colour.shape[:2]:
        raise DatasetError(f"colour {colour_path} is {colour.shape[1]}x{colour.shape[0]} but depth "
                           f"{depth_path} is {depth_m.shape[1]}x{depth_m.shape[0]}; depth must be "
                           "registered to colour (same size)")


def save_npz_atomic(path: Union[str, Path], **arrays: np.ndarray) -> None:
    """Write an ``.npz`` via a temp file + ``os.replace`` so readers never see half a file."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


class RecordDataset(Sequence[Sample]):
    """A lazy sequence of samples over a list of :class:`Record`.

    Subclasses implement :meth:`load_record`. ``dataset[i]`` decodes one
    sample; ``dataset[a:b]`` / :meth:`subset` give lazy views.

    Attributes:
        name: loader name in the registry.
        root: dataset root folder.
        class_names: the requested classes (canonical, in order).
        records: the listing.
    """

    name = "dataset"

    def __init__(self, root: Union[str, Path], records: Sequence[Record], class_names: Sequence[str]) -> None:
        self.root = Path(root)
        self.records: List[Record] = list(records)
        self.class_names: Tuple[str, ...] = tuple(class_names)

    # --------------------------------------------------------------- listing
    @property
    def subjects(self) -> List[str]:
        return [r.subject for r in self.records]

    @property
    def labels(self) -> List[str]:
        return [r.label for r in self.records]

    @property
    def intensities(self) -> List[Optional[int]]:
        return [r.intensity for r in self.records]

    @property
    def sources(self) -> List[str]:
        return [r.source for r in self.records]

    def label_indices(self) -> np.ndarray:
        """``(N,)`` int64 index of each label in :attr:`class_names`."""
        lut = {c: i for i, c in enumerate(self.class_names)}
        return np.array([lut[r.label] for r in self.records], dtype=np.int64)

    def listing(self) -> List[Any]:
        """JSON-able per-sample description (crop cache key): source, label, subject, intensity."""
        return [[r.source, r.label, r.subject, r.intensity] for r in self.records]

    # --------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "DatasetSubset": ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Sample, "DatasetSubset"]:
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self.load_record(self.records[i])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Iterable[int]) -> "DatasetSubset":
        """A lazy view of the samples at ``indices`` (in that order)."""
        return DatasetSubset(self, indices)

    def load_record(self, record: Record) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, "
                f"subjects={len(set(self.subjects))}, classes={list(self.class_names)})")


class DatasetSubset(Sequence[Sample]):
    """A lazy view of some samples of a :class:`RecordDataset` with the same listing attributes."""

    def __init__(self, parent: RecordDataset, indices: Iterable[int]) -> None:
        self.parent = parent
        self.indices = np.asarray(list(indices), dtype=np.int64)
        n = len(parent)
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"subset indices out of range for {n} samples")
        self.indices = np.where(self.indices < 0, self.indices + n, self.indices)
        self.records = [parent.records[i] for i in self.indices]
        self.class_names = parent.class_names
        self.root = parent.root
        self.name = parent.name

    subjects = RecordDataset.subjects
    labels = RecordDataset.labels
    intensities = RecordDataset.intensities
    sources = RecordDataset.sources
    label_indices = RecordDataset.label_indices

    def listing(self) -> List[Any]:
        full = self.parent.listing()
        return [full[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Union[int, slice]) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return DatasetSubset(self.parent, self.indices[index])
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self.parent.load_record(self.records[i])

    def subset(self, indices: Iterable[int]) -> "DatasetSubset":
        return DatasetSubset(self.parent, self.indices[np.asarray(list(indices), dtype=np.int64)])


#: Replicated border added around a face-crop image (fraction of its side on
#: each side), so the landmark region (box x ``box_roi_scale``) stays on
#: image content the way it does around a face in a camera frame.
FACE_CROP_PAD = 0.25
#: Face-crop images are upsampled so the face spans at least this many pixels:
#: FaceMesh reads a 48 px FER2013 face far better at 192 px (its input size).
FACE_CROP_MIN_SIDE = 192


def face_crop_frame(image: np.ndarray) -> Tuple[np.ndarray, BoxT]:
    """A face-crop image (FER2013, RAF-DB aligned...) as a frame plus the face's box.

    The image is upsampled (bicubic) to at least :data:`FACE_CROP_MIN_SIDE`
    and padded by :data:`FACE_CROP_PAD` with replicated borders; the box is
    the original image's area, so the package's own landmarks and aligner
    frame the face as they frame a face the node detects.

    Returns:
        ``(frame, (x, y, w, h))``.
    """
    h, w = image.shape[:2]
    f = max(1.0, FACE_CROP_MIN_SIDE / float(max(h, w)))
    if f > 1.0:
        image = cv2.resize(image, (int(round(w * f)), int(round(h * f))), interpolation=cv2.INTER_CUBIC)
    h, w = image.shape[:2]
    px, py = int(round(FACE_CROP_PAD * w)), int(round(FACE_CROP_PAD * h))
    frame = cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_REPLICATE)
    return frame, (px, py, w, h)
