"""``report.md`` and figures of a ``cmcnn-reproduce`` sweep (paper Section IV, Tables I-III, Figs. 6-8).

Every number is a mean ± std over the subject-independent folds (population
std, as :func:`~cmcnn_training.metrics.summarise_folds`). Claims compare two
rows fold by fold (all rows share the folds), so a claim's spread is the std
of the per-fold differences, not of the rows. A claim is marked *agree* when
the mean difference has the paper's sign, *disagree* otherwise, and
"(within spread)" when the mean difference is smaller than its std.

Figures: Fig. 6 (pooled confusion matrix of the full model), Fig. 7 (t-SNE of
the fused embedding f_v of six models on the last fold's test subjects, with
silhouette scores of f_v itself and of the 2-D map), Fig. 8 (Grad-CAM on the
grey input, grey-only model beside the full model, one test face per class),
plus accuracy per intensity, under the illumination shift and per ablation row.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.atomic_io import write_bytes_atomic, write_text_atomic

from .rows import (ABLATION_ROWS, ALIASES, FULL, LOSS_ROWS, PAPER_TABLE_I, PAPER_TABLE_II, PAPER_TABLE_III,
                   SOFT_SIGMA_OWN, TSNE_ROWS, resolve)

logger = logging.getLogger("cmcnn_training.reproduce")

Docs = Mapping[str, Dict[str, Any]]
NOT_RUN = "not run"


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

def _doc(docs: Docs, name: str) -> Optional[Dict[str, Any]]:
    return docs.get(ALIASES.get(name, name))


def fold_acc(docs: Docs, name: str, key: str = "test", levels: Optional[Sequence[str]] = None) -> Optional[np.ndarray]:
    """Per-fold accuracy (%) of a row; ``levels`` restricts to some intensities (pooled within the fold)."""
    d = _doc(docs, name)
    if d is None:
        return None
    out = []
    for f in d["folds"]:
        m = f[key]
        if levels is None:
            out.append(m["accuracy"])
            continue
        groups = [m["per_intensity"][lv] for lv in levels if lv in m["per_intensity"]]
        n = sum(g["count"] for g in groups)
        out.append(sum(g["accuracy"] * g["count"] for g in groups) / n if n else float("nan"))
    return 100.0 * np.asarray(out, dtype=np.float64)


def illum_drop(docs: Docs, name: str) -> Optional[np.ndarray]:
    """Per-fold accuracy lost (points) from the training light range to the shifted one."""
    a, b = fold_acc(docs, name, "in_range"), fold_acc(docs, name, "test")
    return None if a is None or b is None else a - b


def pm(values: Optional[np.ndarray], digits: int = 1) -> str:
    if values is None or not np.isfinite(values).any():
        return NOT_RUN
    return f"{np.nanmean(values):.{digits}f} ± {np.nanstd(values):.{digits}f}"


def _paper_cell(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}"


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------

def _paper_value(name: str) -> Optional[float]:
    """The paper's BU-3DFE P1 accuracy of a row (Table II, or Table I for loss rows)."""
    if name in PAPER_TABLE_II:
        return PAPER_TABLE_II[name][0]
    if name in PAPER_TABLE_I:
        return PAPER_TABLE_I[name][1]
    return None


def compare(docs: Docs, better: str, worse: str, illum: bool = False) -> Dict[str, Any]:
    """Fold-paired difference ``better - worse`` (points) and its verdict.

    With ``illum`` the rows are illumination rows and the claim is that
    ``better`` loses *less* accuracy under the shift: the difference is
    ``drop(worse) - drop(better)``.
    """
    if illum:
        a, b = illum_drop(docs, worse), illum_drop(docs, better)
        paper = None
    else:
        a, b = fold_acc(docs, better), fold_acc(docs, worse)
        pa, pb = _paper_value(better), _paper_value(worse)
        paper = None if pa is None or pb is None else pa - pb
    out: Dict[str, Any] = {"better": better, "worse": worse, "paper_diff": paper}
    if a is None or b is None:
        out.update(verdict=NOT_RUN, diff=None, std=None)
        return out
    d = a - b
    mean, std = float(np.mean(d)), float(np.std(d))
    if mean > 0:
        verdict = "agree"
    elif mean == 0 and std == 0:
        verdict = "disagree (identical)"
    else:
        verdict = "disagree"
    if verdict.startswith(("agree", "disagree")) and mean != 0 and abs(mean) <= std:
        verdict += " (within spread)"
    out.update(verdict=verdict, diff=mean, std=std, per_fold=d.tolist())
    return out


