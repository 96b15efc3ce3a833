"""Training configuration: dataclass defaults < YAML file < command-line flags.

The defaults of :class:`TrainConfig` are the paper's protocol (Section IV-A:
subject-independent ten-fold cross-validation; Section IV-B: SGD with
learning rate 0.01, momentum 0.9, weight decay 5e-4, learning rate halved
every 100 epochs, 300 epochs; Section III-E: soft-label focal loss with
alpha=1, gamma=2, sigma=0.1). A YAML file (``--config FILE`` or the name of a
preset in ``cmcnn_training/configs``: ``default``, ``quick``, ``synthetic``)
overrides them, and flags given on the command line override the YAML.

The command-line parser is generated from the dataclass fields so there is
one list of options: every field ``foo_bar`` is the flag ``--foo-bar``; the
two nested mappings ``model`` (ModelConfig fields) and ``preprocessing``
(PreprocessingParams fields) take repeated ``KEY=VALUE`` items.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

LOSSES = ("soft_focal", "focal", "ce")
CLASS_WEIGHTS = ("none", "sqrt_inverse")
AMP_MODES = ("none", "bf16")
BOX_MODES = ("detect", "gt")


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message names the key."""


def _option(default: Any, help: str, **meta: Any) -> Any:
    """A TrainConfig field with its ``--help`` text (and flag metadata) beside the default."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Every setting of one training run (see ``cmcnn-train --help``)."""

    # data
    dataset: str = _option("kinect", "dataset loader name (kinect, bu3dfe, bosphorus, fer2013, image_folder; "
                                "synthetic sets use kinect)")
    root: Optional[str] = _option(None, "dataset root folder (fer2013: the fer2013.csv[.gz] file)")
    dataset_options: Dict[str, Any] = _option(
        {}, "loader keyword arguments, KEY=VALUE (repeatable): fer2013 usage=Training|PublicTest|all, "
            "on_error=raise|skip; image_folder crops=true, unknown_folders=skip", kv=True)
    mix: List[Any] = _option(
        [], "more datasets trained in the same run, each NAME:ROOT[:BOX_MODE[:REPEAT]] (YAML: mappings "
            "with dataset, root, box_mode, repeat, options); e.g. real 2-D faces with synthetic RGB-D. "
            "REPEAT > 1 serves that set's samples REPEAT times an epoch")
    protocol: Optional[str] = _option(
        None, "dataset protocol selecting samples/subjects (cmcnn_training.datasets.protocols: P1, P2, "
              "paper-P1, paper-P2, all); Section IV-A Protocol I/II")
    protocol_run: int = _option(0, "protocol run number (P2 draws new subjects per run)")
    protocol_subjects: int = _option(60, "subjects a protocol draws (paper: 60)")
    classes: Optional[List[str]] = _option(
        None, "class names to use, in output order (default: every class present, canonical order)")
    min_intensity: Optional[int] = _option(None, "drop samples whose intensity is known and below this "
                                            "(BU-3DFE protocol: 3 = two highest levels)")
    subjects: Optional[List[str]] = _option(None, "restrict the dataset to these subject ids")
    max_samples_per_subject_class: Optional[int] = _option(
        None, "keep at most this many samples per (subject, class), evenly spaced (video-like sets)")
    modalities: List[str] = _option(["grey", "lbp", "depth"], "input modalities in channel order")
    model_preset: str = _option("default", "ModelConfig preset (default, paper, tiny)")
    model: Dict[str, Any] = _option({}, "ModelConfig field overrides, KEY=VALUE (repeatable)", kv=True)
    preprocessing: Dict[str, Any] = _option({}, "PreprocessingParams overrides, KEY=VALUE (repeatable)", kv=True)
    box_mode: str = _option("detect", "detect: Viola-Jones like the node, ground-truth box only as fallback; "
                                 "gt: always use the ground-truth box when the sample has one",
                       choices=BOX_MODES)
    cache_dir: Optional[str] = _option("cache/crops", "crop cache folder (empty string disables the cache)")
    workers: int = _option(2, "worker processes for crop extraction (0 = in this process); training batches "
                         "come from in-memory crops and need none")

    # protocol
    folds: int = _option(10, "subject-independent folds (1 = a single held-out split)")
    val_subjects: Optional[List[str]] = _option(None, "held-out subjects for --folds 1")
    holdout_fraction: Optional[float] = _option(None, "fraction of subjects held out for --folds 1 "
                                                 "when --val-subjects is not given")
    final: bool = _option(False, "after k-fold CV also train the final model on all subjects and save it")
    save_fold_checkpoints: bool = _option(False, "save one checkpoint per fold (fold_XX.pt)")

    # optimisation (Section IV-B)
    epochs: int = _option(300, "fusion training epochs (paper: 300)")
    pretrain_epochs: int = _option(
        20, "epochs pre-training every FEN through its own head before fusion training; the paper "
            "pre-trained the texture FENs on CASIA-WebFace and the depth FEN on another 3-D set, which "
            "we cannot redistribute, so here they are pre-trained on the training split itself")
    lr: float = _option(0.01, "SGD learning rate (paper: 0.01)")
    pretrain_lr: Optional[float] = _option(None, "learning rate of the FEN pre-training (default: --lr)")
    momentum: float = _option(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _option(5e-4, "SGD weight decay (paper: 5e-4)")
    lr_step: int = _option(100, "multiply the learning rate by --lr-gamma every this many epochs (paper: 100)")
    lr_gamma: float = _option(0.5, "learning-rate decay factor (paper: 0.5)")
    loss: str = _option("soft_focal", "loss: soft_focal (eq. 5 with Gaussian soft labels), focal, ce",
                   choices=LOSSES)
    focal_alpha: float = _option(1.0, "focal loss alpha (paper: 1)")
    focal_gamma: float = _option(2.0, "focal loss gamma (paper: 2)")
    soft_sigma: float = _option(0.1, "std of the Gaussian soft label over class indices (paper: 0.1)")
    batch_size: int = _option(32, "mini-batch size")
    depth_dropout: float = _option(0.0, "fraction of training samples whose depth channel is zeroed so "
                                   "the model also answers from grey+LBP when depth is missing")
    augment: bool = _option(False, "augmentation: horizontal flip, small rotation/shift/scale, lower resolution "
                              "(texture modalities recomputed from the augmented grey), brightness/contrast")
    lr_schedule: str = _option("step", "step: x lr_gamma every lr_step epochs (paper); cosine: one warm-up epoch "
                                  "then cosine decay to 0 (short CPU budgets)", choices=("step", "cosine"))
    augment_photometric: bool = _option(False, "with --augment: also gamma, blur, sensor noise and JPEG on the grey "
                                               "crop before the texture modalities are recomputed")
    label_smoothing: float = _option(0.0, "uniform label smoothing of eq. (5)'s soft label (0 = off)")
    mixup_alpha: float = _option(0.0, "mixup: Beta(alpha, alpha) mixing weight of two faces and their labels "
                                      "(0 = off)")
    mixup_p: float = _option(0.5, "fraction of batches mixed up when --mixup-alpha > 0")
    class_weights: str = _option("none", "per-class alpha of eq. (5): none, or sqrt_inverse (1/sqrt(class "
                                         "frequency), mean weight 1; lifts rare classes such as disgusted)",
                                 choices=CLASS_WEIGHTS)
    ema_decay: float = _option(0.0, "exponential moving average of the weights per step (e.g. 0.999; 0 = off); "
                                    "the EMA weights are validated and saved")
    amp: str = _option("none", "mixed precision of the training step: none (float32) or bf16 (autocast to bfloat16 "
                               "on CPUs with AVX512-BF16/AMX and on GPUs: about 2x faster here, see "
                               "bench_training.py); weights, evaluation and checkpoints stay float32",
                       choices=AMP_MODES)
    compile: bool = _option(False, "torch.compile the network for training (faster steps on CPU and GPU; the "
                                   "first epoch pays the compilation); the saved weights are the same module's")
    val: Optional[Any] = _option(
        None, "validation set scored after every --val-every epochs for the learning curve, "
              "NAME[:ROOT[:BOX_MODE]] or a YAML mapping (dataset, root, box_mode, options); ROOT defaults "
              "to --root. Never a test set: e.g. FER2013 PublicTest")
    val_every: int = _option(1, "epochs between validation passes")
    calibrate: bool = _option(False, "after training, fit the softmax temperature on half of every class of the "
                                     "--val set and store it in the checkpoint (cmcnn-calibrate does the same "
                                     "for an existing checkpoint); ECE before/after in metrics.json")
    tta_flip: bool = _option(False, "also report validation accuracy with the scores of each face and its "
                                    "mirror image averaged")

    # run
    output_dir: str = _option("runs/cmcnn", "output folder (checkpoint, metrics.json, confusion PNG)")
    checkpoint_name: str = _option("checkpoint.pt", "file name of the final checkpoint in --output-dir")
    overwrite: bool = _option(False, "replace an existing checkpoint/metrics in --output-dir")
    threads: Optional[int] = _option(None, "torch CPU threads (default: torch's choice)")
    seed: int = _option(0, "random seed (splits, initialisation, augmentation)")
    device: str = _option("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
    progress: bool = _option(True, "show tqdm progress bars")
    log_level: str = _option("INFO", "logging level")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------- checks
    def validate(self) -> "TrainConfig":
        """Check value ranges and combinations.

        Raises:
            ConfigError: naming the first invalid setting.
        """
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"config {key}={getattr(self, key)!r} is invalid: {what}")

        need(self.loss in LOSSES, "loss", f"choose from {LOSSES}")
        need(self.lr_schedule in ("step", "cosine"), "lr_schedule", "choose from ('step', 'cosine')")
        need(self.box_mode in BOX_MODES, "box_mode", f"choose from {BOX_MODES}")
        need(self.folds >= 1, "folds", "must be >= 1")
        need(self.epochs >= 0, "epochs", "must be >= 0")
        need(self.pretrain_epochs >= 0, "pretrain_epochs", "must be >= 0")
        need(self.epochs + self.pretrain_epochs > 0, "epochs", "epochs + pretrain_epochs must be > 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.pretrain_lr is None or self.pretrain_lr > 0, "pretrain_lr", "must be > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr_step >= 1, "lr_step", "must be >= 1")
        need(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(0.0 <= self.depth_dropout <= 1.0, "depth_dropout", "must be in [0, 1]")
        need(self.soft_sigma > 0, "soft_sigma", "must be > 0")
        need(self.focal_gamma >= 0, "focal_gamma", "must be >= 0")
        need(self.workers >= 0, "workers", "must be >= 0")
        need(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        need(bool(self.modalities), "modalities", "name at least one modality")
        need(self.holdout_fraction is None or 0 < self.holdout_fraction < 1, "holdout_fraction",
             "must be in (0, 1)")
        need(self.min_intensity is None or self.min_intensity >= 0, "min_intensity", "must be >= 0")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        need(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0")
        need(0.0 <= self.mixup_p <= 1.0, "mixup_p", "must be in [0, 1]")
        need(self.class_weights in CLASS_WEIGHTS, "class_weights", f"choose from {CLASS_WEIGHTS}")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1)")
        need(self.val_every >= 1, "val_every", "must be >= 1")
        need(self.amp in AMP_MODES, "amp", f"choose from {AMP_MODES}")
        need(not self.calibrate or bool(self.val), "calibrate", "needs a validation set: set --val")
        need(self.loss != "focal" or (self.label_smoothing == 0 and self.mixup_alpha == 0), "loss",
             "label smoothing and mixup need a loss that takes label distributions: soft_focal or ce")
        need(self.max_samples_per_subject_class is None or self.max_samples_per_subject_class >= 1,
             "max_samples_per_subject_class", "must be >= 1")
        if self.folds > 1 and (self.val_subjects or self.holdout_fraction):
            raise ConfigError("val_subjects/holdout_fraction define a single held-out split: "
                              f"use them with folds=1 (got folds={self.folds})")
        if not self.root:
            raise ConfigError("config root is not set: give the dataset folder with --root or 'root:' in YAML")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _base_type(name: str) -> Any:
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return hint


def _coerce(name: str, value: Any) -> Any:
    """Check/convert one YAML value against the field's type."""
    if value is None:
        if typing.get_origin(_HINTS[name]) is typing.Union:  # Optional
            return None
        raise ConfigError(f"config key {name!r} may not be null")
    base = _base_type(name)
    origin = typing.get_origin(base)
    try:
        if origin in (list, List):
            if isinstance(value, (str, int, float)):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if name == "mix":  # NAME:ROOT strings or YAML mappings
                return [dict(v) if isinstance(v, Mapping) else str(v) for v in value]
            return [str(v) for v in value]
        if origin in (dict, Dict):
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"config key {name!r}: expected {getattr(base, '__name__', base)}, got {value!r}")


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in ``cmcnn_training/configs``.

    Raises:
        ConfigError: neither a file nor a known preset.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {presets}")


def load_yaml(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a YAML config file into a dict of validated field values.

    Raises:
        ConfigError: unreadable file, not a mapping, unknown keys or wrong types.
    """
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config {path}: unknown keys {unknown}; known keys: {sorted(_FIELDS)}")
    try:
        return {k: _coerce(k, v) for k, v in data.items()}
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def parse_kv(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` and one flag per :class:`TrainConfig` field.

    Every flag defaults to ``argparse.SUPPRESS`` so the namespace holds only
    what the user typed; that is what lets flags override the YAML and the
    YAML override the defaults.
    """
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML|PRESET",
                        help="YAML file or preset name (default, quick, synthetic) overriding the defaults; "
                             "flags override the YAML")
    groups = {
        "dataset": parser.add_argument_group("data"),
        "folds": parser.add_argument_group("protocol"),
        "epochs": parser.add_argument_group("optimisation (paper Section IV-B)"),
        "output_dir": parser.add_argument_group("run"),
    }
    group = parser
    for name, f in _FIELDS.items():
        group = groups.get(name, group)
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default!r})"
        base = _base_type(name)
        origin = typing.get_origin(base)
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": name}
        if f.metadata.get("kv"):
            kwargs.update(action="append", type=parse_kv, metavar="KEY=VALUE")
        elif base is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif origin in (list, List):
            kwargs.update(nargs="+", metavar=name.upper())
        else:
            kwargs.update(type=str if base is Any else base)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kwargs)
    return parser


def build_config(args: argparse.Namespace | Mapping[str, Any] | None = None) -> TrainConfig:
    """Merge defaults < YAML (``config`` key) < explicit values.

    Args:
        args: parsed namespace from a parser made by :func:`add_config_arguments`
            (only explicitly given flags present), or a plain mapping of
            field values (Python API), optionally with ``config``.

    Raises:
        ConfigError: bad YAML, unknown keys, wrong types or invalid values.
    """
    given = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: Dict[str, Any] = TrainConfig().to_dict()
    config_name = given.pop("config", None)
    if config_name:
        for key, value in load_yaml(resolve_config_path(str(config_name))).items():
            values[key] = value
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; known: {sorted(_FIELDS)}")
    for key, value in given.items():
        if _FIELDS[key].metadata.get("kv"):
            items = dict(value) if isinstance(value, Mapping) else dict(value)  # list of pairs from argparse
            values[key] = {**values.get(key, {}), **items}
        else:
            values[key] = _coerce(key, value)
    cfg = TrainConfig(**values)
    if cfg.cache_dir == "":
        cfg.cache_dir = None
    return cfg
