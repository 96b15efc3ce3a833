"""One training epoch and one evaluation pass over in-memory crops (Section IV-B).

The reference-script split (timm / torchvision ``train_one_epoch`` and
``evaluate``): the trainer owns the protocol, this module owns the loops.

* :class:`CropBatches` serves mini-batches of a :class:`~cmcnn_training.crops.CropSet`
  as float tensors ``(B, M, S, S)`` in the model's channel order, with the
  optional light augmentation and depth-modality dropout applied in numpy.
* :func:`train_one_epoch` runs either the fused network (CM-CNN logits of
  eq. (4), before the sigmoid) or every FEN through its own classification
  head (Section III-C; the pre-training stage) against the loss of eq. (5).
* :func:`evaluate` returns predictions for the metrics module.

Augmentation (not in the paper, used only when asked): horizontal flip, a
small rotation, shift and scale, and a lower resolution (the crop shrunk and
enlarged again: FER2013 faces are 48 px, a robot's 60-250 px, so the model
must hold at both) are applied to the grey crop and the depth crop alike;
the texture modalities are then recomputed from the augmented grey with the
preprocessing's own functions (an LBP code is neither mirror-symmetric nor
interpolable, so warping the LBP image would corrupt it). Brightness and
contrast change the grey channel only (LBP is invariant to monotonic grey
changes, so the pair stays consistent). Without a grey crop in the set, only
flips and nearest-neighbour shifts are applied.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from cmcnn_ros.modalities import DEPTH_MODALITIES, GREY_DERIVED
from cmcnn_ros.model.cmcnn import class_probabilities, model_temperature
from cmcnn_ros.model.losses import soft_labels
from cmcnn_ros.preprocessing.model_input import at_model_precision, mirror_images, zero_depth
from cmcnn_ros.preprocessing.params import PreprocessingError
from cmcnn_ros.preprocessing.texture import TextureImages, grey_image
from cmcnn_ros.tools import progress_bar

from .crops import CropSet

logger = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    """Light augmentation settings (all off when ``enabled`` is False)."""

    enabled: bool = False
    flip_p: float = 0.5
    max_shift: float = 0.06      # fraction of the crop side
    max_scale: float = 0.08      # +- relative zoom
    rotate_deg: float = 8.0      # +- in-plane rotation (alignment residual)
    lowres_p: float = 0.3        # probability of a lower-resolution copy
    lowres_min: float = 0.35     # smallest relative resolution (64 px -> 22 px)
    brightness: float = 0.1      # +- added to grey in [0, 1]
    contrast: float = 0.2        # +- relative contrast of grey
    photometric: bool = False    # gamma / blur / noise / JPEG on the grey crop (below)
    gamma: float = 0.35          # gamma drawn in [1/(1+g), 1+g]
    blur_p: float = 0.2          # Gaussian blur, sigma in [0.4, 1.1] px
    noise_p: float = 0.2         # Gaussian sensor noise, std in [2, 8] grey levels
    jpeg_p: float = 0.25         # JPEG round trip, quality in [30, 90]


class CropBatches:
    """Iterable of ``(x, y)`` mini-batches over some rows of a crop set.

    Args:
        crops: the crop set.
        rows: row indices of ``crops`` to serve.
        label_index: class index of every row of ``crops`` (``-1`` = unused).
        modalities: channel order of the model input.
        batch_size: rows per batch.
        shuffle: reshuffle every epoch (training).
        seed: RNG seed for the order, augmentation and depth dropout.
        augment: augmentation settings.
        depth_dropout: fraction of samples whose depth channel is zeroed.
        preprocessing: PreprocessingParams, needed to recompute texture
            modalities after a flip.
        drop_last: drop a final batch smaller than ``batch_size`` (training:
            a batch of one breaks batch normalisation).
    """

    def __init__(self, crops: CropSet, rows: Sequence[int], label_index: np.ndarray,
                 modalities: Sequence[str], batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: Optional[AugmentConfig] = None, depth_dropout: float = 0.0,
                 preprocessing: object = None, drop_last: bool = False) -> None:
        self.crops = crops
        self.rows = np.asarray(rows, dtype=np.int64)
        self.y = np.asarray(label_index, dtype=np.int64)
        self.modalities = tuple(modalities)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.augment = augment or AugmentConfig()
        self.depth_dropout = float(depth_dropout)
        self.params = preprocessing
        self.drop_last = drop_last and len(self.rows) > self.batch_size
        if self.augment.enabled and any(m in GREY_DERIVED for m in self.modalities) and self.params is None:
            raise ValueError("augmentation with texture modalities needs the preprocessing params")
        self._textures: Optional[TextureImages] = None

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> Dict[str, object]:
        """Where the sampler stands between epochs (its generator), for a resumable run."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.rng.permutation(self.rows) if self.shuffle else self.rows
        for b in range(len(self)):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._batch(rows)

    # ----------------------------------------------------------------- batch
    def _batch(self, rows: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.crops.to_tensor(rows, self.modalities)
        if self.augment.enabled:
            x = np.stack([self._augment_one(x[i], int(r)) for i, r in enumerate(rows)])
        if self.depth_dropout > 0 and any(m in DEPTH_MODALITIES for m in self.modalities):
            zero_depth(x, self.modalities, self.rng.random(len(rows)) < self.depth_dropout)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.y[rows])

    def _augment_one(self, x: np.ndarray, row: int) -> np.ndarray:
        if "grey" in self.crops.images:
            return self._augment_from_grey(x, row)
        a, rng = self.augment, self.rng
        mods = self.modalities
        if rng.random() < a.flip_p:
            x = x[:, :, ::-1].copy()
            self._recompute_texture(x, row)
        s = x.shape[-1]
        scale = 1.0 + rng.uniform(-a.max_scale, a.max_scale)
        tx, ty = rng.uniform(-a.max_shift, a.max_shift, size=2) * s
        if abs(scale - 1.0) > 1e-3 or abs(tx) >= 0.5 or abs(ty) >= 0.5:
            c = (s - 1) / 2.0
            m = np.array([[scale, 0, (1 - scale) * c + tx], [0, scale, (1 - scale) * c + ty]], np.float32)
            for i in range(len(mods)):
                x[i] = cv2.warpAffine(x[i], m, (s, s), flags=cv2.INTER_NEAREST,
                                      borderMode=cv2.BORDER_REPLICATE)
        if "grey" in mods:
            g = x[mods.index("grey")]
            mean = float(g.mean())
            g = (g - mean) * (1.0 + rng.uniform(-a.contrast, a.contrast)) + mean
            g += rng.uniform(-a.brightness, a.brightness)
            x[mods.index("grey")] = np.clip(g, 0.0, 1.0)
        return x

    def _augment_from_grey(self, x: np.ndarray, row: int) -> np.ndarray:
        """Geometry and resolution on the cached uint8 grey (and depth); texture recomputed from it."""
        a, rng, mods = self.augment, self.rng, self.modalities
        g = self.crops.images["grey"][row].astype(np.float32)
        d = x[mods.index("depth")].copy() if "depth" in mods else None
        s = g.shape[-1]
        if rng.random() < a.flip_p:
            g = g[:, ::-1]
            d = d[:, ::-1] if d is not None else None
        c = (s - 1) / 2.0
        m = cv2.getRotationMatrix2D((c, c), rng.uniform(-a.rotate_deg, a.rotate_deg),
                                    1.0 + rng.uniform(-a.max_scale, a.max_scale))
        m[:, 2] += rng.uniform(-a.max_shift, a.max_shift, size=2) * s
        g = cv2.warpAffine(np.ascontiguousarray(g), m, (s, s), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        if d is not None:
            d = cv2.warpAffine(np.ascontiguousarray(d), m, (s, s), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REPLICATE)
        if rng.random() < a.lowres_p:
            side = max(8, int(round(s * rng.uniform(a.lowres_min, 1.0))))
            g = cv2.resize(cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA), (s, s),
                           interpolation=cv2.INTER_LINEAR)
        g8 = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        if a.photometric:
            g8 = photometric(g8, a, rng)
        out = np.empty_like(x)
        for i, m_name in enumerate(mods):
            if m_name in DEPTH_MODALITIES:
                out[i] = d
            elif m_name == "grey":
                v = grey_image(g8)
                mean = float(v.mean())
                v = (v - mean) * (1.0 + rng.uniform(-a.contrast, a.contrast)) + mean
                out[i] = np.clip(v + rng.uniform(-a.brightness, a.brightness), 0.0, 1.0)
            else:
                out[i] = self._texture(m_name, g8)
        return out

    def _texture(self, name: str, grey: np.ndarray) -> np.ndarray:
        """A texture modality of a uint8 grey crop at the crop cache's precision (augmented = plain samples)."""
        if self._textures is None:
            self._textures = TextureImages(self.params)
        return at_model_precision(name, self._textures(name, grey))

    def _recompute_texture(self, x: np.ndarray, row: int) -> None:
        # Reached only for crop sets without a grey crop (those with one take
        # _augment_from_grey): a flipped texture code cannot be recomputed there.
        if any(m in GREY_DERIVED for m in self.modalities):
            raise ValueError("flip augmentation of texture modalities needs the grey crop in the crop set")


