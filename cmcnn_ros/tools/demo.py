"""The ROS side of ``cmcnn-demo`` (``make demo``): the live CM-CNN node on a replayed, labelled RGB-D bag.

End to end, with real ROS 2 (rclpy over Fast DDS on loopback):

1. take the bag given with ``--bag``, or have ``write_bag`` write one:
   ``cmcnn-demo`` (:mod:`cmcnn_synthetic.demo`, offline package) passes the
   synthetic bag writer of ``cmcnn-bag-write`` (several subjects, changing
   expressions, faces entering and leaving); this module needs only a bag
   path, so the runtime package never imports the renderer
   (``python -m cmcnn_ros.tools.demo --bag BAG`` runs without it);
2. start ``fer_node`` (the CM-CNN node of Ni et al., IEEE TCDS 2023:
   Section III-B preprocessing, III-C/D two-branch network with
   cross-modality attention fusion) in a **separate process** with
   ``use_sim_time``, the given weights, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``
   and a ROS domain id of its own;
3. replay the bag into it at the recorded timing with ``/clock``
   (:class:`~cmcnn_ros.tools.bag_replay.BagReplayer`), while a subscriber
   collects its ``cmcnn_ros/EmotionArray`` results and ``/diagnostics``;
4. match results to the ground truth by stamp and box IoU and print
   per-expression accuracy and latency, and write ``report.json``,
   ``timeline.png`` (true vs predicted expression per face over time) and
   ``confusion.png`` into ``--output-dir``.

The node drops frames rather than queueing them (newest pair wins), so
frames it skipped have no result; they are reported as "frames processed".

A bag holding image_transport's compressed topics (a robot's recording, or
``cmcnn-demo --compressed``) is replayed as recorded and the node subscribes
to them (``colour_transport: compressed``, ``depth_transport:
compressedDepth``), as it would on the robot.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cmcnn_ros.tools import configure_logging, progress_bar
from cmcnn_ros import resources
from cmcnn_ros.ros.compressed import split_transport_topic
from cmcnn_ros.ros.sync import ros_stamp_ns
from cmcnn_ros.tools.bag_evaluate import write_outputs
from cmcnn_ros.tools.scoring import PredictedFace, Scoreboard, format_report
from cmcnn_ros.tools.bag_io import (COLOUR_TOPIC, DEPTH_TOPIC, FrameLabels, open_bag, read_labels,
                                    resolve_topics)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS = Path(resources.DEFAULT_MODEL)
NODE_NAME = "fer_node"
EMOTIONS_TOPIC = f"/{NODE_NAME}/emotions"


class DemoError(RuntimeError):
    """A piece the demo needs is missing or failed; the message says what to do."""


@dataclass
class Collected:
    """What the demo's subscriber received."""

    results: List[Tuple[float, Any]] = field(default_factory=list)  # (time.time(), EmotionArray)
    diagnostics: Dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_result(self, msg: Any) -> None:
        with self.lock:
            self.results.append((time.time(), msg))

    def on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if NODE_NAME in status.name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}


def resolve_weights(path: Optional[Path]) -> Path:
    """Find the checkpoint: the given path, else the shipped ``models/cmcnn_default.pt``.

    Raises:
        DemoError: no checkpoint file (says how to get or train one).
    """
    try:
        return resources.find_checkpoint(path)
    except FileNotFoundError as exc:
        raise DemoError(f"{exc}; or pass --weights PATH to any CM-CNN checkpoint") from None


def check_runtime() -> None:
    """Fail early with instructions when rclpy or the package's messages are missing.

    Raises:
        DemoError: rclpy, rosgraph_msgs or cmcnn_ros.msg cannot be imported.
    """
    hint = "run `make setup` (or `bash scripts/setup.sh`) and `source .ros_prefix/env.sh`; " \
           "on a ROS 2 install, build with colcon and source install/setup.bash"
    try:
        import rclpy  # noqa: F401
        import rosgraph_msgs.msg  # noqa: F401
    except ImportError as exc:
        raise DemoError(f"ROS 2 Python packages are missing ({exc}): {hint}") from exc
    try:
        from cmcnn_ros.msg import EmotionArray  # noqa: F401
    except ImportError as exc:
        raise DemoError(f"the cmcnn_ros messages are not built or not on the path ({exc}): {hint}") from exc


