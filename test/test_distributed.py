"""``cmcnn-train`` under ``torchrun`` with DistributedDataParallel on CPU (Gloo), issue 9.

Real processes, a real Gloo process group and real training: the quick
preset (shortened) on a tiny rendered set with two processes must train,
write exactly one checkpoint and one metrics file (rank 0 only) in the usual
format; the sharding must keep a fold's training rows (and only those) and
DDP must keep the two ranks' weights identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import pytest

from cmcnn_synthetic import generate

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "set"
    assert generate.main(["--out", str(root), "--subjects", "5", "--classes", "6", "--intensities", "4",
                          "--per-class", "1", "--distance", "0.7", "1.0", "--yaw", "8", "--pitch", "6",
                          "--roll", "6", "--workers", "2", "--seed", "5", "--no-progress"]) == 0
    return root


def test_sharded_batches_split_only_the_training_rows():
    from cmcnn_training.crops import CropSet
    from cmcnn_training.distributed import ShardedCropBatches

    n = 23
    crops = CropSet(modalities=("grey",), images={"grey": np.zeros((n, 16, 16), np.uint8)},
                    depth_valid=np.zeros(n, bool), labels=np.array(["happy"] * n), subjects=np.array(["s"] * n),
                    intensities=np.full(n, -1), sources=np.array([""] * n), box_sources=np.array([""] * n),
                    dataset_index=np.arange(n))
    train = np.array([0, 2, 3, 5, 7, 8, 11, 13, 17, 19, 20])       # a fold's training rows (11: odd on purpose)
    ranks = [ShardedCropBatches(crops, train, np.zeros(n, np.int64), ("grey",), 2, shuffle=True, seed=4,
                                rank=r, world_size=2, drop_last=True) for r in range(2)]
    for epoch in range(3):
        shards = [b.shard(epoch) for b in ranks]
        assert len(shards[0]) == len(shards[1]) == 6
        together = np.concatenate(shards)
        assert set(together.tolist()) == set(train.tolist())         # every training row, nothing else
        assert len(together) - len(set(together.tolist())) == 1     # one row repeated to even the shards
    assert not np.array_equal(ranks[0].shard(0), ranks[0].shard(1))  # reshuffled every epoch
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert [y.shape[0] for _, y in ranks[0]] == [2, 2, 2]


def test_torchrun_two_cpu_processes_train_and_write_one_checkpoint(tiny_root, tmp_path):
    out = tmp_path / "run"
    cmd = TORCHRUN + ["-m", "cmcnn_training.train", "--config", "quick", "--root", str(tiny_root),
                      "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--epochs", "3",
                      "--pretrain-epochs", "1", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "confusion_matrix.png", "metrics.json",
                                                     "run_config.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["world_size"] == 2 and metrics["environment"]["backend"] == "gloo"
    fold = metrics["folds"][0]
    assert not set(fold["train_subjects"]) & set(fold["test_subjects"])
    assert fold["test_count"] == 6 * len(fold["test_subjects"])
    assert np.isfinite(fold["final_train_loss"])
    assert 0.0 <= metrics["summary"]["accuracy_mean"] <= 1.0
    # One log voice: rank 1 reports only problems.
    assert proc.stderr.count("checkpoint written") == 1

    from cmcnn_ros.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.metadata["config"]["epochs"] == 3 and list(ckpt.model_config.modalities) == ["grey", "lbp", "depth"]


def test_ddp_keeps_the_ranks_weights_identical(tmp_path):
    """Each rank trains on different rows; after the steps both hold the same weights (gradients averaged)."""
    script = tmp_path / "ddp_check.py"
    script.write_text(textwrap.dedent("""
        import json, sys, torch
        import numpy as np
        from cmcnn_ros.model import cmcnn
        from cmcnn_ros.model.losses import make_loss
        from cmcnn_training import distributed
        from cmcnn_training.crops import CropSet
        from cmcnn_training.engine import train_one_epoch

        torch.set_num_threads(1)
        job, device = distributed.init_distributed("cpu")
        n = 32
        rng = np.random.default_rng(0)
        crops = CropSet(modalities=("grey", "depth"),
                        images={"grey": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8),
                                 "depth": rng.random((n, 32, 32)).astype(np.float16)},
                        depth_valid=np.ones(n, bool), labels=np.array(["happy"] * n), subjects=np.array(["s"] * n),
                        intensities=np.full(n, -1), sources=np.array([""] * n), box_sources=np.array([""] * n),
                        dataset_index=np.arange(n))
        y = rng.integers(0, 6, n)
        torch.manual_seed(job.rank)          # different initialisations: DDP must broadcast rank 0's
        model = cmcnn(preset="tiny", modalities=("grey", "depth"), num_classes=6, input_size=32)
        batches = distributed.ShardedCropBatches(crops, np.arange(n), y, ("grey", "depth"), 4, shuffle=True,
                                                 seed=1, rank=job.rank, world_size=job.world_size, drop_last=True)
        ddp = distributed.DDPModel(model, device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for mode in ("fens", "fusion"):
            train_one_epoch(ddp, batches, make_loss("soft_focal"), opt, device, 1, mode=mode, progress=False)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        seen = torch.tensor([float(np.sum(batches.shard(0)))])
        both = [torch.zeros_like(flat) for _ in range(2)]
        torch.distributed.all_gather(both, flat)
        rows = [torch.zeros(1) for _ in range(2)]
        torch.distributed.all_gather(rows, seen)
        if job.rank == 0:
            json.dump({"max_diff": float((both[0] - both[1]).abs().max()),
                       "moved": float((flat - flat.mean()).abs().sum()),
                       "rows": [float(r) for r in rows]}, open(sys.argv[1], "w"))
        distributed.shutdown()
    """))
    result = tmp_path / "result.json"
    proc = subprocess.run(TORCHRUN + [str(script), str(result)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(result.read_text())
    assert r["max_diff"] < 1e-5, f"ranks diverged by {r['max_diff']}: gradients were not averaged"
    assert r["rows"][0] != r["rows"][1]          # the ranks did see different rows


def test_sharded_batches_resume_every_rank_from_the_saved_epoch():
    """Under torchrun only rank 0 saves the sampler; its state (the epoch) must restore every rank exactly."""
    from cmcnn_training.crops import CropSet
    from cmcnn_training.distributed import ShardedCropBatches
    from cmcnn_training.engine import AugmentConfig
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    n = 12
    rng = np.random.default_rng(0)
    crops = CropSet(modalities=("grey",), images={"grey": rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)},
                    depth_valid=np.zeros(n, bool), labels=np.array(["happy"] * n), subjects=np.array(["s"] * n),
                    intensities=np.full(n, -1), sources=np.array([""] * n), box_sources=np.array([""] * n),
                    dataset_index=np.arange(n))

    def sampler(rank):
        return ShardedCropBatches(crops, np.arange(n), np.zeros(n, np.int64), ("grey",), 3, shuffle=True, seed=4,
                                  rank=rank, world_size=2, drop_last=True, augment=AugmentConfig(enabled=True),
                                  preprocessing=PreprocessingParams())

    for rank in range(2):
        whole = sampler(rank)
        list(whole)                                   # epoch 0
        saved = sampler(0)
        list(saved)
        resumed = sampler(rank)
        resumed.load_state_dict(saved.state_dict())   # rank 0's state, given to this rank
        for (xa, ya), (xb, yb) in zip(whole, resumed):  # epoch 1, augmented
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
