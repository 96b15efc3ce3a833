"""Face-crop extraction for training and evaluation, with an on-disk cache.

Turns a dataset of :class:`~cmcnn_training.datasets.common.Sample` frames
into the per-modality ``crop_size`` square crops of Section III-B (face detection,
eye-line rotation rectification of eq. (1), grey, LBP of eq. (2), depth) by
running the very same :class:`~cmcnn_ros.preprocessing.pipeline.FacePreprocessor`
the ROS node runs, built from the same :class:`PreprocessingParams` that end
up in the checkpoint.

Faces are found like the node finds them (the detector); the dataset's
ground-truth box, when a sample has one, is only a fallback for frames where
the detector finds no face or a face that does not overlap the annotated one.
Both fallbacks are counted. With ``box_mode="gt"`` the ground-truth box is
used whenever present (rendered 3-D scans, face-crop sets such as FER2013,
where detection is not the point). Either way the face is aligned by the
node's own aligner (FaceMesh landmarks by default); which path each face
took is kept per row (``alignments``) and counted in ``stats``.

Preprocessing a few thousand frames costs minutes on two cores, so the
crops are cached as one ``.npz`` per (dataset listing, preprocessing
parameters, modalities, box mode): ``uint8`` texture crops, ``float16``
depth, the ``depth_valid`` flags, labels, subjects and intensities. Repeated
runs and all folds of a cross-validation reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.atomic_io import atomic_open
from cmcnn_ros.boxes import iou
from cmcnn_ros.preprocessing.model_input import build_model_input, load, store
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.preprocessing.pipeline import FacePreprocessor
from cmcnn_ros.tools import progress_bar

logger = logging.getLogger(__name__)

#: Bump when the cache layout or the face-selection logic changes.
CACHE_VERSION = 2
#: A detection overlapping the ground-truth box less than this (IoU) is "the wrong face".
MIN_GT_IOU = 0.3

BoxT = Tuple[int, int, int, int]


class CropError(ValueError):
    """Crop extraction or the crop cache failed; the message names the file or sample."""


# ---------------------------------------------------------------------------
# Crop set
# ---------------------------------------------------------------------------

@dataclass
class CropSet:
    """Preprocessed crops of a dataset, one row per usable sample.

    Attributes:
        modalities: modality names, the keys of ``images``.
        images: modality -> ``(N, S, S)`` array as
            :func:`cmcnn_ros.preprocessing.model_input.store` keeps it:
            ``uint8`` (value*255) for texture modalities, ``float16`` for depth.
        depth_valid: ``(N,)`` bool; False rows have an all-zero depth crop.
        labels: ``(N,)`` canonical class names.
        subjects: ``(N,)`` subject ids.
        intensities: ``(N,)`` int, -1 where unknown.
        sources: ``(N,)`` sample source strings (file paths).
        box_sources: ``(N,)`` where the face box came from: ``detector``,
            ``gt`` (box_mode gt), ``gt_no_face`` or ``gt_wrong_face`` (fallbacks).
        dataset_index: ``(N,)`` index of each row in the dataset it came from.
        alignments: ``(N,)`` alignment path of each face (``mesh``,
            ``keypoints``, ``haar_eyes``, ``none``).
        stats: counts of the extraction (detector, fallbacks, dropped).
        key: cache key (hex) these crops were stored under.
    """

    modalities: Tuple[str, ...]
    images: Dict[str, np.ndarray]
    depth_valid: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    intensities: np.ndarray
    sources: np.ndarray
    box_sources: np.ndarray
    dataset_index: np.ndarray
    alignments: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    stats: Dict[str, Any] = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if len(self.alignments) != len(self.labels):
            self.alignments = np.full(len(self.labels), "unknown")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def crop_size(self) -> int:
        return int(next(iter(self.images.values())).shape[-1])

    def modality_float(self, modality: str, rows: np.ndarray | Sequence[int] | slice) -> np.ndarray:
        """Crops of one modality as ``float32`` in [0, 1]."""
        if modality not in self.images:
            raise CropError(f"crop set has no modality {modality!r}; it has {list(self.modalities)}")
        return load(self.images[modality][rows])

    def to_tensor(self, rows: np.ndarray | Sequence[int] | slice,
                  modalities: Optional[Sequence[str]] = None) -> np.ndarray:
        """``(B, M, S, S)`` float32 model input for the given rows, channels in ``modalities`` order.

        Built by the runtime's :func:`~cmcnn_ros.preprocessing.model_input.build_model_input`, the
        node's own builder, so training and serving feed the network the same values.
        """
        mods = tuple(modalities or self.modalities)
        missing = [m for m in mods if m not in self.images]
        if missing:
            raise CropError(f"crop set has no modality {missing[0]!r}; it has {list(self.modalities)}")
        return build_model_input({m: self.images[m][rows] for m in mods}, mods, self.depth_valid[rows])

    def subset(self, rows: np.ndarray | Sequence[int]) -> "CropSet":
        """A new crop set holding only ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return CropSet(
            modalities=self.modalities,
            images={m: a[rows] for m, a in self.images.items()},
            depth_valid=self.depth_valid[rows], labels=self.labels[rows], subjects=self.subjects[rows],
            intensities=self.intensities[rows], sources=self.sources[rows],
            box_sources=self.box_sources[rows], dataset_index=self.dataset_index[rows],
            alignments=self.alignments[rows], stats=dict(self.stats), key=self.key)

    # ------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike) -> None:
        """Write the crops as a compressed ``.npz`` atomically (temp file + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: Dict[str, np.ndarray] = {f"img_{m}": a for m, a in self.images.items()}
        arrays.update(
            depth_valid=self.depth_valid, labels=self.labels.astype(str), subjects=self.subjects.astype(str),
            intensities=self.intensities, sources=self.sources.astype(str),
            box_sources=self.box_sources.astype(str), dataset_index=self.dataset_index,
            alignments=self.alignments.astype(str),
            modalities=np.array(self.modalities, dtype=str),
            meta=np.array(json.dumps({"stats": self.stats, "key": self.key, "version": CACHE_VERSION})))
        with atomic_open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CropSet":
        """Read a crop set written by :meth:`save`.

        Raises:
            CropError: the file is missing, truncated or not a crop cache.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                mods = tuple(str(m) for m in z["modalities"])
                return cls(
                    modalities=mods, images={m: z[f"img_{m}"] for m in mods},
                    depth_valid=z["depth_valid"].astype(bool), labels=z["labels"], subjects=z["subjects"],
                    intensities=z["intensities"], sources=z["sources"], box_sources=z["box_sources"],
                    dataset_index=z["dataset_index"],
                    alignments=z["alignments"] if "alignments" in z.files else np.zeros(0, dtype=str),
                    stats=meta.get("stats", {}), key=meta.get("key", ""))
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise CropError(f"crop cache {path} is unreadable ({exc}); delete it to rebuild") from exc


