"""One model fit of the protocol (paper Section III-C, IV-B): FEN pre-training, then the whole network.

The paper pre-trains the grey and LBP FENs on CASIA-WebFace and the depth
FEN on a 3-D face set; those sets are not redistributable, so each FEN is
pre-trained here through its own classification head on the fold's training
rows for ``pretrain_epochs`` before CM-CNN is trained end to end with SGD.
Under torchrun each rank trains on its shard of the rows
(:mod:`cmcnn_training.distributed`). ``cmcnn-train`` calls :func:`fit` once
per fold and ``cmcnn-reproduce`` once per row and fold.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from cmcnn_ros.model import cmcnn
from cmcnn_ros.model.config import ModelConfig
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.tools import progress_bar

from . import distributed
from .builders import build_loss, make_scheduler
from .config import TrainConfig
from .crops import CropSet
from .engine import AugmentConfig, CropBatches, EpochStats, Predictions, TrainTargets, evaluate, train_one_epoch
from .run_state import FitState

logger = logging.getLogger("cmcnn_training.fitting")


@dataclass
class FitResult:
    """History of one model fit."""

    model: torch.nn.Module
    pretrain_history: List[EpochStats]
    history: List[EpochStats]
    seconds: float
    curve: List[Dict[str, Any]] = field(default_factory=list)


Validate = Callable[[torch.nn.Module, int], Dict[str, Any]]


class WeightEma:
    """Exponential moving average of the weights and BatchNorm statistics, updated every step.

    The averaged network generalises better than the last SGD iterate on
    noisy labels such as FER2013's; it is what a run validates and saves.

    Args:
        model: the network being trained (not copied again after this).
        decay: per-step decay, e.g. 0.999 (a horizon of ~1000 steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.source = model

    def _average(self, ema: List[torch.Tensor], current: List[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # Warm-up (as timm's ModelEmaV3): early on the average would be mostly the random
        # initialisation, useless for the per-epoch validation; the decay grows to its value
        # after ~10 / (1 - decay) steps.
        n = float(n_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            if torch.is_floating_point(ema[0]):
                torch._foreach_lerp_(ema, current, 1.0 - decay)
            else:  # BatchNorm's step counters: follow the model
                for e, c in zip(ema, current):
                    e.copy_(c)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    def update(self) -> None:
        self.averaged.update_parameters(self.source)


def class_alpha(cfg: TrainConfig, labels: np.ndarray, num_classes: int) -> Optional[torch.Tensor]:
    """Per-class alpha of eq. (5) for ``--class-weights`` (None: the scalar ``focal_alpha``).

    ``sqrt_inverse``: 1/sqrt(frequency), scaled so the average weight over
    the training faces is 1 (the loss keeps its scale, the learning rate its meaning).
    """
    if cfg.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    w *= counts.sum() / max(float((w * counts).sum()), 1e-12)
    return torch.tensor(w * cfg.focal_alpha, dtype=torch.float32)


def fit(crops: CropSet, rows: np.ndarray, label_index: np.ndarray, model_config: ModelConfig,
        params: PreprocessingParams, cfg: TrainConfig, device: torch.device, seed: int, desc: str = "",
        on_epoch: Optional[Callable[[str, int, int], None]] = None, state: Optional[FitState] = None,
        save_state: Optional[Callable[[FitState], None]] = None,
        validate: Optional[Validate] = None) -> FitResult:
    """Build a fresh CM-CNN and train it on ``rows``: FEN pre-training, then the whole network.

    Args:
        crops: all crops.
        rows: training rows of ``crops``.
        label_index: class index per crop row.
        model_config: the network to build.
        params: preprocessing parameters (for the flip augmentation).
        cfg: run configuration.
        device: torch device.
        seed: seed of this fit (initialisation, order, augmentation).
        desc: label for logs and progress bars.
        on_epoch: called as ``on_epoch(stage, epoch, epochs)`` after every
            epoch (``stage`` is ``"pretrain"`` or ``"train"``), for the
            progress display of callers such as ``cmcnn-reproduce``.
        state: progress saved by an earlier, interrupted fit of the same
            rows and settings: training continues after its last epoch.
        save_state: called with the :class:`FitState` after every epoch
            (and once when done) to make the fit resumable.
        validate: ``validate(model, epoch) -> record`` scored on the
            network being trained (its EMA when there is one) every
            ``cfg.val_every`` fusion epochs, for the learning curve.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = cmcnn(model_config).to(device)
    alpha = class_alpha(cfg, label_index[rows], model_config.num_classes)
    loss_fn = build_loss(cfg, alpha=alpha.to(device) if alpha is not None else None)
    targets = TrainTargets(model_config.num_classes, cfg.soft_sigma if cfg.loss == "soft_focal" else None,
                           cfg.label_smoothing, cfg.mixup_alpha, cfg.mixup_p)
    augment = AugmentConfig(enabled=cfg.augment, photometric=cfg.augment_photometric)
    batch_args = (crops, rows, label_index, model_config.modalities, cfg.batch_size)
    batch_kwargs = {"shuffle": True, "seed": seed, "augment": augment, "depth_dropout": cfg.depth_dropout,
                        "preprocessing": params, "drop_last": True}
    job = distributed.current()
    if job.enabled:
        # torchrun: each rank trains on its shard of the fold's training rows; DDP averages the gradients.
        batches = distributed.ShardedCropBatches(*batch_args, rank=job.rank, world_size=job.world_size,
                                                 **batch_kwargs)
        trained = distributed.DDPModel(model, device)
    else:
        batches = CropBatches(*batch_args, **batch_kwargs)
        trained = model
    if cfg.compile:
        # Only the training step is compiled; evaluation and the saved weights use ``model`` itself.
        trained = torch.compile(trained)
    ema: Optional[WeightEma] = None
    elapsed = 0.0
    histories: Dict[str, List[EpochStats]] = {"pretrain": [], "train": []}
    curve: List[Dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state.model)
        batches.load_state_dict(state.sampler)
        torch.set_rng_state(state.torch_rng)
        histories = {"pretrain": FitState.stats(state.pretrain_history), "train": FitState.stats(state.history)}
        curve, elapsed = list(state.curve), state.seconds
        logger.info("%s: resuming after %s epoch %d", desc, state.stage, state.epoch)

    def snapshot(stage: str, epoch: int, optimizer: Any, scheduler: Any) -> FitState:
        return FitState(stage=stage, epoch=epoch, model=model.state_dict(),
                        ema=ema.averaged.state_dict() if ema is not None else None,
                        optimizer=optimizer.state_dict() if optimizer is not None else None,
                        scheduler=scheduler.state_dict() if scheduler is not None else None,
                        sampler=batches.state_dict(), torch_rng=torch.get_rng_state(),
                        pretrain_history=[dataclasses.asdict(h) for h in histories["pretrain"]],
                        history=[dataclasses.asdict(h) for h in histories["train"]], curve=list(curve),
                        seconds=elapsed + time.perf_counter() - t0)

    stages = (("pretrain", cfg.pretrain_epochs, cfg.pretrain_lr or cfg.lr, "fens", "FEN pre-training"),
              ("train", cfg.epochs, cfg.lr, "fusion", "training"))
    done_stages = {"pretrain": 1, "train": 2, "done": 3}[state.stage] - 1 if state is not None else 0
    for index, (stage, epochs, lr, mode, name) in enumerate(stages):
        if index < done_stages or epochs <= 0:
            continue
        resume_here = state is not None and state.stage == stage
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg, epochs)
        if mode == "fusion" and cfg.ema_decay > 0:
            ema = WeightEma(model, cfg.ema_decay)
        if resume_here:
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            if ema is not None and state.ema is not None:
                ema.averaged.load_state_dict(state.ema)
        first = state.epoch + 1 if resume_here else 1
        history = histories[stage]
        bar = progress_bar(range(first, epochs + 1), desc=f"{desc} {name}".strip(),
                           enabled=cfg.progress and job.is_main, unit="ep", initial=first - 1, total=epochs)
        log_every = max(1, epochs // 10)
        for epoch in bar:
            stats = train_one_epoch(trained, batches, loss_fn, optimizer, device, epoch, mode=mode,
                                    progress=False, targets=targets if mode == "fusion" else None,
                                    after_step=ema.update if ema is not None else None, amp=cfg.amp)
            scheduler.step()
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stage, epoch, epochs)
            bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.accuracy:.3f}")
            if validate is not None and mode == "fusion" and (epoch % cfg.val_every == 0 or epoch == epochs):
                curve.append(validate(ema.module if ema is not None else model, epoch))
            if epoch % log_every == 0 or epoch == epochs:
                logger.info("%s %s epoch %d/%d: loss %.4f, train acc %.3f%s, lr %.2g, %.1fs", desc, name, epoch,
                            epochs, stats.loss, stats.accuracy,
                            "" if mode == "fusion" else " (" + ", ".join(
                                f"{k} {v:.3f}" for k, v in stats.per_head_accuracy.items()) + ")",
                            stats.lr, stats.seconds)
            if save_state is not None:
                save_state(snapshot(stage, epoch, optimizer, scheduler))
        bar.close()
    final = ema.module if ema is not None else model
    if ema is None and state is not None and state.stage == "done" and state.ema is not None:
        ema = WeightEma(model, cfg.ema_decay)
        ema.averaged.load_state_dict(state.ema)
        final = ema.module
    if save_state is not None and (state is None or state.stage != "done"):
        save_state(snapshot("done", 0, None, None))
    return FitResult(model=final, pretrain_history=histories["pretrain"], history=histories["train"],
                     seconds=elapsed + time.perf_counter() - t0, curve=curve)


def predict_rows(model: torch.nn.Module, crops: CropSet, rows: np.ndarray, label_index: np.ndarray,
                 modalities: Sequence[str], batch_size: int, device: torch.device,
                 progress: bool) -> Predictions:
    """Predictions of ``model`` for some crop rows (no augmentation)."""
    batches = CropBatches(crops, rows, label_index, modalities, max(batch_size, 64))
    return evaluate(model, batches, device, progress=progress)
