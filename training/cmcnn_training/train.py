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

Data path: ``load_dataset(name, root)`` -> the node's own
:class:`FacePreprocessor` built from :class:`PreprocessingParams` (the same
params are stored in the checkpoint) -> cached crops
(:mod:`cmcnn_training.crops`) -> :mod:`cmcnn_training.engine` loops.

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
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name

from .config import ConfigError, TrainConfig, add_config_arguments, build_config
from .crops import CropSet, get_crops
from .engine import AugmentConfig, CropBatches, EpochStats, evaluate, train_one_epoch
from .mixing import concat_crops, load_mix_crops, parse_mix
from .metrics import EvaluationMetrics, compute_metrics, plot_confusion_matrix, summarise_folds, \
    write_json_atomic

LOG = logging.getLogger("cmcnn_training.train")

METRICS_NAME = "metrics.json"
CONFUSION_NAME = "confusion_matrix.png"


class TrainingError(ValueError):
    """The run cannot start or continue (existing outputs, empty split, bad data)."""


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu.

    Raises:
        ConfigError: an explicit cuda device was asked for but CUDA is unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    return dev


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


def _canonical_classes(present: Sequence[str], wanted: Optional[Sequence[str]]) -> List[str]:
    if wanted:
        names = [canonical_name(c) for c in wanted]
        if len(set(names)) != len(names):
            raise ConfigError(f"classes has repeats: {list(wanted)}")
        return names
    present_set = set(present)
    ordered = [c for c in EXPRESSIONS_WITH_NEUTRAL if c in present_set]
    return ordered + sorted(present_set - set(ordered))


def select_samples(dataset: Any, cfg: TrainConfig) -> Tuple[List[int], List[str]]:
    """Indices of the samples the run uses and the class list.

    Applies the dataset ``protocol`` (e.g. BU-3DFE P1: 60 subjects, six
    classes, two highest intensities), then ``classes``, ``subjects``,
    ``min_intensity`` and ``max_samples_per_subject_class``.

    Raises:
        TrainingError: nothing is left, or fewer than two classes.
    """
    labels = [canonical_name(l) for l in dataset.labels]
    subjects = [str(s) for s in dataset.subjects]
    candidates = range(len(labels))
    if cfg.protocol:
        from .datasets.protocols import select_protocol

        candidates = select_protocol(dataset, cfg.protocol, run=cfg.protocol_run, seed=cfg.seed,
                                     n_subjects=cfg.protocol_subjects).tolist()
    classes = _canonical_classes([labels[i] for i in candidates], cfg.classes)
    keep = [i for i in candidates if labels[i] in classes]
    if cfg.subjects:
        wanted = {str(s) for s in cfg.subjects}
        missing = wanted - set(subjects)
        if missing:
            raise TrainingError(f"subjects not in the dataset: {sorted(missing)}")
        keep = [i for i in keep if subjects[i] in wanted]
    if cfg.min_intensity is not None:
        intens = getattr(dataset, "intensities", None)
        if intens is None:
            intens = [dataset[i].intensity for i in range(len(dataset))]
        keep = [i for i in keep if intens[i] is None or int(intens[i]) >= cfg.min_intensity]
    if cfg.max_samples_per_subject_class:
        groups: Dict[Tuple[str, str], List[int]] = {}
        for i in keep:
            groups.setdefault((subjects[i], labels[i]), []).append(i)
        keep = []
        for idx in groups.values():
            k = cfg.max_samples_per_subject_class
            if len(idx) > k:
                idx = [idx[int(j)] for j in np.linspace(0, len(idx) - 1, k).round().astype(int)]
            keep.extend(idx)
        keep.sort()
    if not keep:
        raise TrainingError("no samples left after applying classes/subjects/min_intensity")
    used = sorted({labels[i] for i in keep}, key=classes.index)
    if not cfg.classes:
        classes = used
    if len(classes) < 2:
        raise TrainingError(f"need at least two classes, the selection has {classes}")
    return keep, classes


