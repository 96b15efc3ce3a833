"""The resumable sweep behind ``cmcnn-reproduce`` (paper Section IV-C, IV-F, IV-G, IV-H).

One dataset, one set of subject-independent folds shared by every row (so
rows are compared fold by fold), one crop cache with every modality the rows
need. Each row trains a fresh CM-CNN per fold with the trainer's own
:func:`~cmcnn_training.fitting.fit` and is evaluated on the held-out subjects.

Work folder layout (``--work-dir``; checkpoints stay here, never in the report)::

    WORK/sweep.json                  settings of the sweep (fingerprint of everything below)
    WORK/rows/<slug>/fold_<k>.json   one finished fold: metrics, timings, test rows
    WORK/rows/<slug>/fold_<k>.npz    its test embeddings f_v, labels, predictions
    WORK/rows/<slug>.json            the finished row: per-fold metrics + mean ± std
    WORK/models/<slug>.pt            last-fold model of the rows Fig. 8 needs

Every file is written atomically and a fold is only trusted when its
fingerprint (row settings + sweep settings + crop-cache key) matches, so a
killed sweep loses at most the fold that was running, and a finished row is
never retrained unless asked (``--rerun ROW``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cmcnn_ros.atomic_io import atomic_open, write_json_atomic
from cmcnn_ros.classes import BASIC_EXPRESSIONS, canonical_name
from cmcnn_ros.device import resolve_device
from cmcnn_ros.tools import progress_bar

from ..builders import build_model_config, build_preprocessing
from ..config import TrainConfig
from ..crops import CropSet, get_crops
from ..datasets.selection import make_splits, select_samples
from ..engine import CropBatches
from ..fitting import fit
from ..metrics import EvaluationMetrics, compute_metrics, summarise_folds
from ..utils import TrainingError, load_training_dataset, save_model_checkpoint, seed_everything
from .rows import FULL, MODALITY_ORDER, Row, RowError, select_rows

logger = logging.getLogger("cmcnn_training.reproduce")

#: Rows whose last-fold model is kept for Fig. 8 (Grad-CAM, grey-only vs full model).
GRADCAM_ROWS = ("G", FULL)
#: Column of the synthetic generator's truth.csv the illumination split uses.
LIGHT_COLUMN = "light_elevation_deg"


class SweepError(ValueError):
    """The sweep cannot start: bad settings, data, or a work folder made with other settings."""


@dataclass
class SweepConfig:
    """Settings of one sweep (a preset, then command-line overrides)."""

    dataset: str = "kinect"
    root: Optional[str] = None
    protocol: Optional[str] = None
    classes: List[str] = field(default_factory=lambda: list(BASIC_EXPRESSIONS))
    folds: int = 3
    seed: int = 0
    crop_size: int = 48
    model_preset: str = "tiny"
    epochs: int = 8
    pretrain_epochs: int = 2
    lr: float = 0.01
    lr_step: int = 3
    lr_gamma: float = 0.5
    batch_size: int = 32
    augment: bool = True
    box_mode: str = "detect"
    threads: Optional[int] = 1
    device: str = "auto"
    workers: int = 2
    cache_dir: Optional[str] = "cache/crops"
    #: illumination split: train on light elevation <= train_max, test on >= test_min (degrees)
    illum_train_max: float = 15.0
    illum_test_min: float = 25.0
    rows: Optional[List[str]] = None

    def fingerprint_fields(self) -> Dict[str, Any]:
        """What changes the numbers (not rows, device, workers or cache location)."""
        d = asdict(self)
        for k in ("rows", "device", "workers", "cache_dir", "threads", "root"):
            d.pop(k)
        return d


#: Named sweeps. ``cpu`` is what docs/reproduction/report.md was made with;
#: ``paper`` is the paper's protocol (Section IV-A/B) for a machine with a GPU.
PRESETS: Dict[str, Dict[str, Any]] = {
    "ci": {"folds": 2, "crop_size": 32, "model_preset": "tiny", "epochs": 2, "pretrain_epochs": 1, "lr_step": 2,
               "batch_size": 16, "rows": ["G", "G+L+D+CMFN"], "workers": 0},
    "cpu": {"folds": 3, "crop_size": 48, "model_preset": "tiny", "epochs": 8, "pretrain_epochs": 2, "lr_step": 3,
                "batch_size": 32},
    "paper": {"folds": 10, "crop_size": 148, "model_preset": "paper", "epochs": 300, "pretrain_epochs": 20,
              "lr_step": 100,
                  "batch_size": 32, "augment": False, "threads": None},
}


def row_train_config(sweep: SweepConfig, row: Row) -> TrainConfig:
    """The trainer's config for one row (SGD, momentum 0.9, wd 5e-4 as Section IV-B)."""
    cfg = TrainConfig(
        dataset=sweep.dataset, root=sweep.root, protocol=sweep.protocol, classes=list(sweep.classes),
        modalities=list(row.modalities), model_preset=sweep.model_preset, model={"fusion": row.fusion},
        preprocessing={"crop_size": sweep.crop_size}, box_mode=sweep.box_mode, cache_dir=sweep.cache_dir,
        workers=sweep.workers, folds=sweep.folds, epochs=sweep.epochs, pretrain_epochs=sweep.pretrain_epochs,
        lr=sweep.lr, lr_step=sweep.lr_step, lr_gamma=sweep.lr_gamma, loss=row.loss,
        focal_gamma=row.gamma if row.loss != "ce" else 2.0, soft_sigma=row.sigma if row.loss == "soft_focal" else 0.1,
        batch_size=sweep.batch_size, augment=sweep.augment, threads=sweep.threads, seed=sweep.seed,
        device=sweep.device, progress=False)
    return cfg.validate()


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

