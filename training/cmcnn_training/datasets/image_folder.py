"""Folder-per-class face images: what users export from RAF-DB, AffectNet, KDEF, JAFFE or CK+.

Layout::

    ROOT/<class>/*.png|jpg|jpeg|bmp   one folder per expression, any spelling
                                      cmcnn_ros.classes knows (happy, Happiness, HA...)
    ROOT/subjects.csv                 optional: file,subject (file relative to ROOT),
                                      so subject-independent folds keep a person together

Images are 2-D (no depth). Whole photographs (KDEF, CK+ frames) go through
the node's detector like camera frames; sets of face crops (RAF-DB aligned,
AffectNet crops) pass ``crops=True`` so each image is taken as the face, padded
and given as the box (:func:`~.common.face_crop_frame`), as FER2013 is.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from cmcnn_ros.classes import canonical_name

from .common import DatasetError, Record, RecordDataset, Sample, face_crop_frame, read_colour_image, resolve_classes

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SUBJECTS_FILE = "subjects.csv"


class ImageFolderDataset(RecordDataset):
    """``ROOT/<class>/<image>`` expression images.

    Args:
        root: dataset folder.
        classes: classes to keep (any spelling); folders of other known classes are left out.
        crops: the images are face crops (no detection; the image is the face box).
        unknown_folders: ``"raise"`` (default) stops at a folder whose name is
            no expression, naming it; ``"skip"`` leaves it out with a warning.
        check_files: decode every image at construction, so an unreadable one
            fails before training with its path (else it is reported and
            counted when the crops are extracted).

    Raises:
        DatasetError: missing root, unknown folder name, unreadable image
            (with ``check_files``), bad ``subjects.csv``, no images.
    """

    name = "image_folder"

    def __init__(self, root: Union[str, Path], classes: Optional[Iterable[str]] = None, crops: bool = False,
                 unknown_folders: str = "raise", check_files: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset root {root} is not a folder")
        if unknown_folders not in ("raise", "skip"):
            raise DatasetError(f"unknown_folders must be 'raise' or 'skip', got {unknown_folders!r}")
        class_names = resolve_classes(classes)
        subjects = _read_subjects(root)
        self.crops = bool(crops)
        self.skipped_folders: List[str] = []
        records: List[Record] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                label = canonical_name(folder.name)
            except ValueError:
                if unknown_folders == "skip":
                    self.skipped_folders.append(str(folder))
                    logger.warning("%s: folder name is not an expression; skipped", folder)
                    continue
                raise DatasetError(f"{folder}: folder name {folder.name!r} is not an expression name (use e.g. "
                                   "happy, sad, angry, surprised, scared, disgusted, neutral, or pass "
                                   "unknown_folders='skip')") from None
            if label not in class_names:
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                if check_files:
                    read_colour_image(path)
                records.append(Record(source=str(path), label=label, subject=subjects.get(rel, rel),
                                      intensity=None, extra={"rel": rel}))
        if not records:
            raise DatasetError(f"{root}: no images in class folders ({', '.join(IMAGE_SUFFIXES)}) for classes "
                               f"{list(class_names)}")
        super().__init__(root, records, class_names)
        logger.info("%s: %d images in %d classes", root, len(records), len({r.label for r in records}))

    def listing(self) -> List[object]:
        return [[r.source, r.label, r.subject] for r in self.records] + [["crops", self.crops]]

    def load_record(self, record: Record) -> Sample:
        image = read_colour_image(record.source)
        box = None
        if self.crops:
            image, box = face_crop_frame(image)
        return Sample(colour=image, depth_m=None, label=record.label, subject=record.subject, intensity=None,
                      source=record.source, box=box)


def _read_subjects(root: Path) -> Dict[str, str]:
    path = root / SUBJECTS_FILE
    if not path.is_file():
        return {}
    out: Dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [c.strip().lower() for c in next(reader, [])]
            if header[:2] != ["file", "subject"]:
                raise DatasetError(f"{path} line 1: header must be 'file,subject', got {header}")
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DatasetError(f"{path} line {reader.line_num}: expected 'file,subject', got {row}")
                out[row[0].strip().replace(os.sep, "/")] = row[1].strip()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    return out
