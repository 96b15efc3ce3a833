"""``cmcnn-train``: train and cross-validate CM-CNN offline (paper Section IV-A, IV-B).

Protocol (Section IV-A): subject-independent k-fold cross-validation (ten
folds by default; no subject is in both the training and the test part of a
fold), reporting the mean accuracy over folds; or a single held-out split of
subjects (``--folds 1 --val-subjects ...`` / ``--holdout-fraction``).

Optimisation (Section IV-B): SGD, learning rate 0.01, momentum 0.9, weight
decay 5e-4, learning rate halved every 100 epochs, 300 epochs, the
soft-label focal loss of eq. (5) (alpha=1, gamma=2, sigma=0.1). The paper
pre-trains the grey and LBP FENs on CASIA-WebFace and the depth FEN on a 3-D
face set; those sets are not redistributable, so each FEN is pre-trained
here through its own classification head (Section III-C) on the training
split for ``--pretrain-epochs`` before the whole network is trained.

Data path: ``load_dataset(name, root)`` -> the samples and folds of
:mod:`cmcnn_training.datasets.selection` -> the node's own
:class:`FacePreprocessor` built from :class:`PreprocessingParams`
(:mod:`cmcnn_training.builders`; the same params are stored in the
checkpoint) -> cached crops (:mod:`cmcnn_training.crops`) -> one
:func:`~cmcnn_training.fitting.fit` per fold over the
:mod:`cmcnn_training.engine` loops -> the report of
:mod:`cmcnn_training.utils`. This module is only the CLI and that
orchestration (as torchvision's ``references/classification/train.py``);
nothing imports it but the entry point.

Outputs in ``--output-dir``: the checkpoint (``save_checkpoint`` format,
atomic, never overwritten without ``--overwrite``; written for ``--folds 1``
or ``--final``), optional per-fold checkpoints, ``metrics.json`` (per fold,
mean ± std, per class, per intensity, confusion, config, git commit,
timings) and ``confusion_matrix.png``.

Example::

    cmcnn-train --config quick --root data/synth_small --output-dir runs/quick
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from cmcnn_ros.classes import canonical_name
from cmcnn_ros.device import resolve_device
from cmcnn_ros.tools import configure_logging

from . import distributed
from .builders import build_model_config, build_preprocessing
from .config import ConfigError, TrainConfig, add_config_arguments, build_config
from .crops import get_crops
from .datasets.selection import make_splits, select_samples
from .fitting import fit, predict_rows
from .metrics import EvaluationMetrics, compute_metrics, summarise_folds
from .mixing import concat_crops, load_mix_crops, parse_mix
from .utils import METRICS_NAME, TrainingError, check_outputs, checkpoint_metadata, git_commit, \
    load_training_dataset, run_environment, save_model_checkpoint, seed_everything, write_training_report

logger = logging.getLogger("cmcnn_training.train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line parser of ``cmcnn-train`` (one flag per :class:`TrainConfig` field)."""
    parser = argparse.ArgumentParser(
        prog="cmcnn-train", add_help=add_help,
        description="Train / cross-validate CM-CNN (Ni et al., IEEE TCDS 2023) on an RGB-D expression "
                    "dataset. Defaults follow the paper (10-fold subject-independent CV, SGD lr 0.01, "
                    "momentum 0.9, wd 5e-4, lr x0.5 every 100 epochs, 300 epochs, soft focal loss). "
                    "Precedence: defaults < --config YAML < flags.",
        epilog="The paper pre-trains the FENs on CASIA-WebFace / a 3-D face set, which we cannot "
               "ship; --pretrain-epochs pre-trains each FEN through its own head on the training "
               "split instead. Presets: --config default|quick|synthetic.")
    return add_config_arguments(parser)


@dataclass
class TrainingResult:
    """What :func:`run_training` produced."""

    output_dir: Path
    checkpoint: Optional[Path]
    metrics_path: Path
    metrics: Dict[str, Any]
    fold_metrics: List[EvaluationMetrics] = field(default_factory=list)


