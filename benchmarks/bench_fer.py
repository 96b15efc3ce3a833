"""The recognizer beside the PyPI ``fer`` package, on the same frames, in one run.

What a new user compares first: one 640x480 frame in, every face's expression
out, the face detector run on every call. Frames:

``grace_hopper``  matplotlib's Grace Hopper sample (600x512, one face), scaled
                  to 480 px high and centred on a black 640x480 frame;
``astronauts5``   five copies of scikit-image's astronaut face (the
                  ``five`` frame of ``bench_node.py``).

Each implementation runs in its own process (``timing_worker.py``):

``cmcnn_ros``     this checkout's ``Recognizer.from_checkpoint`` with its defaults
                  (shipped weights, colour only, full detection every call);
``baseline``      the same from git revision ``--baseline`` (``git archive``), if given;
``fer``           ``fer.FER().detect_emotions`` (OpenCV Haar cascade + its TFLite
                  model, its defaults), from a separate venv: ``fer`` is no
                  dependency of this package (it needs TensorFlow).

The processes take turns, ``--calls`` calls each per round for ``--rounds``
rounds (load from other processes hits all alike); p50/p95 per call.

    python benchmarks/bench_fer.py --make-fer-venv /tmp/fer_venv     # once: fer and its pinned dependencies
    python benchmarks/bench_fer.py --fer-python /tmp/fer_venv/bin/python --baseline 7afcc95 \\
        --json benchmarks/results/fer_cpu2.json

Target (issue 16, 2 CPU cores): Grace Hopper <= 20 ms and at least twice as fast as ``fer``.
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
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
sys.path.insert(0, str(ROOT))

from cmcnn_ros.atomic_io import write_json_atomic  # noqa: E402
from cmcnn_ros.tools import configure_logging  # noqa: E402

logger = logging.getLogger("bench_fer")
WORKER = Path(__file__).resolve().parent / "timing_worker.py"
# fer 25.10.3 and what it imports for its default (Haar + TFLite) path, pinned as measured.
# Not installed: facenet-pytorch (only for FER(mtcnn=True); it pins an old torch) and
# the full tensorflow wheel (tensorflow-cpu provides the same module, without CUDA).
FER_PINS = ["setuptools==79.0.1", "numpy==2.4.6", "tensorflow-cpu==2.21.0", "keras==3.15.1",
            "opencv-contrib-python==4.14.0.94", "pandas==3.1.1", "requests==2.34.2", "pillow==13.0.0",
            "matplotlib==3.11.2", "tqdm==4.70.1", "moviepy==1.0.3", "ffmpeg-python==0.2.0", "h5py==3.14.0"]


def grace_hopper() -> np.ndarray:
    """matplotlib's Grace Hopper photograph scaled to 480 px high, centred on a black 640x480 BGR frame."""
    import cv2
    import matplotlib.cbook as cbook

    image = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    image = cv2.resize(image, (round(w * 480 / h), 480), interpolation=cv2.INTER_AREA)
    frame = np.zeros((480, 640, 3), np.uint8)
    x0 = (640 - image.shape[1]) // 2
    frame[:, x0:x0 + image.shape[1]] = image
    return frame