def make_splits(subjects: np.ndarray, cfg: TrainConfig) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``[(train_rows, test_rows)]`` of subject-independent folds or the single held-out split.

    Raises:
        TrainingError: more folds than subjects, unknown validation subjects.
    """
    uniq = sorted(set(subjects.tolist()))
    if cfg.folds == 1:
        if cfg.val_subjects:
            val = {str(s) for s in cfg.val_subjects}
            missing = val - set(uniq)
            if missing:
                raise TrainingError(f"--val-subjects not among the selected subjects: {sorted(missing)}")
        elif cfg.holdout_fraction:
            rng = np.random.default_rng(cfg.seed)
            n_val = max(1, int(round(cfg.holdout_fraction * len(uniq))))
            if n_val >= len(uniq):
                raise TrainingError(f"holdout_fraction {cfg.holdout_fraction} leaves no training subjects")
            val = set(rng.permutation(uniq)[:n_val].tolist())
        else:
            return [(np.arange(len(subjects)), np.zeros(0, np.int64))]
        test = np.flatnonzero(np.isin(subjects, sorted(val)))
        train = np.flatnonzero(~np.isin(subjects, sorted(val)))
        if len(train) == 0:
            raise TrainingError("the held-out split leaves no training samples")
        return [(train, test)]
    if cfg.folds > len(uniq):
        raise TrainingError(f"{cfg.folds} subject-independent folds need at least {cfg.folds} subjects; "
                            f"the selection has {len(uniq)}")
    return _subject_kfold(subjects, cfg.folds, cfg.seed)


def _subject_kfold(subjects: np.ndarray, k: int, seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    from .datasets.protocols import subject_kfold

    return [(np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
            for tr, te in subject_kfold(subjects.tolist(), k, seed=seed)]


def build_model_config(cfg: TrainConfig, num_classes: int, crop_size: int) -> Any:
    """ModelConfig from the preset, the YAML/flag overrides, the modalities and the class count.

    Raises:
        ConfigError: overrides try to set modalities/num_classes (use the
            top-level settings) or are invalid.
    """
    from cmcnn_ros.model.config import ModelConfigError, preset_config

    clash = {"modalities", "num_classes", "input_size"} & set(cfg.model)
    if clash:
        raise ConfigError(f"model overrides {sorted(clash)} are set by --modalities, the class list and "
                          "preprocessing crop_size; remove them from 'model:'")
    try:
        return preset_config(cfg.model_preset, modalities=tuple(cfg.modalities), num_classes=num_classes,
                             input_size=crop_size, **cfg.model)
    except ModelConfigError as exc:
        raise ConfigError(f"model config: {exc}") from exc


def build_preprocessing(cfg: TrainConfig) -> Any:
    """PreprocessingParams: defaults with the config's overrides.

    Raises:
        ConfigError: unknown or invalid preprocessing keys.
    """
    from cmcnn_ros.preprocessing.params import PreprocessingError, PreprocessingParams

    try:
        return PreprocessingParams.from_dict(dict(cfg.preprocessing))
    except PreprocessingError as exc:
        raise ConfigError(f"preprocessing: {exc}") from exc


def _loss(cfg: TrainConfig) -> torch.nn.Module:
    from cmcnn_ros.model.losses import make_loss

    if cfg.loss == "soft_focal":
        return make_loss("soft_focal", sigma=cfg.soft_sigma, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    if cfg.loss == "focal":
        return make_loss("focal", alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    return make_loss("ce")


@dataclass
class FitResult:
    """History of one model fit."""

    model: torch.nn.Module
    pretrain_history: List[EpochStats]
    history: List[EpochStats]
    seconds: float


def fit(crops: CropSet, rows: np.ndarray, label_index: np.ndarray, model_config: Any, params: Any,
        cfg: TrainConfig, device: torch.device, seed: int, desc: str = "",
        on_epoch: Optional[Callable[[str, int, int], None]] = None) -> FitResult:
    """Build a fresh CM-CNN and train it on ``rows``: FEN pre-training, then the whole network.

    Args:
        crops: all crops.
        rows: training rows of ``crops``.
        label_index: class index per crop row.
        model_config: ModelConfig.
        params: PreprocessingParams (for the flip augmentation).
        cfg: run configuration.
        device: torch device.
        seed: seed of this fit (initialisation, order, augmentation).
        desc: label for logs and progress bars.
        on_epoch: called as ``on_epoch(stage, epoch, epochs)`` after every
            epoch (``stage`` is ``"pretrain"`` or ``"train"``), for the
            progress display of callers such as ``cmcnn-reproduce``.
    """
    from cmcnn_ros.model import cmcnn

    from . import distributed

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = cmcnn(model_config).to(device)
    loss_fn = _loss(cfg)
    batch_args = (crops, rows, label_index, model_config.modalities, cfg.batch_size)
    batch_kwargs = dict(shuffle=True, seed=seed, augment=AugmentConfig(enabled=cfg.augment),
                        depth_dropout=cfg.depth_dropout, preprocessing=params, drop_last=True)
    job = distributed.current()
    if job.enabled:
        # torchrun: each rank trains on its shard of the fold's training rows; DDP averages the gradients.
        batches = distributed.ShardedCropBatches(*batch_args, rank=job.rank, world_size=job.world_size,
                                                 **batch_kwargs)
        trained = distributed.DDPModel(model, device)
    else:
        batches = CropBatches(*batch_args, **batch_kwargs)
        trained = model

    def run_stage(epochs: int, lr: float, mode: str, name: str) -> List[EpochStats]:
        if epochs <= 0:
            return []
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg, epochs)
        history: List[EpochStats] = []
        bar = tqdm(range(1, epochs + 1), desc=f"{desc} {name}".strip(), disable=not cfg.progress or not job.is_main,
                   unit="ep")
        log_every = max(1, epochs // 10)
        for epoch in bar:
            stats = train_one_epoch(trained, batches, loss_fn, optimizer, device, epoch, mode=mode,
                                    progress=False)
            scheduler.step()
            history.append(stats)
            if on_epoch is not None:
                on_epoch("pretrain" if mode == "fens" else "train", epoch, epochs)
            bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.accuracy:.3f}")
            if epoch % log_every == 0 or epoch == epochs:
                LOG.info("%s %s epoch %d/%d: loss %.4f, train acc %.3f%s, lr %.2g, %.1fs", desc, name, epoch,
                         epochs, stats.loss, stats.accuracy,
                         "" if mode == "fusion" else " (" + ", ".join(
                             f"{k} {v:.3f}" for k, v in stats.per_head_accuracy.items()) + ")",
                         stats.lr, stats.seconds)
        bar.close()
        return history

    pre = run_stage(cfg.pretrain_epochs, cfg.pretrain_lr or cfg.lr, "fens", "FEN pre-training")
    main = run_stage(cfg.epochs, cfg.lr, "fusion", "training")
    return FitResult(model=model, pretrain_history=pre, history=main, seconds=time.perf_counter() - t0)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: the paper's step decay, or warm-up + cosine.

    The paper halves the rate every 100 of 300 epochs; a CPU budget of a few
    dozen epochs ends long before a step schedule anneals, so ``cosine`` warms
    up for one epoch (from 10 %) and decays to zero by the last one.
    """
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)

    def factor(epoch: int) -> float:
        if epoch == 0 and epochs > 2:
            return 0.1
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / float(max(epochs, 1))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def predict_rows(model: torch.nn.Module, crops: CropSet, rows: np.ndarray, label_index: np.ndarray,
                 modalities: Sequence[str], batch_size: int, device: torch.device, progress: bool) -> Any:
    """Predictions of ``model`` for some crop rows (no augmentation)."""
    batches = CropBatches(crops, rows, label_index, modalities, max(batch_size, 64))
    return evaluate(model, batches, device, progress=progress)