@dataclass
class SweepData:
    """Everything shared by the rows: crops, labels, folds, light values."""

    crops: CropSet
    class_names: List[str]
    label_index: np.ndarray
    splits: List[Tuple[np.ndarray, np.ndarray]]
    light: Optional[np.ndarray]
    params: Any
    has_depth: bool
    samples: int
    cache_path: Optional[str]


def dataset_has_depth(dataset: Any) -> bool:
    """Whether samples of ``dataset`` carry depth, without decoding many of them.

    A loader may say so itself (``has_depth``); Kinect-folder records name
    their depth file; otherwise the first sample is decoded.
    """
    flag = getattr(dataset, "has_depth", None)
    if isinstance(flag, bool):
        return flag
    records = getattr(dataset, "records", None)
    if records and isinstance(getattr(records[0], "extra", None), dict) and "depth" in records[0].extra:
        return any(r.extra.get("depth") for r in records)
    return len(dataset) > 0 and dataset[0].depth_m is not None


def _light_values(root: str, sources: Sequence[str]) -> Optional[np.ndarray]:
    from ..evaluate import read_extra_columns

    values = read_extra_columns(root, list(sources)).get(LIGHT_COLUMN)
    if values is None:
        return None
    out = np.array([np.nan if v in (None, "") else float(v) for v in values], dtype=np.float64)
    return out if np.isfinite(out).any() else None


