"""The receiving end of the separate-process ROS tests.

Listener scripts (``python -c SCRIPT`` with ``cwd`` the repository root) run
in their own process so that DDS really carries every message. They share
one protocol with the test that starts them: print ``ready`` once
subscribed, spin until the test writes a line on stdin (it has sent
everything), spin a little longer for messages still in flight, then print
what they got as one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any


def spin_until_told(node: Any, linger_s: float = 2.0) -> None:
    """Say ``ready``, spin ``node`` until stdin gives a line, then ``linger_s`` seconds more."""
    import rclpy

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + linger_s
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)


def report(got: Any) -> None:
    """What the listener got, as the one JSON line the test reads."""
    print(json.dumps(got), flush=True)
