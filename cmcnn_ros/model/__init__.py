"""CM-CNN network, losses and checkpoint format (Sections III-C, III-D, III-E).

Public API::

    from cmcnn_ros.model import cmcnn, ModelConfig, make_loss, save_checkpoint, load_checkpoint

    model = cmcnn(preset="default", modalities=("grey", "lbp", "depth"), num_classes=7)
    logits = model(x)                      # x: (B, M, S, S) float in [0, 1], S = config.input_size
    probs = model.predict_proba(x)         # softmax over the logits
    loss = make_loss("soft_focal", sigma=0.1, gamma=2.0)(logits, labels)
"""

from ..modalities import MODALITIES, TEXTURE_MODALITIES
from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointExistsError,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from .cmcnn import CMCNN, ModelInputError, cmcnn
from .cmfn import CMFN, ConcatFusion, CrossModalAttention
from .config import PRESETS, ModelConfig, ModelConfigError, preset_config
from .fen import DepthFEN, FENHead, TextureFEN
from .losses import (
    LOSS_NAMES,
    CrossEntropyLoss,
    FocalLoss,
    LossError,
    SoftFocalLoss,
    cross_entropy,
    focal_loss,
    make_loss,
    soft_focal_loss,
    soft_labels,
)

__all__ = [
    "CMCNN",
    "CMFN",
    "CheckpointError",
    "CheckpointExistsError",
    "ConcatFusion",
    "CrossEntropyLoss",
    "CrossModalAttention",
    "DepthFEN",
    "FENHead",
    "FORMAT",
    "FORMAT_VERSION",
    "FocalLoss",
    "LOSS_NAMES",
    "LoadedCheckpoint",
    "LossError",
    "MODALITIES",
    "ModelConfig",
    "ModelConfigError",
    "ModelInputError",
    "PRESETS",
    "SoftFocalLoss",
    "TEXTURE_MODALITIES",
    "TextureFEN",
    "cmcnn",
    "cross_entropy",
    "focal_loss",
    "load_checkpoint",
    "make_loss",
    "preset_config",
    "save_checkpoint",
    "soft_focal_loss",
    "soft_labels",
]
