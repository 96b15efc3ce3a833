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

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from cmcnn_ros.tools import demo

from .bags import write_synthetic_bag

logger = logging.getLogger(__name__)


def write_demo_bag(path: Path, opts: demo.DemoOptions) -> None:
    """Render the demo's synthetic bag into ``path`` (replaced) from the demo options."""
    summary = write_synthetic_bag(path, duration_s=opts.duration_s, fps=opts.fps, num_faces=opts.faces,
                                  seed=opts.seed, overwrite=True, progress=opts.progress)
    logger.info("rendered %d frames, %.1f faces a frame", summary.frames, summary.faces_per_frame)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cmcnn-demo``: the options of :mod:`cmcnn_ros.tools.demo`'s parser."""
    return demo.main(argv, write_bag=write_demo_bag)


if __name__ == "__main__":
    sys.exit(main())