def photometric(g8: np.ndarray, a: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Camera-like degradations of a ``uint8`` grey crop: gamma, blur, sensor noise, JPEG.

    Every draw comes from ``rng`` (the batches' generator) whether or not the
    effect is applied, so a resumed run draws the same numbers.
    """
    u = rng.random(4)
    gamma = float(np.exp(rng.uniform(-np.log1p(a.gamma), np.log1p(a.gamma))))
    sigma, noise_std, quality = rng.uniform(0.4, 1.1), rng.uniform(2.0, 8.0), int(rng.integers(30, 91))
    out = g8
    if u[0] < 0.5:
        lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        out = lut[out]
    if u[1] < a.blur_p:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if u[2] < a.noise_p:
        noise = rng.normal(0.0, noise_std, out.shape)
        out = np.clip(np.rint(out + noise), 0, 255).astype(np.uint8)
    if u[3] < a.jpeg_p:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(out), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(out)


def flipped_crops(crops: CropSet, params: object) -> CropSet:
    """The mirror image of every crop (:func:`~cmcnn_ros.preprocessing.model_input.mirror_images`).

    For horizontal-flip test-time averaging, the same mirroring as the node's ``flip_tta``.

    Raises:
        ValueError: the crop set has a texture modality but no grey crop.
    """
    try:
        images = mirror_images(crops.images, TextureImages(params))
    except PreprocessingError as exc:
        raise ValueError(f"flip test-time averaging: {exc}") from exc
    return dataclasses.replace(crops, images=images)


class TrainTargets:
    """Label distributions for eq. (5): soft label, label smoothing and mixup.

    Args:
        num_classes: K.
        sigma: the soft label's Gaussian width (eq. 5); ``None`` = one-hot.
        label_smoothing: mass spread uniformly over the K classes.
        mixup_alpha: Beta(alpha, alpha) of the mixing weight; 0 disables mixup.
        mixup_p: fraction of batches that are mixed.
    """

    def __init__(self, num_classes: int, sigma: Optional[float] = None, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, mixup_p: float = 1.0) -> None:
        self.num_classes = int(num_classes)
        self.sigma = sigma
        self.label_smoothing = float(label_smoothing)
        self.mixup_alpha = float(mixup_alpha)
        self.mixup_p = float(mixup_p)

    @property
    def active(self) -> bool:
        """Whether targets differ from the loss's own hard-label handling."""
        return self.label_smoothing > 0 or self.mixup_alpha > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)``: a mixed batch and its ``(B, K)`` label distribution."""
        if self.sigma is None:
            t = torch.nn.functional.one_hot(y, self.num_classes).to(torch.float32)
        else:
            t = soft_labels(y, self.num_classes, self.sigma)
        if self.label_smoothing > 0:
            t = t * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if self.mixup_alpha > 0:
            # Both draws always happen, so the generator advances the same way for every batch.
            use, lam = rng.random() < self.mixup_p, float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            perm = torch.from_numpy(rng.permutation(len(y)))
            if use:
                x = lam * x + (1.0 - lam) * x[perm]
                t = lam * t + (1.0 - lam) * t[perm]
        return x, t


# ---------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------

@dataclass
class EpochStats:
    """Averages of one training epoch."""

    epoch: int
    loss: float
    accuracy: float
    count: int
    seconds: float
    lr: float
    per_head_accuracy: Dict[str, float] = field(default_factory=dict)


@dataclass
class Predictions:
    """Output of :func:`evaluate` (aligned with the loader's rows)."""

    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    seconds: float


def flip_averaged(pred: Predictions, mirror: Predictions) -> Predictions:
    """Horizontal-flip test-time averaging: the mean of each face's and its mirror image's probabilities."""
    probs = 0.5 * (pred.probs + mirror.probs)
    return Predictions(y_true=pred.y_true, y_pred=probs.argmax(1), probs=probs, seconds=pred.seconds + mirror.seconds)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_one_epoch(model: nn.Module, loader: CropBatches, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, mode: str = "fusion", progress: bool = True,
                    desc: str = "train", targets: Optional[TrainTargets] = None,
                    after_step: Optional[Callable[[], None]] = None, amp: str = "none") -> EpochStats:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: a CM-CNN.
        loader: training batches.
        loss_fn: ``loss(logits, target_index) -> scalar``.
        optimizer: the optimiser (its first group's lr is reported).
        device: torch device.
        epoch: epoch number for logging.
        mode: ``"fusion"`` trains the whole network on the fused logits;
            ``"fens"`` trains every FEN through its own head (sum of the
            per-FEN losses; the FENs share no parameters, so this equals
            pre-training each on its own).
        progress: show a tqdm bar.
        desc: progress-bar label.
        targets: label distributions (smoothing, mixup) instead of the
            hard labels; accuracy is still counted against the hard labels.
        after_step: called after every optimiser step (the weight EMA).
        amp: ``"bf16"`` runs the forward pass under bfloat16 autocast (the
            loss in float32; weights and optimiser stay float32).

    Raises:
        ValueError: unknown mode, or the loss became NaN/inf.
    """
    if mode not in ("fusion", "fens"):
        raise ValueError(f"train mode must be 'fusion' or 'fens', got {mode!r}")
    model.train()
    t0 = time.perf_counter()
    total_loss, total_n = 0.0, 0
    correct: Dict[str, int] = {}
    bar = progress_bar(loader, desc=f"{desc} {epoch}", leave=False, enabled=progress, unit="batch")
    for x, y in bar:
        target = y
        if targets is not None and targets.active:
            x, target = targets(x, y, loader.rng)
            target = target.to(device, non_blocking=True)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if targets is None or not targets.active:
            target = y
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            if mode == "fusion":
                outputs = {"fused": model(x)}
            else:
                outputs = model.fen_logits(x)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss = sum(loss_fn(logits, target) for logits in outputs.values())
        if not torch.isfinite(loss):
            raise ValueError(f"training loss became {loss.item()} at epoch {epoch}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        n = int(y.shape[0])
        total_loss += float(loss.detach()) * n
        total_n += n
        for name, logits in outputs.items():
            correct[name] = correct.get(name, 0) + int((logits.detach().argmax(1) == y).sum())
        bar.set_postfix(loss=f"{total_loss / total_n:.4f}")
    bar.close()
    per_head = {k: v / max(total_n, 1) for k, v in correct.items()}
    return EpochStats(epoch=epoch, loss=total_loss / max(total_n, 1),
                      accuracy=float(np.mean(list(per_head.values()))) if per_head else float("nan"),
                      count=total_n, seconds=time.perf_counter() - t0,
                      lr=float(optimizer.param_groups[0]["lr"]), per_head_accuracy=per_head)


@torch.no_grad()
def evaluate(model: nn.Module, loader: CropBatches, device: torch.device, progress: bool = True,
             desc: str = "eval") -> Predictions:
    """Predict every batch of ``loader`` with the fused network (argmax of the logits).

    ``argmax`` of the logits equals the argmax of eq. (4)'s sigmoid scores and
    of the softmax probabilities; ``probs`` holds the softmax at the model's
    calibration temperature (what the node publishes).
    """
    model.eval()
    t0 = time.perf_counter()
    ys: List[np.ndarray] = []
    probs: List[np.ndarray] = []
    for x, y in progress_bar(loader, desc=desc, leave=False, enabled=progress, unit="batch"):
        logits = model(x.to(device, non_blocking=True))
        probs.append(class_probabilities(logits, model_temperature(model)).cpu().numpy())
        ys.append(y.numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    y_true = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return Predictions(y_true=y_true, y_pred=p.argmax(1) if p.size else np.zeros(0, np.int64), probs=p,
                       seconds=time.perf_counter() - t0)