def prepare_data(sweep: SweepConfig, rows_requested: Optional[Sequence[str]], progress: bool) \
        -> Tuple[SweepData, List[Row], List[str]]:
    """Load the dataset, check every row can run, extract (or load) the crops, make the folds.

    Everything that can refuse the sweep happens here, before any training.

    Raises:
        SweepError / RowError: unknown rows, rows the dataset cannot run, a
            protocol the dataset cannot serve, too few subjects for the folds.
    """
    from ..datasets.common import DatasetError

    if not sweep.root:
        raise SweepError("no dataset: give --root (and --dataset unless it is a Kinect-layout folder)")
    try:
        dataset = load_training_dataset(sweep.dataset, sweep.root)
        has_depth = dataset_has_depth(dataset)
        light_possible = (Path(sweep.root) / "truth.csv").is_file()
        rows, skipped = select_rows(rows_requested, has_depth, light_possible, explicit=bool(rows_requested))
        base = row_train_config(sweep, rows[0])
        keep, class_names = select_samples(dataset, base)
    except (DatasetError, TrainingError) as exc:
        raise SweepError(f"dataset {sweep.dataset} at {sweep.root}"
                         f"{' protocol ' + sweep.protocol if sweep.protocol else ''}: {exc}") from exc
    params = build_preprocessing(base)
    modalities = tuple(m for m in MODALITY_ORDER if any(m in r.modalities for r in rows))
    view = dataset if len(keep) == len(dataset) else dataset.subset(keep)
    crops, cache = get_crops(view, params, modalities, sweep.cache_dir, box_mode=sweep.box_mode,
                             workers=sweep.workers, progress=progress, name=f"{sweep.dataset}-reproduce")
    if has_depth and "depth" in modalities and not crops.depth_valid.any():
        raise SweepError("no face of this dataset has usable depth, so the depth rows cannot run; "
                         "leave them out with --rows")
    label_of = {c: i for i, c in enumerate(class_names)}
    label_index = np.array([label_of[canonical_name(lb)] for lb in crops.labels], dtype=np.int64)
    try:
        splits = make_splits(crops.subjects, base)
    except TrainingError as exc:
        raise SweepError(str(exc)) from exc
    light = _light_values(sweep.root, crops.sources.tolist()) if any(r.split == "illum" for r in rows) else None
    if any(r.split == "illum" for r in rows):
        if light is None:
            raise SweepError(f"rows {[r.name for r in rows if r.split == 'illum']} need {LIGHT_COLUMN} in "
                             f"{sweep.root}/truth.csv; it has none")
        for k, (tr, te) in enumerate(splits):
            n_tr = int(np.sum(light[tr] <= sweep.illum_train_max))
            n_te = int(np.sum(light[te] >= sweep.illum_test_min))
            if n_tr < 2 * sweep.batch_size or n_te == 0:
                raise SweepError(f"illumination split of fold {k + 1}: {n_tr} training faces lit from "
                                 f"<= {sweep.illum_train_max} deg and {n_te} test faces from >= "
                                 f"{sweep.illum_test_min} deg; render more frames")
    return SweepData(crops=crops, class_names=class_names, label_index=label_index, splits=splits, light=light,
                     params=params, has_depth=has_depth, samples=len(keep), cache_path=cache.path), rows, skipped


# ---------------------------------------------------------------------------
# Work folder
# ---------------------------------------------------------------------------

def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class WorkDir:
    """Paths and atomic reads/writes of the sweep's work folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def row_json(self, row: Row) -> Path:
        return self.root / "rows" / f"{row.slug}.json"

    def fold_json(self, row: Row, k: int) -> Path:
        return self.root / "rows" / row.slug / f"fold_{k}.json"

    def fold_npz(self, row: Row, k: int) -> Path:
        return self.root / "rows" / row.slug / f"fold_{k}.npz"

    def model(self, row: Row) -> Path:
        return self.root / "models" / f"{row.slug}.pt"

    @staticmethod
    def read(path: Path) -> Optional[Dict[str, Any]]:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("%s is unreadable; it will be redone", path)
            return None

    def forget(self, row: Row) -> None:
        """Remove a row's results (``--rerun``)."""
        for p in (self.row_json(row), self.model(row)):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.root / "rows" / row.slug, ignore_errors=True)


def row_fingerprint(sweep: SweepConfig, row: Row, data: SweepData) -> str:
    return _hash({"row": row.spec(), "sweep": sweep.fingerprint_fields(), "crops": data.crops.key,
                  "splits": [te.tolist() for _, te in data.splits]})


# ---------------------------------------------------------------------------
# Progress (row / fold / epoch and an estimate of the time left)
# ---------------------------------------------------------------------------

