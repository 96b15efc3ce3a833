"""Forward latency of the CM-CNN network (Section IV-D: "15 ms for once forward computation").

Times ``model(x)`` for ``x`` of shape ``(B, 3, 148, 148)`` (grey, LBP, depth)
at batch 1 and 5 under ``torch.inference_mode()`` with
``torch.set_num_threads(--threads)`` (default 2), for the ``default`` and
``paper`` presets (plus any ``--widths`` candidates), in these variants:

``eager``         the model as built (BatchNorm separate);
``fused``         :meth:`CMCNN.fuse_for_inference` (BatchNorm folded into convs);
``fused_cl``      ``fuse_for_inference()`` default: fused + ``channels_last`` weights
                  (what the recognizer should run);
``jit``           fused_cl, ``torch.jit.trace`` + ``torch.jit.freeze`` (TorchScript);
``compile``       fused_cl through ``torch.compile`` (inductor; compiled in the warm-up);
``onnxruntime``   the ONNX export of ``predict_proba`` on ONNX Runtime, ``--threads``
                  intra-op threads (what the recognizer runs: ``inference/backends.py``;
                  its time includes the softmax the others leave out). Time it in its
                  own invocation (``--variants onnxruntime``): after every torch call
                  torch's OpenMP workers spin-wait on the cores for a while, which
                  ONNX Runtime's threads would otherwise compete with.

``--presets weights`` is the shipped network (``models/cmcnn_default.pt``,
48 px crops): what the node runs. The other presets are built at 148 px.

The variants are run round-robin (one call of each per round) so that load
from other processes on a shared machine hits them alike: compare ratios
within one run. Prints a table of p50/p95 in ms and parameter counts
(without the FEN heads, which inference does not run).

On a machine whose cores other processes keep busy, two intra-op threads
can be far slower than one (OpenMP workers spin-wait for a core): on
2026-11-28 at load 3.6 on 2 cores the default preset took 7.4 ms p50 with
``--threads 1`` and 55-240 ms with ``--threads 2``. Run both.

The real-time budget: the whole recognizer <= 33 ms p50 for one face on 2
CPU cores, of which preprocessing takes ~15 ms, leaves ~12 ms for the
network at batch 1.

Usage::

    python benchmarks/bench_network.py [--rounds 40] [--threads 2] [--presets default paper]
        [--widths 8,16,32,64 ...] [--variants eager fused fused_cl jit compile onnxruntime]
        [--device cpu|cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import warnings
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cmcnn_ros.tools import configure_logging
from cmcnn_ros.atomic_io import write_json_atomic
from cmcnn_ros.model import CMCNN, cmcnn, preset_config

logger = logging.getLogger("bench_network")
VARIANTS = ("eager", "fused", "fused_cl", "jit", "compile", "onnxruntime")
MODALITIES = ("grey", "lbp", "depth")


def build_variant(model: CMCNN, variant: str, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running ``model`` in the given inference variant.

    Args:
        model: Network in eval mode on the target device.
        variant: One of :data:`VARIANTS`.
        example: Example input for tracing.

    Raises:
        ValueError: unknown variant.
    """
    if variant == "eager":
        return model
    if variant == "fused":
        return model.fuse_for_inference(channels_last=False)
    fused = model.fuse_for_inference(channels_last=True)
    if variant == "fused_cl":
        return fused
    if variant == "jit":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # trace deprecation + constant-shape tracer warnings
            return torch.jit.freeze(torch.jit.trace(fused, example))
    if variant == "compile":
        return torch.compile(fused)
    if variant == "onnxruntime":
        from cmcnn_ros.inference.backends import make_backend

        backend = make_backend(model, example.device, "onnxruntime", num_threads=torch.get_num_threads())
        return lambda x: backend(x.cpu().numpy())
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def time_round_robin(
    fns: Dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, rounds: int, warmup: int, device: str
) -> Dict[str, List[float]]:
    """Milliseconds per call for each callable, interleaved call by call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn(x)
        sync()
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def parse_widths(text: str) -> List[int]:
    """``"8,16,32,64"`` -> ``[8, 16, 32, 64]``."""
    try:
        widths = [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--widths wants four comma-separated ints, got {text!r}") from exc
    if len(widths) != 4:
        raise argparse.ArgumentTypeError(f"--widths wants four comma-separated ints, got {text!r}")
    return widths


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Run the benchmark described by parsed arguments; returns the JSON-able result."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shipped = {}
    if "weights" in args.presets:
        # The shipped network (48 px crops): what the node runs, not a 148 px preset.
        from cmcnn_ros.model.checkpoint import load_checkpoint
        from cmcnn_ros.resources import find_checkpoint

        shipped["weights"] = load_checkpoint(find_checkpoint(None)).model.eval()
    configs = {name: (shipped[name].config if name in shipped else preset_config(name, modalities=MODALITIES))
               for name in args.presets}
    for w in args.widths or []:
        configs["w" + "-".join(map(str, w))] = preset_config("default", modalities=MODALITIES,
                                                              texture_widths=w, depth_widths=w)
    rows = []
    for name, cfg in configs.items():
        model = (shipped[name] if name in shipped else cmcnn(cfg)).eval().to(args.device)
        params = model.num_parameters(include_fen_heads=False)
        for batch in args.batches:
            x = torch.rand(batch, len(MODALITIES), cfg.input_size, cfg.input_size, device=args.device)
            fns = {v: build_variant(model, v, x) for v in args.variants}
            times = time_round_robin(fns, x, args.rounds, args.warmup, args.device)
            for variant, ts in times.items():
                arr = np.asarray(ts)
                rows.append({
                    "config": name, "batch": batch, "variant": variant, "params": params,
                    "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
                    "widths": list(cfg.texture_widths),
                })
                logger.info("%s b%d %s p50 %.2f ms", name, batch, variant, rows[-1]["p50_ms"])
    return {
        "threads": args.threads, "device": args.device, "rounds": args.rounds, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }


def format_table(result: Dict[str, object]) -> str:
    """Plain-text table of the rows, with each variant's ratio to eager."""
    rows = result["rows"]
    eager = {(r["config"], r["batch"]): r["p50_ms"] for r in rows if r["variant"] == "eager"}
    lines = [f"threads={result['threads']} device={result['device']} torch={result['torch']} "
             f"load1={result['load_avg_1min']}",
             f"{'config':<16}{'params':>10}{'batch':>6}  {'variant':<9}{'p50 ms':>9}{'p95 ms':>9}{'vs eager':>9}"]
    for r in rows:
        base = eager.get((r["config"], r["batch"]))
        ratio = f"{r['p50_ms'] / base:8.2f}x" if base else "        -"
        lines.append(f"{r['config']:<16}{r['params']:>10,}{r['batch']:>6}  {r['variant']:<9}"
                     f"{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per variant (default 40)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--presets", nargs="+", default=["default", "paper"],
                        help="'weights' (the shipped checkpoint's network, 48 px) and/or model presets (148 px)")
    parser.add_argument("--widths", type=parse_widths, action="append",
                        help="extra candidate, same widths for both FEN types, e.g. 8,16,32,64 (repeatable)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    configure_logging()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    result = run(args)
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