# ---------------------------------------------------------------------------
# Dataset listing, subsets and the cache key
# ---------------------------------------------------------------------------

def dataset_listing(dataset: Any) -> Dict[str, Any]:
    """A JSON-able description of which samples a dataset holds, for the cache key.

    The dataset's own ``listing()`` (per-sample source, label, subject,
    intensity, ...) when it has one, else its ``sources``/``subjects``/
    ``labels`` lists; plus the size and mtime of the root's ``labels.csv`` so
    a set regenerated in the same folder does not reuse stale crops. Image
    contents are not hashed (too slow for large sets): delete the cache
    folder after editing images in place.
    """
    out: Dict[str, Any] = {"type": type(dataset).__name__, "n": len(dataset)}
    if hasattr(dataset, "listing") and callable(dataset.listing):
        out["listing"] = dataset.listing()
    else:
        out["subjects"] = [str(s) for s in getattr(dataset, "subjects", [])]
        out["labels"] = [str(s) for s in getattr(dataset, "labels", [])]
        sources = getattr(dataset, "sources", None)
        if sources is not None:
            out["sources"] = [str(s) for s in sources]
    root = getattr(dataset, "root", None)
    if root is not None:
        out["root"] = os.path.abspath(os.fspath(root))
        labels_csv = Path(root) / "labels.csv"
        if labels_csv.is_file():
            st = labels_csv.stat()
            out["labels.csv"] = [st.st_size, st.st_mtime_ns]
    return out


def cache_key(dataset: Any, params: PreprocessingParams, modalities: Sequence[str], box_mode: str) -> str:
    """Hex SHA-256 of (listing, preprocessing params, modalities, box mode, cache version)."""
    payload = {"version": CACHE_VERSION, "listing": dataset_listing(dataset),
               "preprocessing": params.to_dict(), "modalities": list(modalities), "box_mode": box_mode}
    blob = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------

@dataclass
class _Extracted:
    index: int
    status: str  # detector | gt | gt_no_face | gt_wrong_face | no_face | error
    crops: Optional[Dict[str, np.ndarray]] = None
    depth_valid: bool = False
    message: str = ""
    intensity: int = -1
    source: str = ""
    alignment: str = "none"


