"""Each lever of the real-faces recipe on a short PublicTest learning curve (issue 20, section 2).

Trains the ``real_faces`` recipe (FER2013 + the wide synthetic renders) for a
few epochs once as it ships and once per variant that changes one lever
(label smoothing off, weight EMA off, photometric augmentation off, mixup
on, ...), all with the same seed, and draws the PublicTest curves (EMA or
plain weights, as the variant trains them) in one figure. A short cosine
schedule is not the 100-epoch run: it tells which levers help early and
which do not hurt, not their value at the end.

    python benchmarks/bench_levers.py --root PATH/TO/fer2013.csv.gz --epochs 6 \\
        --json benchmarks/results/levers_cpu2.json --figure docs/levers_cpu2.png

Finished variants (``OUT/NAME/metrics.json``) are not trained again, so a
killed run continues with the next variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from cmcnn_ros.atomic_io import atomic_open, write_json_atomic

logger = logging.getLogger("bench_levers")

# name -> the cmcnn-train flags that change one lever of configs/real_faces.yaml
VARIANTS: Dict[str, List[str]] = {
    "recipe": [],
    "no_label_smoothing": ["--label-smoothing", "0"],
    "no_ema": ["--ema-decay", "0"],
    "no_photometric": ["--no-augment-photometric"],
    "mixup_0.2": ["--mixup-alpha", "0.2"],
    "class_weights": ["--class-weights", "sqrt_inverse"],
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="FER2013 csv(.gz)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each short run (cosine over them)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default="runs/levers", help="one run directory per variant")
    p.add_argument("--json", default=None, help="write the curves and final accuracies here")
    p.add_argument("--figure", default=None, help="write the curves as a PNG here")
    return p


def train(name: str, args: argparse.Namespace) -> Path:
    run = Path(args.out) / name
    metrics = run / "metrics.json"
    if metrics.is_file():
        logger.info("%s: finished before, kept", name)
        return metrics
    if (run / "train_state.pt").is_file():   # killed mid-run: continue it
        cmd = [sys.executable, "-m", "cmcnn_training.train", "--resume", str(run), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "cmcnn_training.train", "--config", "real_faces", "--root", args.root,
               "--epochs", str(args.epochs), "--no-calibrate", "--no-progress", "--output-dir", str(run),
               *VARIANTS[name]]
    logger.info("%s: %s", name, " ".join(cmd))
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / f"{name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return metrics


def curve_of(metrics: Path) -> List[Dict[str, float]]:
    return json.loads(metrics.read_text())["folds"][0]["learning_curve"]


def draw(curves: Dict[str, List[Dict[str, float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot([r["epoch"] for r in curve], [100 * r["accuracy"] for r in curve], marker="o", label=name,
                linewidth=2.5 if name == "recipe" else 1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("FER2013 PublicTest accuracy (%)")
    ax.set_title("one lever changed at a time (short cosine runs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not Path(args.root).is_file():
        logger.error("no FER2013 at %s: give --root PATH/TO/fer2013.csv.gz", args.root)
        return 2
    curves = {name: curve_of(train(name, args)) for name in args.variants}
    result = {"epochs": args.epochs, "variants": {n: VARIANTS[n] for n in args.variants},
              "final_accuracy": {n: c[-1]["accuracy"] for n, c in curves.items()},
              "final_accuracy_flip": {n: c[-1].get("accuracy_flip") for n, c in curves.items()},
              "curves": curves}
    for name in curves:
        logger.info("%-20s PublicTest after %d epochs: %.1f %%", name, args.epochs,
                    100 * result["final_accuracy"][name])
    if args.json:
        write_json_atomic(args.json, result)
    if args.figure:
        draw(curves, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
