"""Losses for CM-CNN: focal loss with soft labels (Section III-E, eq. 5), hard focal loss, CCE.

All losses take the network's logits ``s`` (:meth:`CMCNN.forward
<cmcnn_ros.model.cmcnn.CMCNN.forward>`) and use ``p = softmax(s)``, the
same probabilities :meth:`~cmcnn_ros.model.cmcnn.CMCNN.predict_proba`
returns; ``log p`` is computed with ``log_softmax`` for stability.

Definitions (per sample, ``K`` classes, ``alpha`` a scalar or per-class weights):

* categorical cross-entropy: ``CE = -sum_k y_k log p_k``;
* hard focal loss (eq. 5 with the one-hot label of class ``t``):
  ``FL = -alpha_t (1 - p_t)^gamma log p_t``;
* soft focal loss (eq. 5 with a soft label ``y``):
  ``SFL = -sum_k y_k alpha_k (1 - p_k)^gamma log p_k``. With a one-hot
  ``y`` it equals the hard focal loss; with ``gamma = 0, alpha = 1`` it is
  the cross-entropy against ``y``.

Soft label (Section III-E): a Gaussian over class *indices* centred on the
hard label, ``y_k ∝ exp(-(k - t)^2 / (2 sigma^2))``, normalised to sum 1.
The paper uses ``sigma = 0.1``. Numerically that is a one-hot label: the
neighbouring class gets ``exp(-1 / (2 * 0.01)) = exp(-50) ≈ 1.9e-22``
relative weight, below float32 resolution next to 1 (and ``exp(-200)`` for
classes two apart), so the "soft" focal loss with ``sigma = 0.1`` is the
hard focal loss to within 1e-21. Real smoothing needs ``sigma`` around
0.5-1 (``sigma = 1`` gives neighbours ``exp(-0.5) ≈ 0.61`` relative weight).
Note also that neighbours in index order (anger, disgust, fear, happiness,
sadness, surprise, neutral) are not necessarily similar expressions.

The paper sets ``alpha = 1`` and ``gamma = 2`` (the defaults here).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Alpha = Union[float, Sequence[float], torch.Tensor]
REDUCTIONS = ("mean", "sum", "none")


class LossError(ValueError):
    """Invalid loss name, parameters, logits or targets."""


# --------------------------------------------------------------------------- helpers
def soft_labels(
    target: torch.Tensor, num_classes: int, sigma: float = 0.1, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Gaussian soft labels over class indices (Section III-E).

    Args:
        target: Hard labels ``(B,)`` of integer class indices.
        num_classes: Number of classes ``K``.
        sigma: Standard deviation in class-index units (paper: 0.1, which is
            numerically one-hot; see the module docstring).
        dtype: Output dtype (computed in float64, then cast); default float32.

    Returns:
        ``(B, K)`` rows summing to 1, peaked at ``target``.

    Raises:
        LossError: ``sigma <= 0``, non-integer or out-of-range targets.
    """
    if not sigma > 0:
        raise LossError(f"soft label sigma must be > 0, got {sigma}")
    target = _check_hard_target(target, num_classes)
    k = torch.arange(num_classes, dtype=torch.float64, device=target.device)
    d = k.unsqueeze(0) - target.to(torch.float64).unsqueeze(1)
    w = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (w / w.sum(dim=1, keepdim=True)).to(dtype or torch.float32)


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise LossError(f"logits must be a float tensor of shape (B, K), got {shape}")