def save_model_checkpoint(path: Path, model: torch.nn.Module, class_names: Sequence[str], params: Any,
                          metadata: Dict[str, Any], overwrite: bool) -> None:
    """Write the checkpoint with the model module's ``save_checkpoint`` (atomic)."""
    from cmcnn_ros.model.checkpoint import save_checkpoint

    model = model.to("cpu").eval()
    save_checkpoint(path, model, list(class_names), params.to_dict(), metadata=metadata, overwrite=overwrite)
    LOG.info("checkpoint written: %s", path)


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------

@dataclass
class TrainingResult:
    """What :func:`run_training` produced."""

    output_dir: Path
    checkpoint: Optional[Path]
    metrics_path: Path
    metrics: Dict[str, Any]
    fold_metrics: List[EvaluationMetrics] = field(default_factory=list)


def _check_outputs(out: Path, cfg: TrainConfig, will_save: bool) -> None:
    targets = [out / METRICS_NAME]
    if will_save:
        targets.append(out / cfg.checkpoint_name)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not cfg.overwrite:
        raise TrainingError(f"output already exists: {existing}; pass --overwrite or choose another "
                            "--output-dir")


def load_training_dataset(name: str, root: str, options: Optional[Dict[str, Any]] = None) -> Any:
    """The dataset registry's loader (``cmcnn_training.datasets.load_dataset``).

    Raises:
        TrainingError: the root does not exist.
    """
    from .datasets import load_dataset

    if not Path(root).exists():
        raise TrainingError(f"dataset root {root} does not exist")
    return load_dataset(name, root, **(options or {}))


