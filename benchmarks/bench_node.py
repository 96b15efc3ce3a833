"""Benchmark fer_node end to end: 640x480 colour + depth at 30 Hz in, EmotionArray out.

Three processes, as on a robot: a publisher (``test/ros_helpers/publish_frames.py``)
sends pre-rendered frames (bgr8 + 16UC1, one stamp per pair) at ``--rate``;
the node (CM-CNN, Ni et al., IEEE TCDS 2023) runs in its own process, pinned to
``--node-cpus``; this script subscribes to ``~/emotions`` and measures the
processed rate and the stamp-to-receive latency of every result.

    python benchmarks/bench_node.py                       # 1 and 5 faces, 30 Hz, 10 s each
    python benchmarks/bench_node.py --faces 1 --json out.json

Targets (issue): >= 25 Hz processed and p95 <= 60 ms at one face on 2 CPU cores.
Without ``--model`` the default weights are used, or a randomly initialised
checkpoint of the same architecture when they are missing (same cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
sys.path.insert(0, str(ROOT))

from cmcnn_ros.tools import configure_logging  # noqa: E402
from ros_helpers.frames import build_frames  # noqa: E402
from ros_helpers.rosproc import NodeProcess, RosClient, claim_domain_id, ros_env  # noqa: E402

logger = logging.getLogger("bench_node")
COLOUR, DEPTH = "/camera/color/image_raw", "/camera/depth_registered/image_raw"


def random_checkpoint(path: Path) -> Path:
    import torch

    from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
    from cmcnn_ros.model.checkpoint import save_checkpoint
    from cmcnn_ros.model.cmcnn import cmcnn
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    torch.manual_seed(0)
    return save_checkpoint(path, cmcnn(num_classes=7), EXPRESSIONS_WITH_NEUTRAL,
                           PreprocessingParams().to_dict(), overwrite=True)


def run_scenario(client: RosClient, domain_id: int, results: List, frames: Path, rate: float,
                 duration: float, warmup: float, workdir: Path) -> Dict[str, Any]:
    out = workdir / f"pub_{frames.stem}.json"
    pub = subprocess.Popen([sys.executable, str(ROOT / "test" / "ros_helpers" / "publish_frames.py"),
                            "--frames", str(frames), "--rate", str(rate), "--duration", str(warmup + duration),
                            "--colour-topic", COLOUR, "--depth-topic", DEPTH, "--json", str(out)],
                           env=ros_env(domain_id))
    results.clear()
    if pub.wait(warmup + duration + 60) != 0:
        raise RuntimeError("publisher failed")
    time.sleep(0.5)
    sent = json.loads(out.read_text())
    stamps = sent["stamps_ns"]
    t_measure = stamps[0] + int(warmup * 1e9)
    window = [(t, m) for t, m in results
              if (m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec) >= t_measure]
    lat = np.array([(t - (m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec)) / 1e6 for t, m in window])
    span = (stamps[-1] - t_measure) / 1e9
    faces = np.array([len(m.faces) for _, m in window]) if window else np.zeros(1)
    return {
        "input_rate_hz": sent["rate_hz"],
        "processed_rate_hz": len(window) / span if span > 0 else 0.0,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "latency_max_ms": float(lat.max()) if lat.size else float("nan"),
        "results": int(len(window)),
        "mean_faces": float(faces.mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fer_node end-to-end benchmark (publisher -> node -> subscriber)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: models/cmcnn_default.pt, else random weights)")
    ap.add_argument("--faces", type=int, nargs="+", default=[1, 5], choices=[1, 5])
    ap.add_argument("--rate", type=float, default=30.0, help="input rate (Hz)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--node-cpus", default="0,1", help="CPU cores the node is pinned to")
    ap.add_argument("--num-threads", type=int, default=0, help="node parameter num_threads")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    configure_logging()
    from cmcnn_ros.msg import EmotionArray

    workdir = Path(tempfile.mkdtemp(prefix="bench_node_"))
    model = args.model or ROOT / "models" / "cmcnn_default.pt"
    weights = "default"
    if args.model is None and not model.exists():
        logger.info("default weights missing: using a randomly initialised checkpoint (same cost)")
        model, weights = random_checkpoint(workdir / "random.pt"), "random"
    lease = claim_domain_id()
    node = NodeProcess(lease.domain_id, workdir / "node.log",
                       {"model_path": str(model), "device": "cpu", "num_threads": args.num_threads})
    cpus = {int(c) for c in args.node_cpus.split(",") if c.strip()} & os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(node.proc.pid, cpus)
    client = RosClient(lease.domain_id, "bench_node_subscriber")
    _, results = client.collector(EmotionArray, "/fer_node/emotions")
    rows: List[Dict[str, Any]] = []
    try:
        node.wait_for_log(r"\] \[fer_node\]: active:", 90)
        for n in args.faces:
            frames = build_frames(workdir / f"faces{n}.npz", {1: "one", 5: "five"}[n], count=8)
            row = {"faces": n, **run_scenario(client, lease.domain_id, results, frames, args.rate,
                                             args.duration, args.warmup, workdir)}
            rows.append(row)
    finally:
        client.close()
        node.stop()
        lease.release()
    print(f"fer_node benchmark: 640x480 bgr8 + 16UC1 at {args.rate:g} Hz, node on CPUs {sorted(cpus)}, "
          f"{weights} weights ({model})")
    print("| faces | input Hz | processed Hz | latency p50 ms | p95 ms | max ms | mean faces found |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['faces']} | {r['input_rate_hz']:.1f} | {r['processed_rate_hz']:.1f} | "
              f"{r['latency_p50_ms']:.1f} | {r['latency_p95_ms']:.1f} | {r['latency_max_ms']:.1f} | "
              f"{r['mean_faces']:.2f} |")
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps({"rate_hz": args.rate, "weights": weights, "model": str(model),
                                   "node_cpus": sorted(cpus), "rows": rows}, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
