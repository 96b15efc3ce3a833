"""Console tools: recognition CLI, rosbag writer / evaluator / replayer, and the demo."""

import logging


def configure_logging(verbose: bool = False, quiet_level: int = logging.INFO) -> None:
    """Log format and level shared by the console tools.

    Args:
        verbose: DEBUG instead of ``quiet_level``.
        quiet_level: level without ``--verbose``.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else quiet_level,
                        format="%(levelname)s %(name)s: %(message)s")
    # PyOpenGL (the synthetic renderer) logs platform noise at INFO.
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