def select_face(faces: Sequence[Any], gt_box: Optional[BoxT]) -> Tuple[Optional[Any], str]:
    """Pick the detection to use for a labelled sample.

    Returns ``(face, "detector")`` for the detection that best overlaps the
    ground-truth box (or the largest one when there is no box), or
    ``(None, "gt_no_face" | "gt_wrong_face" | "no_face")`` when the detector
    found nothing usable.
    """
    if not faces:
        return None, "gt_no_face" if gt_box is not None else "no_face"
    if gt_box is None:
        return max(faces, key=lambda f: int(f.box[2]) * int(f.box[3])), "detector"
    best = max(faces, key=lambda f: iou(f.box, gt_box))
    if iou(best.box, gt_box) < MIN_GT_IOU:
        return None, "gt_wrong_face"
    return best, "detector"


class _Worker:
    """Per-process state: the dataset and a FacePreprocessor (built once)."""

    dataset: Any = None
    pre: Any = None
    box_mode: str = "detect"
    modalities: Tuple[str, ...] = ()


def _setup_state(dataset: Any, params: PreprocessingParams, modalities: Tuple[str, ...], box_mode: str) -> None:
    _Worker.dataset = dataset
    _Worker.pre = FacePreprocessor(params, modalities=modalities)
    _Worker.box_mode = box_mode
    _Worker.modalities = modalities


def _init_worker(dataset_blob: bytes, params: PreprocessingParams, modalities: Tuple[str, ...],
                 box_mode: str) -> None:
    import cv2

    # Each worker is one of N parallel processes; OpenCV's own thread pool
    # would only oversubscribe the cores.
    cv2.setNumThreads(1)
    _setup_state(pickle.loads(dataset_blob), params, modalities, box_mode)


def _extract_one(index: int) -> _Extracted:
    try:
        sample = _Worker.dataset[index]
        gt = tuple(int(round(v)) for v in sample.box) if getattr(sample, "box", None) is not None else None
        pre = _Worker.pre
        if _Worker.box_mode == "gt" and gt is not None:
            face, status = None, "gt"
        else:
            face, status = select_face(pre.process(sample.colour, sample.depth_m), gt)
        if face is None:
            if gt is None:
                return _Extracted(index, "no_face", message=str(sample.source))
            faces = pre.process(sample.colour, sample.depth_m, boxes=[gt])
            if not faces:
                return _Extracted(index, "error", message=f"{sample.source}: no crop from the ground-truth box")
            face = faces[0]
        crops = {m: store(m, face.crops[m]) for m in _Worker.modalities}
        intensity = -1 if sample.intensity is None else int(sample.intensity)
        return _Extracted(index, status, crops, bool(face.depth_valid), intensity=intensity,
                          source=str(sample.source), alignment=str(face.alignment))
    except (ValueError, OSError) as exc:  # PreprocessingError / dataset read errors are ValueError/OSError
        return _Extracted(index, "error", message=f"sample {index}: {exc}")


