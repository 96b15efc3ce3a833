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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cmcnn_ros.atomic_io import atomic_open
from cmcnn_ros.classes import canonical_name
from cmcnn_ros.device import resolve_device
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.tools import configure_logging

from . import distributed
from .builders import build_model_config, build_preprocessing
from .config import ConfigError, TrainConfig, add_config_arguments, build_config
from .calibration import calibration_report, fit_temperature, log_probs, softmax_t, split_for_fitting
from .crops import CropSet, get_crops
from .datasets.selection import make_splits, select_samples
from .engine import flip_averaged, flipped_crops
from .fitting import FitResult, Validate, fit, predict_rows
from .metrics import EvaluationMetrics, compute_metrics, summarise_folds
from .mixing import concat_crops, load_mix_crops, parse_mix, parse_val
from .run_state import STATE_NAME, ResumeError, RunState, resume_config
from .utils import METRICS_NAME, TrainingError, check_outputs, checkpoint_metadata, git_commit, \
    load_training_dataset, run_environment, save_model_checkpoint, seed_everything, write_training_report

logger = logging.getLogger("cmcnn_training.train")

CURVE_NAME = "learning_curve.png"


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
               "split instead. Presets: --config default|quick|synthetic|real_faces. A run writes "
               "train_state.pt after every epoch; --resume RUN_DIR continues it after a kill.")
    parser.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                        help="continue the interrupted run in RUN_DIR from its last completed epoch (its "
                             "settings come from RUN_DIR/run_config.json; other flags may only change how it "
                             "runs: --threads, --device, --workers, --progress, --log-level, --cache-dir)")
    return add_config_arguments(parser)


@dataclass
class TrainingResult:
    """What :func:`run_training` produced."""

    output_dir: Path
    checkpoint: Optional[Path]
    metrics_path: Path
    metrics: Dict[str, Any]
    fold_metrics: List[EvaluationMetrics] = field(default_factory=list)


@dataclass
class TrainingData:
    """The crops of one run: training (with mixed sets), the class list, and the validation set."""

    crops: CropSet
    repeat: np.ndarray
    label_index: np.ndarray
    class_names: List[str]
    samples_used: int
    cache: Any
    val: Optional[CropSet] = None
    val_labels: Optional[np.ndarray] = None
    val_flipped: Optional[CropSet] = None


def load_training_data(cfg: TrainConfig, params: PreprocessingParams, modalities: Sequence[str],
                       job: distributed.DistInfo) -> TrainingData:
    """Dataset -> selected samples -> cached crops of it, of the mixed sets and of the validation set."""
    dataset = load_training_dataset(cfg.dataset, cfg.root, cfg.dataset_options)
    keep, class_names = select_samples(dataset, cfg)
    logger.info("dataset %s at %s: %d of %d samples, classes %s", cfg.dataset, cfg.root, len(keep), len(dataset),
                class_names)
    view = dataset if len(keep) == len(dataset) else dataset.subset(keep)
    progress = cfg.progress and job.is_main
    if job.enabled and not job.is_main:
        distributed.barrier()  # rank 0 fills the crop cache first
    try:
        crops, cache = get_crops(view, params, modalities, cfg.cache_dir, box_mode=cfg.box_mode,
                                 workers=cfg.workers, progress=progress, name=cfg.dataset)
        repeat = np.ones(len(crops), np.int64)
        if cfg.mix:
            mixed = load_mix_crops(parse_mix(cfg.mix), class_names, params, modalities, cfg.cache_dir,
                                   cfg.workers, progress)
            crops, source = concat_crops([(cfg.dataset, crops)] + [(name, c) for name, c, _, _ in mixed])
            repeat = np.array([1] + [r for _, _, _, r in mixed], np.int64)[source]
        val = None
        if cfg.val:
            val = load_mix_crops([parse_val(cfg.val, cfg.root)], class_names, params, modalities, cfg.cache_dir,
                                 cfg.workers, progress, prefix="val")[0][1]
    finally:
        if job.enabled and job.is_main:
            distributed.barrier()
    label_of = {c: i for i, c in enumerate(class_names)}
    data = TrainingData(crops=crops, repeat=repeat, class_names=class_names, samples_used=len(keep), cache=cache,
                        label_index=np.array([label_of[canonical_name(lb)] for lb in crops.labels], np.int64))
    if val is not None:
        data.val = val
        data.val_labels = np.array([label_of[canonical_name(lb)] for lb in val.labels], np.int64)
        data.val_flipped = flipped_crops(val, params) if cfg.tta_flip else None
    return data