class Progress:
    """One bar over the whole sweep, in units of "one modality trained for one epoch".

    A three-modality row costs about three single-modality rows, and an
    illumination row trains on its light range only, so this is what makes
    the time-left estimate fair across rows. The estimate is also logged at
    every fold for runs without a terminal.
    """

    def __init__(self, total_units: float, enabled: bool) -> None:
        self.total = float(total_units)
        self.done = 0.0
        self.t0 = time.perf_counter()
        self.measured = 0.0
        self.bar = progress_bar(total=round(self.total, 1), unit="mod-ep", enabled=enabled, dynamic_ncols=True)

    def advance(self, units: float, label: str) -> None:
        self.done += units
        self.measured += units
        self.bar.set_description_str(label, refresh=False)
        self.bar.update(round(units, 3))

    def skip(self, units: float) -> None:
        """Units already done in an earlier run (not part of the rate)."""
        self.done += units
        self.bar.update(round(units, 3))

    def eta_seconds(self) -> Optional[float]:
        elapsed = time.perf_counter() - self.t0
        if self.measured <= 0:
            return None
        return max(0.0, self.total - self.done) * elapsed / self.measured

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        if eta is None:
            return "time left: unknown yet"
        return f"{100 * self.done / max(self.total, 1e-9):.0f}% done, about {eta / 60:.0f} min left " \
               f"(finish ~{time.strftime('%H:%M', time.localtime(time.time() + eta))})"

    def close(self) -> None:
        self.bar.close()


def _units(sweep: SweepConfig, row: Row, data: SweepData, k: int) -> float:
    tr = _train_rows(sweep, row, data, k)
    frac = len(tr) / max(len(data.splits[k][0]), 1)
    return (sweep.epochs + sweep.pretrain_epochs) * len(row.modalities) * frac


# ---------------------------------------------------------------------------
# Running rows
# ---------------------------------------------------------------------------

def _train_rows(sweep: SweepConfig, row: Row, data: SweepData, k: int) -> np.ndarray:
    tr = data.splits[k][0]
    if row.split == "illum":
        tr = tr[data.light[tr] <= sweep.illum_train_max]
    return tr


def _test_sets(sweep: SweepConfig, row: Row, data: SweepData, k: int) -> Dict[str, np.ndarray]:
    te = data.splits[k][1]
    if row.split != "illum":
        return {"test": te}
    return {"test": te[data.light[te] >= sweep.illum_test_min],     # the shifted light: the row's number
            "in_range": te[data.light[te] <= sweep.illum_train_max]}