def _run_extraction(dataset: Any, params: PreprocessingParams, modalities: Tuple[str, ...], box_mode: str,
                    workers: int, progress: bool) -> List[_Extracted]:
    n = len(dataset)
    blob = None
    if workers > 0 and n >= 2 * workers:
        try:
            blob = pickle.dumps(dataset)
        except Exception as exc:
            logger.warning("dataset %s cannot be sent to worker processes (%s); extracting in-process",
                        type(dataset).__name__, exc)
    bar = progress_bar(total=n, desc="crops", unit="img", enabled=progress, leave=False)
    results: List[_Extracted] = []
    try:
        if blob is not None:
            # spawn, not fork: the parent holds torch/OpenMP and OpenCV thread
            # pools that are not fork-safe.
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(blob, params, modalities, box_mode)) as pool:
                for r in pool.map(_extract_one, range(n), chunksize=max(1, min(16, n // (4 * workers)))):
                    results.append(r)
                    bar.update(1)
        else:
            _setup_state(dataset, params, modalities, box_mode)
            try:
                for i in range(n):
                    results.append(_extract_one(i))
                    bar.update(1)
            finally:
                _Worker.dataset = None
                _Worker.pre = None
    finally:
        bar.close()
    return results


def extract_crops(dataset: Any, params: PreprocessingParams, modalities: Sequence[str], box_mode: str = "detect",
                  workers: int = 2, progress: bool = True) -> CropSet:
    """Preprocess every sample of ``dataset`` into a :class:`CropSet` (no cache).

    Samples without a usable face (no detection and no ground-truth box) or
    whose preprocessing failed are dropped and counted in ``stats``.

    Args:
        dataset: sequence of ``Sample`` with ``subjects``/``labels`` lists.
        params: :class:`PreprocessingParams`.
        modalities: modality names to keep.
        box_mode: ``"detect"`` or ``"gt"``.
        workers: worker processes (0 = this process).
        progress: show a tqdm bar.

    Raises:
        CropError: no sample produced a crop.
    """
    mods = tuple(modalities)
    results = _run_extraction(dataset, params, mods, box_mode, workers, progress)
    counts = Counter(r.status for r in results)
    errors = [r.message for r in results if r.status in ("error", "no_face")]
    for msg in errors[:5]:
        logger.warning("sample dropped: %s", msg)
    kept = [r for r in results if r.crops is not None]
    if not kept:
        raise CropError(f"no face crops from {len(dataset)} samples ({dict(counts)}); "
                        f"first problems: {errors[:3]}")
    rows = [r.index for r in kept]
    stats: Dict[str, Any] = {k: int(v) for k, v in counts.items()}
    stats["total"] = len(results)
    stats["kept"] = len(kept)
    stats["alignment"] = dict(Counter(r.alignment for r in kept))
    return CropSet(
        modalities=mods,
        images={m: np.stack([r.crops[m] for r in kept]) for m in mods},
        depth_valid=np.array([r.depth_valid for r in kept], dtype=bool),
        labels=np.array([str(dataset.labels[i]) for i in rows], dtype=str),
        subjects=np.array([str(dataset.subjects[i]) for i in rows], dtype=str),
        intensities=np.array([r.intensity for r in kept], dtype=np.int16),
        sources=np.array([r.source for r in kept], dtype=str),
        box_sources=np.array([r.status for r in kept], dtype=str),
        dataset_index=np.array(rows, dtype=np.int64),
        alignments=np.array([r.alignment for r in kept], dtype=str), stats=stats)


@dataclass
class CropCacheInfo:
    """How :func:`get_crops` obtained its crops."""

    hit: bool
    path: Optional[str]
    key: str
    seconds: float


def get_crops(dataset: Any, params: PreprocessingParams, modalities: Sequence[str],
              cache_dir: Optional[str | os.PathLike], box_mode: str = "detect", workers: int = 2, progress: bool = True,
              name: str = "dataset") -> Tuple[CropSet, CropCacheInfo]:
    """Crops of ``dataset``, from the cache when the key matches, else extracted and cached.

    Args:
        dataset: sequence of ``Sample``.
        params: :class:`PreprocessingParams` (part of the key).
        modalities: modality names (part of the key).
        cache_dir: cache folder; ``None`` disables caching.
        box_mode: ``"detect"`` or ``"gt"`` (part of the key).
        workers: extraction worker processes.
        progress: show a progress bar.
        name: prefix of the cache file name (readability only).

    Raises:
        CropError: extraction produced no crops or the cache is unreadable.
    """
    import time

    t0 = time.perf_counter()
    mods = tuple(modalities)
    key = cache_key(dataset, params, mods, box_mode)
    path = Path(cache_dir) / f"{_safe(name)}-{key[:20]}.npz" if cache_dir else None
    if path is not None and path.is_file():
        try:
            crops = CropSet.load(path)
        except CropError as exc:
            logger.warning("%s; rebuilding", exc)
        else:
            if crops.key == key:
                logger.info("crop cache hit: %s (%d crops)", path, len(crops))
                return crops, CropCacheInfo(True, str(path), key, time.perf_counter() - t0)
            logger.warning("crop cache %s has a different key; rebuilding", path)
    logger.info("extracting crops of %d samples (%s, box_mode=%s, %d workers)", len(dataset), ",".join(mods),
             box_mode, workers)
    crops = extract_crops(dataset, params, mods, box_mode, workers, progress)
    crops.key = key
    s = crops.stats
    logger.info("crops: %d kept of %d; detector %d, ground-truth box %d, fallback to ground truth: "
             "%d no face + %d wrong face; dropped: %d without face, %d errors; alignment %s",
             s.get("kept", 0), s.get("total", 0), s.get("detector", 0), s.get("gt", 0),
             s.get("gt_no_face", 0), s.get("gt_wrong_face", 0), s.get("no_face", 0), s.get("error", 0),
             s.get("alignment", {}))
    if path is not None:
        crops.save(path)
        logger.info("crop cache written: %s", path)
    return crops, CropCacheInfo(False, str(path) if path else None, key, time.perf_counter() - t0)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "dataset"