def make_fer_venv(path: Path) -> Path:
    """A venv at ``path`` with fer 25.10.3 and :data:`FER_PINS` (fer itself without its unpinned extras)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + FER_PINS, check=True)
    subprocess.run(pip + ["--no-deps", "fer==25.10.3"], check=True)
    return path / "bin" / "python"


class Worker:
    """One timing_worker.py process."""

    def __init__(self, name: str, python: str, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.proc = subprocess.Popen([python, str(WORKER)] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(ROOT))
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"{name}: the worker did not start (see its messages above)")
        self.times: Dict[str, List[float]] = {}
        self.found: Dict[str, Any] = {}

    def run(self, frame: str, calls: int, keep: bool = True) -> None:
        self.proc.stdin.write(f"RUN {frame} {calls}\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if keep:
            self.times.setdefault(frame, []).extend(answer["ms"])
        self.found[frame] = (answer["faces"], answer["top"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("QUIT\n")
            self.proc.stdin.flush()
            self.proc.wait(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fer-python", default="/tmp/fer_venv/bin/python", help="python of a venv with fer")
    ap.add_argument("--make-fer-venv", type=Path, help="create that venv here first (pinned, from PyPI)")
    ap.add_argument("--baseline", metavar="REV", help="also time the recognizer of this git revision")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=INT",
                    help="also time this checkout's recognizer with this argument, e.g. preprocessing_threads=1")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "cmcnn_default.pt")
    ap.add_argument("--frames", nargs="+", default=["grace_hopper", "astronauts5"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=10, help="calls per implementation and round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    configure_logging()
    if args.make_fer_venv:
        args.fer_python = str(make_fer_venv(args.make_fer_venv))
    from ros_helpers.frames import photo_frame

    work = Path(tempfile.mkdtemp(prefix="bench_fer_"))
    available = {"grace_hopper": grace_hopper, "astronauts5": lambda: photo_frame(5)[0]}
    frames_path = work / "frames.npz"
    np.savez(frames_path, **{name: available[name]() for name in args.frames})
    common = ["--frames", str(frames_path), "--model", str(args.model)]
    workers: List[Worker] = []
    try:
        workers.append(Worker("cmcnn_ros", sys.executable, ["--kind", "cmcnn"] + common))
        for option in args.variant:
            workers.append(Worker(f"cmcnn_ros {option}", sys.executable,
                                  ["--kind", "cmcnn", "--option", option] + common))
        if args.baseline:
            tree = work / "baseline"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            workers.append(Worker(f"baseline {args.baseline}", sys.executable,
                                  ["--kind", "cmcnn", "--source", str(tree)] + common))
        if Path(args.fer_python).exists():
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"
            workers.append(Worker("fer 25.10.3", args.fer_python, ["--kind", "fer", "--frames", str(frames_path)],
                                  env=env))
        else:
            logger.warning("no fer venv at %s (make one with --make-fer-venv DIR): timing cmcnn_ros alone",
                           args.fer_python)
        for frame in args.frames:
            for w in workers:
                w.run(frame, args.warmup, keep=False)
        t0 = time.monotonic()
        for r in range(args.rounds):
            for frame in args.frames:
                for w in (workers if r % 2 == 0 else workers[::-1]):
                    w.run(frame, args.calls)
        logger.info("timed in %.0f s", time.monotonic() - t0)
    finally:
        for w in workers:
            w.close()
    rows = []
    fer = next((w for w in workers if w.name.startswith("fer")), None)
    for frame in args.frames:
        fer_p50 = float(np.percentile(fer.times[frame], 50)) if fer else None
        for w in workers:
            t = np.array(w.times[frame])
            p50 = float(np.percentile(t, 50))
            rows.append({"implementation": w.name, "frame": frame, "faces_found": w.found[frame][0],
                         "top_expression": w.found[frame][1], "calls": int(t.size), "p50_ms": p50,
                         "p95_ms": float(np.percentile(t, 95)),
                         "fer_p50_over_p50": (fer_p50 / p50) if fer_p50 else None})
    print(f"one 640x480 frame, detection on every call, {args.rounds} rounds x {args.calls} calls, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| implementation | frame | faces found | first face | p50 ms | p95 ms | fer p50 / p50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['fer_p50_over_p50']:.2f}x" if r["fer_p50_over_p50"] else "-"
        print(f"| {r['implementation']} | {r['frame']} | {r['faces_found']} | {r['top_expression']} | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {ratio} |")
    if args.json:
        write_json_atomic(args.json, {"rounds": args.rounds, "calls": args.calls, "baseline": args.baseline,
                                      "fer_pins": FER_PINS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