def _check_hard_target(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    if target.dim() != 1 or target.is_floating_point() or target.dtype == torch.bool:
        raise LossError(f"hard targets must be an integer tensor of shape (B,), got {target.dtype} "
                        f"{tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise LossError(f"targets must be class indices in [0, {num_classes}), got range "
                        f"[{int(target.min())}, {int(target.max())}]")
    return target


def _target_distribution(
    logits: torch.Tensor, target: torch.Tensor, sigma: Optional[float]
) -> torch.Tensor:
    """``(B, K)`` label distribution from hard labels (one-hot or Gaussian) or given soft labels."""
    b, k = logits.shape
    if isinstance(target, torch.Tensor) and target.dim() == 2:
        if tuple(target.shape) != (b, k) or not target.is_floating_point():
            raise LossError(f"soft targets must be float (B, K) = {(b, k)}, got {target.dtype} {tuple(target.shape)}")
        return target.to(logits.dtype)
    target = _check_hard_target(target, k)
    if target.shape[0] != b:
        raise LossError(f"{target.shape[0]} targets for {b} logits rows")
    if sigma is None:
        return F.one_hot(target.to(logits.device), k).to(logits.dtype)
    return soft_labels(target.to(logits.device), k, sigma, dtype=logits.dtype)


def _alpha_tensor(alpha: Alpha, logits: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
    if a.dim() == 0:
        return a
    if a.dim() != 1 or a.shape[0] != logits.shape[1]:
        raise LossError(f"alpha must be a scalar or {logits.shape[1]} per-class weights, got shape {tuple(a.shape)}")
    return a.unsqueeze(0)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise LossError(f"reduction={reduction!r}; choose from {REDUCTIONS}")


# --------------------------------------------------------------------------- functions
def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Categorical cross-entropy ``-sum_k y_k log softmax(s)_k``.

    Args:
        logits: ``(B, K)`` scores.
        target: ``(B,)`` class indices or ``(B, K)`` label distributions.
        label_smoothing: Uniform label smoothing as in ``torch.nn.CrossEntropyLoss``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        LossError: bad shapes, targets or reduction.
    """
    _check_logits(logits)
    y = _target_distribution(logits, target, None)
    if label_smoothing:
        if not 0.0 <= label_smoothing < 1.0:
            raise LossError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        y = y * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    return _reduce(-(y * F.log_softmax(logits, dim=1)).sum(dim=1), reduction)


def soft_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    sigma: Optional[float] = 0.1,
    alpha: Alpha = 1.0,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss with soft labels (eq. 5): ``-sum_k y_k alpha_k (1 - p_k)^gamma log p_k``.

    Args:
        logits: ``(B, K)`` scores; ``p = softmax(logits)``.
        target: ``(B,)`` class indices (turned into Gaussian soft labels of
            width ``sigma``) or ``(B, K)`` label distributions used as given.
        sigma: Gaussian width in class-index units; ``None`` means one-hot.
        alpha: Scalar or per-class weights (paper: 1).
        gamma: Focusing parameter (paper: 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        LossError: bad shapes, targets, parameters or reduction.
    """
    _check_logits(logits)
    if gamma < 0:
        raise LossError(f"gamma must be >= 0, got {gamma}")
    y = _target_distribution(logits, target, sigma)
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    # clamp: 1 - p can round to a tiny negative, and pow of that with a
    # non-integer gamma would be NaN.
    modulating = (1.0 - p).clamp_min(0.0).pow(gamma)
    loss = -(y * _alpha_tensor(alpha, logits) * modulating * log_p).sum(dim=1)
    return _reduce(loss, reduction)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: Alpha = 1.0, gamma: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """Hard-label focal loss (eq. 5 with one-hot labels): ``-alpha_t (1 - p_t)^gamma log p_t``.

    Args:
        logits: ``(B, K)`` scores.
        target: ``(B,)`` class indices.
        alpha: Scalar or per-class weights.
        gamma: Focusing parameter.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        LossError: bad shapes, targets, parameters or reduction.
    """
    if isinstance(target, torch.Tensor) and target.dim() == 2:
        raise LossError("focal_loss takes hard class indices; use soft_focal_loss for (B, K) targets")
    return soft_focal_loss(logits, target, sigma=None, alpha=alpha, gamma=gamma, reduction=reduction)


# --------------------------------------------------------------------------- modules
class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`.

    Args:
        label_smoothing: Uniform label smoothing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.label_smoothing, self.reduction)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss` (hard labels).

    Args:
        alpha: Scalar or per-class weights.
        gamma: Focusing parameter.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, alpha: Alpha = 1.0, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.alpha, self.gamma, self.reduction)


class SoftFocalLoss(nn.Module):
    """Module form of :func:`soft_focal_loss` (eq. 5 with Gaussian soft labels).

    Args:
        sigma: Soft-label width in class-index units (paper: 0.1).
        alpha: Scalar or per-class weights (paper: 1).
        gamma: Focusing parameter (paper: 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self, sigma: float = 0.1, alpha: Alpha = 1.0, gamma: float = 2.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.alpha = alpha
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_focal_loss(logits, target, self.sigma, self.alpha, self.gamma, self.reduction)


_LOSSES: Dict[str, Callable[..., nn.Module]] = {
    "soft_focal": SoftFocalLoss,
    "focal": FocalLoss,
    "cce": CrossEntropyLoss,
}
_ALIASES = {"cross_entropy": "cce", "ce": "cce", "softfocal": "soft_focal", "soft-focal": "soft_focal"}
LOSS_NAMES = tuple(_LOSSES)


def make_loss(name: str = "soft_focal", **kwargs: Any) -> nn.Module:
    """Build a loss module by name.

    Args:
        name: ``"soft_focal"`` (paper default), ``"focal"`` or ``"cce"``
            (aliases ``"cross_entropy"``, ``"ce"``).
        **kwargs: Constructor arguments of that loss, e.g. ``sigma=0.5``,
            ``gamma=2.0``, ``alpha=1.0``, ``label_smoothing=0.1``.

    Raises:
        LossError: unknown name or arguments the loss does not take.
    """
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in _LOSSES:
        raise LossError(f"unknown loss {name!r}; choose from {list(LOSS_NAMES)}")
    try:
        return _LOSSES[key](**kwargs)
    except TypeError as exc:
        raise LossError(f"bad arguments for loss {key!r}: {exc}") from exc


__all__ = [
    "CrossEntropyLoss",
    "FocalLoss",
    "LOSS_NAMES",
    "LossError",
    "SoftFocalLoss",
    "cross_entropy",
    "focal_loss",
    "make_loss",
    "soft_focal_loss",
    "soft_labels",
]