#: The paper's claims (Sections IV-C and IV-F) as row comparisons ``better > worse``.
CLAIMS: Tuple[Tuple[str, str, Tuple[Tuple[str, str], ...], bool], ...] = (
    ("loss", "Focal loss beats CCE (IV-C; the paper's exception: gamma 1.5 on P1)",
     (("focal-1.5", "CCE"), ("focal-2.0", "CCE"), ("focal-2.5", "CCE")), False),
    ("soft", "The soft label (sigma 0.1) improves on the hard focal loss (IV-C)",
     (("soft-focal-1.5", "focal-1.5"), ("soft-focal-2.0", "focal-2.0"), ("soft-focal-2.5", "focal-2.5")), False),
    ("soft-own", f"A soft label that is soft (sigma {SOFT_SIGMA_OWN}, our row) improves on the hard focal loss",
     ((f"soft-focal-2.0-sigma{SOFT_SIGMA_OWN}", "focal-2.0"),), False),
    ("gamma", "gamma = 2 is the best focusing parameter (IV-C)",
     (("soft-focal-2.0", "soft-focal-1.5"), ("soft-focal-2.0", "soft-focal-2.5")), False),
    ("cmfn", "CMFN beats concatenation for every combination (IV-F)",
     (("G+L+CMFN", "G+L"), ("G+D+CMFN", "G+D"), ("L+D+CMFN", "L+D"), (FULL, "G+L+D")), False),
    ("three", "Three modalities beat two (IV-F)",
     ((FULL, "G+L+CMFN"), (FULL, "G+D+CMFN"), (FULL, "L+D+CMFN"), ("G+L+D", "G+L"), ("G+L+D", "G+D"),
      ("G+L+D", "L+D")), False),
    ("two", "Two modalities beat one (IV-F)",
     (("G+L", "G"), ("G+L", "L"), ("G+D", "G"), ("G+D", "D"), ("L+D", "L"), ("L+D", "D")), False),
    ("lbp", "LBP is a better texture than HOG and Gabor (IV-F)",
     (("L", "H"), ("L", "B"), (FULL, "G+H+D+CMFN"), (FULL, "G+B+D+CMFN")), False),
    ("grey", "Grey alone beats LBP or depth alone (IV-F)", (("G", "L"), ("G", "D")), False),
    ("illum", "Depth holds where grey fails under an illumination shift (III-D): smaller drop than grey",
     (("illum:D", "illum:G"), ("illum:G+D+CMFN", "illum:G"), ("illum:G+L+D+CMFN", "illum:G")), True),
)


def evaluate_claims(docs: Docs) -> List[Dict[str, Any]]:
    out = []
    for key, text, pairs, illum in CLAIMS:
        comps = [compare(docs, a, b, illum) for a, b in pairs]
        run = [c for c in comps if c["verdict"] != NOT_RUN]
        if not run:
            overall = NOT_RUN
        elif all(c["verdict"].startswith("agree") for c in run):
            overall = "agree"
        elif not any(c["verdict"].startswith("agree") for c in run):
            overall = "disagree"
        else:
            overall = f"mixed ({sum(c['verdict'].startswith('agree') for c in run)} of {len(run)} agree)"
        if run and len(run) < len(comps):
            overall += f"; {len(comps) - len(run)} comparison(s) not run"
        out.append({"key": key, "claim": text, "overall": overall, "comparisons": comps})
    return out


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def _figure(w: float, h: float):
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def _fold_arrays(work: Path, name: str, k: int) -> Optional[Dict[str, np.ndarray]]:
    p = work / "rows" / resolve(name).slug / f"fold_{k}.npz"
    if not p.is_file():
        return None
    with np.load(p) as z:
        return {key: z[key] for key in z.files}


