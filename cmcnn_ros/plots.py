"""Figures shared by the runtime tools and the trainer (confusion matrices).

The offline bag evaluator and the trainer/evaluator draw the same figure
(the paper's Fig. 6 style: rows true, columns predicted, row-normalised), so
it lives here in the runtime package, which the trainer depends on, rather
than in the trainer, which the runtime never imports. matplotlib is imported
only when a figure is drawn; files are written atomically.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from .atomic_io import write_bytes_atomic


class PlotError(ValueError):
    """The data does not fit the figure (e.g. a matrix that does not match its class names)."""


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "Confusion matrix", normalize: bool = True) -> None:
    """Save a confusion-matrix heat map as PNG (rows: true, columns: predicted).

    With ``normalize`` each row is shown as fractions of that class (the
    paper's Fig. 6 style), annotated with the percentage and the raw count.

    Raises:
        PlotError: the matrix is not square or does not match the class list.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise PlotError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    shown = np.divide(cm, np.where(rows > 0, rows, 1)) if normalize else cm.astype(np.float64)

    fig = Figure(figsize=(1.0 + 0.9 * n, 0.8 + 0.8 * n), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(1.0, shown.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = 0.5 * (1.0 if normalize else max(1.0, shown.max()))
    for i in range(n):
        for j in range(n):
            text = f"{100 * shown[i, j]:.0f}%\n({cm[i, j]})" if normalize else f"{cm[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > threshold else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())
