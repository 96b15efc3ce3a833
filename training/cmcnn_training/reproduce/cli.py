"""``cmcnn-reproduce``: the paper's Section IV evidence as one resumable sweep and a report.

Trains every row of Tables I-III (plus an illumination-shift split) with
subject-independent k-fold cross-validation, then writes ``report.md`` with
each table beside the paper's numbers, each claim marked agree/disagree, and
Figs. 6-8 (confusion matrix, t-SNE of f_v with silhouette scores, Grad-CAM).

Examples::

    cmcnn-reproduce --preset cpu --root data/repro_synth --out docs/reproduction
    cmcnn-reproduce --preset cpu --root data/repro_synth --out docs/reproduction --rerun G D
    cmcnn-reproduce --preset paper --dataset bu3dfe --root data/BU-3DFE --protocol P1 --out runs/bu3dfe_report
    cmcnn-reproduce --report-only --work-dir runs/reproduce --out docs/reproduction
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import fields, replace
from typing import Optional, Sequence

from cmcnn_ros.modalities import crop_size_problem
from cmcnn_ros.tools import configure_logging

from .rows import DEFAULT_ORDER, RowError, resolve
from .sweep import PRESETS, SweepConfig, SweepError, load_finished, run_sweep

logger = logging.getLogger("cmcnn_training.reproduce")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmcnn-reproduce",
        description="Reproduce the paper's Tables I-III and Figs. 6-8 as a resumable sweep; writes "
                    "OUT/report.md and its figures. Finished rows are kept in --work-dir and never "
                    "retrained unless named in --rerun.",
        epilog="Rows: " + ", ".join(DEFAULT_ORDER) + " (soft-focal-2.0 is the same training as G+L+D+CMFN).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="sweep settings: cpu (what docs/reproduction was made with), paper (the paper's "
                        "protocol: 10 folds, 148 px, 300 epochs), ci (tiny smoke run) (default: cpu)")
    p.add_argument("--dataset", default=None, help="dataset loader (kinect, bu3dfe, bosphorus, ...; default kinect)")
    p.add_argument("--root", default=None, help="dataset root folder")
    p.add_argument("--protocol", default=None, help="dataset protocol (P1, P2, paper-P1, paper-P2, all)")
    p.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                   help="rows to run (default: all the dataset allows)")
    p.add_argument("--rerun", nargs="+", default=[], metavar="ROW", help="retrain these finished rows")
    p.add_argument("--folds", type=int, default=None, help="subject-independent folds")
    p.add_argument("--epochs", type=int, default=None, help="fusion-training epochs per fold")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="FEN pre-training epochs per fold")
    p.add_argument("--crop-size", type=int, default=None, help="crop side in pixels (paper: 148)")
    p.add_argument("--model-preset", default=None, help="network preset (tiny, default, paper)")
    p.add_argument("--seed", type=int, default=None, help="seed of the folds and initialisations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--workers", type=int, default=None, help="crop-extraction processes")
    p.add_argument("--cache-dir", default=None, help="crop cache folder (default cache/crops)")
    p.add_argument("--work-dir", default="runs/reproduce",
                   help="per-row results and checkpoints (default: %(default)s)")
    p.add_argument("--out", default="runs/reproduce/report", help="report folder (default: %(default)s)")
    p.add_argument("--note", default="", help="free text about the data (e.g. how it was rendered), shown in the "
                                               "report's protocol section")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished rows, train nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--log-level", default="INFO")
    return p


def build_sweep_config(args: argparse.Namespace) -> SweepConfig:
    """Preset < flags."""
    cfg = SweepConfig(**PRESETS[args.preset])
    names = {f.name for f in fields(SweepConfig)}
    over = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cfg = replace(cfg, **over)
    if args.rows:
        cfg.rows = list(args.rows)
    for name in list(cfg.rows or []) + list(args.rerun):
        resolve(name)  # an unknown row stops here, before any data is read
    if cfg.folds < 2:
        raise SweepError(f"--folds {cfg.folds}: a cross-validated sweep needs at least 2 folds")
    problem = crop_size_problem(cfg.crop_size)
    if problem:
        raise SweepError(f"--crop-size {cfg.crop_size}: {problem}")
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (2 = refused before training)."""
    args = get_args_parser().parse_args(argv)
    try:
        configure_logging(level=args.log_level, timestamps=True)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    command = "cmcnn-reproduce " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    try:
        cfg = build_sweep_config(args)
        if args.report_only:
            from .report import write_report

            meta, docs = load_finished(args.work_dir)
            path = write_report(args.out, args.work_dir, meta, docs, command=command, note=args.note)
        else:
            run_sweep(cfg, args.work_dir, rerun=args.rerun, progress=args.progress, command=command,
                      note=args.note)
            from .report import write_report  # imported late: matplotlib/scikit-learn only when needed

            meta, docs = load_finished(args.work_dir)
            path = write_report(args.out, args.work_dir, meta, docs, command=command,
                                sweep_seconds=time.perf_counter() - t0)
    except (SweepError, RowError) as exc:
        logger.error("%s", exc)
        return 2
    except ValueError as exc:  # ConfigError, DatasetError, CropError ... all name what to fix
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; finished folds and rows are kept in %s, run the same command to resume",
                  args.work_dir)
        return 130
    logger.info("report written: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
