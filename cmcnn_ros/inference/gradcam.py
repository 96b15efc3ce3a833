"""Grad-CAM attention maps of a CM-CNN on one input modality (paper Section IV-H, Fig. 8).

Grad-CAM (Selvaraju et al., the paper's [80]): the gradient of one class
score with respect to a feature map, averaged over space, weights that
map's channels; the ReLU of the weighted sum, upsampled to the crop, is the
"where did the network look" map. Here the feature map is a stage output of
one modality's FEN (Section III-C), and the class score is the fused
network's logit (before the softmax), so for a full G+L+D model the
grey map shows how the grey features were used *after* cross-modality
fusion, which is what Fig. 8 (c)/(f) compares with a grey-only model.

The paper does not say which layer it visualises. The FEN output ``f_m`` is
9x9 at the paper's 148 px crops but only 3x3 at the 48 px crops the CPU
sweep uses, so the default layer is the deepest FEN stage whose output is at
least :data:`MIN_MAP_SIDE` pixels wide (the FEN output itself at 148 px).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model.cmcnn import class_probabilities, model_temperature

#: Smallest feature-map side the default layer choice accepts.
MIN_MAP_SIDE = 6


class GradCamError(ValueError):
    """The model has no such modality or stage, or the input does not fit it."""


def default_stage(model: torch.nn.Module) -> int:
    """Index of the deepest FEN stage whose output is at least MIN_MAP_SIDE wide."""
    size, best = int(model.config.input_size), 0
    fen = next(iter(model.fens.values()))
    for i in range(len(fen.stages)):
        size //= 2
        if size >= MIN_MAP_SIDE:
            best = i
    return best


def grad_cam(model: torch.nn.Module, x: torch.Tensor, modality: str, target: Optional[torch.Tensor] = None,
             stage: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of ``modality`` for every sample of a batch.

    Args:
        model: an unfused :class:`~cmcnn_ros.model.cmcnn.CMCNN` (eval mode is set here).
        x: ``(B, M, S, S)`` float input in the model's channel order.
        modality: one of ``model.modalities``.
        target: class index per sample (default: the predicted class).
        stage: FEN stage whose output is explained (default: :func:`default_stage`).

    Returns:
        ``(maps, probs)``: ``(B, S, S)`` float32 maps in [0, 1] (each scaled
        to its own maximum; all zero when no location raises the score) and
        the ``(B, K)`` softmax probabilities.

    Raises:
        GradCamError: unknown modality or stage.
    """
    if modality not in model.fens:
        raise GradCamError(f"the model has no {modality!r} input; it reads {list(model.modalities)}")
    stages = model.fens[modality].stages
    stage = default_stage(model) if stage is None else int(stage)
    if not -len(stages) <= stage < len(stages):
        raise GradCamError(f"stage {stage} does not exist; the FEN has {len(stages)} stages")
    model.eval()
    saved = {}

    def hook(_module, _inp, out):
        saved["act"] = out

    handle = stages[stage].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            xin = x.detach().clone().requires_grad_(False)
            logits = model(xin)
            cls = logits.argmax(1) if target is None else target.to(logits.device).long()
            score = logits.gather(1, cls.view(-1, 1)).sum()
            act = saved["act"]
            grads = torch.autograd.grad(score, act)[0]
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    maps = (cam / peak).detach().cpu().numpy().astype(np.float32)
    probs = class_probabilities(logits.detach(), model_temperature(model)).cpu().numpy()
    return maps, probs


def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB float image in [0, 1]: the grey crop under a jet-coloured map (blue low, red high, as Fig. 8)."""
    import cv2

    grey = np.clip(np.asarray(crop, np.float32), 0.0, 1.0)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)[:, :, ::-1] / 255.0
    return np.clip((1 - alpha) * grey[..., None] + alpha * heat, 0.0, 1.0)


__all__ = ["GradCamError", "MIN_MAP_SIDE", "default_stage", "grad_cam", "overlay"]