def make_validation(data: TrainingData, modalities: Sequence[str], cfg: TrainConfig,
                    device: torch.device) -> Optional[Validate]:
    """``validate(model, epoch) -> record`` on the validation set (None without one), for the learning curve."""
    if data.val is None:
        return None
    rows = np.arange(len(data.val))

    def validate(model: torch.nn.Module, epoch: int) -> Dict[str, Any]:
        pred = predict_rows(model, data.val, rows, data.val_labels, modalities, cfg.batch_size, device, False)
        record: Dict[str, Any] = {"epoch": epoch, "accuracy": float(np.mean(pred.y_pred == pred.y_true))}
        if data.val_flipped is not None:
            mirror = predict_rows(model, data.val_flipped, rows, data.val_labels, modalities, cfg.batch_size,
                                  device, False)
            record["accuracy_flip"] = float(np.mean(flip_averaged(pred, mirror).y_pred == pred.y_true))
        logger.info("epoch %d: validation accuracy %.4f%s", epoch, record["accuracy"],
                    f" (with flip averaging {record['accuracy_flip']:.4f})" if "accuracy_flip" in record else "")
        model.train()
        return record
    return validate


def fold_outcome(k: int, result: FitResult, data: TrainingData, train_rows: np.ndarray, test_rows: np.ndarray,
                 cfg: TrainConfig, modalities: Sequence[str], device: torch.device,
                 job: distributed.DistInfo) -> Dict[str, Any]:
    """A finished fold's report entry and its test predictions (from which its metrics are computed)."""
    crops = data.crops
    record: Dict[str, Any] = {
        "fold": k, "train_subjects": sorted(set(crops.subjects[train_rows].tolist())),
        "test_subjects": sorted(set(crops.subjects[test_rows].tolist())),
        "train_count": int(len(train_rows)), "test_count": int(len(test_rows)),
        "train_seconds": result.seconds,
        "final_train_loss": result.history[-1].loss if result.history else None,
        "final_train_accuracy": result.history[-1].accuracy if result.history else None,
        "pretrain_accuracy": result.pretrain_history[-1].per_head_accuracy if result.pretrain_history else None,
        "learning_curve": result.curve,
    }
    outcome: Dict[str, Any] = {"record": record, "y_true": None, "y_pred": None}
    if len(test_rows) and job.is_main:
        pred = predict_rows(result.model, crops, test_rows, data.label_index, modalities, cfg.batch_size, device,
                            cfg.progress)
        outcome.update(y_true=pred.y_true.tolist(), y_pred=pred.y_pred.tolist(),
                       intensities=crops.intensities[test_rows].tolist())
        record["eval_seconds"] = pred.seconds
    return outcome


def outcome_metrics(outcome: Dict[str, Any], class_names: Sequence[str]) -> Optional[EvaluationMetrics]:
    """The metrics of a fold's test predictions (None when it had no test rows)."""
    if outcome["y_true"] is None:
        return None
    return compute_metrics(np.array(outcome["y_true"], np.int64), np.array(outcome["y_pred"], np.int64),
                           class_names, intensities=np.array(outcome["intensities"]))


