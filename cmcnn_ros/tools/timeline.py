"""PNG timeline of true vs predicted expression per face over a sequence.

CM-CNN (Ni et al., IEEE TCDS 2023, Section III) classifies each frame
independently; on a video the interesting question is how the per-frame
answers follow the true expression as it changes. One row of panels per
ground-truth subject: the true expression as a step line, each prediction as
a dot (green when right, red when wrong) and missed frames (face not
detected) as grey ticks at the bottom. Written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from cmcnn_ros.atomic_io import write_bytes_atomic
from cmcnn_ros.tools.bag_io import FrameLabels
from cmcnn_ros.tools.scoring import FaceRecord


class TimelineError(ValueError):
    """Nothing to plot or inconsistent inputs."""


def save_timeline_png(records: Sequence[FaceRecord], path: "str | Path", class_names: Sequence[str],
                      title: str = "expression timeline", max_subjects: int = 8,
                      truth: Optional[Mapping[int, FrameLabels]] = None) -> Path:
    """Plot true vs predicted expression per subject over time and save a PNG.

    Args:
        records: per-face results (``Scoreboard.records``).
        path: output PNG.
        class_names: the model's classes; true labels outside them get rows too.
        title: figure title.
        max_subjects: panels at most (the subjects seen most often).
        truth: every labelled frame of the bag (stamp -> labels); the true line
            is then drawn from all frames, not only from the processed ones
            (a live node skips frames it cannot keep up with).

    Returns:
        the path written.

    Raises:
        TimelineError: ``records`` is empty.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not records:
        raise TimelineError("no ground-truth faces to plot a timeline of")
    rows: List[str] = list(class_names)
    for r in records:
        if r.true_label not in rows:
            rows.append(r.true_label)
        if r.predicted is not None and r.predicted not in rows:
            rows.append(r.predicted)
    y_of = {c: i for i, c in enumerate(rows)}
    by_subject: Dict[str, List[FaceRecord]] = {}
    for r in records:
        by_subject.setdefault(r.subject, []).append(r)
    # The true line: from every labelled frame when given, else from the records.
    true_pts: Dict[str, List[Tuple[int, str]]] = {}
    if truth:
        for st, lab in truth.items():
            for f in lab.faces:
                true_pts.setdefault(f.subject, []).append((st, f.label))
                if f.label not in rows:
                    rows.append(f.label)
        y_of = {c: i for i, c in enumerate(rows)}
    else:
        for r in records:
            true_pts.setdefault(r.subject, []).append((r.stamp_ns, r.true_label))
    t0 = min([r.stamp_ns for r in records] + [st for pts in true_pts.values() for st, _ in pts])
    subjects = sorted(by_subject, key=lambda s: (-len(by_subject[s]), s))[:max_subjects]
    subjects.sort()

    fig = Figure(figsize=(11, 0.6 + 2.1 * len(subjects)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(subjects), 1, sharex=True, squeeze=False)[:, 0]
    for ax, subject in zip(axes, subjects):
        recs = sorted(by_subject[subject], key=lambda r: r.stamp_ns)
        t = [(r.stamp_ns - t0) / 1e9 for r in recs]
        pts = sorted(true_pts.get(subject, []))
        tt = [(st - t0) / 1e9 for st, _ in pts]
        # Break the truth line where the face was out of view (gaps > 3 frame periods).
        gaps = _gap_threshold(tt)
        xs: List[Optional[float]] = []
        ys: List[Optional[float]] = []
        for i, (_, label) in enumerate(pts):
            if i and tt[i] - tt[i - 1] > gaps:
                xs.append(None)
                ys.append(None)
            xs.append(tt[i])
            ys.append(y_of[label])
        ax.step([x if x is not None else float("nan") for x in xs],
                [y if y is not None else float("nan") for y in ys],
                where="post", color="black", linewidth=2.0)
        ok = [(ti, y_of[r.predicted]) for ti, r in zip(t, recs) if r.predicted == r.true_label]
        bad = [(ti, y_of[r.predicted]) for ti, r in zip(t, recs)
               if r.predicted is not None and r.predicted != r.true_label]
        miss = [ti for ti, r in zip(t, recs) if r.predicted is None]
        if ok:
            ax.scatter(*zip(*ok), s=14, color="tab:green", zorder=3)
        if bad:
            ax.scatter(*zip(*bad), s=14, color="tab:red", zorder=3)
        if miss:
            ax.scatter(miss, [-0.8] * len(miss), marker="|", s=40, color="grey")
        n_pred = len(ok) + len(bad)
        acc = f"{100 * len(ok) / n_pred:.0f}% of {n_pred} detected" if n_pred else "never detected"
        ax.set_title(f"subject {subject}: {acc}, {len(miss)} missed", fontsize=9, loc="left")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=8)
        ax.set_ylim(-1.3, len(rows) - 0.5)
        ax.grid(axis="y", alpha=0.3)
    # One legend for all panels (a panel shows only the marker kinds it has).
    handles = [Line2D([], [], color="black", linewidth=2.0, label="true"),
               Line2D([], [], color="tab:green", marker="o", linestyle="", markersize=4, label="predicted (right)"),
               Line2D([], [], color="tab:red", marker="o", linestyle="", markersize=4, label="predicted (wrong)"),
               Line2D([], [], color="grey", marker="|", linestyle="", markersize=8, label="not detected")]
    axes[0].legend(handles=handles, loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def _gap_threshold(t: Sequence[float]) -> float:
    if len(t) < 2:
        return float("inf")
    diffs = sorted(b - a for a, b in zip(t, t[1:]) if b > a)
    return 3.0 * diffs[len(diffs) // 2] if diffs else float("inf")