def default_domain_id() -> int:
    """A ROS domain id for this run: ``CMCNN_DEMO_DOMAIN_ID`` or one derived from the PID (1..100)."""
    env = os.environ.get("CMCNN_DEMO_DOMAIN_ID")
    return int(env) if env else 1 + os.getpid() % 100


FASTDDS_PROFILE = resources.fastdds_profile()
ROS_ENV_KEYS = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE")


def ros_env(domain_id: int) -> Dict[str, str]:
    """This process's environment with DDS confined to loopback and the given domain.

    Unless the user chose a Fast DDS profile, :data:`FASTDDS_PROFILE` (large
    shared-memory segment) is used: with Fast DDS's default segment most
    Kinect-size frames never reached the node's best-effort subscription.
    """
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env and FASTDDS_PROFILE is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    return env


def start_node(weights: Path, log_path: Path, env: Dict[str, str], num_threads: int = 0,
               colour_topic: str = COLOUR_TOPIC, depth_topic: str = DEPTH_TOPIC) -> subprocess.Popen:
    """Start ``fer_node`` in its own process (autostart, use_sim_time), logging to ``log_path``.

    A topic of image_transport's compressed transports (``.../compressed``,
    ``.../compressedDepth``) becomes the base topic plus the transport parameter.
    """
    colour_base, colour_transport = split_transport_topic(colour_topic)
    depth_base, depth_transport = split_transport_topic(depth_topic) if depth_topic else ("''", "raw")
    cmd = [sys.executable, "-m", "cmcnn_ros.ros.fer_node", "--ros-args",
           "-p", f"model_path:={weights}", "-p", "use_sim_time:=true", "-p", f"num_threads:={num_threads}",
           "-p", f"colour_topic:={colour_base}", "-p", f"depth_topic:={depth_base}",
           "-p", f"colour_transport:={colour_transport}", "-p", f"depth_transport:={depth_transport}",
           "-p", "publish_hri:=false"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    logger.info("starting %s (log: %s)", " ".join(cmd[:3]), log_path)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                            start_new_session=True)
    proc._cmcnn_log = log  # type: ignore[attr-defined]
    return proc