def run_training(cfg: TrainConfig, resume: bool = False) -> TrainingResult:
    """Run the whole protocol for ``cfg`` and write the outputs.

    Args:
        cfg: the run's settings.
        resume: continue the interrupted run in ``cfg.output_dir`` from its
            ``train_state.pt`` (see :mod:`cmcnn_training.run_state`).

    Raises:
        ConfigError: invalid configuration.
        TrainingError: existing outputs without overwrite, empty splits, data problems.
        ResumeError: the state to resume is unreadable or of another configuration.
    """
    cfg.validate()
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    will_save = cfg.folds == 1 or cfg.final
    state = RunState(out, cfg)
    if resume:
        state.load()
    else:
        check_outputs(out, cfg, will_save)
        if state.path.exists() and not cfg.overwrite:
            raise TrainingError(f"a run is in progress in {out} ({state.path}): pass --resume {out} to continue "
                                "it, or --overwrite to start it again")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)  # a bad --device stops here, before any process group is joined
    # Under torchrun: join the job (NCCL on GPUs, Gloo on CPU); rank 0 alone evaluates and writes outputs.
    job, job_device = distributed.init_distributed(cfg.device)
    device = job_device or device
    params = build_preprocessing(cfg)
    modalities = tuple(cfg.modalities)
    data = load_training_data(cfg, params, modalities, job)
    model_config = build_model_config(cfg, len(data.class_names), params.crop_size)
    if job.is_main and not resume:
        state.start()
    validate = make_validation(data, model_config.modalities, cfg, device)
    splits = [(np.repeat(tr, data.repeat[tr]), te) for tr, te in make_splits(data.crops.subjects, cfg)]
    save = state.save_epoch if job.is_main else None

    outcomes: List[Dict[str, Any]] = list(state.done_folds)
    final_model = None
    for k, (train_rows, test_rows) in enumerate(splits):
        if k < len(outcomes) and not (len(splits) == 1):
            continue  # finished before the interruption; its predictions are in the state
        name = f"fold {k + 1}/{len(splits)}" if len(splits) > 1 else "holdout"
        logger.info("%s: %d train samples (%d subjects), %d test samples (%d subjects)", name, len(train_rows),
                    len(set(data.crops.subjects[train_rows])), len(test_rows),
                    len(set(data.crops.subjects[test_rows])))
        result = fit(data.crops, train_rows, data.label_index, model_config, params, cfg, device,
                     cfg.seed + 1000 * k, desc=name, state=state.fit_state(k),
                     save_state=(lambda st, k=k: save(k, st)) if save else None,
                     validate=validate)
        outcome = fold_outcome(k, result, data, train_rows, test_rows, cfg, model_config.modalities, device, job)
        m = outcome_metrics(outcome, data.class_names)
        if m is not None:
            logger.info("%s: test accuracy %.4f on %d samples", name, m.accuracy, m.count)
        if cfg.save_fold_checkpoints and len(splits) > 1 and job.is_main:
            save_model_checkpoint(out / f"fold_{k:02d}.pt", result.model, data.class_names, params,
                                  checkpoint_metadata(cfg, outcome["record"], data.class_names),
                                  overwrite=cfg.overwrite)
            result.model.to(device)
        if len(splits) == 1:
            final_model = result.model
            outcomes = [outcome]
        else:
            outcomes.append(outcome)
            if job.is_main:
                state.finish_fold(k, outcome)

    final_record: Optional[Dict[str, Any]] = outcomes[0]["record"] if len(splits) == 1 else None
    if cfg.final and len(splits) > 1:
        logger.info("final model: training on all %d samples", len(data.crops))
        all_rows = np.repeat(np.arange(len(data.crops)), data.repeat)
        k = len(splits)
        result = fit(data.crops, all_rows, data.label_index, model_config, params, cfg, device,
                     cfg.seed + 999_999, desc="final", state=state.fit_state(k),
                     save_state=(lambda st: save(k, st)) if save else None)
        final_model = result.model
        final_record = {"train_subjects": sorted(set(data.crops.subjects.tolist())), "train_count": len(data.crops),
                        "train_seconds": result.seconds,
                        "final_train_accuracy": result.history[-1].accuracy if result.history else None}
    fold_metrics = [m for m in (outcome_metrics(o, data.class_names) for o in outcomes) if m is not None]
    for o, m in zip(outcomes, fold_metrics):
        o["record"]["metrics"] = m.to_dict()
    if not job.is_main:
        distributed.barrier()  # wait for rank 0's outputs, then leave together
        return TrainingResult(output_dir=out, checkpoint=None, metrics_path=out / METRICS_NAME, metrics={})
    return write_outputs(cfg, data, params, model_config, job, device, outcomes, fold_metrics, final_model,
                         final_record, t_start)


