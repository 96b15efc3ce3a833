"""RGB-D expression databases and their protocols (paper Section IV-A).

API (the contract the trainer uses)
-----------------------------------
``load_dataset(name, root, **kw) -> RecordDataset``
    ``name`` is one of :data:`DATASETS` or an alias (case-insensitive):

    =================  ==========================================  ==============================
    name               aliases                                     class
    =================  ==========================================  ==============================
    ``kinect_folder``  kinect, vt-kfer, vtkfer, cczu-fer, cczu,    :class:`KinectFolderDataset`
                       synthetic, folder
    ``bu3dfe``         bu-3dfe, bu3d                               :class:`BU3DFEDataset`
    ``bosphorus``      bosphorus-db                                :class:`BosphorusDataset`
    ``fer2013``        fer-2013, fer                               :class:`Fer2013Dataset` (2-D)
    ``image_folder``   images, raf-db, affectnet, kdef, jaffe, ck+ :class:`ImageFolderDataset` (2-D)
    =================  ==========================================  ==============================

    Keyword arguments go to the class: ``classes`` (all loaders; default the
    seven classes), ``skip_other_labels``/``check_files`` (Kinect folder),
    ``render`` (:class:`RenderSettings` or dict) and ``cache_dir`` (scans),
    ``usage``/``on_error`` (FER2013), ``crops``/``unknown_folders`` (image folder).

A dataset is a lazy ``Sequence[Sample]``: ``len(ds)``, ``ds[i]`` decodes
one :class:`Sample` (``colour`` uint8 BGR/grey, ``depth_m`` float32 metres
or None, ``label`` canonical, ``subject``, ``intensity``, ``source``,
``box``); ``ds[a:b]`` / ``ds.subset(indices)`` are lazy views. Without
decoding anything: ``ds.labels``, ``ds.subjects``, ``ds.intensities``,
``ds.sources``, ``ds.class_names``, ``ds.label_indices()``,
``ds.listing()`` (cache key). All errors are :class:`DatasetError`
(a ``ValueError``) naming the file / CSV line.

Protocols (:mod:`.protocols`)::

    subject_kfold(subjects, k=10, seed=0) -> [(train_idx, test_idx), ...]
    select_protocol(dataset, name, run=0, seed=0, n_subjects=60) -> np.ndarray indices
    protocol_splits(dataset, name, k=10, run=0, seed=0, n_subjects=60) -> (indices, folds)
    PROTOCOLS / describe_protocols()   # "all", "P1", "P2", "paper-P1", "paper-P2"

Example (BU-3DFE Protocol I, one run)::

    ds = load_dataset("bu3dfe", "/data/BU-3DFE", cache_dir="cache/bu3dfe")
    idx, folds = protocol_splits(ds, "P1", k=10, run=0, seed=0)
    for train, test in folds:          # dataset indices
        train_set, test_set = ds.subset(train), ds.subset(test)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Tuple, Type, Union

from .bosphorus import BosphorusDataset, read_bnt, write_bnt
from .bu3dfe import BU3DFEDataset, read_vrml_mesh
from .common import DatasetError, DatasetSubset, Record, RecordDataset, Sample
from .fer2013 import Fer2013Dataset
from .image_folder import ImageFolderDataset
from .kinect_folder import KinectFolderDataset
from .protocols import (PROTOCOLS, ProtocolSelection, describe_protocols, protocol_selection,
                        protocol_splits, select_protocol, subject_kfold)
from .scans import RenderSettings

DATASETS: Dict[str, Type[RecordDataset]] = {
    "kinect_folder": KinectFolderDataset,
    "bu3dfe": BU3DFEDataset,
    "bosphorus": BosphorusDataset,
    "fer2013": Fer2013Dataset,
    "image_folder": ImageFolderDataset,
}

ALIASES: Dict[str, str] = {
    "kinect": "kinect_folder", "vt-kfer": "kinect_folder", "vtkfer": "kinect_folder",
    "cczu-fer": "kinect_folder", "cczu": "kinect_folder", "synthetic": "kinect_folder",
    "folder": "kinect_folder", "bu-3dfe": "bu3dfe", "bu3d": "bu3dfe", "bosphorus-db": "bosphorus",
    "fer-2013": "fer2013", "fer": "fer2013", "image-folder": "image_folder", "images": "image_folder",
    "raf-db": "image_folder", "affectnet": "image_folder", "kdef": "image_folder", "jaffe": "image_folder",
    "ck+": "image_folder",
}


def available_datasets() -> Tuple[str, ...]:
    """Registry names and aliases accepted by :func:`load_dataset`."""
    return tuple(DATASETS) + tuple(ALIASES)


def load_dataset(name: str, root: Union[str, Path], **kwargs: Any) -> RecordDataset:
    """Open a dataset by registry name.

    Raises:
        DatasetError: unknown name, bad keyword arguments, or the loader's own errors.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = {"kinect-folder": "kinect_folder", "image-folder": "image_folder"}.get(key, key)
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {list(available_datasets())}")
    cls = DATASETS[key]
    try:
        inspect.signature(cls).bind(root, **kwargs)
    except TypeError as exc:
        raise DatasetError(f"dataset {key}: bad arguments {sorted(kwargs)}: {exc}") from None
    return cls(root, **kwargs)


__all__ = [
    "ALIASES", "BU3DFEDataset", "BosphorusDataset", "DATASETS", "DatasetError", "DatasetSubset",
    "Fer2013Dataset", "ImageFolderDataset",
    "KinectFolderDataset", "PROTOCOLS", "ProtocolSelection", "Record", "RecordDataset", "RenderSettings",
    "Sample", "available_datasets", "describe_protocols", "load_dataset", "protocol_selection",
    "protocol_splits", "read_bnt", "read_vrml_mesh", "select_protocol", "subject_kfold", "write_bnt",
]
