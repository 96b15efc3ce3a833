"""Which samples and folds a training run uses (paper Section IV-A), from its :class:`TrainConfig`.

:func:`select_samples` applies the dataset protocol of
:mod:`~cmcnn_training.datasets.protocols` (e.g. BU-3DFE P1), then the run's
class list, subjects, intensity floor and per-subject cap; :func:`make_splits`
makes the subject-independent folds (no subject is in both parts of a fold)
or the single held-out split of subjects. ``cmcnn-train``, ``cmcnn-evaluate``
and ``cmcnn-reproduce`` all select through here, so they agree on the samples.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL, canonical_name

from ..config import ConfigError, TrainConfig
from ..utils import TrainingError
from .common import RecordDataset
from .protocols import Fold, select_protocol, subject_kfold


def _canonical_classes(present: Sequence[str], wanted: Optional[Sequence[str]]) -> List[str]:
    if wanted:
        names = [canonical_name(c) for c in wanted]
        if len(set(names)) != len(names):
            raise ConfigError(f"classes has repeats: {list(wanted)}")
        return names
    present_set = set(present)
    ordered = [c for c in EXPRESSIONS_WITH_NEUTRAL if c in present_set]
    return ordered + sorted(present_set - set(ordered))


def select_samples(dataset: RecordDataset, cfg: TrainConfig) -> Tuple[List[int], List[str]]:
    """Indices of the samples the run uses and the class list.

    Applies the dataset ``protocol`` (e.g. BU-3DFE P1: 60 subjects, six
    classes, two highest intensities), then ``classes``, ``subjects``,
    ``min_intensity`` and ``max_samples_per_subject_class``.

    Raises:
        TrainingError: nothing is left, or fewer than two classes.
    """
    labels = [canonical_name(lb) for lb in dataset.labels]
    subjects = [str(s) for s in dataset.subjects]
    candidates = range(len(labels))
    if cfg.protocol:
        candidates = select_protocol(dataset, cfg.protocol, run=cfg.protocol_run, seed=cfg.seed,
                                     n_subjects=cfg.protocol_subjects).tolist()
    classes = _canonical_classes([labels[i] for i in candidates], cfg.classes)
    keep = [i for i in candidates if labels[i] in classes]
    if cfg.subjects:
        wanted = {str(s) for s in cfg.subjects}
        missing = wanted - set(subjects)
        if missing:
            raise TrainingError(f"subjects not in the dataset: {sorted(missing)}")
        keep = [i for i in keep if subjects[i] in wanted]
    if cfg.min_intensity is not None:
        intens = getattr(dataset, "intensities", None)
        if intens is None:
            intens = [dataset[i].intensity for i in range(len(dataset))]
        keep = [i for i in keep if intens[i] is None or int(intens[i]) >= cfg.min_intensity]
    if cfg.max_samples_per_subject_class:
        groups: Dict[Tuple[str, str], List[int]] = {}
        for i in keep:
            groups.setdefault((subjects[i], labels[i]), []).append(i)
        keep = []
        for idx in groups.values():
            k = cfg.max_samples_per_subject_class
            if len(idx) > k:
                idx = [idx[int(j)] for j in np.linspace(0, len(idx) - 1, k).round().astype(int)]
            keep.extend(idx)
        keep.sort()
    if not keep:
        raise TrainingError("no samples left after applying classes/subjects/min_intensity")
    used = sorted({labels[i] for i in keep}, key=classes.index)
    if not cfg.classes:
        classes = used
    if len(classes) < 2:
        raise TrainingError(f"need at least two classes, the selection has {classes}")
    return keep, classes


def make_splits(subjects: np.ndarray, cfg: TrainConfig) -> List[Fold]:
    """``[(train_rows, test_rows)]`` of subject-independent folds or the single held-out split.

    Raises:
        TrainingError: more folds than subjects, unknown validation subjects.
    """
    uniq = sorted(set(subjects.tolist()))
    if cfg.folds == 1:
        if cfg.val_subjects:
            val = {str(s) for s in cfg.val_subjects}
            missing = val - set(uniq)
            if missing:
                raise TrainingError(f"--val-subjects not among the selected subjects: {sorted(missing)}")
        elif cfg.holdout_fraction:
            rng = np.random.default_rng(cfg.seed)
            n_val = max(1, int(round(cfg.holdout_fraction * len(uniq))))
            if n_val >= len(uniq):
                raise TrainingError(f"holdout_fraction {cfg.holdout_fraction} leaves no training subjects")
            val = set(rng.permutation(uniq)[:n_val].tolist())
        else:
            return [(np.arange(len(subjects)), np.zeros(0, np.int64))]
        test = np.flatnonzero(np.isin(subjects, sorted(val)))
        train = np.flatnonzero(~np.isin(subjects, sorted(val)))
        if len(train) == 0:
            raise TrainingError("the held-out split leaves no training samples")
        return [(train, test)]
    if cfg.folds > len(uniq):
        raise TrainingError(f"{cfg.folds} subject-independent folds need at least {cfg.folds} subjects; "
                            f"the selection has {len(uniq)}")
    return [(np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
            for tr, te in subject_kfold(subjects.tolist(), cfg.folds, seed=cfg.seed)]