@torch.no_grad()
def _predict(model: torch.nn.Module, data: SweepData, rows: np.ndarray, modalities: Sequence[str],
             device: torch.device) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions and fused embeddings ``f_v`` (Section III-D) of some crop rows."""
    model.eval()
    preds, embs = [], []
    batches = CropBatches(data.crops, rows, data.label_index, modalities, 128)
    for x, _ in batches:
        f_v = model.forward_features(x.to(device))
        preds.append(model.forward_head(f_v).argmax(1).cpu().numpy())
        embs.append(f_v.float().cpu().numpy())
    n = len(rows)
    return (np.concatenate(preds) if n else np.zeros(0, np.int64),
            np.concatenate(embs) if n else np.zeros((0, 0), np.float32),
            data.label_index[rows])


def _metrics_dict(m: EvaluationMetrics) -> Dict[str, Any]:
    return m.to_dict()


def run_fold(sweep: SweepConfig, row: Row, data: SweepData, k: int, work: WorkDir, fingerprint: str,
             device: torch.device, progress: Progress) -> Dict[str, Any]:
    """Train and evaluate one fold of one row; write ``fold_<k>.npz`` then ``fold_<k>.json``."""

    cfg = row_train_config(sweep, row)
    model_config = build_model_config(cfg, len(data.class_names), data.params.crop_size)
    train_rows = _train_rows(sweep, row, data, k)
    n_mod = len(row.modalities)
    frac = len(train_rows) / max(len(data.splits[k][0]), 1)
    total_epochs = {"pretrain": sweep.pretrain_epochs, "train": sweep.epochs}

    def on_epoch(stage: str, epoch: int, epochs: int) -> None:
        progress.advance(n_mod * frac, f"{row.name} fold {k + 1}/{len(data.splits)} {stage} "
                                       f"epoch {epoch}/{total_epochs[stage]}")

    t0 = time.perf_counter()
    result = fit(data.crops, train_rows, data.label_index, model_config, data.params, cfg, device,
                 sweep.seed + 1000 * k, desc=f"{row.name} fold {k + 1}", on_epoch=on_epoch)
    record: Dict[str, Any] = {"fingerprint": fingerprint, "row": row.name, "fold": k,
                              "train_count": int(len(train_rows)), "train_seconds": result.seconds}
    arrays: Dict[str, np.ndarray] = {}
    for name, rows in _test_sets(sweep, row, data, k).items():
        y_pred, emb, y_true = _predict(result.model, data, rows, row.modalities, device)
        m = compute_metrics(y_true, y_pred, data.class_names, intensities=data.crops.intensities[rows])
        record[name] = _metrics_dict(m)
        arrays[f"{name}_rows"] = rows.astype(np.int64)
        arrays[f"{name}_pred"] = y_pred.astype(np.int16)
        if name == "test":
            arrays["test_emb"] = emb.astype(np.float16)
            arrays["test_true"] = y_true.astype(np.int16)
    record["eval_seconds"] = time.perf_counter() - t0 - result.seconds
    with atomic_open(work.fold_npz(row, k), "wb") as fh:
        np.savez_compressed(fh, **arrays)
    if row.name in GRADCAM_ROWS and k == len(data.splits) - 1:
        save_model_checkpoint(work.model(row), result.model, data.class_names, data.params,
                              {"trainer": "cmcnn_training.reproduce", "row": row.name, "fold": k,
                               "test_subjects": sorted(set(data.crops.subjects[data.splits[k][1]].tolist()))},
                              overwrite=True)
    write_json_atomic(work.fold_json(row, k), record)
    acc = record["test"]["accuracy"]
    logger.info("%s fold %d/%d: accuracy %.3f on %d faces (%.0fs); sweep %s", row.name, k + 1, len(data.splits),
             acc, record["test"]["count"], result.seconds, progress.eta_text())
    return record


def _summary(records: List[Dict[str, Any]], key: str) -> Dict[str, Any]:
    from ..metrics import GroupAccuracy

    folds = []
    for r in records:
        d = r[key]
        folds.append(EvaluationMetrics(
            class_names=d["class_names"], accuracy=d["accuracy"], count=d["count"], per_class=d["per_class"],
            confusion=np.array(d["confusion_matrix"]),
            per_intensity={i: GroupAccuracy(g["accuracy"], g["count"]) for i, g in d["per_intensity"].items()}))
    s = summarise_folds(folds)
    # Per-intensity mean ± std over folds (the pooled figure is in summarise_folds' output).
    levels = sorted({i for f in folds for i in f.per_intensity}, key=lambda v: float(v))
    s["per_intensity_folds"] = {i: [f.per_intensity[i].accuracy if i in f.per_intensity else None for f in folds]
                                for i in levels}
    return s


def finish_row(row: Row, records: List[Dict[str, Any]], work: WorkDir, fingerprint: str, sweep: SweepConfig,
               data: SweepData) -> Dict[str, Any]:
    doc = {"fingerprint": fingerprint, "row": row.name, "spec": row.spec(), "folds": records,
           "summary": _summary(records, "test"),
           "in_range_summary": _summary(records, "in_range") if row.split == "illum" else None,
           "train_seconds": float(sum(r["train_seconds"] for r in records)),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(work.row_json(row), doc)
    s = doc["summary"]
    logger.info("row %s finished: %.2f ± %.2f %% over %d folds", row.name, 100 * s["accuracy_mean"],
             100 * s["accuracy_std"], s["folds"])
    return doc


def check_work_dir(work: WorkDir, sweep: SweepConfig, data: SweepData, rows: Sequence[Row],
                   rerun: Sequence[Row]) -> None:
    """Refuse to mix results of other settings into this sweep (before anything trains).

    Raises:
        SweepError: a finished row of another fingerprint that is not being rerun.
    """
    stale = []
    for row in rows:
        if row in rerun:
            continue
        doc = work.read(work.row_json(row))
        if doc is not None and doc.get("fingerprint") != row_fingerprint(sweep, row, data):
            stale.append(row.name)
    if stale:
        raise SweepError(f"{work.root} holds rows {stale} made with other settings or data; pass "
                         f"--rerun {' '.join(stale)} to redo them, or use another --work-dir")


def run_sweep(sweep: SweepConfig, work_dir: str | Path, rerun: Sequence[str] = (), progress: bool = True,
              command: str = "", note: str = "") -> Tuple[SweepData, List[Row], Dict[str, Dict[str, Any]], List[str]]:
    """Run (or resume) every row; returns the data, the rows, the finished row documents and skip notes.

    ``command`` (the command line) is recorded in ``sweep.json`` for the report.

    Raises:
        SweepError / RowError: see :func:`prepare_data` and :func:`check_work_dir`.
    """
    from .rows import resolve

    rerun_rows = [resolve(n) for n in rerun]          # unknown names fail before any data is read
    data, rows, skipped = prepare_data(sweep, sweep.rows, progress)
    missing = [r.name for r in rerun_rows if r not in rows]
    if missing:
        raise RowError(f"--rerun {missing}: not among the rows of this sweep ({[r.name for r in rows]})")
    work = WorkDir(work_dir)
    check_work_dir(work, sweep, data, rows, rerun_rows)
    for row in rerun_rows:
        logger.info("--rerun %s: forgetting its earlier results", row.name)
        work.forget(row)
    work.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work.root / "sweep.json", {
        "command": command, "note": note, "sweep": asdict(sweep), "rows": [r.name for r in rows], "skipped": skipped,
        "class_names": data.class_names, "samples": data.samples, "crops": len(data.crops),
        "crop_stats": data.crops.stats, "crop_cache": data.cache_path,
        "subjects": sorted(set(data.crops.subjects.tolist())),
        "folds_test_subjects": [sorted(set(data.crops.subjects[te].tolist())) for _, te in data.splits]})
    if sweep.threads:
        torch.set_num_threads(sweep.threads)
    device = resolve_device(sweep.device)
    seed_everything(sweep.seed)

    bar = Progress(sum(_units(sweep, r, data, k) for r in rows for k in range(len(data.splits))), progress)
    docs: Dict[str, Dict[str, Any]] = {}
    try:
        for row in rows:
            fp = row_fingerprint(sweep, row, data)
            doc = work.read(work.row_json(row))
            if doc is not None and doc.get("fingerprint") == fp:
                logger.info("row %s: finished earlier, kept (--rerun %s to redo it)", row.name, row.name)
                bar.skip(sum(_units(sweep, row, data, k) for k in range(len(data.splits))))
                docs[row.name] = doc
                continue
            records = []
            for k in range(len(data.splits)):
                rec = work.read(work.fold_json(row, k))
                if rec is not None and rec.get("fingerprint") == fp and work.fold_npz(row, k).is_file():
                    logger.info("%s fold %d/%d: finished earlier, kept", row.name, k + 1, len(data.splits))
                    bar.skip(_units(sweep, row, data, k))
                else:
                    rec = run_fold(sweep, row, data, k, work, fp, device, bar)
                records.append(rec)
            docs[row.name] = finish_row(row, records, work, fp, sweep, data)
    finally:
        bar.close()
    return data, rows, docs, skipped


def load_finished(work_dir: str | Path) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """``(sweep.json, {row name: row document})`` of a work folder, for the report alone.

    Raises:
        SweepError: the folder holds no sweep.
    """
    work = WorkDir(work_dir)
    meta = work.read(work.root / "sweep.json")
    if meta is None:
        raise SweepError(f"{work.root} holds no sweep (no sweep.json); run cmcnn-reproduce first")
    docs = {}
    for p in sorted((work.root / "rows").glob("*.json")):
        d = work.read(p)
        if d and "summary" in d:
            docs[d["row"]] = d
    return meta, docs


__all__ = ["PRESETS", "SweepConfig", "SweepError", "WorkDir", "load_finished", "prepare_data", "run_sweep"]
