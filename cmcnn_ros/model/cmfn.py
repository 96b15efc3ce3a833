"""Cross-modality fusion network (CMFN) of CM-CNN (Section III-D, Figs. 4 and 5, eqs. 3-4).

:class:`CrossModalAttention` implements Fig. 5 for one ordered pair: the
features ``f_G`` of a *guided* modality attend over the positions of a
*guide* modality ``f_D``::

    G1 = conv1x1(f_G), G2 = conv1x1(f_G), D1 = conv1x1(f_D)   reshaped to C x N
    Att_GD = sigma(G1^T D1)                       in R^{N x N}, N = H*W   (eq. 3)
    f_GD   = reshape(G2 Att_GD^T) + f_G

Entry ``Att[i, j]`` relates position ``i`` of the guided map to position
``j`` of the guide; output position ``i`` gathers ``G2`` over all ``j``
weighted by it (SAGAN's convention).

About ``sigma``: the paper's text calls it "the Softmax function" but
eq. (3) defines it as the logistic sigmoid ``1 / (1 + e^-x)``. We follow the
equation (``attention="sigmoid"``, the default) and offer the text's reading
as ``attention="softmax"`` (softmax over the guide positions ``j``).

Numerical scale (not in the paper, both optional, see
:class:`~cmcnn_ros.model.config.ModelConfig`): entries of ``G1^T D1`` are
sums of ``C'`` products, so with ``C' = 64..256`` channels they reach tens and
the sigmoid saturates to 0/1 from the first step, passing almost no
gradient to ``G1`` and ``D1``. ``scale=True`` divides them by ``sqrt(C')``
as in scaled dot-product attention. Second, sigmoid rows do not sum to one:
``G2 Att^T`` adds up to ``N`` (81) value vectors, about ``N/2`` times the
magnitude of the residual ``f_G`` at initialisation, drowning it.
``normalize=True`` divides the aggregate by ``N`` (a mean instead of a sum).

:class:`CMFN` (Fig. 4) applies one attention block per ordered pair of
distinct modalities (G by D, G by L, L by G, L by D, D by G, D by L for
three), concatenates each modality's guided maps into ``f_A*``
(``f_AG = [f_GD, f_GL]``), vectorises each by global max- and average
pooling (CBAM) and concatenates everything into ``f_v``.
:class:`ConcatFusion` is the plain-concatenation baseline (pooled FEN
features, no attention); it is also what a single-modality network uses.

The classifier on ``f_v`` (eq. 4, ``F = sigma(PReLU(FC(f_v)))``) lives in
:mod:`cmcnn_ros.model.cmcnn`.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .config import ATTENTIONS, ModelConfigError


def global_max_avg_pool(f: torch.Tensor) -> torch.Tensor:
    """CBAM-style vectorisation: ``(B, C, H, W)`` -> ``(B, 2C)`` = [max, mean] over positions."""
    return torch.cat([torch.amax(f, dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)


class CrossModalAttention(nn.Module):
    """Cross-modal attention of one guided modality by one guide modality (Fig. 5, eq. 3).

    Args:
        channels: Channels ``C`` of both inputs (and of the output).
        reduction: ``G1`` and ``D1`` get ``C // reduction`` channels (paper: 1).
        attention: ``"sigmoid"`` (eq. 3 as written) or ``"softmax"`` (over guide positions).
        scale: Divide ``G1^T D1`` by ``sqrt(C // reduction)`` (not in the paper).
        normalize: For the sigmoid, divide ``G2 Att^T`` by ``N`` (not in the paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 1,
        attention: str = "sigmoid",
        scale: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ModelConfigError(f"attention={attention!r}; choose from {ATTENTIONS}")
        inner = channels // reduction
        if inner < 1:
            raise ModelConfigError(f"reduction={reduction} leaves no channels of {channels}")
        self.query = nn.Conv2d(channels, inner, 1)  # G1, from the guided features
        self.value = nn.Conv2d(channels, channels, 1)  # G2, from the guided features
        self.key = nn.Conv2d(channels, inner, 1)  # D1, from the guide features
        self.use_softmax = attention == "softmax"
        self.logit_scale = 1.0 / math.sqrt(inner) if scale else 1.0
        self.normalize = bool(normalize) and not self.use_softmax

    def attention_map(self, guided: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``Att`` of eq. (3): ``(B, N, N)``, row ``i`` = guided position, column ``j`` = guide position."""
        g1 = self.query(guided).flatten(2)
        d1 = self.key(guide).flatten(2)
        logits = torch.bmm(g1.transpose(1, 2), d1)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        return torch.softmax(logits, dim=-1) if self.use_softmax else torch.sigmoid(logits)

    def forward(self, guided: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``f_GD``: guided ``(B, C, H, W)`` attended by guide ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        b, c, h, w = guided.shape
        att = self.attention_map(guided, guide)
        g2 = self.value(guided).flatten(2)
        out = torch.bmm(g2, att.transpose(1, 2))
        if self.normalize:
            out = out / float(h * w)
        return out.view(b, c, h, w) + guided


def ordered_pairs(modalities: Sequence[str]) -> List[Tuple[str, str]]:
    """``(guided, guide)`` pairs in fusion order: for each modality, every other one as guide."""
    return [(a, b) for a in modalities for b in modalities if b != a]


class CMFN(nn.Module):
    """Cross-modality attention fusion over two or more modalities (Fig. 4).

    Args:
        modalities: Modality names in input order (at least two).
        channels: Channels ``C`` of every FEN output.
        reduction: Query/key channel reduction of each attention block.
        attention: ``"sigmoid"`` or ``"softmax"``.
        scale: Scale attention logits by ``1/sqrt(C')``.
        normalize: Divide sigmoid-attention aggregates by ``N``.

    Raises:
        ModelConfigError: fewer than two modalities.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        channels: int,
        reduction: int = 1,
        attention: str = "sigmoid",
        scale: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        if len(self.modalities) < 2:
            raise ModelConfigError(f"CMFN needs at least two modalities, got {self.modalities}")
        self.pairs = ordered_pairs(self.modalities)
        index = {m: i for i, m in enumerate(self.modalities)}
        self._pair_index = [(index[a], index[b]) for a, b in self.pairs]
        self.blocks = nn.ModuleList(
            CrossModalAttention(channels, reduction, attention, scale, normalize) for _ in self.pairs
        )
        m = len(self.modalities)
        self.out_features = m * 2 * (m - 1) * channels

    def fused_maps(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``[f_A{m} for m in modalities]``, each ``(B, (M-1)C, H, W)`` = concat of its guided maps."""
        per_modality: List[List[torch.Tensor]] = [[] for _ in self.modalities]
        for (gi, di), block in zip(self._pair_index, self.blocks):
            per_modality[gi].append(block(features[gi], features[di]))
        return [torch.cat(maps, dim=1) for maps in per_modality]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """FEN outputs in modality order -> ``f_v`` of shape ``(B, out_features)``."""
        return torch.cat([global_max_avg_pool(f) for f in self.fused_maps(features)], dim=1)


class ConcatFusion(nn.Module):
    """Baseline fusion: global max+average pooled FEN features, concatenated.

    Args:
        num_modalities: Number of FEN outputs.
        channels: Channels ``C`` of every FEN output.
    """

    def __init__(self, num_modalities: int, channels: int) -> None:
        super().__init__()
        self.out_features = num_modalities * 2 * channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """FEN outputs in modality order -> ``(B, out_features)``."""
        return torch.cat([global_max_avg_pool(f) for f in features], dim=1)


__all__ = ["CMFN", "ConcatFusion", "CrossModalAttention", "global_max_avg_pool", "ordered_pairs"]
