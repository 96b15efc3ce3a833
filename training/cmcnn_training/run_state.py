"""Resumable runs: the state of a training run after every epoch, and ``--resume``.

A long schedule (paper Section IV-B trains 300 epochs; the FER2013 recipe
100+) outlives a session, a laptop lid or a pre-empted GPU. After every
epoch the trainer writes ``train_state.pt`` into the run folder, atomically
(temporary file + ``os.replace``), so a run killed at any moment loses at
most the epoch in progress. The file holds everything the next epoch
depends on: the weights, the weight EMA, the optimiser and learning-rate
schedule, the batch sampler's generator (order, augmentation, depth
dropout, mixup), torch's generator, the histories, and the folds already
finished (their predictions, from which their metrics are recomputed).
``run_config.json`` beside it is the run's configuration, written when the
run starts; ``cmcnn-train --resume RUN_DIR`` rebuilds the run from it and
continues, with results equal to an uninterrupted run's.

Only plain types and tensors are stored, so the state loads with
``torch.load(weights_only=True)`` (no pickled code runs from a run folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from cmcnn_ros.atomic_io import atomic_open, write_json_atomic

from .config import ConfigError, TrainConfig, build_config
from .engine import EpochStats

logger = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
RUN_CONFIG_NAME = "run_config.json"
STATE_FORMAT = 1
#: Settings that say how or where a run executes, not what it computes: a
#: resumed run may change them (another machine, more threads, a quieter log).
RUNTIME_KEYS = frozenset({"output_dir", "overwrite", "progress", "log_level", "threads", "device", "workers",
                          "cache_dir"})


class ResumeError(ValueError):
    """``--resume`` cannot continue: no run, another configuration, or an unreadable state file."""


@dataclass
class FitState:
    """One fit after a completed epoch: what :func:`~cmcnn_training.fitting.fit` needs to go on.

    Attributes:
        stage: ``"pretrain"``, ``"train"`` or ``"done"``.
        epoch: epochs completed in ``stage``.
        model: the network's ``state_dict``.
        ema: the weight EMA's ``state_dict`` (None without EMA).
        optimizer: the stage's optimiser ``state_dict``.
        scheduler: the stage's learning-rate schedule ``state_dict``.
        sampler: the batch sampler's ``state_dict()`` (its generator, or its epoch under torchrun).
        torch_rng: ``torch.get_rng_state()``.
        pretrain_history / history: per-epoch :class:`EpochStats` as dicts.
        curve: per-epoch validation records.
        seconds: training time so far.
    """

    stage: str
    epoch: int
    model: Dict[str, torch.Tensor]
    sampler: Dict[str, Any]
    torch_rng: torch.Tensor
    ema: Optional[Dict[str, torch.Tensor]] = None
    optimizer: Optional[Dict[str, Any]] = None
    scheduler: Optional[Dict[str, Any]] = None
    pretrain_history: List[Dict[str, Any]] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    curve: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def stats(history: List[Dict[str, Any]]) -> List[EpochStats]:
        return [EpochStats(**h) for h in history]


def fingerprint(cfg: TrainConfig) -> Dict[str, Any]:
    """The settings that decide what a run computes (everything but :data:`RUNTIME_KEYS`)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS}