def tsne_figure(docs: Docs, work: Path, class_names: Sequence[str], path: Path) -> Dict[str, Dict[str, Any]]:
    """Fig. 7: t-SNE of f_v per model (last fold, one model each) with silhouette scores."""
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    scores: Dict[str, Dict[str, Any]] = {}
    names = [n for n in TSNE_ROWS if _doc(docs, n) is not None]
    if not names:
        return scores
    fig = _figure(4.2 * 3, 4.0 * 2)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "gold", "tab:grey"]
    for i, name in enumerate(TSNE_ROWS):
        ax = fig.add_subplot(2, 3, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        d = _doc(docs, name)
        if d is None:
            ax.set_title(f"({chr(97 + i)}) {name}: {NOT_RUN}", fontsize=9)
            continue
        fold_sil = []
        last = None
        for k in range(len(d["folds"])):
            arr = _fold_arrays(work, name, k)
            if arr is None:
                continue
            emb = StandardScaler().fit_transform(arr["test_emb"].astype(np.float64))
            y = arr["test_true"].astype(int)
            if len(set(y.tolist())) > 1:
                fold_sil.append(float(silhouette_score(emb, y)))
            last = (emb, y)
        if last is None:
            continue
        emb, y = last
        xy = TSNE(n_components=2, perplexity=min(30.0, max(5.0, (len(y) - 1) / 3.0)), init="pca",
                  random_state=0).fit_transform(emb)
        sil_2d = float(silhouette_score(xy, y)) if len(set(y.tolist())) > 1 else float("nan")
        scores[name] = {"silhouette_fv_folds": fold_sil, "silhouette_tsne_last_fold": sil_2d}
        for c in range(len(class_names)):
            m = y == c
            ax.scatter(xy[m, 0], xy[m, 1], s=6, c=colours[c % len(colours)], label=f"{c} {class_names[c]}")
        ax.set_title(f"({chr(97 + i)}) {name}\nsilhouette f_v {pm(np.array(fold_sil), 3) if fold_sil else '—'}"
                     f", 2-D {sil_2d:.3f}", fontsize=9)
    handles, labels = fig.axes[0].get_legend_handles_labels() if fig.axes else ([], [])
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, markerscale=2)
    fig.suptitle("Fig. 7: t-SNE of the fused embedding f_v (test subjects of the last fold)", fontsize=11)
    _save(fig, path)
    return scores


def gradcam_figure(meta: Dict[str, Any], work: Path, class_names: Sequence[str], path: Path) -> Optional[str]:
    """Fig. 8: grey crop, Grad-CAM of the grey-only model, Grad-CAM (grey FEN) of the full model."""
    import torch

    from cmcnn_ros.inference.gradcam import grad_cam, overlay
    from cmcnn_ros.model.checkpoint import CheckpointError, load_checkpoint

    from ..crops import CropError, CropSet

    g_path, f_path = work / "models" / f"{resolve('G').slug}.pt", work / "models" / f"{resolve(FULL).slug}.pt"
    cache = meta.get("crop_cache")
    if not (g_path.is_file() and f_path.is_file() and cache):
        return None
    try:
        grey_model, full_model = load_checkpoint(g_path).model, load_checkpoint(f_path).model
        crops = CropSet.load(cache)
    except (CheckpointError, CropError) as exc:
        logger.warning("Fig. 8 skipped: %s", exc)
        return None
    arr = _fold_arrays(work, FULL, int(meta["sweep"]["folds"]) - 1)
    if arr is None:
        return None
    rows, y = arr["test_rows"], arr["test_true"].astype(int)
    x_full = torch.from_numpy(crops.to_tensor(rows, full_model.modalities))
    with torch.no_grad():
        p_full = full_model.eval().predict_proba(x_full).numpy()
    inten = crops.intensities[rows]
    picks = []
    for c in range(len(class_names)):
        cand = np.flatnonzero(y == c)
        if cand.size == 0:
            continue
        top = cand[inten[cand] == inten[cand].max()]
        picks.append(int(top[np.argmax(p_full[top, c])]))
    if not picks:
        return None
    sel = rows[picks]
    xg = torch.from_numpy(crops.to_tensor(sel, grey_model.modalities))
    xf = torch.from_numpy(crops.to_tensor(sel, full_model.modalities))
    tgt = torch.from_numpy(y[picks])
    cam_g, prob_g = grad_cam(grey_model, xg, "grey", target=tgt)
    cam_f, prob_f = grad_cam(full_model, xf, "grey", target=tgt)
    grey = crops.modality_float("grey", sel)
    fig = _figure(1.9 * len(picks), 6.3)
    for j in range(len(picks)):
        c = int(y[picks[j]])
        for r, (img, title) in enumerate((
                (np.repeat(grey[j][..., None], 3, 2), f"{class_names[c]} (I{int(crops.intensities[sel[j]])})"),
                (overlay(grey[j], cam_g[j]), f"grey only: p={prob_g[j, c]:.2f}"),
                (overlay(grey[j], cam_f[j]), f"G+L+D+CMFN: p={prob_f[j, c]:.2f}"))):
            ax = fig.add_subplot(3, len(picks), r * len(picks) + j + 1)
            ax.imshow(img, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
    fig.suptitle("Fig. 8: Grad-CAM on the grey input (true class); row 2 grey-only model, row 3 full model",
                 fontsize=10)
    _save(fig, path)
    return f"subjects {sorted(set(crops.subjects[sel].tolist()))} (test subjects of the last fold)"


def intensity_figure(docs: Docs, levels: Sequence[str], path: Path) -> bool:
    names = [n for n in ("G", "L", "D", "G+D+CMFN", "G+L+D", FULL) if _doc(docs, n)]
    if not names or not levels:
        return False
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(levels))
    for i, n in enumerate(names):
        vals = np.array([fold_acc(docs, n, levels=[lv]) for lv in levels])
        ax.errorbar(x + 0.05 * (i - len(names) / 2), np.nanmean(vals, 1), yerr=np.nanstd(vals, 1), marker="o",
                    capsize=3, label=n)
    ax.set_xticks(x)
    ax.set_xticklabels([f"intensity {lv}" for lv in levels])
    ax.set_ylabel("accuracy (%), mean ± std over folds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy per expression intensity")
    _save(fig, path)
    return True


