"""Multi-process training with ``torchrun`` and DistributedDataParallel (Section IV-B's protocol, unchanged).

``cmcnn-train`` started by ``torchrun --nproc_per_node N`` runs N processes
that each train the same model on a different part of every epoch's
training rows and average their gradients (DDP): NCCL between GPUs (one per
process, ``cuda:LOCAL_RANK``), Gloo between CPU processes. Without the
torchrun environment (``WORLD_SIZE`` unset or 1) nothing here changes the
single-process trainer.

What stays the same as one process:

* the subject-independent folds: every rank computes the identical splits
  from the same seed, and :class:`ShardedCropBatches` only deals each
  epoch's *training* rows of a fold out to the ranks, so no test subject
  reaches any rank's training shard;
* the outputs: only rank 0 writes the checkpoint, ``metrics.json`` and the
  confusion PNG (same format; ``environment.world_size`` records N), and only
  rank 0 evaluates the held-out subjects;
* the crop cache: rank 0 extracts it, the others wait and read it.

``--batch-size`` is per process, so the global batch is N times larger (as
torchvision's reference scripts); scale ``--lr`` yourself if you want the
one-process schedule.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .engine import CropBatches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE = DistInfo()


def current() -> DistInfo:
    """The job this process belongs to (single-process when not initialised)."""
    return _STATE


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> Tuple[DistInfo, Optional[torch.device]]:
    """Join the torchrun job when there is one.

    Args:
        device: the run's ``--device``; ``cpu`` forces Gloo even with GPUs.
        timeout_s: collective timeout (rank 0 may extract crops for minutes).

    Returns:
        ``(info, device)``: ``device`` is ``cuda:LOCAL_RANK`` under NCCL,
        ``cpu`` under Gloo, None without a job (the caller resolves it).

    Raises:
        ValueError: a CUDA device was asked for but there are fewer GPUs
            than local processes.
    """
    global _STATE
    import torch.distributed as dist

    world = env_world_size()
    if world <= 1:
        return _STATE, None
    if dist.is_initialized():
        return _STATE, _device_for(_STATE, device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} under torchrun, but CUDA is not available; use --device cpu (Gloo)")
    if use_cuda and local >= torch.cuda.device_count():
        raise ValueError(f"torchrun started more processes per node than there are GPUs "
                         f"({torch.cuda.device_count()}); lower --nproc_per_node or use --device cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _STATE = DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)
    if rank != 0:
        # One voice in the log: the other ranks report only problems.
        logging.getLogger("cmcnn_training").setLevel(logging.WARNING)
        logging.getLogger("cmcnn_ros").setLevel(logging.WARNING)
    logger.info("distributed training: %d processes, backend %s", world, backend)
    return _STATE, _device_for(_STATE, device)


def _device_for(info: DistInfo, device: str) -> torch.device:
    return torch.device(f"cuda:{info.local_rank}") if info.backend == "nccl" else torch.device("cpu")


def barrier() -> None:
    if _STATE.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Leave the job (end of run or error)."""
    global _STATE
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STATE = DistInfo()


class ShardedCropBatches(CropBatches):
    """:class:`CropBatches` that serves this rank's share of every epoch (a distributed sampler).

    Every rank draws the same permutation of the training rows (seeded by
    ``seed`` and the epoch, like ``DistributedSampler.set_epoch``), pads it
    to a multiple of the world size by repeating its head, and keeps every
    ``world_size``-th row from its rank on, so all ranks run the same number
    of batches (DDP needs that) and the shards cover the rows once per epoch.
    Augmentation and depth dropout draw from a per-rank generator, seeded
    afresh each epoch from (seed, rank, epoch), so the epoch number alone is
    the sampler's state: every rank resumes exactly from rank 0's saved state.
    """

    def __init__(self, *args: Any, rank: int, world_size: int, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed + 7919 * rank, **kwargs)
        self.rank, self.world_size, self.base_seed, self.epoch = int(rank), int(world_size), int(seed), 0
        n = len(self.rows)
        self.shard_size = -(-n // self.world_size)
        # drop_last decided on the shard: a one-sample last batch breaks BatchNorm.
        self.drop_last = bool(kwargs.get("drop_last", False)) and self.shard_size > self.batch_size

    def __len__(self) -> int:
        n = self.shard_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def shard(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.base_seed, epoch]).permutation(self.rows) if self.shuffle else self.rows
        total = self.shard_size * self.world_size
        if total > len(order):
            order = np.concatenate([order, order[:total - len(order)]])
        return order[self.rank:total:self.world_size]

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        mine = self.shard(self.epoch)
        self.rng = np.random.default_rng([self.base_seed, self.rank, self.epoch, 1])
        self.epoch += 1
        for b in range(len(self)):
            yield self._batch(mine[b * self.batch_size:(b + 1) * self.batch_size])


class _Stages(nn.Module):
    """One module whose forward runs either stage, so one DDP wrapper syncs both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mode: str = "fusion") -> Any:
        return self.model(x) if mode == "fusion" else self.model.fen_logits(x)


class DDPModel:
    """What :func:`~cmcnn_training.engine.train_one_epoch` needs (``train``, call, ``fen_logits``) over DDP.

    The FEN pre-training leaves the fusion and classifier unused and the
    fused training leaves the FEN heads unused, hence
    ``find_unused_parameters=True``.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        self.module = model
        self.ddp = DDP(_Stages(model), device_ids=ids, find_unused_parameters=True)

    def train(self, mode: bool = True) -> "DDPModel":
        self.ddp.train(mode)
        return self

    def eval(self) -> "DDPModel":
        return self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ddp(x, mode="fusion")

    def fen_logits(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.ddp(x, mode="fens")


__all__ = ["DDPModel", "DistInfo", "ShardedCropBatches", "barrier", "current", "init_distributed", "shutdown"]
