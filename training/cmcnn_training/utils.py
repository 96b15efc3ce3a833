"""Helpers shared by ``cmcnn-train``, ``cmcnn-evaluate`` and ``cmcnn-reproduce`` (torchvision's ``utils.py``).

Run bookkeeping (seeding, the source commit, the environment, refusing to
overwrite outputs), the dataset registry's loader with a clear error, the
checkpoint writer with its metadata, and the training report
(``metrics.json`` + ``confusion_matrix.png``, paper Section IV-A: accuracy
over subject-independent folds). The entry points import from here, never
from each other.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.model.checkpoint import save_checkpoint
from cmcnn_ros.plots import plot_confusion_matrix
from cmcnn_ros.preprocessing.params import PreprocessingParams

from .config import TrainConfig
from .datasets import RecordDataset, load_dataset
from .distributed import DistInfo

logger = logging.getLogger("cmcnn_training.utils")

METRICS_NAME = "metrics.json"
CONFUSION_NAME = "confusion_matrix.png"


class TrainingError(ValueError):
    """The run cannot start or continue (existing outputs, empty split, bad data)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def git_commit() -> Optional[str]:
    """Commit hash of the source tree (``+dirty`` when it has local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_environment(device: torch.device, job: DistInfo) -> Dict[str, Any]:
    """Where a run ran, for its report."""
    return {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "threads": torch.get_num_threads(), "world_size": job.world_size, "backend": job.backend}


def load_training_dataset(name: str, root: str, options: Optional[Dict[str, Any]] = None) -> RecordDataset:
    """The dataset registry's loader (``cmcnn_training.datasets.load_dataset``).

    Raises:
        TrainingError: the root does not exist.
    """
    if not Path(root).exists():
        raise TrainingError(f"dataset root {root} does not exist")
    return load_dataset(name, root, **(options or {}))


def check_outputs(out: Path, cfg: TrainConfig, will_save: bool) -> None:
    """Refuse a run whose report (or checkpoint) is already in ``out``, unless ``cfg.overwrite``.

    Raises:
        TrainingError: an output exists.
    """
    targets = [out / METRICS_NAME]
    if will_save:
        targets.append(out / cfg.checkpoint_name)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not cfg.overwrite:
        raise TrainingError(f"output already exists: {existing}; pass --overwrite or choose another "
                            "--output-dir")


def checkpoint_metadata(cfg: TrainConfig, record: Dict[str, Any], class_names: Sequence[str]) -> Dict[str, Any]:
    """What a checkpoint records about the run that made it (``record`` is the fold's report entry)."""
    return {
        "trainer": "cmcnn_training.train",
        "dataset": cfg.dataset,
        "dataset_root": os.path.abspath(cfg.root) if cfg.root else None,
        "train_subjects": record.get("train_subjects"),
        "test_subjects": record.get("test_subjects"),
        "test_accuracy": (record.get("metrics") or {}).get("accuracy"),
        "config": cfg.to_dict(),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_model_checkpoint(path: Path, model: torch.nn.Module, class_names: Sequence[str],
                          params: PreprocessingParams, metadata: Dict[str, Any], overwrite: bool) -> None:
    """Write the checkpoint with the model module's ``save_checkpoint`` (atomic)."""
    model = model.to("cpu").eval()
    save_checkpoint(path, model, list(class_names), params.to_dict(), metadata=metadata, overwrite=overwrite)
    logger.info("checkpoint written: %s", path)


def write_training_report(out: Path, metrics: Dict[str, Any], dataset: str, t_start: float) -> Path:
    """Write the pooled confusion matrix (when there are folds) and ``metrics.json`` into ``out``.

    ``metrics`` is the run's report (``summary``, ``folds``, ``class_names``,
    ``timings``, ...); the PNG path and the total time are added to it.
    """
    summary = metrics["summary"]
    if summary:
        plot_confusion_matrix(np.array(summary["confusion_matrix_pooled"]), metrics["class_names"],
                              out / CONFUSION_NAME,
                              title=f"CM-CNN {dataset}: {summary['accuracy_mean'] * 100:.1f}% "
                                    f"({summary['folds']} fold{'s' if summary['folds'] > 1 else ''})")
        metrics["confusion_png"] = str(out / CONFUSION_NAME)
    metrics["timings"]["total_seconds"] = time.perf_counter() - t_start
    write_json_atomic(out / METRICS_NAME, metrics)
    logger.info("metrics written: %s (%.1fs total)", out / METRICS_NAME, metrics["timings"]["total_seconds"])
    return out / METRICS_NAME