def ablation_figure(docs: Docs, path: Path) -> bool:
    names = [n for n in ABLATION_ROWS if _doc(docs, n)]
    if not names:
        return False
    fig = _figure(7.5, 0.35 * len(names) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    ours = [fold_acc(docs, n) for n in names]
    ax.barh(y + 0.2, [np.mean(v) for v in ours], 0.4, xerr=[np.std(v) for v in ours], label="ours (synthetic)",
            capsize=2)
    ax.barh(y - 0.2, [PAPER_TABLE_II[n][0] for n in names], 0.4, label="paper, BU-3DFE P1", alpha=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Tables II/III rows: ours beside the paper")
    _save(fig, path)
    return True


def illumination_figure(docs: Docs, path: Path) -> bool:
    names = [n for n in ("illum:G", "illum:D", "illum:G+D+CMFN", "illum:G+L+D+CMFN") if _doc(docs, n)]
    if not names:
        return False
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    a = [fold_acc(docs, n, "in_range") for n in names]
    b = [fold_acc(docs, n, "test") for n in names]
    ax.bar(x - 0.2, [np.mean(v) for v in a], 0.4, yerr=[np.std(v) for v in a], capsize=3,
           label="test light as in training")
    ax.bar(x + 0.2, [np.mean(v) for v in b], 0.4, yerr=[np.std(v) for v in b], capsize=3, label="shifted light")
    ax.set_xticks(x)
    ax.set_xticklabels([n.split(":", 1)[1] for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("Illumination shift (held-out subjects)")
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------
# sigma = 0.1
# ---------------------------------------------------------------------------

def sigma_note(docs: Docs, work: Path) -> List[str]:
    """What the paper's sigma = 0.1 does, measured on our rows."""
    from cmcnn_ros.model.losses import soft_labels
    import torch

    lab01 = soft_labels(torch.tensor([2]), 6, sigma=0.1)[0].tolist()
    lab07 = soft_labels(torch.tensor([2]), 6, sigma=SOFT_SIGMA_OWN)[0].tolist()
    lines = [
        f"The soft label is a Gaussian over class indices (Section III-E). With the paper's sigma = 0.1, the "
        f"label of class 2 is [{', '.join(f'{v:.2g}' for v in lab01)}]: the neighbours get exp(-50) ≈ 1.9e-22, "
        "far below float32 resolution next to 1, so the soft focal loss equals the hard focal loss to about "
        "1e-21 and training follows the same path.",
        f"With sigma = {SOFT_SIGMA_OWN} (our own row) the label is "
        f"[{', '.join(f'{v:.2f}' for v in lab07)}], which does smooth.",
    ]
    for g in ("1.5", "2.0", "2.5"):
        a, b = fold_acc(docs, f"soft-focal-{g}"), fold_acc(docs, f"focal-{g}")
        if a is None or b is None:
            lines.append(f"gamma {g}: soft (sigma 0.1) vs hard focal: {NOT_RUN}.")
            continue
        same = []
        for k in range(min(len(_doc(docs, f"soft-focal-{g}")["folds"]), len(_doc(docs, f"focal-{g}")["folds"]))):
            pa, pb = _fold_arrays(work, f"soft-focal-{g}", k), _fold_arrays(work, f"focal-{g}", k)
            if pa is not None and pb is not None and pa["test_pred"].shape == pb["test_pred"].shape:
                same.append(float(np.mean(pa["test_pred"] == pb["test_pred"])))
        lines.append(f"gamma {g}: soft (sigma 0.1) minus hard focal accuracy per fold: "
                     f"{', '.join(f'{v:+.2f}' for v in (a - b))} points; identical test predictions: "
                     f"{', '.join(f'{100 * s:.1f} %' for s in same) or 'n/a'}.")
    return lines


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _levels(docs: Docs) -> List[str]:
    levels = set()
    for d in docs.values():
        levels |= set(d["summary"].get("per_intensity_pooled", {}))
    return sorted((lv for lv in levels if lv not in ("-1",)), key=float)


def _spearman(docs: Docs) -> Optional[Tuple[float, int]]:
    from scipy.stats import spearmanr

    names = [n for n in ABLATION_ROWS if _doc(docs, n)]
    if len(names) < 4:
        return None
    ours = [float(np.mean(fold_acc(docs, n))) for n in names]
    rho = spearmanr(ours, [PAPER_TABLE_II[n][0] for n in names]).statistic
    return float(rho), len(names)


def _train_faces(docs: Docs, name: str) -> str:
    d = _doc(docs, name)
    return NOT_RUN if d is None else ", ".join(str(f["train_count"]) for f in d["folds"])


def _fmt_diff(c: Dict[str, Any]) -> str:
    return NOT_RUN if c["diff"] is None else f"{c['diff']:+.1f} ± {c['std']:.1f}"


@dataclass
class ReportContext:
    """What every section of the report reads: the sweep's metadata, the finished rows and where to write."""

    out: Path
    work: Path
    meta: Dict[str, Any]
    docs: Docs
    sweep: Dict[str, Any]
    classes: List[str]
    expected: List[str]
    done: List[str]
    partial: bool
    levels: List[str]
    top: List[str]
    command: str
    sweep_seconds: Optional[float]
    note: str


def _section_header(ctx: ReportContext) -> List[str]:
    """The title, a partial-report warning and the command that made the sweep."""
    partial, done, expected, docs = ctx.partial, ctx.done, ctx.expected, ctx.docs
    meta, command, sweep_seconds = ctx.meta, ctx.command, ctx.sweep_seconds
    L: List[str] = []
    L.append("# Reproducing CM-CNN's Section IV (Tables I-III, Figs. 6-8)")
    L.append("")
    if partial:
        L.append(f"**PARTIAL REPORT: {len(done)} of {len(expected)} rows finished.** Missing rows: "
                 f"{', '.join(n for n in expected if n not in docs)}. Rerun the same command to resume.")
        L.append("")
    sweep_command = meta.get("command") or command or "cmcnn-reproduce"
    L.append("Written by `cmcnn-reproduce` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             + (f" after {sweep_seconds / 60:.0f} min" if sweep_seconds else "")
             + f"; training of the finished rows took {sum(d['train_seconds'] for d in docs.values()) / 60:.0f} min "
               "in all. The sweep's command:")
    L.append("")
    L.append("```bash")
    L.append(sweep_command)
    if command and command != sweep_command:
        L.append(f"{command}   # this report")
    L.append("```")
    L.append("")
    return L


def _section_protocol(ctx: ReportContext) -> List[str]:
    """What was run and what it cannot show."""
    meta, sweep, classes, note = ctx.meta, ctx.sweep, ctx.classes, ctx.note
    L: List[str] = []
    n_subj = len(meta.get("subjects", []))
    L.append("## Protocol and its limits")
    L.append("")
    L += [
        f"- **Data**: dataset `{sweep['dataset']}` at `{sweep['root']}`"
        + (f", protocol {sweep['protocol']}" if sweep.get("protocol") else "")
        + f": {meta['crops']} faces of {n_subj} subjects, classes {', '.join(classes)} "
          f"(chance {100 / len(classes):.1f} %). Face boxes: {meta['crop_stats']}.",
        f"- **Folds**: {sweep['folds']}-fold subject-independent cross-validation (the paper: 10), seed "
        f"{sweep['seed']}, the same folds for every row; one training seed per fold. Every number is the mean ± "
        f"std over the {sweep['folds']} folds.",
        f"- **Network and training**: `{sweep['model_preset']}` network preset, {sweep['crop_size']} px crops "
        f"(the paper: 148 px), FEN pre-training {sweep['pretrain_epochs']} epochs through each FEN's own head, "
        f"then {sweep['epochs']} epochs of the whole network (the paper: 300), SGD lr {sweep['lr']} "
        f"x{sweep['lr_gamma']} every {sweep['lr_step']} epochs, momentum 0.9, weight decay 5e-4, batch "
        f"{sweep['batch_size']}, augmentation {'on' if sweep['augment'] else 'off'}; loss soft focal (alpha 1, "
        "gamma 2, sigma 0.1) unless the row says otherwise. No CASIA-WebFace / 3-D pre-training.",
        f"- **Illumination shift**: trained on faces whose key light comes from at most "
        f"{sweep['illum_train_max']:g} degrees elevation, tested on held-out subjects lit from at least "
        f"{sweep['illum_test_min']:g} degrees (light from above: shadows under brows and nose); the same "
        "model is also tested on held-out faces in its training range, and the claim is about the drop.",
        *([f"- **Data note**: {note or meta.get('note')}"] if (note or meta.get("note")) else []),
        "- **Limits**: these are rendered faces (ICT-FaceKit), not people; the network is tiny and trained "
        "for minutes, so absolute accuracies are far below the paper's and differences of a few points are "
        "within the fold-to-fold spread with only "
        f"{sweep['folds']} folds. The paper's columns are other databases (BU-3DFE, Bosphorus, VT-KFER): "
        "compare orderings and differences, not levels. Our \"I3+4\" column (the two highest intensities) is "
        "the closest analogue of the paper's P1/P2.",
        "",
    ]
    return L


def _section_claims(ctx: ReportContext) -> List[str]:
    """The paper's claims, each a fold-paired comparison."""
    docs = ctx.docs
    L: List[str] = []
    claims = evaluate_claims(docs)
    L.append("## The paper's claims")
    L.append("")
    L.append("Each comparison is fold-paired: mean ± std over the folds of (row claimed better - row claimed "
             "worse), in accuracy points on all intensities; the paper's difference is from its BU-3DFE P1 "
             "column. \"within spread\": the mean difference is smaller than its std.")
    L.append("")
    rows = []
    for c in claims:
        for i, comp in enumerate(c["comparisons"]):
            illum = c["key"] == "illum"
            what = (f"drop({comp['worse'].split(':')[1]}) - drop({comp['better'].split(':')[1]})" if illum
                    else f"{comp['better']} - {comp['worse']}")
            rows.append([c["claim"] if i == 0 else "", c["overall"] if i == 0 else "", what, _fmt_diff(comp),
                         "—" if comp["paper_diff"] is None else f"{comp['paper_diff']:+.2f}", comp["verdict"]])
    L += _table(["claim", "overall", "comparison", "ours (points)", "paper", "verdict"], rows)
    L.append("")
    sp = _spearman(docs)
    if sp:
        L.append(f"Rank agreement of the {sp[1]} ablation rows with the paper's BU-3DFE P1 column: Spearman "
                 f"rho = {sp[0]:.2f}.")
        L.append("")
    return L


def _section_loss_table(ctx: ReportContext) -> List[str]:
    """Table I (losses) and what sigma = 0.1 does."""
    docs, top, work = ctx.docs, ctx.top, ctx.work
    L: List[str] = []
    L.append("## Table I: loss functions (full model G+L+D+CMFN)")
    L.append("")
    rows = []
    for name in LOSS_ROWS:
        p = PAPER_TABLE_I.get(name)
        rows.append([name + (" (= G+L+D+CMFN)" if name in ALIASES else ""), pm(fold_acc(docs, name)),
                     pm(fold_acc(docs, name, levels=top)) if top else "—",
                     _paper_cell(p[0] if p else None), f"{p[1]:.2f} / {p[2]:.2f}" if p else "—",
                     _paper_cell(p[3] if p else None)])
    L += _table(["loss", "ours: all", "ours: I3+4", "paper VT-KFER", "paper BU-3DFE P1 / P2", "paper Bosphorus"],
                rows)
    L.append("")
    L.append("### What sigma = 0.1 does")
    L.append("")
    L += ["- " + s for s in sigma_note(docs, work)]
    L.append("")
    return L


def _section_ablation_tables(ctx: ReportContext) -> List[str]:
    """Tables II and III (modalities, fusion) and their figure."""
    docs, top, out = ctx.docs, ctx.top, ctx.out
    L: List[str] = []
    L.append("## Tables II and III: modalities and fusion")
    L.append("")
    L.append("\"Without CMFN\" rows concatenate the max- and average-pooled FEN features (the paper's "
             "comparison); H is HOG, B is Gabor.")
    L.append("")
    rows = []
    for name in ABLATION_ROWS:
        p2, p3 = PAPER_TABLE_II[name], PAPER_TABLE_III[name]
        rows.append([name, pm(fold_acc(docs, name)), pm(fold_acc(docs, name, levels=top)) if top else "—",
                     f"{p2[0]:.2f}", f"{p2[1]:.2f}", f"{p3:.2f}"])
    L += _table(["row", "ours: all", "ours: I3+4", "paper BU-3DFE P1", "P2", "paper Bosphorus"], rows)
    L.append("")
    if ablation_figure(docs, out / "ablation.png"):
        L.append("![Ablation rows beside the paper](ablation.png)")
        L.append("")
    return L


def _section_per_intensity(ctx: ReportContext) -> List[str]:
    """Accuracy per expression intensity (when the data has intensities)."""
    docs, levels, out = ctx.docs, ctx.levels, ctx.out
    L: List[str] = []
    if levels:
        L.append("## Per intensity")
        L.append("")
        L.append("Accuracy (%) on the faces of each expression intensity (1 = subtle, 4 = strongest), mean ± std "
                 "over folds. The paper's protocols use only the two highest.")
        L.append("")
        rows = [[n] + [pm(fold_acc(docs, n, levels=[lv])) for lv in levels]
                for n in list(ABLATION_ROWS) + [r for r in LOSS_ROWS if r not in ALIASES]]
        L += _table(["row"] + [f"I{lv}" for lv in levels], rows)
        L.append("")
        if intensity_figure(docs, levels, out / "intensity.png"):
            L.append("![Accuracy per intensity](intensity.png)")
            L.append("")
    return L


def _section_illumination(ctx: ReportContext) -> List[str]:
    """The illumination-shift rows (when they ran)."""
    docs, out = ctx.docs, ctx.out
    L: List[str] = []
    illum_rows = ["illum:G", "illum:D", "illum:G+D+CMFN", "illum:G+L+D+CMFN"]
    if any(_doc(docs, n) for n in illum_rows):
        L.append("## Illumination shift")
        L.append("")
        rows = [[n.split(":", 1)[1], pm(fold_acc(docs, n, "in_range")), pm(fold_acc(docs, n, "test")),
                 pm(illum_drop(docs, n)), _train_faces(docs, n)] for n in illum_rows]
        L += _table(["row", "light as in training", "shifted light", "drop (points)", "training faces per fold"],
                    rows)
        L.append("")
        L.append("These models train only on the faces of their light range, with the same number of epochs as "
                 "the k-fold rows, so they see fewer gradient steps and reach lower accuracy than the rows above: "
                 "compare the drop between the two test columns, not the level. A negative drop means the "
                 "shifted light was no harder for that model.")
        L.append("")
        if illumination_figure(docs, out / "illumination.png"):
            L.append("![Illumination shift](illumination.png)")
            L.append("")
    return L


def _section_confusion(ctx: ReportContext) -> List[str]:
    """Fig. 6: the full model's pooled confusion matrix."""
    docs, out, classes = ctx.docs, ctx.out, ctx.classes
    from cmcnn_ros.plots import plot_confusion_matrix

    L: List[str] = []
    L.append("## Fig. 6: confusion matrix of the full model")
    L.append("")
    full = _doc(docs, FULL)
    if full:
        s = full["summary"]
        plot_confusion_matrix(np.array(s["confusion_matrix_pooled"]), classes, out / "fig6_confusion.png",
                              title=f"G+L+D+CMFN, {s['folds']} folds pooled: {100 * s['accuracy_pooled']:.1f} %")
        L.append("Test predictions of all folds pooled (every face is tested once).")
        L.append("")
        L.append("![Fig. 6](fig6_confusion.png)")
        pc = s["per_class_pooled"]
        L.append("")
        L.append("Per-class recall: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in pc.items()) + ". The paper: "
                 "anger, happiness and surprise are recognised well, disgust and fear are confused, sadness "
                 "is the worst.")
    else:
        L.append(NOT_RUN)
    L.append("")
    return L


def _section_tsne(ctx: ReportContext) -> List[str]:
    """Fig. 7: t-SNE of f_v and silhouette scores."""
    docs, work, out, classes, sweep = ctx.docs, ctx.work, ctx.out, ctx.classes, ctx.sweep
    L: List[str] = []
    L.append("## Fig. 7: t-SNE of the fused embedding f_v")
    L.append("")
    from threadpoolctl import threadpool_limits

    # The sweep's thread limit holds for t-SNE too: OpenMP threads spin-waiting on busy cores run it many
    # times slower than one thread (measured here: minutes instead of seconds).
    with threadpool_limits(limits=sweep.get("threads") or None):
        scores = tsne_figure(docs, work, classes, out / "fig7_tsne.png")
    if scores:
        L.append("Silhouette score (higher = classes better separated; -1..1) of the standardised f_v of the "
                 "test faces of each fold, and of the last fold's 2-D t-SNE map shown. The paper: G+L+D+CMFN "
                 "separates best, then G+L+D, then G+D and G+L, then G and D.")
        L.append("")
        L += _table(["model", "silhouette f_v (folds)", "silhouette 2-D map", "accuracy"],
                    [[n, pm(np.array(scores[n]["silhouette_fv_folds"]), 3),
                      f"{scores[n]['silhouette_tsne_last_fold']:.3f}", pm(fold_acc(docs, n))]
                     for n in TSNE_ROWS if n in scores])
        L.append("")
        L.append("![Fig. 7](fig7_tsne.png)")
    else:
        L.append(NOT_RUN)
    L.append("")
    return L


def _section_gradcam(ctx: ReportContext) -> List[str]:
    """Fig. 8: Grad-CAM on the grey input."""
    meta, work, out, classes = ctx.meta, ctx.work, ctx.out, ctx.classes
    L: List[str] = []
    L.append("## Fig. 8: Grad-CAM on the grey input")
    L.append("")
    where = gradcam_figure(meta, work, classes, out / "fig8_gradcam.png")
    if where:
        L.append(f"One face per class ({where}): of the class's faces at the highest intensity, the one the full "
                 "model scores highest for its true class. Maps are Grad-CAM of the true class's logit on a grey "
                 "FEN stage (`cmcnn_ros.inference.gradcam`; the deepest stage with a map of at least 6x6 px), "
                 "blue low, red high. The paper: the full model's maps are more concentrated on eyes, nose and "
                 "mouth than the grey-only model's.")
        L.append("")
        L.append("![Fig. 8](fig8_gradcam.png)")
    else:
        L.append(NOT_RUN)
    L.append("")
    return L


def _section_rows(ctx: ReportContext) -> List[str]:
    """Every row: inputs, fusion, loss and training time."""
    expected, docs, meta = ctx.expected, ctx.docs, ctx.meta
    L: List[str] = []
    L.append("## Rows")
    L.append("")
    rows = []
    for n in expected:
        d = docs.get(n)
        spec = resolve(n)
        rows.append([n, "+".join(spec.modalities), spec.fusion if len(spec.modalities) > 1 else "—", spec.loss,
                     f"{spec.gamma:g}" if spec.loss != "ce" else "—",
                     f"{spec.sigma:g}" if spec.loss == "soft_focal" else "—",
                     spec.split, f"{d['train_seconds'] / 60:.1f}" if d else NOT_RUN])
    L += _table(["row", "inputs", "fusion", "loss", "gamma", "sigma", "split", "training (min)"], rows)
    L.append("")
    if meta.get("skipped"):
        L.append("Left out: " + "; ".join(meta["skipped"]))
        L.append("")
    return L


def _section_real_databases(ctx: ReportContext) -> List[str]:
    """The commands for the paper's databases."""
    L: List[str] = []
    L.append("## Running it on the real databases")
    L.append("")
    L.append("With a licensed copy (docs/DATASETS.md), the same command runs the paper's protocols; the `paper` "
             "preset is the paper's 10 folds, 148 px, 300 epochs (a GPU job):")
    L.append("")
    L.append("```bash")
    for dataset, root, protocol, run in (("bu3dfe", "data/BU-3DFE", " --protocol P1", "rep_bu_p1"),
                                         ("bu3dfe", "data/BU-3DFE", " --protocol P2", "rep_bu_p2"),
                                         ("bosphorus", "data/Bosphorus", " --protocol P1", "rep_bos"),
                                         ("kinect", "data/vt-kfer", "", "rep_vtkfer")):
        L.append(f"cmcnn-reproduce --preset paper --dataset {dataset} --root {root}{protocol} --work-dir runs/{run} "
                 f"--out runs/{run}/report")
    L.append("```")
    L.append("")
    L.append("Datasets without depth (FER2013) run the 2-D rows only; the illumination rows need the synthetic "
             "benchmark's per-frame light (`truth.csv`).")
    L.append("")
    return L


#: The report, top to bottom.
SECTIONS = (
    _section_header,
    _section_protocol,
    _section_claims,
    _section_loss_table,
    _section_ablation_tables,
    _section_per_intensity,
    _section_illumination,
    _section_confusion,
    _section_tsne,
    _section_gradcam,
    _section_rows,
    _section_real_databases,
)


def write_report(out: str | Path, work_dir: str | Path, meta: Dict[str, Any], docs: Docs, command: str = "",
                 sweep_seconds: Optional[float] = None, note: str = "") -> Path:
    """Write ``OUT/report.md`` and its PNGs from the finished rows; returns the report path.

    ``note``: free text about the data (e.g. the command that rendered it), shown under the protocol.
    """
    out, work = Path(out), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    expected = list(meta["rows"])
    done = [n for n in expected if n in docs]
    levels = _levels(docs)
    ctx = ReportContext(out=out, work=work, meta=meta, docs=docs, sweep=meta["sweep"], classes=meta["class_names"],
                        expected=expected, done=done, partial=len(done) < len(expected), levels=levels,
                        top=[lv for lv in levels if lv in ("3", "4")], command=command, sweep_seconds=sweep_seconds,
                        note=note)
    lines: List[str] = []
    for section in SECTIONS:
        lines += section(ctx)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
