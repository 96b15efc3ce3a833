"""What a :class:`~cmcnn_training.config.TrainConfig` builds (the role of torchvision's ``presets.py``).

The network configuration (paper Section III, Fig. 2) from the preset, the
modalities and the class list; the node's preprocessing parameters (Section
III-A; stored in the checkpoint so the node crops as training did); the
soft-label focal loss of eq. (5) or its baselines; and the per-epoch
learning-rate schedule (Section IV-B: SGD, rate halved every 100 epochs).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from cmcnn_ros.model.config import ModelConfig, ModelConfigError, preset_config
from cmcnn_ros.model.losses import make_loss
from cmcnn_ros.preprocessing.params import PreprocessingError, PreprocessingParams

from .config import ConfigError, TrainConfig


def build_model_config(cfg: TrainConfig, num_classes: int, crop_size: int) -> ModelConfig:
    """ModelConfig from the preset, the YAML/flag overrides, the modalities and the class count.

    ``input_size`` is derived here from the preprocessing's ``crop_size`` (the
    crop size's one home), never set on its own.

    Raises:
        ConfigError: overrides try to set modalities/num_classes (use the
            top-level settings) or are invalid.
    """
    clash = {"modalities", "num_classes", "input_size"} & set(cfg.model)
    if clash:
        raise ConfigError(f"model overrides {sorted(clash)} are set by --modalities, the class list and "
                          "preprocessing crop_size; remove them from 'model:'")
    try:
        return preset_config(cfg.model_preset, modalities=tuple(cfg.modalities), num_classes=num_classes,
                             input_size=crop_size, **cfg.model)
    except ModelConfigError as exc:
        raise ConfigError(f"model config: {exc}") from exc


def build_preprocessing(cfg: TrainConfig) -> PreprocessingParams:
    """PreprocessingParams: defaults with the config's overrides.

    Raises:
        ConfigError: unknown or invalid preprocessing keys.
    """
    try:
        return PreprocessingParams.from_dict(dict(cfg.preprocessing))
    except PreprocessingError as exc:
        raise ConfigError(f"preprocessing: {exc}") from exc


def build_loss(cfg: TrainConfig, alpha: Optional[torch.Tensor] = None) -> torch.nn.Module:
    """The run's loss: soft-label focal (eq. 5), focal, or cross-entropy.

    Args:
        cfg: the run's settings.
        alpha: per-class weights of eq. (5) (``--class-weights``); default the scalar ``focal_alpha``.
    """
    a = alpha if alpha is not None else cfg.focal_alpha
    if cfg.loss == "soft_focal":
        return make_loss("soft_focal", sigma=cfg.soft_sigma, alpha=a, gamma=cfg.focal_gamma)
    if cfg.loss == "focal":
        return make_loss("focal", alpha=a, gamma=cfg.focal_gamma)
    return make_loss("ce")


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