def run_training(cfg: TrainConfig) -> TrainingResult:
    """Run the whole protocol for ``cfg`` and write the outputs.

    Raises:
        ConfigError: invalid configuration.
        TrainingError: existing outputs without overwrite, empty splits, data problems.
    """
    cfg.validate()
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    will_save = cfg.folds == 1 or cfg.final
    check_outputs(out, cfg, will_save)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)  # a bad --device stops here, before any process group is joined
    # Under torchrun: join the job (NCCL on GPUs, Gloo on CPU); rank 0 alone evaluates and writes outputs.
    job, job_device = distributed.init_distributed(cfg.device)
    device = job_device or device
    params = build_preprocessing(cfg)

    dataset = load_training_dataset(cfg.dataset, cfg.root, cfg.dataset_options)
    keep, class_names = select_samples(dataset, cfg)
    model_config = build_model_config(cfg, len(class_names), params.crop_size)
    logger.info("dataset %s at %s: %d of %d samples, classes %s, device %s", cfg.dataset, cfg.root, len(keep),
             len(dataset), class_names, device)
    view = dataset if len(keep) == len(dataset) else dataset.subset(keep)
    if job.enabled and not job.is_main:
        distributed.barrier()  # rank 0 fills the crop cache first
    try:
        crops, cache = get_crops(view, params, model_config.modalities, cfg.cache_dir, box_mode=cfg.box_mode,
                                 workers=cfg.workers, progress=cfg.progress and job.is_main, name=cfg.dataset)
        repeat = np.ones(len(crops), np.int64)
        if cfg.mix:
            mixed = load_mix_crops(parse_mix(cfg.mix), class_names, params, model_config.modalities,
                                   cfg.cache_dir, cfg.workers, cfg.progress and job.is_main)
            crops, source = concat_crops([(cfg.dataset, crops)] + [(name, c) for name, c, _, _ in mixed])
            repeat = np.array([1] + [r for _, _, _, r in mixed], np.int64)[source]
    finally:
        if job.enabled and job.is_main:
            distributed.barrier()
    label_of = {c: i for i, c in enumerate(class_names)}
    label_index = np.array([label_of[canonical_name(l)] for l in crops.labels], dtype=np.int64)
    splits = [(np.repeat(tr, repeat[tr]), te) for tr, te in make_splits(crops.subjects, cfg)]

    fold_metrics: List[EvaluationMetrics] = []
    fold_records: List[Dict[str, Any]] = []
    final_model = None
    final_record: Optional[Dict[str, Any]] = None
    for k, (train_rows, test_rows) in enumerate(splits):
        name = f"fold {k + 1}/{len(splits)}" if len(splits) > 1 else "holdout"
        logger.info("%s: %d train samples (%d subjects), %d test samples (%d subjects)", name, len(train_rows),
                 len(set(crops.subjects[train_rows])), len(test_rows), len(set(crops.subjects[test_rows])))
        result = fit(crops, train_rows, label_index, model_config, params, cfg, device, cfg.seed + 1000 * k,
                     desc=name)
        record: Dict[str, Any] = {
            "fold": k, "train_subjects": sorted(set(crops.subjects[train_rows].tolist())),
            "test_subjects": sorted(set(crops.subjects[test_rows].tolist())),
            "train_count": int(len(train_rows)), "test_count": int(len(test_rows)),
            "train_seconds": result.seconds,
            "final_train_loss": result.history[-1].loss if result.history else None,
            "final_train_accuracy": result.history[-1].accuracy if result.history else None,
            "pretrain_accuracy": result.pretrain_history[-1].per_head_accuracy if result.pretrain_history
            else None,
        }
        if len(test_rows) and job.is_main:
            pred = predict_rows(result.model, crops, test_rows, label_index, model_config.modalities,
                                cfg.batch_size, device, cfg.progress)
            m = compute_metrics(pred.y_true, pred.y_pred, class_names, intensities=crops.intensities[test_rows])
            fold_metrics.append(m)
            record["metrics"] = m.to_dict()
            record["eval_seconds"] = pred.seconds
            logger.info("%s: test accuracy %.4f on %d samples", name, m.accuracy, m.count)
        if cfg.save_fold_checkpoints and len(splits) > 1 and job.is_main:
            save_model_checkpoint(out / f"fold_{k:02d}.pt", result.model, class_names, params,
                                  checkpoint_metadata(cfg, record, class_names), overwrite=cfg.overwrite)
            result.model.to(device)
        fold_records.append(record)
        if len(splits) == 1:
            final_model, final_record = result.model, record

    if cfg.final and len(splits) > 1:
        logger.info("final model: training on all %d samples", len(crops))
        all_rows = np.repeat(np.arange(len(crops)), repeat)
        result = fit(crops, all_rows, label_index, model_config, params, cfg, device, cfg.seed + 999_999,
                     desc="final")
        final_model = result.model
        final_record = {"train_subjects": sorted(set(crops.subjects.tolist())), "train_count": len(crops),
                        "train_seconds": result.seconds,
                        "final_train_accuracy": result.history[-1].accuracy if result.history else None}

    summary = summarise_folds(fold_metrics) if fold_metrics else None
    if summary:
        logger.info("accuracy over %d fold(s): %.4f ± %.4f (pooled %.4f)", summary["folds"],
                 summary["accuracy_mean"], summary["accuracy_std"], summary["accuracy_pooled"])
    metrics: Dict[str, Any] = {
        "summary": summary,
        "folds": fold_records,
        "final": final_record,
        "class_names": class_names,
        "dataset": {"name": cfg.dataset, "root": os.path.abspath(cfg.root), "samples_used": len(keep),
                    "crops": len(crops), "crop_stats": crops.stats, "crop_cache": cache.path,
                    "crop_cache_hit": cache.hit},
        "config": cfg.to_dict(),
        "model_config": model_config.to_dict(),
        "preprocessing": params.to_dict(),
        "git_commit": git_commit(),
        "environment": run_environment(device, job),
        "timings": {"crops_seconds": cache.seconds, "total_seconds": None},
    }
    ckpt_path: Optional[Path] = None
    if not job.is_main:
        distributed.barrier()  # wait for rank 0's outputs, then leave together
        return TrainingResult(output_dir=out, checkpoint=None, metrics_path=out / METRICS_NAME, metrics=metrics)
    out.mkdir(parents=True, exist_ok=True)
    if final_model is not None:
        ckpt_path = out / cfg.checkpoint_name
        meta = checkpoint_metadata(cfg, final_record or {}, class_names)
        if summary:
            meta["cv_accuracy_mean"] = summary["accuracy_mean"]
            meta["cv_accuracy_std"] = summary["accuracy_std"]
        save_model_checkpoint(ckpt_path, final_model, class_names, params, meta, overwrite=cfg.overwrite)
        metrics["checkpoint"] = str(ckpt_path)
    metrics_path = write_training_report(out, metrics, cfg.dataset, t_start)
    distributed.barrier()
    return TrainingResult(output_dir=out, checkpoint=ckpt_path, metrics_path=metrics_path,
                          metrics=metrics, fold_metrics=fold_metrics)


def main(argv: Optional[Sequence[str] | argparse.Namespace] = None) -> int:
    """Console entry point ``cmcnn-train``; returns the exit status.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``) or an
            already parsed namespace from :func:`get_args_parser`.
    """
    args = argv if isinstance(argv, argparse.Namespace) else get_args_parser().parse_args(argv)
    try:
        cfg = build_config(args)
        configure_logging(level=cfg.log_level, timestamps=True)
        run_training(cfg)
    except (ConfigError, TrainingError) as exc:
        configure_logging(timestamps=True)
        logger.error("%s", exc)
        return 2
    except ValueError as exc:  # other modules' documented errors (PreprocessingError, CheckpointError, ...)
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; earlier outputs were left as they were")
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
