"""Console tools over the core and the node: single-image tools (cmcnn-recognize, cmcnn-explain),
rosbag I/O, the offline bag evaluator and its scoring, the bag replayer and the demo's ROS half."""

import logging
import sys
from typing import Any, Iterable, Optional, Union


def configure_logging(verbose: bool = False, quiet_level: int = logging.INFO, *,
                      level: Optional[Union[int, str]] = None, timestamps: bool = False) -> None:
    """Log format and level shared by the console tools and the offline trainer.

    Args:
        verbose: DEBUG instead of ``quiet_level``.
        quiet_level: level without ``--verbose``.
        level: the level itself, as a number or a name in any case
            (``"info"``, ``"WARNING"``), for tools with a ``--log-level``
            flag; overrides ``verbose`` and ``quiet_level``.
        timestamps: prefix each line with the time (long training runs).

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    if level is None:
        resolved = logging.DEBUG if verbose else quiet_level
    elif isinstance(level, int):
        resolved = level
    else:
        names = logging.getLevelNamesMapping()
        word = str(level).strip().upper()
        if word not in names:
            raise ValueError(f"logging level {level!r} is not one of debug, info, warning, error, critical")
        resolved = names[word]
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=resolved, format="%(asctime)s " + fmt if timestamps else fmt)
    # PyOpenGL (the synthetic renderer) logs platform noise at INFO.
    logging.getLogger("OpenGL").setLevel(logging.WARNING)


def progress_bar(iterable: Optional[Iterable[Any]] = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm progress bar for long work, shown only when asked for and stderr is a terminal.

    Every tool, the trainer and the renderer make their bars here: redirected
    into a log (CI, ``nohup``, a launch file) a bar would write hundreds of
    carriage-return updates, so it stays quiet there.
    """
    from tqdm import tqdm

    return tqdm(iterable, disable=not enabled or not sys.stderr.isatty(), **kwargs)