def run_training(cfg: TrainConfig) -> TrainingResult:
    """Run the whole protocol for ``cfg`` and write the outputs.

    Raises:
        ConfigError: invalid configuration.
        TrainingError: existing outputs without overwrite, empty splits, data problems.
    """
    from . import distributed

    cfg.validate()
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    will_save = cfg.folds == 1 or cfg.final
    _check_outputs(out, cfg, will_save)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    # Under torchrun: join the job (NCCL on GPUs, Gloo on CPU); rank 0 alone evaluates and writes outputs.
    job, job_device = distributed.init_distributed(cfg.device)
    device = job_device or resolve_device(cfg.device)
    params = build_preprocessing(cfg)

    dataset = load_training_dataset(cfg.dataset, cfg.root, cfg.dataset_options)
    keep, class_names = select_samples(dataset, cfg)
    model_config = build_model_config(cfg, len(class_names), params.crop_size)
    LOG.info("dataset %s at %s: %d of %d samples, classes %s, device %s", cfg.dataset, cfg.root, len(keep),
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
        LOG.info("%s: %d train samples (%d subjects), %d test samples (%d subjects)", name, len(train_rows),
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
            LOG.info("%s: test accuracy %.4f on %d samples", name, m.accuracy, m.count)
        if cfg.save_fold_checkpoints and len(splits) > 1 and job.is_main:
            save_model_checkpoint(out / f"fold_{k:02d}.pt", result.model, class_names, params,
                                  _metadata(cfg, record, class_names), overwrite=cfg.overwrite)
            result.model.to(device)
        fold_records.append(record)
        if len(splits) == 1:
            final_model, final_record = result.model, record

    if cfg.final and len(splits) > 1:
        LOG.info("final model: training on all %d samples", len(crops))
        all_rows = np.repeat(np.arange(len(crops)), repeat)
        result = fit(crops, all_rows, label_index, model_config, params, cfg, device, cfg.seed + 999_999,
                     desc="final")
        final_model = result.model
        final_record = {"train_subjects": sorted(set(crops.subjects.tolist())), "train_count": len(crops),
                        "train_seconds": result.seconds,
                        "final_train_accuracy": result.history[-1].accuracy if result.history else None}

    summary = summarise_folds(fold_metrics) if fold_metrics else None
    if summary:
        LOG.info("accuracy over %d fold(s): %.4f ± %.4f (pooled %.4f)", summary["folds"],
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
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "device": str(device), "threads": torch.get_num_threads(),
                        "world_size": job.world_size, "backend": job.backend},
        "timings": {"crops_seconds": cache.seconds, "total_seconds": None},
    }
    ckpt_path: Optional[Path] = None
    if not job.is_main:
        distributed.barrier()  # wait for rank 0's outputs, then leave together
        return TrainingResult(output_dir=out, checkpoint=None, metrics_path=out / METRICS_NAME, metrics=metrics)
    out.mkdir(parents=True, exist_ok=True)
    if final_model is not None:
        ckpt_path = out / cfg.checkpoint_name
        meta = _metadata(cfg, final_record or {}, class_names)
        if summary:
            meta["cv_accuracy_mean"] = summary["accuracy_mean"]
            meta["cv_accuracy_std"] = summary["accuracy_std"]
        save_model_checkpoint(ckpt_path, final_model, class_names, params, meta, overwrite=cfg.overwrite)
        metrics["checkpoint"] = str(ckpt_path)
    if summary:
        plot_confusion_matrix(np.array(summary["confusion_matrix_pooled"]), class_names, out / CONFUSION_NAME,
                              title=f"CM-CNN {cfg.dataset}: {summary['accuracy_mean'] * 100:.1f}% "
                                    f"({summary['folds']} fold{'s' if summary['folds'] > 1 else ''})")
        metrics["confusion_png"] = str(out / CONFUSION_NAME)
    metrics["timings"]["total_seconds"] = time.perf_counter() - t_start
    write_json_atomic(out / METRICS_NAME, metrics)
    LOG.info("metrics written: %s (%.1fs total)", out / METRICS_NAME, metrics["timings"]["total_seconds"])
    distributed.barrier()
    return TrainingResult(output_dir=out, checkpoint=ckpt_path, metrics_path=out / METRICS_NAME,
                          metrics=metrics, fold_metrics=fold_metrics)


def _metadata(cfg: TrainConfig, record: Dict[str, Any], class_names: Sequence[str]) -> Dict[str, Any]:
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


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[Sequence[str] | argparse.Namespace] = None) -> int:
    """Console entry point ``cmcnn-train``; returns the exit status.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``) or an
            already parsed namespace from :func:`get_args_parser`.
    """
    from . import distributed

    args = argv if isinstance(argv, argparse.Namespace) else get_args_parser().parse_args(argv)
    try:
        cfg = build_config(args)
        setup_logging(cfg.log_level)
        run_training(cfg)
    except (ConfigError, TrainingError) as exc:
        setup_logging("INFO")
        LOG.error("%s", exc)
        return 2
    except ValueError as exc:  # other modules' documented errors (PreprocessingError, CheckpointError, ...)
        LOG.error("%s: %s", type(exc).__name__, exc)
        return 2
    except KeyboardInterrupt:
        LOG.error("interrupted; earlier outputs were left as they were")
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
