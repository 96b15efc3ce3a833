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

import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cmcnn_ros.model import cmcnn
from cmcnn_ros.model.config import ModelConfig
from cmcnn_ros.preprocessing.params import PreprocessingParams

from . import distributed
from .builders import build_loss, make_scheduler
from .config import TrainConfig
from .crops import CropSet
from .engine import AugmentConfig, CropBatches, EpochStats, Predictions, evaluate, train_one_epoch

logger = logging.getLogger("cmcnn_training.fitting")


@dataclass
class FitResult:
    """History of one model fit."""

    model: torch.nn.Module
    pretrain_history: List[EpochStats]
    history: List[EpochStats]
    seconds: float


def fit(crops: CropSet, rows: np.ndarray, label_index: np.ndarray, model_config: ModelConfig,
        params: PreprocessingParams, cfg: TrainConfig, device: torch.device, seed: int, desc: str = "",
        on_epoch: Optional[Callable[[str, int, int], None]] = None) -> FitResult:
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
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = cmcnn(model_config).to(device)
    loss_fn = build_loss(cfg)
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
                logger.info("%s %s epoch %d/%d: loss %.4f, train acc %.3f%s, lr %.2g, %.1fs", desc, name, epoch,
                         epochs, stats.loss, stats.accuracy,
                         "" if mode == "fusion" else " (" + ", ".join(
                             f"{k} {v:.3f}" for k, v in stats.per_head_accuracy.items()) + ")",
                         stats.lr, stats.seconds)
        bar.close()
        return history

    pre = run_stage(cfg.pretrain_epochs, cfg.pretrain_lr or cfg.lr, "fens", "FEN pre-training")
    main = run_stage(cfg.epochs, cfg.lr, "fusion", "training")
    return FitResult(model=model, pretrain_history=pre, history=main, seconds=time.perf_counter() - t0)


def predict_rows(model: torch.nn.Module, crops: CropSet, rows: np.ndarray, label_index: np.ndarray,
                 modalities: Sequence[str], batch_size: int, device: torch.device,
                 progress: bool) -> Predictions:
    """Predictions of ``model`` for some crop rows (no augmentation)."""
    batches = CropBatches(crops, rows, label_index, modalities, max(batch_size, 64))
    return evaluate(model, batches, device, progress=progress)