class RunState:
    """The resumable state of the run in ``run_dir``.

    Args:
        run_dir: the run's output folder.
        cfg: its configuration (stored in the state to refuse a mismatched resume).
    """

    def __init__(self, run_dir: Path, cfg: TrainConfig) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_NAME
        self.cfg = cfg
        self.fold = 0
        self.fit: Optional[FitState] = None
        self.done_folds: List[Dict[str, Any]] = []

    def start(self) -> None:
        """Write ``run_config.json`` (a fresh run)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / RUN_CONFIG_NAME, self.cfg.to_dict())

    def fit_state(self, fold: int) -> Optional[FitState]:
        """The saved progress of fold ``fold`` (None: start it from scratch)."""
        return self.fit if self.fit is not None and self.fold == fold else None

    def save_epoch(self, fold: int, state: FitState) -> None:
        """Record ``fold``'s progress after an epoch, atomically."""
        self.fold, self.fit = fold, state
        self._write()

    def finish_fold(self, fold: int, outcome: Dict[str, Any]) -> None:
        """Record a finished fold (its report entry and predictions); the next fold starts from scratch."""
        self.done_folds.append(outcome)
        self.fold, self.fit = fold + 1, None
        self._write()

    def _write(self) -> None:
        payload = {"format": STATE_FORMAT, "config": fingerprint(self.cfg), "fold": self.fold,
                   "fit": dataclasses.asdict(self.fit) if self.fit is not None else None,
                   "done_folds": self.done_folds}
        with atomic_open(self.path, "wb") as fh:
            torch.save(payload, fh)

    def load(self) -> "RunState":
        """Read ``train_state.pt`` when there is one (a run killed before its first epoch has none).

        Raises:
            ResumeError: unreadable, of another format, or of another configuration.
        """
        if not self.path.exists():
            logger.info("%s: no epoch finished yet; the run starts from its beginning", self.run_dir)
            return self
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
                raise ValueError(f"not a format-{STATE_FORMAT} training state")
            fit = payload["fit"]
            self.fit = FitState(**fit) if fit is not None else None
            self.fold = int(payload["fold"])
            self.done_folds = list(payload["done_folds"])
            saved = payload["config"]
        except Exception as exc:
            raise ResumeError(f"{self.path} is corrupt or unreadable ({type(exc).__name__}: {exc}); delete it "
                              "to restart the run from epoch 0 (run_config.json keeps its settings)") from None
        _check_same(saved, fingerprint(self.cfg), self.path)
        return self


def _check_same(saved: Dict[str, Any], given: Dict[str, Any], where: Path) -> None:
    # A setting added to the trainer after the run started is absent from its state: at its
    # default it changes nothing, so the run stays resumable across code versions.
    defaults = TrainConfig().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k in given and k not in saved}, **saved}
    diff = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {given.get(k)!r} here" for k in diff[:4])
        raise ResumeError(f"{where} belongs to a run of another configuration ({shown}); resume it without "
                          "other settings, or start a new run in another --output-dir")


def resume_config(run_dir: str | Path, given: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The configuration of the run in ``run_dir``, for ``--resume``.

    Args:
        run_dir: the folder of the run to continue.
        given: settings typed beside ``--resume`` (parsed flags). Runtime
            settings (:data:`RUNTIME_KEYS`) override the run's; any other
            must equal the run's own.

    Raises:
        ResumeError: no run in ``run_dir``, an unreadable ``run_config.json``,
            a finished run, or settings that differ from the run's.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / RUN_CONFIG_NAME
    if not cfg_path.is_file():
        raise ResumeError(f"--resume {run_dir}: no run there ({cfg_path} is missing); start one with "
                          f"cmcnn-train --output-dir {run_dir}")
    if (run_dir / "metrics.json").exists():
        raise ResumeError(f"--resume {run_dir}: that run has finished ({run_dir / 'metrics.json'} exists); "
                          "nothing to resume")
    try:
        saved = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = build_config(dict(saved.items()))
    except (OSError, ValueError, TypeError) as exc:
        raise ResumeError(f"{cfg_path} is corrupt or unreadable ({exc}); start the run again") from None
    given = dict(given or {})
    if given:
        try:
            asked = build_config(given)
        except ConfigError as exc:
            raise ResumeError(f"--resume {run_dir}: {exc}") from None
        typed = {k for k in given if k != "config"}
        explicit = {k: v for k, v in fingerprint(asked).items() if "config" in given or k in typed}
        _check_same({k: v for k, v in fingerprint(cfg).items() if k in explicit}, explicit, cfg_path)
        for key in RUNTIME_KEYS & typed:
            setattr(cfg, key, getattr(asked, key))
    cfg.output_dir = str(run_dir)
    return cfg