def stop_node(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGINT the node (clean lifecycle shutdown), then SIGKILL if it hangs; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("fer_node did not exit on SIGINT within %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait(timeout=5)
    log = getattr(proc, "_cmcnn_log", None)
    if log is not None:
        log.close()
    return int(proc.returncode)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class DemoOptions:
    """Options of :func:`run_demo` (see the CLI for meanings)."""

    output_dir: Path = Path("outputs/demo")
    weights: Optional[Path] = None
    bag: Optional[Path] = None
    rate: float = 1.0
    domain_id: Optional[int] = None
    node_threads: int = 0
    startup_timeout_s: float = 60.0
    iou_threshold: float = 0.3
    progress: bool = True


#: Writes the demo's bag into the given folder when no ``--bag`` is given
#: (``cmcnn-demo``, :mod:`cmcnn_synthetic.demo`, renders a synthetic one).
BagSource = Callable[[Path], None]


def _bag_for_demo(opts: DemoOptions, write_bag: Optional[BagSource] = None) -> Path:
    if opts.bag is not None:
        if not opts.bag.exists():
            raise DemoError(f"--bag {opts.bag} does not exist")
        return opts.bag
    if write_bag is None:
        raise DemoError("no --bag given: pass a recorded bag, or run `cmcnn-demo` (the synthetic renderer, "
                        "pip install -e '.[synthetic]'), which writes a labelled synthetic one first")
    path = opts.output_dir / "demo_bag"
    t0 = time.monotonic()
    write_bag(path)
    logger.info("wrote %s in %.1f s", path, time.monotonic() - t0)
    return path


def run_demo(opts: DemoOptions, write_bag: Optional[BagSource] = None) -> Dict[str, Any]:
    """Run the whole demo; returns the report dict (also written to ``report.json``).

    ``write_bag`` writes the bag when ``opts.bag`` is None (see :data:`BagSource`).

    Raises:
        DemoError: weights/messages missing, the node failed to start or produced nothing.
        BagError: the bag is unusable.
    """
    t_start = time.monotonic()
    weights = resolve_weights(opts.weights)
    check_runtime()
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    bag = _bag_for_demo(opts, write_bag)
    t_bag = time.monotonic() - t_start
    with open_bag(bag) as reader:
        topics = resolve_topics(reader)
        labels = read_labels(reader, topics.labels)

    domain = opts.domain_id if opts.domain_id is not None else default_domain_id()
    env = ros_env(domain)
    # rclpy reads these when it initialises, so this process joins the same private domain.
    os.environ.update({k: env[k] for k in ROS_ENV_KEYS if k in env})
    log_path = opts.output_dir / "fer_node.log"
    proc = start_node(weights, log_path, env, opts.node_threads, topics.colour, topics.depth or "")
    try:
        collected, stats, t_ready = _replay_and_collect(bag, proc, log_path, opts,
                                                        (topics.colour, topics.depth or topics.colour))
    finally:
        code = stop_node(proc)
    if code not in (0, -signal.SIGINT, 130):
        logger.warning("fer_node exited with %s; log tail:\n%s", code, log_tail(log_path))
    report, board = _score(collected, stats, labels, topics.colour, opts)
    report.extra.update({
        "bag": str(bag), "weights": str(weights), "ros_domain_id": domain, "rate": opts.rate,
        "wall_s": {"total": round(time.monotonic() - t_start, 2), "bag_write": round(t_bag, 2),
                   "node_startup": round(t_ready, 2), "replay": round(stats.wall_s, 2)},
        "node_diagnostics": collected.diagnostics,
    })
    title = f"cmcnn-demo: live fer_node on {bag.name} ({report.extra['frames_published']} frames)"
    paths = write_outputs(report, board, opts.output_dir, title, truth=labels)
    text = format_report(report, title) + "\n" + _extra_lines(report)
    sys.stdout.write(text + "\nwrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    return report.to_dict()


def _replay_and_collect(bag: Path, proc: subprocess.Popen, log_path: Path, opts: DemoOptions,
                        inputs: Tuple[str, str] = (COLOUR_TOPIC, DEPTH_TOPIC)) -> Tuple[Collected, Any, float]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from cmcnn_ros.msg import EmotionArray
    from cmcnn_ros.tools.bag_replay import BagReplayer, ReplayOptions

    t0 = time.monotonic()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("cmcnn_demo", context=context)
    collected = Collected()
    node.create_subscription(EmotionArray, EMOTIONS_TOPIC, collected.on_result,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", collected.on_diagnostics, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="demo-spin", daemon=True)
    spinner.start()
    replayer = BagReplayer(node, bag, ReplayOptions(rate=opts.rate))
    try:
        wanted = [t for t in replayer.topics if t in inputs] or replayer.topics[:1]
        deadline = time.monotonic() + opts.startup_timeout_s
        # The node subscribes only once active (model loaded), so its subscriptions mean "ready".
        while True:
            if proc.poll() is not None:
                raise DemoError(f"fer_node exited with code {proc.returncode} before it was ready; "
                                f"log {log_path}:\n{log_tail(log_path)}")
            if replayer.wait_for_subscribers(wanted, 0.5) and node.count_publishers(EMOTIONS_TOPIC) > 0:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"fer_node was not ready after {opts.startup_timeout_s:.0f} s (no subscription "
                                f"on {wanted}); log {log_path}:\n{log_tail(log_path)}")
        t_ready = time.monotonic() - t0
        logger.info("fer_node ready after %.1f s; replaying %s at rate %.2f", t_ready, bag, opts.rate)
        bar = None
        if opts.progress:
            bar = progress_bar(desc="replaying", unit="msg", leave=False)

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        stats = replayer.play(progress)
        if bar is not None:
            bar.close()
        # Results of the last frames are still on their way: wait until they stop
        # coming. Sim time keeps running meanwhile, or the node's sim-time
        # timers (diagnostics) would stop with the bag.
        last_n, t_end, quiet_since = -1, time.monotonic(), time.monotonic()
        bag_end = stats.last_time_ns or 0
        while time.monotonic() - quiet_since < 2.5 and proc.poll() is None \
                and time.monotonic() - t_end < 15:
            time.sleep(0.05)
            replayer.publish_clock(bag_end + int((time.monotonic() - t_end) * opts.rate * 1e9))
            with collected.lock:
                n = len(collected.results)
            if n != last_n:
                last_n, quiet_since = n, time.monotonic()
    finally:
        replayer.close()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    if not collected.results:
        raise DemoError(f"fer_node published no results for {sum(stats.published.values())} replayed messages; "
                        f"log {log_path}:\n{log_tail(log_path)}")
    return collected, stats, t_ready


def _score(collected: Collected, stats: Any, labels: Dict[int, FrameLabels], colour_topic: str,
           opts: DemoOptions) -> Tuple[Any, Scoreboard]:
    """Score the node's results against the bag's labels (by stamp, then box IoU)."""
    publish_wall = dict(stats.publish_wall.get(colour_topic, []))
    results = sorted(collected.results, key=lambda r: ros_stamp_ns(r[1]))
    classes = list(results[0][1].classes)
    board = Scoreboard(classes, opts.iou_threshold)
    for recv_wall, msg in results:
        stamp = ros_stamp_ns(msg)
        preds = [PredictedFace(box=(int(e.roi.x_offset), int(e.roi.y_offset), int(e.roi.width), int(e.roi.height)),
                               expression=str(e.expression), confidence=float(e.confidence), face_id=str(e.face_id))
                 for e in msg.faces]
        sent = publish_wall.get(stamp)
        timings = {"end_to_end": 1e3 * (recv_wall - sent)} if sent is not None else {}
        board.add_frame(stamp, labels.get(stamp) if labels else None, preds, timings)
    n_pub = stats.published.get(colour_topic, 0)
    report = board.report({"frames_published": n_pub, "frames_with_results": len(results),
                           "processed_fraction": len(results) / n_pub if n_pub else None,
                           "replay": stats.summary()})
    return report, board


def _extra_lines(report: Any) -> str:
    e = report.extra
    d = e.get("node_diagnostics", {})
    lines = [
        "",
        f"frames published: {e['frames_published']}, with a result: {e['frames_with_results']} "
        "(the node drops frames it cannot keep up with instead of queueing them)",
        "end_to_end = replayer publish -> EmotionArray received (real DDS, separate processes)",
    ]
    if d:
        lines.append(f"node diagnostics: processing p50 {d.get('processing p50 (ms)', '?')} ms, "
                     f"p95 {d.get('processing p95 (ms)', '?')} ms; processed rate "
                     f"{d.get('processed rate (Hz)', '?')} Hz; dropped pairs {d.get('dropped pairs', '?')}")
    w = e["wall_s"]
    lines.append(f"wall time: {w['total']:.1f} s (bag {w['bag_write']:.1f} s, node start {w['node_startup']:.1f} s, "
                 f"replay {w['replay']:.1f} s)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    """The options of the demo's ROS half (``cmcnn-demo`` adds those of the synthetic bag)."""
    p = argparse.ArgumentParser(
        prog="python -m cmcnn_ros.tools.demo",
        description="Live demo on a labelled RGB-D bag: run fer_node in its own process, replay the bag into "
                    "it over real ROS 2, and report per-expression accuracy, latency and a timeline PNG.")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/demo"),
                   help="report.json, timeline.png, confusion.png, fer_node.log, demo_bag/ (default outputs/demo)")
    p.add_argument("--weights", type=Path, default=None, help=f"checkpoint (default {DEFAULT_WEIGHTS})")
    p.add_argument("--bag", type=Path, default=None, help="the labelled bag to replay")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed multiplier (default 1.0)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: derived from the PID)")
    p.add_argument("--node-threads", type=int, default=0, help="torch threads in the node (0 = default)")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for the node (default 60)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The demo's ROS half from the command line (needs ``--bag``)."""
    return run_cli(get_args_parser(), argv)


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
            bag_writer: Optional[Callable[[argparse.Namespace], BagSource]] = None) -> int:
    """Parse ``argv`` with ``parser`` (this module's options, maybe more) and run the demo.

    Args:
        bag_writer: builds the :data:`BagSource` from the parsed arguments
            (``cmcnn-demo`` passes its synthetic-bag writer).
    """
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    opts = DemoOptions(output_dir=args.output_dir, weights=args.weights, bag=args.bag, rate=args.rate,
                       domain_id=args.domain_id, node_threads=args.node_threads,
                       startup_timeout_s=args.startup_timeout, progress=not args.no_progress)
    try:
        run_demo(opts, bag_writer(args) if bag_writer is not None else None)
    except (DemoError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
