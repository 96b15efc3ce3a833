"""A process that times one face-expression implementation on frames, on request (for bench_fer.py).

Self-contained on purpose: it runs in the ``fer`` package's own venv (which
has no cmcnn_ros), or in this venv with an older revision of cmcnn_ros first
on ``sys.path``. The driver writes the frames to an ``.npz`` and then sends
one command a line on stdin; each answer is one JSON line on stdout:

    RUN <frame name> <calls>   ->  {"ms": [...], "faces": n, "top": "happy"}
    QUIT

    python benchmarks/timing_worker.py --kind fer --frames F.npz
    python benchmarks/timing_worker.py --kind cmcnn --frames F.npz --model M.pt [--source TREE] [--option NAME=INT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def build(kind: str, model: str, source: str, options: dict):
    """``(call, describe)``: the function timed on one BGR frame, and one that summarises its result."""
    if kind == "fer":
        from fer.fer import FER

        detector = FER()   # as its README shows: OpenCV's Haar cascade, the bundled TFLite model

        def describe(result):
            top = max(result[0]["emotions"], key=result[0]["emotions"].get) if result else None
            return len(result), top

        return detector.detect_emotions, describe
    if source:
        sys.path.insert(0, source)
    from cmcnn_ros.inference import Recognizer

    from cmcnn_ros.model.checkpoint import load_checkpoint
    from cmcnn_ros.preprocessing.params import PreprocessingParams

    fields = set(PreprocessingParams.__dataclass_fields__)
    settings = {k: v for k, v in options.items() if k in fields}   # e.g. detect_tile_side=0
    kwargs = {k: v for k, v in options.items() if k not in fields}
    if settings:
        loaded = load_checkpoint(model)
        params = PreprocessingParams.from_checkpoint(loaded.preprocessing).replace(**settings)
        recognizer = Recognizer(loaded.model, loaded.class_names, params, device="cpu", **kwargs)
    else:
        recognizer = Recognizer.from_checkpoint(model, device="cpu", **kwargs)   # full detection on every call

    def describe(result):
        return len(result.faces), (result.faces[0].expression if result.faces else None)

    return recognizer.recognize, describe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("fer", "cmcnn"), required=True)
    ap.add_argument("--frames", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--source", default="", help="a cmcnn_ros tree to import first (an older revision)")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=INT",
                    help="a Recognizer.from_checkpoint argument or a preprocessing setting (integer), e.g. "
                         "preprocessing_threads=1, detect_tile_side=0")
    args = ap.parse_args(argv)
    import numpy as np

    with np.load(args.frames) as data:
        frames = {name: data[name] for name in data.files}
    # Library chatter (TensorFlow, LiteRT, the recognizer's logs) goes to stderr; stdout carries the answers.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    options = {name: int(value) for name, _, value in (o.partition("=") for o in args.option)}
    call, describe = build(args.kind, args.model, args.source, options)
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "QUIT":
            break
        name, calls = parts[1], int(parts[2])
        frame, times, result = frames[name], [], None
        for _ in range(calls):
            t0 = time.perf_counter()
            result = call(frame)
            times.append((time.perf_counter() - t0) * 1e3)
        faces, top = describe(result)
        out.write(json.dumps({"ms": times, "faces": faces, "top": top}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
