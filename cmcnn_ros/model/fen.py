"""Feature extraction networks (FENs) of CM-CNN (Section III-C, Fig. 3).

Two FEN types, one per modality family:

* :class:`DepthFEN` (Fig. 3(a)): DeepID-like and shallow, because facial
  depth carries fewer details. Four conv layers, each followed by
  BatchNorm, PReLU and 2x2 max pooling.
* :class:`TextureFEN` (Fig. 3(b)) for grey, LBP (and the ablation's HOG and
  Gabor) images: the same four pooled stages deepened "by adding four
  convolutional layers" with skip connections. Each stage here is
  ``conv(k) -> BN -> PReLU -> conv(3) -> BN -> (+ skip) -> PReLU -> maxpool``,
  the skip connection wrapping the added conv, so the FEN has exactly eight
  conv layers and needs no projection convs.

All convs use "same" padding, so both types go through the same four
poolings and end at identical spatial size (148 -> 74 -> 37 -> 18 -> 9,
``N = 81`` positions) with the same channel count ``C`` -- the
cross-modality attention of eq. (3) needs both.

Each FEN has a :class:`FENHead` (the red-rectangle classification head of
Fig. 3: adaptive pooling + FC) so it can be pre-trained and evaluated from
one modality alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..modalities import DEPTH_MODALITIES, TEXTURE_MODALITIES
from .config import NUM_STAGES, ModelConfig, ModelConfigError


class ConvBNPReLU(nn.Sequential):
    """``Conv2d(k, 'same') -> BatchNorm2d -> PReLU``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )


class DepthStage(nn.Module):
    """One layer of the depth FEN: ``ConvBNPReLU -> MaxPool(2)``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd conv kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = ConvBNPReLU(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class ResidualStage(nn.Module):
    """One stage of the texture FEN: a conv plus a skip-connected conv, then pooling.

    ``y = PReLU(BN(conv3x3(h)) + h)`` with ``h = ConvBNPReLU(x)``; the skip
    wraps the conv that Fig. 3(b) adds to the shallow design, so gradients
    reach the first layers through identity paths (Section III-C: "skip
    connections are used to avoid the problem of vanishing gradient").

    Args:
        in_channels: Input channels.
        out_channels: Output channels of both convs.
        kernel_size: Odd kernel size of the first conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = ConvBNPReLU(in_channels, out_channels, kernel_size)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        return self.pool(self.act(self.bn2(self.conv2(h)) + h))


class DepthFEN(nn.Module):
    """Shallow DeepID-like FEN for depth images (Fig. 3(a)).

    Args:
        widths: Output channels of the four conv layers.
        kernels: Odd kernel sizes of the four conv layers.
        in_channels: Channels of the input image (1).
    """

    def __init__(self, widths: Sequence[int], kernels: Sequence[int], in_channels: int = 1) -> None:
        super().__init__()
        _check_stages(widths, kernels)
        chans = [in_channels, *widths]
        self.stages = nn.Sequential(*(DepthStage(chans[i], chans[i + 1], kernels[i]) for i in range(NUM_STAGES)))
        self.out_channels = int(widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` -> ``(B, C, S/16, S/16)`` (floor at each pooling)."""
        return self.stages(x)


class TextureFEN(nn.Module):
    """Deep FEN for grey / LBP / HOG / Gabor images (Fig. 3(b)): 8 convs, 4 skips.

    Args:
        widths: Output channels of the four stages.
        kernels: Odd kernel sizes of each stage's first conv.
        in_channels: Channels of the input image (1).
    """

    def __init__(self, widths: Sequence[int], kernels: Sequence[int], in_channels: int = 1) -> None:
        super().__init__()
        _check_stages(widths, kernels)
        chans = [in_channels, *widths]
        self.stages = nn.Sequential(
            *(ResidualStage(chans[i], chans[i + 1], kernels[i]) for i in range(NUM_STAGES))
        )
        self.out_channels = int(widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` -> ``(B, C, S/16, S/16)`` (floor at each pooling)."""
        return self.stages(x)


class FENHead(nn.Module):
    """Single-modality classification head: adaptive average pool + FC (Section III-C).

    Args:
        in_channels: Channels of the FEN output.
        num_classes: Number of classes.
        pool_size: Side of the adaptive pooling output.
        dropout: Dropout probability before the FC layer.
    """

    def __init__(self, in_channels: int, num_classes: int, pool_size: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels * pool_size * pool_size, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """FEN feature map ``(B, C, h, w)`` -> logits ``(B, num_classes)``."""
        return self.fc(self.drop(torch.flatten(self.pool(f), 1)))


def build_fen(modality: str, config: ModelConfig) -> nn.Module:
    """The FEN for one modality: :class:`DepthFEN` for depth, :class:`TextureFEN` otherwise.

    Args:
        modality: Modality name.
        config: Network configuration.

    Raises:
        ModelConfigError: unknown modality.
    """
    if modality in DEPTH_MODALITIES:
        return DepthFEN(config.depth_widths, config.depth_kernels)
    if modality in TEXTURE_MODALITIES:
        return TextureFEN(config.texture_widths, config.texture_kernels)
    raise ModelConfigError(f"no FEN for modality {modality!r}")


def _check_stages(widths: Sequence[int], kernels: Sequence[int]) -> None:
    if len(widths) != NUM_STAGES or len(kernels) != NUM_STAGES:
        raise ModelConfigError(f"a FEN needs {NUM_STAGES} widths and kernels, got {list(widths)}, {list(kernels)}")
    if any(k % 2 == 0 for k in kernels):
        raise ModelConfigError(f"FEN kernels must be odd, got {list(kernels)}")


__all__ = ["ConvBNPReLU", "DepthFEN", "DepthStage", "FENHead", "ResidualStage", "TextureFEN", "build_fen"]
