"""CM-CNN: FENs + cross-modality fusion + classifier (Section III, Figs. 2-5, eq. 4).

Data flow for an input ``x`` of shape ``(B, M, S, S)`` (channels in
``config.modalities`` order, ``S = config.input_size``: the checkpoint's
preprocessing ``crop_size``, 148 in the paper, 48 in the default weights)::

    f_m  = FEN_m(x[:, m])                    (B, C, S/16, S/16) per modality   Section III-C
    f_v  = fusion([f_m])                     (B, D)                            Section III-D
    s    = PReLU(FC(BN(f_v)))                (B, num_classes)  "logits"
    F    = sigmoid(s)                        eq. (4)

What the methods return (the training loss and inference must agree):

* :meth:`CMCNN.forward` returns ``s = PReLU(FC(BN(f_v)))`` (BN: the optional
  neck, see below), the pre-sigmoid scores of eq. (4), called logits.
* :meth:`CMCNN.predict_proba` returns ``softmax(s / T)``: a distribution over
  classes. With ``T = 1`` that is the ``p`` the focal loss of eq. (5) needs
  (:mod:`cmcnn_ros.model.losses` applies ``log_softmax`` to the same
  logits), so training and inference use one definition of probability;
  ``T = config.temperature`` is fitted after training (calibration) and
  never changes the argmax.
* :meth:`CMCNN.eq4_scores` returns ``F = sigmoid(s)`` literally as eq. (4)
  writes it: independent per-class scores in (0, 1) that do not sum to one.
  The sigmoid is monotonic, so ``argmax F = argmax s = argmax softmax(s)``;
  the class decision is the same whichever is used.

:meth:`CMCNN.fen_logits` runs each FEN through its own classification head
(Section III-C) for single-modality pre-training and evaluation.

Not in the paper, switchable in :class:`~cmcnn_ros.model.config.ModelConfig`:
the BatchNorm "neck" on ``f_v`` (``embedding_norm``) and the scaling of the
attention (``attention_scale``, ``attention_normalize``); their docstrings
give the measured reasons.

Build networks with :func:`cmcnn`::

    model = cmcnn()                                   # default preset
    model = cmcnn(preset="paper", num_classes=6)
    model = cmcnn(ModelConfig(modalities=("grey", "depth"), fusion="concat"))
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .cmfn import CMFN, ConcatFusion
from .config import ModelConfig, ModelConfigError, preset_config
from .fen import ConvBNPReLU, FENHead, ResidualStage, build_fen


class ModelInputError(ValueError):
    """The tensor given to a CM-CNN does not have the configured shape."""


class CMCNN(nn.Module):
    """Cross-modality attention CNN for facial expression recognition.

    Use :func:`cmcnn` rather than this constructor directly.

    Args:
        config: Network configuration.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.modalities = tuple(config.modalities)
        self.num_classes = int(config.num_classes)
        channels = config.feature_channels
        self.fens = nn.ModuleDict({m: build_fen(m, config) for m in self.modalities})
        self.fen_heads = nn.ModuleDict(
            {m: FENHead(channels, self.num_classes, config.fen_head_pool, config.dropout) for m in self.modalities}
        )
        if config.fusion == "cmfn" and len(self.modalities) > 1:
            self.fusion: nn.Module = CMFN(
                self.modalities,
                channels,
                reduction=config.attention_reduction,
                attention=config.attention,
                scale=config.attention_scale,
                normalize=config.attention_normalize,
            )
        else:
            # One modality has nothing to attend to; CMFN degenerates to pooling its features.
            self.fusion = ConcatFusion(len(self.modalities), channels)
        self.num_features = int(self.fusion.out_features)
        self.neck = nn.BatchNorm1d(self.num_features) if config.embedding_norm == "batchnorm" else nn.Identity()
        self.head_drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, self.num_classes)
        self.head_act = nn.PReLU()
        self.is_fused = False

    # ----------------------------------------------------------------- input
    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ModelInputError` unless ``x`` is ``(B, M, S, S)`` floating point.

        Args:
            x: Model input.

        Raises:
            ModelInputError: wrong rank, channel count, size or dtype.
        """
        s = self.config.input_size
        m = len(self.modalities)
        if not isinstance(x, torch.Tensor):
            raise ModelInputError(f"CM-CNN input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != m or x.shape[2] != s or x.shape[3] != s:
            raise ModelInputError(
                f"CM-CNN input must have shape (B, {m}, {s}, {s}) with channels {list(self.modalities)}, "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ModelInputError(f"CM-CNN input must be floating point in [0, 1], got dtype {x.dtype}")

    # -------------------------------------------------------------- features
    def fen_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per-modality FEN outputs ``f_m`` (each ``(B, C, S/16, S/16)``) in modality order."""
        self.check_input(x)
        return [fen(x[:, i : i + 1]) for i, fen in enumerate(self.fens.values())]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused embedding ``f_v`` of shape ``(B, num_features)`` (Fig. 4)."""
        return self.fusion(self.fen_features(x))

    def forward_head(self, f_v: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier of eq. (4) without the final sigmoid.

        Args:
            f_v: Fused embedding from :meth:`forward_features`.
            pre_logits: Return ``f_v`` after the optional BatchNorm neck and
                dropout instead of the logits.

        Raises:
            ModelInputError: a one-sample batch in training mode with the BatchNorm neck.
        """
        if self.training and f_v.shape[0] < 2 and isinstance(self.neck, nn.BatchNorm1d):
            raise ModelInputError(
                "training with embedding_norm='batchnorm' needs batches of 2 or more samples "
                "(drop the last short batch, or use embedding_norm='none')"
            )
        f_v = self.head_drop(self.neck(f_v))
        if pre_logits:
            return f_v
        return self.head_act(self.fc(f_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``s = PReLU(FC(f_v))`` of shape ``(B, num_classes)``.

        Args:
            x: ``(B, M, S, S)`` float tensor in [0, 1], channels in ``config.modalities`` order.

        Raises:
            ModelInputError: ``x`` has the wrong shape or dtype.
        """
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------ predictions
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``softmax(s / T)`` ``(B, num_classes)`` (``T``: ``config.temperature``)."""
        return class_probabilities(self(x), self.config.temperature)  # through __call__, so module hooks run

    def eq4_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``F = sigmoid(PReLU(FC(f_v)))`` exactly as eq. (4); per-class, not normalised."""
        return torch.sigmoid(self.forward(x))

    def fen_logits(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Single-modality logits ``{modality: (B, num_classes)}`` from each FEN's own head."""
        feats = self.fen_features(x)
        return {m: self.fen_heads[m](f) for m, f in zip(self.modalities, feats)}

    # ------------------------------------------------------------------ misc
    def fen_parameters(self, modality: str) -> List[nn.Parameter]:
        """Parameters of one FEN and its head (for per-FEN pre-training or freezing).

        Raises:
            ModelConfigError: ``modality`` is not one of this model's modalities.
        """
        if modality not in self.fens:
            raise ModelConfigError(f"model has no modality {modality!r}; it has {list(self.modalities)}")
        return list(self.fens[modality].parameters()) + list(self.fen_heads[modality].parameters())

    def num_parameters(self, include_fen_heads: bool = True) -> int:
        """Number of parameters, optionally without the FEN heads (unused at inference)."""
        total = sum(p.numel() for p in self.parameters())
        if not include_fen_heads:
            total -= sum(p.numel() for p in self.fen_heads.parameters())
        return total

    def fuse_for_inference(self, channels_last: bool = True) -> "CMCNN":
        """Copy for fast CPU inference: eval mode, BatchNorm folded into the convs.

        Same outputs up to float rounding (about 1e-6). Measured with
        ``benchmarks/bench_network.py`` (default preset, batch 1, one
        thread): folding alone saves ~10 %; ``channels_last`` weights on top
        bring the forward to ~0.6x of the eager model, because oneDNN then
        runs the full-resolution convs without layout reorders. Inputs need
        no conversion (each FEN gets a one-channel slice).

        The copy is for inference only: its state dict lacks the BatchNorm
        entries, so :func:`~cmcnn_ros.model.checkpoint.save_checkpoint`
        refuses it; save the original model.

        Args:
            channels_last: Also convert the weights to ``channels_last``.
        """
        fused = copy.deepcopy(self).eval()
        for module in fused.modules():
            if isinstance(module, ConvBNPReLU):
                module[0] = fuse_conv_bn_eval(module[0], module[1])
                module[1] = nn.Identity()
            elif isinstance(module, ResidualStage):
                module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
                module.bn2 = nn.Identity()
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
        fused.is_fused = True
        return fused

    def extra_repr(self) -> str:
        return f"modalities={list(self.modalities)}, num_classes={self.num_classes}, fusion={self.config.fusion!r}"


def class_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logits ``(B, num_classes)`` -> the class probabilities every caller reports.

    The one definition behind :meth:`CMCNN.predict_proba`, for callers that
    already hold the logits (evaluation, Grad-CAM, which needs them for its
    gradient); ``temperature`` is the model's ``config.temperature``.
    """
    return torch.softmax(logits.float() / float(temperature), dim=1)


def model_temperature(model: nn.Module) -> float:
    """The calibration temperature of a CM-CNN (also through a DDP or compile wrapper); 1 for other modules."""
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    return float(getattr(getattr(inner, "config", None), "temperature", 1.0))


def _init_weights(model: nn.Module) -> None:
    # torchvision ResNet-style init: Kaiming for convs, unit BN, zero biases.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _build_cmcnn(config: ModelConfig) -> CMCNN:
    model = CMCNN(config)
    _init_weights(model)
    return model


def cmcnn(
    config: Optional[Union[ModelConfig, Dict[str, Any]]] = None,
    preset: Optional[str] = None,
    **overrides: Any,
) -> CMCNN:
    """Build a CM-CNN.

    Args:
        config: A :class:`ModelConfig`, its ``to_dict()`` form, or ``None``
            for the preset.
        preset: Named preset (``"default"``, ``"paper"``, ``"tiny"``) used
            when ``config`` is ``None``; defaults to ``"default"``.
        **overrides: Config fields to change, e.g. ``num_classes=6``,
            ``modalities=("grey", "depth")``, ``fusion="concat"``.

    Raises:
        ModelConfigError: both ``config`` and ``preset`` given, unknown
            preset, unknown or invalid fields.
    """
    if config is not None and preset is not None:
        raise ModelConfigError("give either config or preset, not both")
    if config is None:
        cfg = preset_config(preset or "default", **overrides)
    else:
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if not isinstance(config, ModelConfig):
            raise ModelConfigError(f"config must be a ModelConfig or dict, got {type(config).__name__}")
        cfg = config.replace(**overrides) if overrides else config
    return _build_cmcnn(cfg)


__all__ = ["CMCNN", "ModelInputError", "class_probabilities", "cmcnn", "model_temperature"]
