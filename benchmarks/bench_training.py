"""Training throughput of CM-CNN on this machine: faces per second, eager vs ``torch.compile`` (issue 20).

One training step is what ``cmcnn-train`` runs for every batch (paper
Section IV-B: SGD with momentum and weight decay, the soft-label focal loss
of eq. 5): the batch is served by the trainer's own
:class:`~cmcnn_training.engine.CropBatches` (augmentation on, texture
modalities recomputed from the augmented grey, depth dropout), then forward,
backward and the SGD step. Variants:

``eager``         the network as built (what every run before issue 20 trained);
``compile``       ``torch.compile`` of the training forward (``--compile``);
``compile_bf16``  the same under bfloat16 autocast (``--amp bf16``, what the
                  ``real_faces`` recipe ships; float32 weights, optimiser,
                  loss and evaluation).

Each variant runs ``--steps`` steps per round after a warm-up (which pays
compilation), rounds alternate between the variants and the best round
counts, so load from other processes hits both alike; compare the ratio.
The batches' preparation alone is timed too (faces/s of ``CropBatches``
with the recipe's augmentation, photometric included): it must be far
faster than a step. Finally both variants' weights after training from the
same start are put in eval mode and must give the same scores (compilation
changes speed, not the model): the largest difference is reported.

The crops are random uint8 faces (no dataset needed), 48 px, grey + LBP +
depth (half of them with depth), 7 classes, the ``default`` preset: the
shape of the ``real_faces`` recipe.

Usage::

    python benchmarks/bench_training.py [--steps 30] [--rounds 3] [--batch-size 64] [--threads 2]
        [--json benchmarks/results/training_cpu2.json]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import time
from typing import Any, Dict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))

from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.model import cmcnn, preset_config
from cmcnn_ros.model.losses import make_loss
from cmcnn_ros.preprocessing.model_input import store
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.preprocessing.texture import TextureImages
from cmcnn_ros.tools import configure_logging
from cmcnn_training.crops import CropSet
from cmcnn_training.engine import AugmentConfig, CropBatches, TrainTargets, train_one_epoch

logger = logging.getLogger("bench_training")
MODALITIES = ("grey", "lbp", "depth")
CLASSES = 7


def random_crops(n: int, size: int, params: PreprocessingParams, seed: int = 0) -> CropSet:
    """``n`` random faces (smooth grey noise, its LBP, a depth bump on half) as a training CropSet."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, size // 4, size // 4), dtype=np.uint8)
    grey = np.stack([np.asarray(np.kron(s, np.ones((4, 4))), np.uint8) for s in small])
    textures = TextureImages(params)
    lbp = np.stack([store("lbp", textures("lbp", g)) for g in grey])
    yy, xx = np.mgrid[0:size, 0:size]
    bump = (0.5 + 0.4 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size * 4.0))).astype(np.float32)
    valid = rng.random(n) < 0.5
    depth = np.where(valid[:, None, None], bump[None], 0.0).astype(np.float16)
    return CropSet(modalities=MODALITIES, images={"grey": grey, "lbp": lbp, "depth": depth}, depth_valid=valid,
                   labels=np.array([str(i % CLASSES) for i in range(n)]), subjects=np.array(["s"] * n),
                   intensities=np.full(n, -1), sources=np.array([""] * n), box_sources=np.array(["gt"] * n),
                   dataset_index=np.arange(n))


def make_batches(crops: CropSet, batch_size: int, params: PreprocessingParams, seed: int) -> CropBatches:
    labels = np.array([int(lb) for lb in crops.labels], np.int64)
    return CropBatches(crops, np.arange(len(crops)), labels, MODALITIES, batch_size, shuffle=True, seed=seed,
                       augment=AugmentConfig(enabled=True, photometric=True), depth_dropout=0.3,
                       preprocessing=params, drop_last=True)


VARIANTS = {"eager": (False, "none"), "compile": (True, "none"), "compile_bf16": (True, "bf16")}


def time_steps(model: torch.nn.Module, trained: torch.nn.Module, batches: CropBatches,
               targets: TrainTargets, amp: str) -> float:
    """Seconds of one pass over ``batches`` (data preparation, forward, backward, SGD step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss = make_loss("soft_focal", sigma=0.1, alpha=1.0, gamma=2.0)
    t0 = time.perf_counter()
    train_one_epoch(trained, batches, loss, optimizer, torch.device("cpu"), 1, progress=False, targets=targets,
                    amp=amp)
    return time.perf_counter() - t0


def time_data(batches: CropBatches) -> float:
    t0 = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    params = PreprocessingParams.from_dict({"crop_size": args.size})
    n = args.steps * args.batch_size
    crops = random_crops(n, args.size, params)
    config = preset_config("default", modalities=MODALITIES, num_classes=CLASSES, input_size=args.size)
    torch.manual_seed(0)
    base = cmcnn(config)
    models = {name: copy.deepcopy(base) for name in VARIANTS}
    trained = {name: torch.compile(models[name]) if VARIANTS[name][0] else models[name] for name in VARIANTS}
    targets = TrainTargets(CLASSES, 0.1, label_smoothing=0.1)
    warm = {}
    for name in models:  # warm-up: compilation, allocator, first-touch
        warm[name] = time_steps(models[name], trained[name], make_batches(crops, args.batch_size, params, 99),
                                targets, VARIANTS[name][1])
        logger.info("%s warm-up pass: %.1f s", name, warm[name])
    best = {name: float("inf") for name in models}
    best_data = float("inf")
    for r in range(args.rounds):
        for name in models:
            # same seed for both variants: they train on the same batches
            best[name] = min(best[name], time_steps(models[name], trained[name],
                                                    make_batches(crops, args.batch_size, params, r), targets,
                                                    VARIANTS[name][1]))
        best_data = min(best_data, time_data(make_batches(crops, args.batch_size, params, r)))
        logger.info("round %d: %s; data only %.2f s", r + 1,
                    ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), best_data)
    x = torch.from_numpy(crops.to_tensor(np.arange(min(n, 256)), MODALITIES))
    with torch.no_grad():
        # The weights a compiled run trains are a plain module's: in eval mode the module and its
        # compiled form must score alike. (Two runs, eager and compiled, drift apart as any two
        # runs with different float summation orders do, so their weights are not compared.)
        ref = models["compile"].eval()
        same_model = float((ref(x) - torch.compile(ref)(x)).abs().max())
    faces = {name: n / t for name, t in best.items()}
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "settings": vars(args), "faces": n,
        "faces_per_s": faces, "ms_per_face": {k: 1000.0 / v for k, v in faces.items()},
        "speedup_vs_eager": {k: v / faces["eager"] for k, v in faces.items()},
        "data_only_faces_per_s": n / best_data,
        "warmup_seconds": warm,
        "eval_max_abs_diff_compiled_vs_eager_same_weights": same_model,
    }
    logger.info("faces/s: %s; data preparation alone %.0f faces/s; eval mode, same weights: max |compiled - eager| "
                "%.2e", ", ".join(f"{k} {v:.0f} (x{v / faces['eager']:.2f})" for k, v in faces.items()),
                result["data_only_faces_per_s"], same_model)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="training steps per timed pass")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best counts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=48, help="crop side (the real_faces recipe: 48)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here (atomically)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    result = run(args)
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
