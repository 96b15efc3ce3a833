"""``cmcnn-calibrate``: fit the temperature of a checkpoint on held-out faces and report calibration.

Temperature scaling (:mod:`cmcnn_training.calibration`) on a validation set
the model never trained on (FER2013 PublicTest, synthetic new subjects; never
a test set): the faces are split per class into a part that fits ``T``
(``--fit-fraction``) and a part that only reports, so the "after" figures
are not measured on the faces that chose ``T``. ``--report`` adds other sets
(e.g. RGB-D renders of new subjects) scored before and after with the same
``T``. Writes a new checkpoint with ``model.temperature`` set (the node, the
CLI and the evaluator publish ``softmax(s / T)`` from then on; the class
decisions are unchanged), ``calibration.json`` and one reliability diagram per
set. The trainer fits ``T`` the same way at the end of a run with a
validation set (``--calibrate``).

Example::

    cmcnn-calibrate --checkpoint runs/real_faces/checkpoint.pt --dataset fer2013 \\
        --root /data/fer2013.csv.gz --dataset-option usage=PublicTest --box-mode gt \\
        --report kinect:data/synth_test_wide --output models/cmcnn_default.pt --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.device import resolve_device
from cmcnn_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.tools import configure_logging

from .calibration import (CalibrationError, calibration_report, fit_temperature, log_probs, plot_reliability,
                          softmax_t, split_for_fitting)
from .config import BOX_MODES, parse_kv
from .evaluate import load_eval_set
from .mixing import parse_val

logger = logging.getLogger("cmcnn_training.calibrate")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line parser of ``cmcnn-calibrate``."""
    p = argparse.ArgumentParser(
        prog="cmcnn-calibrate", add_help=add_help,
        description="Fit a checkpoint's softmax temperature on held-out faces (temperature scaling) and "
                    "report expected calibration error and reliability diagrams before and after.")
    p.add_argument("--checkpoint", required=True, help="checkpoint to calibrate")
    p.add_argument("--output", required=True, help="calibrated checkpoint to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--dataset", default="kinect", help="validation dataset loader (default: kinect)")
    p.add_argument("--root", required=True, help="validation dataset root (fer2013: the csv file)")
    p.add_argument("--dataset-option", dest="dataset_options", action="append", default=[], metavar="KEY=VALUE",
                   help="loader keyword argument (fer2013: usage=PublicTest)")
    p.add_argument("--box-mode", choices=BOX_MODES, default="gt",
                   help="faces from the ground-truth boxes (default) or the detector")
    p.add_argument("--fit-fraction", type=float, default=0.5,
                   help="fraction of every class that fits T; the rest only reports (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit/report split")
    p.add_argument("--from-temperature", type=float, default=None, metavar="T",
                   help="score the network at this temperature before fitting instead of the checkpoint's "
                        "(1: the uncalibrated network of a checkpoint `cmcnn-train --calibrate` already "
                        "calibrated, so 'before' is the raw network)")
    p.add_argument("--report", action="append", default=[], metavar="NAME:ROOT[:BOX_MODE]",
                   help="another set to report before/after with the fitted T (repeatable)")
    p.add_argument("--report-dir", default=None,
                   help="folder for calibration.json and the diagrams (default: beside --output)")
    p.add_argument("--cache-dir", default="cache/crops", help="crop cache folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="crop extraction processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def set_probabilities(ckpt: Any, params: PreprocessingParams, dataset: str, root: str, options: Dict[str, Any],
                      box_mode: str, args: argparse.Namespace) -> tuple:
    """``(probs, labels)`` of the checkpoint (at its own temperature) on a dataset's faces."""
    device = resolve_device(args.device)
    es = load_eval_set(dataset, root, ckpt.class_names, params, ckpt.model_config.modalities,
                       dataset_options=options)
    _, _, pred = es.predict(ckpt.model.to(device).eval(), box_mode, device, args.cache_dir, args.workers, 64,
                            False, args.progress)
    return pred.probs, pred.y_true


def run_calibration(args: argparse.Namespace) -> Dict[str, Any]:
    """Fit, report, write the checkpoint, the JSON and the diagrams; returns the JSON document.

    Raises:
        CheckpointError / CalibrationError / TrainingError / ConfigError: bad inputs, naming them.
    """
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise CalibrationError(f"{out} exists; pass --overwrite or choose another --output")
    ckpt = load_checkpoint(args.checkpoint)
    params = PreprocessingParams.from_checkpoint(ckpt.preprocessing)
    if args.from_temperature is not None:
        if not 0.01 <= args.from_temperature <= 100.0:
            raise CalibrationError(f"--from-temperature {args.from_temperature} is outside [0.01, 100]")
        ckpt.model.config = ckpt.model.config.replace(temperature=float(args.from_temperature))
    t0 = float(ckpt.model.config.temperature)
    probs, labels = set_probabilities(ckpt, params, args.dataset, args.root,
                                      dict(parse_kv(kv) for kv in args.dataset_options), args.box_mode, args)
    fit_rows, report_rows = split_for_fitting(labels, args.fit_fraction, args.seed)
    z = log_probs(probs)  # the logits at the checkpoint's own temperature, up to a per-row shift
    t_fit = fit_temperature(z[fit_rows], labels[fit_rows])
    temperature = t0 * t_fit
    logger.info("temperature %.4f (fitted on %d faces; was %.4f)", temperature, len(fit_rows), t0)
    report_dir = Path(args.report_dir) if args.report_dir else out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    sets: List[Dict[str, Any]] = []

    def report(name: str, z_set: np.ndarray, y: np.ndarray, note: str) -> None:
        before = calibration_report(softmax_t(z_set, 1.0), y)
        after = calibration_report(softmax_t(z_set, t_fit), y)
        png = report_dir / f"reliability_{name}.png"
        plot_reliability(before, after, png, f"{Path(args.output).name} on {name} ({note}), T = {temperature:.2f}")
        logger.info("%s (%d faces, %s): ECE %.2f %% -> %.2f %%, NLL %.3f -> %.3f, accuracy %.4f", name, len(y), note,
                    100 * before.ece, 100 * after.ece, before.nll, after.nll, after.accuracy)
        sets.append({"name": name, "note": note, "before": before.to_dict(), "after": after.to_dict(),
                     "figure": str(png)})

    report(f"{args.dataset}-held-out", z[report_rows], labels[report_rows], "faces that did not fit T")
    report(f"{args.dataset}-all", z, labels, f"all, {len(fit_rows)} of them fitted T")
    for raw in args.report:
        entry = parse_val(raw, None)
        p_set, y_set = set_probabilities(ckpt, params, entry.dataset, entry.root, entry.options, entry.box_mode, args)
        report(f"{entry.dataset}-{Path(entry.root).name}", log_probs(p_set), y_set, "never fitted T")

    model = ckpt.model.to("cpu").eval()
    model.config = model.config.replace(temperature=temperature)
    doc = {"checkpoint": str(Path(args.checkpoint).resolve()), "output": str(out.resolve()),
           "temperature": temperature, "temperature_before": t0,
           "fit": {"dataset": args.dataset, "root": str(args.root), "options": args.dataset_options,
                   "box_mode": args.box_mode, "faces": int(len(fit_rows)), "fraction": args.fit_fraction,
                   "seed": args.seed},
           "sets": sets}
    meta = dict(ckpt.metadata or {})
    meta["calibration"] = {k: v for k, v in doc.items() if k not in ("checkpoint", "output")}
    save_checkpoint(out, model, list(ckpt.class_names), params.to_dict(), metadata=meta, overwrite=args.overwrite)
    write_json_atomic(report_dir / "calibration.json", doc)
    return doc


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``cmcnn-calibrate``; prints a JSON summary, returns the exit status."""
    args = get_args_parser().parse_args(argv)
    configure_logging(level=args.log_level, timestamps=True)
    try:
        doc = run_calibration(args)
    except (ValueError, OSError) as exc:  # CheckpointError, CalibrationError, TrainingError, ConfigError ...
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2
    print(json.dumps({"temperature": doc["temperature"],
                      **{s["name"]: {"ece_before": s["before"]["ece"], "ece_after": s["after"]["ece"]}
                         for s in doc["sets"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

