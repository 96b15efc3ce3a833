"""``cmcnn-demo`` (``make demo``): a labelled synthetic RGB-D bag, then the live node on it.

Without ``--bag``, renders a scripted sequence into a bag
(:func:`cmcnn_synthetic.bags.write_synthetic_bag`, what ``cmcnn-bag-write``
writes: several subjects, changing expressions, faces entering and leaving)
and hands it to :func:`cmcnn_ros.tools.demo.run_demo`, which starts
``fer_node`` in its own process, replays the bag into it over real DDS and
scores what it publishes. Only the bag writing needs the renderer, so only
that part lives here: the runtime package takes a bag path and never imports
this one.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from cmcnn_ros.tools import demo
from cmcnn_ros.tools.bag_writer import Transports

from .bags import write_synthetic_bag

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    """The ROS half's options (:func:`cmcnn_ros.tools.demo.get_args_parser`) plus the synthetic bag's."""
    p = demo.get_args_parser()
    p.prog = "cmcnn-demo"
    p.description = ("Live demo: write a labelled synthetic RGB-D bag (or take --bag), run fer_node in its own "
                     "process, replay the bag into it over real ROS 2, and report per-expression accuracy, "
                     "latency and a timeline PNG.")
    g = p.add_argument_group("synthetic bag (written when no --bag is given)")
    g.add_argument("--duration", type=float, default=10.0, help="bag length in s (default 10)")
    g.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    g.add_argument("--faces", type=int, default=3, help="faces at once, 1-4 (default 3)")
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    g.add_argument("--compressed", action="store_true",
                   help="write the bag with image_transport's compressed topics (JPEG quality 90 colour, PNG "
                        "compressedDepth), as a robot records it; the node then reads those transports")
    return p


def write_demo_bag(args: argparse.Namespace, path: Path) -> None:
    """Render the demo's synthetic bag into ``path`` (replaced) from the parsed options."""
    transports = Transports("compressed", "compressedDepth", "jpeg", 90, "png") if args.compressed else Transports()
    summary = write_synthetic_bag(path, duration_s=args.duration, fps=args.fps, num_faces=args.faces,
                                  seed=args.seed, overwrite=True, progress=not args.no_progress,
                                  transports=transports)
    logger.info("rendered %d frames, %.1f faces a frame", summary.frames, summary.faces_per_frame)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-demo``."""
    return demo.run_cli(get_args_parser(), argv, lambda args: functools.partial(write_demo_bag, args))


if __name__ == "__main__":
    sys.exit(main())
