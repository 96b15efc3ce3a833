"""Configuration of the CM-CNN network (Sections III-C and III-D).

:class:`ModelConfig` is the single description of a network: which modalities
it reads (and in which channel order), how wide and deep its feature
extraction networks (FENs) are, which fusion it uses and how the
cross-modality attention of eq. (3) is scaled. It is stored in every
checkpoint (``to_dict``) and rebuilt from there (``from_dict``), so every
field is a plain ``int``/``float``/``str``/``bool`` or a tuple of them.

Presets (:data:`PRESETS`):

``"paper"``
    Widths as close to Fig. 3 of the paper as the text lets us infer: a
    DeepID-like depth FEN and a texture FEN of the same four widths
    32-64-128-256 (the figure itself is not legible in the text version; the
    paper only says the channel numbers were tuned by cross-validation).
``"default"``
    Narrower widths chosen by measured CPU latency (``benchmarks/
    bench_network.py``) so the whole recognizer fits its real-time budget
    (<= 33 ms per face on two cores, ~12 ms of it for the network): depth FEN
    8-16-32-64, texture FEN 4-16-32-64. The texture FEN's first stage runs
    two convs at full 148x148 resolution and dominates the cost; halving it
    from 8 to 4 channels took the fused batch-1 forward from 14.1 to 11.4 ms
    p50 on one loaded core (same run), the paper preset needs ~48-58 ms.
``"tiny"``
    Very small widths for unit tests and smoke runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

from ..modalities import DEPTH_MODALITIES, TEXTURE_MODALITIES, crop_size_problem, modality_problem

FUSIONS: Tuple[str, ...] = ("cmfn", "concat")
ATTENTIONS: Tuple[str, ...] = ("sigmoid", "softmax")
EMBEDDING_NORMS: Tuple[str, ...] = ("batchnorm", "none")

#: Both FEN types halve the resolution four times (148 -> 74 -> 37 -> 18 -> 9 at the
#: paper's crop size; 48 -> 3 at the default weights'), hence the smallest crop of
#: :data:`~cmcnn_ros.modalities.CROP_SIZE_RANGE`.
NUM_STAGES = 4


class ModelConfigError(ValueError):
    """A :class:`ModelConfig` (or its dict form) is invalid."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a CM-CNN.

    Args:
        modalities: Input channels in order; any non-empty subset of
            :data:`MODALITIES` without repeats. The model input is
            ``(B, len(modalities), input_size, input_size)``.
        num_classes: Number of expression classes (6 or 7 in this project).
        fusion: ``"cmfn"`` (cross-modality attention, Section III-D) or
            ``"concat"`` (global max+average pooled FEN features
            concatenated; the paper's baseline). With a single modality both
            reduce to pooling its own features.
        input_size: Side of the square input crops: the preprocessing's
            ``crop_size``, from which it is derived when a model is built for
            a run (``cmcnn_training.builders.build_model_config``); a
            checkpoint whose two sides differ is refused by the recognizer.
            Checked by :func:`~cmcnn_ros.modalities.crop_size_problem`.
        depth_widths: Output channels of the four conv layers of the
            shallow depth FEN (Fig. 3(a)).
        depth_kernels: Kernel sizes of those four conv layers.
        texture_widths: Output channels of the four stages of the deep
            texture FEN (Fig. 3(b)); each stage has two conv layers.
        texture_kernels: Kernel size of the first conv of each texture stage
            (the second, skip-connected conv is always 3x3).
        attention: ``"sigmoid"`` as eq. (3) is written, or ``"softmax"``
            over the guide positions (SAGAN-style, as the paper's text says).
        attention_reduction: Channel reduction of the query/key 1x1 convs
            (``G1``, ``D1``): they output ``C // attention_reduction``
            channels. The paper keeps ``C`` (reduction 1).
        attention_scale: Divide ``G1^T D1`` by ``sqrt(C')`` before the
            sigmoid/softmax. Not in the paper. Measured at initialisation
            (default widths, random inputs): 94 % of the sigmoid attention
            entries are saturated (< 0.01 or > 0.99) without it, 56 % with
            it; both trained alike in a short toy run, so it is on by default
            for the gentler gradients.
        attention_normalize: With ``attention="sigmoid"``, divide the
            aggregated values ``G2 Att^T`` by ``N = H*W`` so the attention
            branch has the magnitude of one feature vector rather than the
            sum of ``N`` of them. Not in the paper; ignored for softmax,
            whose rows already sum to one. Measured: without it the
            attention branch is ~80x the residual ``f_G`` at initialisation,
            the initial loss ~45, and SGD at the paper's lr 0.01 produced
            NaN losses in the first steps; with it the ratio is ~1.
        fen_head_pool: Output side of the adaptive average pooling in each
            FEN's classification head (Section III-C).
        dropout: Dropout before the final FC layer and the FEN heads' FC
            layers (0 disables it; the paper does not mention dropout).
        embedding_norm: ``"batchnorm"`` puts a ``BatchNorm1d`` on ``f_v``
            before the FC layer of eq. (4); ``"none"`` feeds ``f_v`` as the
            paper describes. Not in the paper: ``f_v`` is made of max- and
            mean-pooled post-PReLU maps, all positive with a large common
            mean (``|f_v|^2`` about 7000 for the default widths at
            initialisation), which makes plain SGD at the paper's lr 0.01
            blow the logits up in the first steps; centring and scaling
            ``f_v`` removes that. Training in this mode needs batches of
            two or more samples.
        temperature: Divides the logits before the softmax of
            :meth:`~cmcnn_ros.model.cmcnn.CMCNN.predict_proba` (temperature
            scaling, Guo et al. 2017): fitted after training on held-out
            faces so a published 0.8 is right about 80 % of the time. It
            never changes the class (the argmax); 1 = uncalibrated.
    """

    modalities: Tuple[str, ...] = ("grey", "lbp", "depth")
    num_classes: int = 7
    fusion: str = "cmfn"
    input_size: int = 148
    depth_widths: Tuple[int, ...] = (8, 16, 32, 64)
    depth_kernels: Tuple[int, ...] = (5, 3, 3, 3)
    texture_widths: Tuple[int, ...] = (4, 16, 32, 64)
    texture_kernels: Tuple[int, ...] = (5, 3, 3, 3)
    attention: str = "sigmoid"
    attention_reduction: int = 1
    attention_scale: bool = True
    attention_normalize: bool = True
    fen_head_pool: int = 1
    dropout: float = 0.0
    embedding_norm: str = "batchnorm"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        # Accept lists (JSON/YAML/checkpoints) but store tuples so the config
        # stays hashable and immutable.
        for name in ("modalities", "depth_widths", "depth_kernels", "texture_widths", "texture_kernels"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ModelConfigError(f"ModelConfig.{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        problem = modality_problem(self.modalities)
        if problem:
            raise ModelConfigError(f"ModelConfig.modalities: {problem}")
        _check_int("num_classes", self.num_classes, 2)
        if self.fusion not in FUSIONS:
            raise ModelConfigError(f"ModelConfig.fusion={self.fusion!r}; choose from {FUSIONS}")
        problem = crop_size_problem(self.input_size)
        if problem:
            raise ModelConfigError(f"ModelConfig.input_size={self.input_size!r}: {problem}")
        for name in ("depth_widths", "depth_kernels", "texture_widths", "texture_kernels"):
            values = getattr(self, name)
            if len(values) != NUM_STAGES:
                raise ModelConfigError(f"ModelConfig.{name} needs {NUM_STAGES} values, got {values}")
            for v in values:
                _check_int(name, v, 1)
        for name in ("depth_kernels", "texture_kernels"):
            if any(k % 2 == 0 for k in getattr(self, name)):
                raise ModelConfigError(
                    f"ModelConfig.{name}={getattr(self, name)}: kernels must be odd so 'same' padding "
                    "keeps both FEN types at the same spatial size"
                )
        uses_depth = any(m in DEPTH_MODALITIES for m in self.modalities)
        uses_texture = any(m in TEXTURE_MODALITIES for m in self.modalities)
        if uses_depth and uses_texture and self.depth_widths[-1] != self.texture_widths[-1]:
            raise ModelConfigError(
                f"depth_widths[-1]={self.depth_widths[-1]} != texture_widths[-1]={self.texture_widths[-1]}: "
                "both FEN types must end with the same channel count for cross-modal attention"
            )
        if self.attention not in ATTENTIONS:
            raise ModelConfigError(f"ModelConfig.attention={self.attention!r}; choose from {ATTENTIONS}")
        _check_int("attention_reduction", self.attention_reduction, 1)
        if self.feature_channels // self.attention_reduction < 1:
            raise ModelConfigError(
                f"attention_reduction={self.attention_reduction} leaves no channels of {self.feature_channels}"
            )
        for name in ("attention_scale", "attention_normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _check_int("fen_head_pool", self.fen_head_pool, 1)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ModelConfigError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0.01 <= float(self.temperature) <= 100.0:
            raise ModelConfigError(f"ModelConfig.temperature must be a number in [0.01, 100], got {self.temperature!r}")
        if self.embedding_norm not in EMBEDDING_NORMS:
            raise ModelConfigError(
                f"ModelConfig.embedding_norm={self.embedding_norm!r}; choose from {EMBEDDING_NORMS}"
            )

    # -------------------------------------------------------------- derived
    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def feature_channels(self) -> int:
        """Channel count ``C`` of every FEN output (the attention's ``C``)."""
        if all(m in DEPTH_MODALITIES for m in self.modalities):
            return self.depth_widths[-1]
        return self.texture_widths[-1]

    # --------------------------------------------------------- conversions
    def to_dict(self) -> Dict[str, Any]:
        """Plain-``dict`` form (lists instead of tuples) for checkpoints and YAML."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Rebuild a config from :meth:`to_dict` output.

        Args:
            d: Mapping of field names to values; missing fields take their
                defaults.

        Raises:
            ModelConfigError: ``d`` is not a mapping, names unknown fields,
                or holds invalid values.
        """
        if not isinstance(d, Mapping):
            raise ModelConfigError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **overrides: Any) -> "ModelConfig":
        """Copy with some fields changed (validated like :meth:`from_dict`)."""
        d = self.to_dict()
        d.update(overrides)
        return ModelConfig.from_dict(d)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelConfigError(f"ModelConfig.{name} must be an int >= {minimum}, got {value!r}")


#: Named presets; values are overrides of the :class:`ModelConfig` defaults.
PRESETS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "paper": {
        "depth_widths": (32, 64, 128, 256),
        "depth_kernels": (5, 3, 3, 3),
        "texture_widths": (32, 64, 128, 256),
        "texture_kernels": (5, 3, 3, 3),
    },
    "tiny": {
        "depth_widths": (4, 4, 8, 8),
        "texture_widths": (4, 4, 8, 8),
        "depth_kernels": (3, 3, 3, 3),
        "texture_kernels": (3, 3, 3, 3),
    },
}


def preset_config(name: str = "default", **overrides: Any) -> ModelConfig:
    """Config of a named preset with optional field overrides.

    Args:
        name: One of :data:`PRESETS`.
        **overrides: Fields to change (e.g. ``num_classes=6``).

    Raises:
        ModelConfigError: unknown preset or invalid override.
    """
    if name not in PRESETS:
        raise ModelConfigError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    d: Dict[str, Any] = dict(PRESETS[name])
    d.update(overrides)
    return ModelConfig.from_dict(d)


__all__ = [
    "ATTENTIONS",
    "EMBEDDING_NORMS",
    "FUSIONS",
    "ModelConfig",
    "ModelConfigError",
    "NUM_STAGES",
    "PRESETS",
    "preset_config",
]
