"""``cmcnn-evaluate``: run a trained checkpoint over a dataset (paper Section IV-A, IV-E).

The checkpoint carries its own preprocessing parameters, modalities and
class list; the crops are made with exactly those (the node does the same),
so the numbers reflect what the deployed model sees.

Detection is reported apart from classification, never hidden by a
fallback: with ``--box-mode detect`` on a dataset that has ground-truth boxes
the summary holds the detection rate (the detector found the annotated face),
the accuracy *through the detector* (a missed face counts as wrong, over
every sample) and the accuracy on ground-truth boxes (every face cropped from
its annotated box); ``--box-mode gt`` reports the last alone. The per-class
metrics and the confusion matrix are those of the ground-truth boxes when
the dataset has them. Output: ``metrics.json``
(accuracy, per class, per intensity, confusion matrix, plus per-band
accuracy for every extra per-sample column of the dataset's ``labels.csv``
and the pose/distance columns of the synthetic generator's ``truth.csv``;
the top band of ``|yaw|``, ``|pitch|``, ``|roll|`` is marked ``(extreme)``)
and ``confusion_matrix.png``; a one-line JSON summary is printed on stdout.

Example::

    cmcnn-evaluate --checkpoint models/cmcnn_default.pt --dataset kinect \\
        --root data/synth_test --output-dir runs/eval_synth
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.classes import canonical_name
from cmcnn_ros.device import resolve_device
from cmcnn_ros.plots import plot_confusion_matrix
from cmcnn_ros.tools import configure_logging

from .config import BOX_MODES, TrainConfig, parse_kv
from .crops import CropSet, get_crops
from .datasets.selection import select_samples
from .engine import CropBatches, Predictions, evaluate as run_eval, flip_averaged, flipped_crops
from .metrics import EvaluationMetrics, compute_metrics
from .utils import git_commit, load_training_dataset

logger = logging.getLogger("cmcnn_training.evaluate")

#: Columns of the generic Kinect folder layout (docs/ARCHITECTURE.md); anything else is an extra.
STANDARD_COLUMNS = ("colour", "depth", "label", "subject", "intensity", "box_x", "box_y", "box_w", "box_h")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line parser of ``cmcnn-evaluate``."""
    p = argparse.ArgumentParser(
        prog="cmcnn-evaluate", add_help=add_help,
        description="Evaluate a CM-CNN checkpoint on a dataset with the checkpoint's own preprocessing "
                    "parameters; writes metrics.json and confusion_matrix.png.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (save_checkpoint format)")
    p.add_argument("--dataset", default="kinect", help="dataset loader name (default: kinect)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--subjects", nargs="+", default=None, help="evaluate only these subject ids")
    p.add_argument("--min-intensity", type=int, default=None,
                   help="drop samples whose known intensity is below this")
    p.add_argument("--output-dir", default=None,
                   help="output folder (default: <checkpoint folder>/eval-<dataset>-<root name>)")
    p.add_argument("--box-mode", choices=BOX_MODES, default="detect",
                   help="detect: the node's detector, reported as detection rate and accuracy through "
                        "the detector (a miss is wrong), beside the accuracy on ground-truth boxes; gt: "
                        "ground-truth boxes only (default: detect)")
    p.add_argument("--dataset-option", dest="dataset_options", action="append", default=[],
                   metavar="KEY=VALUE", help="loader keyword argument (fer2013: usage=PublicTest)")
    p.add_argument("--cache-dir", default="cache/crops", help="crop cache folder; '' disables (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="crop extraction processes (default: 2)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size (default: 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--no-depth", action="store_true",
                   help="zero the depth channel of every sample (what the node does when depth is missing)")
    p.add_argument("--tta-flip", action="store_true",
                   help="average each face's scores with its mirror image's (the node's flip_tta)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


#: Per-frame ground-truth columns of the synthetic generator's ``truth.csv`` worth a breakdown
#: (pose extremes and distance); eye/nose image coordinates and seeds are not.
TRUTH_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg", "nose_z_m", "light", "light_azimuth_deg",
                 "light_elevation_deg", "ambient")


def _csv_columns(path: Path, root: str | os.PathLike, sources: Sequence[str],
                 wanted: Optional[Sequence[str]]) -> Dict[str, List[Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = [c for c in (reader.fieldnames or []) if c]
        if wanted is None:
            columns = [c for c in names if c.strip() not in STANDARD_COLUMNS]
        else:
            columns = [c for c in names if c.strip() in wanted]
        if not columns:
            return {}
        by_path: Dict[str, Dict[str, str]] = {}
        by_name: Dict[str, Dict[str, str]] = {}
        for row in reader:
            colour = (row.get("colour") or "").strip()
            if colour:
                by_path[os.path.normpath(os.path.abspath(os.path.join(root, colour)))] = row
                by_name.setdefault(os.path.basename(colour), row)
    out: Dict[str, List[Any]] = {c: [] for c in columns}
    matched = 0
    for src in sources:
        key = os.path.normpath(os.path.abspath(src if os.path.isabs(src) else os.path.join(root, src)))
        row = by_path.get(key) or by_name.get(os.path.basename(src))
        matched += row is not None
        for c in columns:
            out[c].append(None if row is None else row.get(c))
    if matched == 0:
        logger.warning("%s has columns %s but no sample matched a row; skipping them", path, columns)
        return {}
    if matched < len(sources):
        logger.warning("%s: only %d of %d samples matched a row", path, matched, len(sources))
    return out


def read_extra_columns(root: str | os.PathLike, sources: Sequence[str]) -> Dict[str, List[Any]]:
    """Per-sample values of extra columns for the pose/illumination breakdown.

    Reads the non-standard columns of ``ROOT/labels.csv`` (anything beyond the
    generic Kinect layout's header) and the pose/distance/light columns of
    the synthetic generator's ``ROOT/truth.csv`` when present. Rows are matched
    to samples by their colour path (the sample's ``source``). Missing files,
    columns or matches simply give fewer (or no) columns.
    """
    out: Dict[str, List[Any]] = {}
    for name, wanted in (("labels.csv", None), ("truth.csv", TRUTH_COLUMNS)):
        path = Path(root) / name
        if path.is_file():
            try:
                for col, values in _csv_columns(path, root, sources, wanted).items():
                    out.setdefault(col, values)
            except (OSError, csv.Error, UnicodeDecodeError) as exc:
                logger.warning("cannot read %s for the breakdown: %s", path, exc)
    return out


@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` produced."""

    metrics: EvaluationMetrics
    output_dir: Path
    metrics_path: Path
    summary: Dict[str, Any]


def dataset_has_face_crops(ds: Any) -> bool:
    """Whether a dataset's samples are face crops with given boxes (FER2013, ``crops=True`` folders)."""
    parent = getattr(ds, "parent", ds)
    return bool(getattr(parent, "crops", False))


@dataclass
class EvalSet:
    """A dataset as a checkpoint sees it: the selected samples of its classes, cropped its way."""

    view: Any
    class_names: List[str]
    params: Any
    modalities: Tuple[str, ...]
    has_boxes: bool
    name: str

    def predict(self, model: torch.nn.Module, box_mode: str, device: torch.device, cache_dir: Optional[str],
                workers: int, batch_size: int, no_depth: bool, progress: bool,
                tta_flip: bool = False) -> Tuple[CropSet, Any, Predictions]:
        """Crops (cached) and the model's predictions, with ``box_mode``; ``no_depth`` zeroes every depth channel.

        ``tta_flip`` averages each face's probabilities with its mirror image's.
        """
        c, info = get_crops(self.view, self.params, self.modalities, cache_dir or None, box_mode=box_mode,
                            workers=workers, progress=progress, name=self.name)
        label_of = {n: i for i, n in enumerate(self.class_names)}
        y = np.array([label_of[canonical_name(lb)] for lb in c.labels], dtype=np.int64)
        def predict_on(crops: CropSet) -> Predictions:
            batches = CropBatches(crops, np.arange(len(crops)), y, self.modalities, batch_size,
                                  depth_dropout=1.0 if no_depth else 0.0)
            return run_eval(model, batches, device, progress=progress)
        pred = predict_on(c)
        if tta_flip:
            pred = flip_averaged(pred, predict_on(flipped_crops(c, self.params)))
        return c, info, pred


def load_eval_set(dataset: str, root: str, class_names: Sequence[str], params: Any, modalities: Sequence[str],
                  subjects: Optional[Sequence[str]] = None, min_intensity: Optional[int] = None,
                  dataset_options: Optional[Dict[str, Any]] = None) -> EvalSet:
    """The samples of ``dataset`` with the checkpoint's classes (others skipped with a warning).

    Raises:
        TrainingError: the root does not exist or holds no sample of the classes.
    """
    ds = load_training_dataset(dataset, root, dataset_options)
    present = {canonical_name(lb) for lb in ds.labels}
    unknown = sorted(present - set(class_names))
    if unknown:
        logger.warning("dataset classes %s are not among the checkpoint's %s; those samples are skipped",
                       unknown, list(class_names))
    sel = TrainConfig(root=root, classes=list(class_names), subjects=list(subjects) if subjects else None,
                      min_intensity=min_intensity)
    keep, _ = select_samples(ds, sel)
    view = ds if len(keep) == len(ds) else ds.subset(keep)
    has_boxes = any(getattr(r, "extra", {}).get("box") is not None for r in getattr(view, "records", [])) \
        or dataset_has_face_crops(view)
    return EvalSet(view=view, class_names=list(class_names), params=params, modalities=tuple(modalities),
                   has_boxes=has_boxes, name=dataset)


def detection_summary(n: int, crops: CropSet, pred: Predictions) -> Dict[str, Any]:
    """Detection rate and accuracy through the detector (a missed face is wrong), apart from classification."""
    found = crops.box_sources == "detector"
    correct = (pred.y_true == pred.y_pred) & found
    detection = {
        "samples": n, "detected": int(found.sum()),
        "detection_rate": float(found.sum()) / max(n, 1),
        "accuracy_through_detector": float(correct.sum()) / max(n, 1),
        "accuracy_of_detected": float(correct.sum()) / max(int(found.sum()), 1),
        "box_sources": {k: int(v) for k, v in zip(*np.unique(crops.box_sources, return_counts=True))},
        "alignment": {k: int(v) for k, v in zip(*np.unique(crops.alignments[found], return_counts=True))},
    }
    logger.info("detector found %d of %d faces (%.1f %%); accuracy through the detector (missed = wrong) "
                "%.4f, of the detected faces %.4f", detection["detected"], n, 100 * detection["detection_rate"],
                detection["accuracy_through_detector"], detection["accuracy_of_detected"])
    return detection


def run_evaluation(checkpoint: str | os.PathLike, dataset: str, root: str,
                   subjects: Optional[Sequence[str]] = None, output_dir: Optional[str | os.PathLike] = None,
                   min_intensity: Optional[int] = None, box_mode: str = "detect",
                   cache_dir: Optional[str] = "cache/crops", workers: int = 2, batch_size: int = 64,
                   device: str = "auto", no_depth: bool = False, progress: bool = True,
                   dataset_options: Optional[Dict[str, Any]] = None, tta_flip: bool = False) -> EvaluationResult:
    """Evaluate ``checkpoint`` on a dataset and write metrics JSON + confusion PNG.

    Raises:
        CheckpointError: unreadable checkpoint.
        TrainingError: no sample of the checkpoint's classes in the selection.
        CropError: no face crops.
    """
    from cmcnn_ros.model.checkpoint import load_checkpoint
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    t0 = time.perf_counter()
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model = ckpt.model.to(dev).eval()
    class_names = list(ckpt.class_names)
    params = PreprocessingParams.from_checkpoint(ckpt.preprocessing)
    if output_dir is None:
        output_dir = Path(checkpoint).resolve().parent / f"eval-{dataset}-{Path(root).resolve().name}"
    out = Path(output_dir)
    es = load_eval_set(dataset, root, class_names, params, ckpt.model_config.modalities, subjects, min_intensity,
                       dataset_options)

    def predict(mode: str) -> Tuple[CropSet, Any, Predictions]:
        return es.predict(model, mode, dev, cache_dir, workers, batch_size, no_depth, progress, tta_flip)

    detection: Dict[str, Any] = {}
    if box_mode == "detect":
        det_crops, det_cache, det_pred = predict("detect")
        detection = detection_summary(len(es.view), det_crops, det_pred)
    if box_mode == "gt" or es.has_boxes:
        crops, cache, pred = predict("gt")
    else:
        crops, cache, pred = det_crops, det_cache, det_pred
    extras = read_extra_columns(root, crops.sources.tolist())
    metrics = compute_metrics(pred.y_true, pred.y_pred, class_names, intensities=crops.intensities,
                              extra_columns=extras)
    logger.info("accuracy %.4f on %d samples (%d classes)", metrics.accuracy, metrics.count, len(class_names))
    for column, bands in metrics.per_group.items():
        logger.info("  %s: %s", column, ", ".join(f"{k} {v.accuracy:.3f} (n={v.count})" for k, v in bands.items()))

    summary = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "dataset": dataset, "root": os.path.abspath(root),
        # Through the detector when it ran (a miss is wrong), else on the given boxes.
        "accuracy": detection["accuracy_through_detector"] if detection else metrics.accuracy,
        "count": metrics.count, "no_depth": no_depth, "tta_flip": tta_flip,
        "accuracy_gt_boxes": metrics.accuracy if (box_mode == "gt" or es.has_boxes) else None,
        **{k: detection[k] for k in ("detection_rate", "accuracy_through_detector") if k in detection},
        "alignment": {k: int(v) for k, v in zip(*np.unique(crops.alignments, return_counts=True))},
    }
    doc = {
        "summary": summary,
        "metrics": metrics.to_dict(),
        "class_names": class_names,
        "checkpoint_metadata": ckpt.metadata,
        "model_config": ckpt.model_config.to_dict(),
        "preprocessing": params.to_dict(),
        "detection": detection or None,
        "crop_stats": crops.stats, "crop_cache": cache.path, "crop_cache_hit": cache.hit,
        "box_sources": {k: int(v) for k, v in zip(*np.unique(crops.box_sources, return_counts=True))},
        "depth_valid_fraction": float(crops.depth_valid.mean()) if len(crops) else None,
        "subjects": sorted(set(crops.subjects.tolist())),
        "git_commit": git_commit(),
        "timings": {"crops_seconds": cache.seconds, "inference_seconds": pred.seconds,
                    "total_seconds": time.perf_counter() - t0},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", doc)
    plot_confusion_matrix(metrics.confusion, class_names, out / "confusion_matrix.png",
                          title=f"{Path(checkpoint).name} on {dataset}: {metrics.accuracy * 100:.1f}%")
    logger.info("metrics written: %s", out / "metrics.json")
    return EvaluationResult(metrics=metrics, output_dir=out, metrics_path=out / "metrics.json", summary=summary)


def main(argv: Optional[Sequence[str] | argparse.Namespace] = None) -> int:
    """Console entry point ``cmcnn-evaluate``; prints a JSON summary, returns the exit status."""
    args = argv if isinstance(argv, argparse.Namespace) else get_args_parser().parse_args(argv)
    try:
        configure_logging(level=args.log_level, timestamps=True)
        result = run_evaluation(args.checkpoint, args.dataset, args.root, subjects=args.subjects,
                                output_dir=args.output_dir, min_intensity=args.min_intensity,
                                box_mode=args.box_mode, cache_dir=args.cache_dir, workers=args.workers,
                                batch_size=args.batch_size, device=args.device, no_depth=args.no_depth,
                                progress=args.progress, tta_flip=args.tta_flip,
                                dataset_options=dict(parse_kv(kv) for kv in args.dataset_options))
    except (ValueError, OSError) as exc:  # CheckpointError, TrainingError, CropError, ConfigError ...
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2
    print(json.dumps(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