def write_outputs(cfg: TrainConfig, data: TrainingData, params: PreprocessingParams, model_config: Any,
                  job: distributed.DistInfo, device: torch.device, outcomes: List[Dict[str, Any]],
                  fold_metrics: List[EvaluationMetrics], final_model: Optional[torch.nn.Module],
                  final_record: Optional[Dict[str, Any]], t_start: float) -> TrainingResult:
    """The checkpoint, the learning curve, the confusion matrix and ``metrics.json`` (rank 0)."""
    out = Path(cfg.output_dir)
    summary = summarise_folds(fold_metrics) if fold_metrics else None
    if summary:
        logger.info("accuracy over %d fold(s): %.4f ± %.4f (pooled %.4f)", summary["folds"],
                    summary["accuracy_mean"], summary["accuracy_std"], summary["accuracy_pooled"])
    metrics: Dict[str, Any] = {
        "summary": summary,
        "folds": [o["record"] for o in outcomes],
        "final": final_record,
        "class_names": data.class_names,
        "dataset": {"name": cfg.dataset, "root": os.path.abspath(cfg.root), "samples_used": data.samples_used,
                    "crops": len(data.crops), "crop_stats": data.crops.stats, "crop_cache": data.cache.path,
                    "crop_cache_hit": data.cache.hit},
        "config": cfg.to_dict(),
        "model_config": model_config.to_dict(),
        "preprocessing": params.to_dict(),
        "git_commit": git_commit(),
        "environment": run_environment(device, job),
        "timings": {"crops_seconds": data.cache.seconds, "total_seconds": None},
    }
    out.mkdir(parents=True, exist_ok=True)
    if cfg.calibrate and final_model is not None and data.val is not None:
        final_model, metrics["calibration"] = calibrate_on_validation(final_model, data, model_config.modalities,
                                                                      cfg, device)
        metrics["model_config"] = final_model.config.to_dict()   # what the checkpoint holds: its temperature
    ckpt_path: Optional[Path] = None
    if final_model is not None:
        ckpt_path = out / cfg.checkpoint_name
        meta = checkpoint_metadata(cfg, final_record or {}, data.class_names)
        if summary:
            meta["cv_accuracy_mean"] = summary["accuracy_mean"]
            meta["cv_accuracy_std"] = summary["accuracy_std"]
        save_model_checkpoint(ckpt_path, final_model, data.class_names, params, meta, overwrite=True)
        metrics["checkpoint"] = str(ckpt_path)
    curve = (final_record or {}).get("learning_curve")
    if curve:
        metrics["learning_curve_png"] = str(plot_learning_curve(curve, out / CURVE_NAME, cfg))
    metrics_path = write_training_report(out, metrics, cfg.dataset, t_start)
    # Finished: metrics.json marks it, and the resumable state (weights, optimiser) is dead weight.
    (out / STATE_NAME).unlink(missing_ok=True)
    distributed.barrier()
    return TrainingResult(output_dir=out, checkpoint=ckpt_path, metrics_path=metrics_path,
                          metrics=metrics, fold_metrics=fold_metrics)


def calibrate_on_validation(model: torch.nn.Module, data: TrainingData, modalities: Sequence[str], cfg: TrainConfig,
                            device: torch.device) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Fit the temperature on half of every class of the validation set; report ECE on the other half."""
    rows = np.arange(len(data.val))
    pred = predict_rows(model, data.val, rows, data.val_labels, modalities, cfg.batch_size, device, False)
    fit_rows, report_rows = split_for_fitting(pred.y_true, 0.5, cfg.seed)
    z = log_probs(pred.probs)
    temperature = fit_temperature(z[fit_rows], pred.y_true[fit_rows])
    before = calibration_report(softmax_t(z[report_rows], 1.0), pred.y_true[report_rows])
    after = calibration_report(softmax_t(z[report_rows], temperature), pred.y_true[report_rows])
    logger.info("calibration: temperature %.3f; ECE on the held-out half of the validation set %.2f %% -> %.2f %%",
                temperature, 100 * before.ece, 100 * after.ece)
    model.config = model.config.replace(temperature=temperature * model.config.temperature)
    return model, {"temperature": model.config.temperature, "fit_faces": int(len(fit_rows)),
                   "held_out_before": before.to_dict(), "held_out_after": after.to_dict()}


def plot_learning_curve(curve: List[Dict[str, Any]], path: Path, cfg: TrainConfig) -> Path:
    """Validation accuracy by epoch (and with flip averaging) as a PNG, written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in curve]
    ax.plot(epochs, [100 * r["accuracy"] for r in curve], label="validation")
    if any("accuracy_flip" in r for r in curve):
        ax.plot(epochs, [100 * r.get("accuracy_flip", float("nan")) for r in curve], label="with flip averaging")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"CM-CNN learning curve ({cfg.dataset}, validation {parse_val(cfg.val, cfg.root).dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path


def main(argv: Optional[Sequence[str] | argparse.Namespace] = None) -> int:
    """Console entry point ``cmcnn-train``; returns the exit status.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``) or an
            already parsed namespace from :func:`get_args_parser`.
    """
    args = argv if isinstance(argv, argparse.Namespace) else get_args_parser().parse_args(argv)
    given = dict(vars(args))
    resume_dir = given.pop("resume", None)
    try:
        cfg = resume_config(resume_dir, given) if resume_dir else build_config(given)
        configure_logging(level=cfg.log_level, timestamps=True)
        run_training(cfg, resume=bool(resume_dir))
    except (ConfigError, TrainingError, ResumeError) as exc:
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
