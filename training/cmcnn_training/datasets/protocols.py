"""Evaluation protocols: sample selection and subject-independent folds (paper Section IV-A).

Ni et al. (IEEE TCDS 2023) evaluate with ten-fold cross-validation on every
benchmark and, on BU-3DFE, "the same evaluation protocol proposed in [74]:
60 subjects are selected and six basic facial expressions of the two highest
intensity levels (Protocol I and Protocol II)"; on Bosphorus "Protocol I as
used in evaluating the BU-3DFE: 60 subjects displaying six basic facial
expressions are randomly selected".

Implemented protocols (``select_protocol(dataset, name)``):

``all``
    every sample of the dataset (Kinect folders, synthetic sets).
``P1``
    literature Protocol I: one fixed, seeded draw of ``n_subjects`` (60)
    subjects among those showing all six basic expressions; the six basic
    expressions at intensities 3 and 4 (the two highest; 60 x 6 x 2 = 720
    BU-3DFE scans). The same subjects in every run; only the fold assignment
    changes with ``run`` (10-fold CV repeated).
``P2``
    literature Protocol II: as P1 but the 60 subjects are re-drawn for every
    ``run`` (many runs of 10-fold CV, each on a fresh random selection).
``paper-P1`` / ``paper-P2``
    the reading of the paper's own text: "for each protocol, 60 x 6 = 360
    samples", and Fig. 9 states that the P1 samples have the stronger
    intensity. So paper-P1 = intensity 4 only, paper-P2 = intensity 3 only,
    each on the fixed seeded 60 subjects (360 scans each).

Samples whose intensity is unknown (Bosphorus) are not filtered by
intensity, so ``P1`` on Bosphorus is the paper's 60 subjects x 6 emotions;
the ``paper-*`` protocols need intensities and refuse such datasets.

Folds: :func:`subject_kfold` deals the unique subjects, shuffled with the
seed, into ``k`` near-equal groups; each fold tests one group and trains on
the rest, so no subject is in both parts and every subject is tested once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cmcnn_ros.classes import BASIC_EXPRESSIONS, canonical_name

from .common import DatasetError

Fold = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ProtocolSpec:
    """Definition of one protocol.

    Attributes:
        name: protocol name.
        description: one line for help texts.
        classes: the classes it keeps (None = all).
        intensities: intensities it keeps among samples with a known
            intensity (None = all).
        select_subjects: draw ``n_subjects`` subjects.
        redraw_per_run: draw a new subject set for each run (P2).
        needs_intensity: refuse datasets without intensities.
    """

    name: str
    description: str
    classes: Optional[Tuple[str, ...]] = None
    intensities: Optional[Tuple[int, ...]] = None
    select_subjects: bool = False
    redraw_per_run: bool = False
    needs_intensity: bool = False


PROTOCOLS: Dict[str, ProtocolSpec] = {
    "all": ProtocolSpec("all", "every sample"),
    "P1": ProtocolSpec("P1", "fixed seeded 60 subjects, six expressions, intensities 3+4 (720 BU-3DFE scans); "
                             "10-fold CV repeated with re-shuffled folds",
                       BASIC_EXPRESSIONS, (3, 4), select_subjects=True),
    "P2": ProtocolSpec("P2", "60 subjects re-drawn for every run, six expressions, intensities 3+4",
                       BASIC_EXPRESSIONS, (3, 4), select_subjects=True, redraw_per_run=True),
    "paper-P1": ProtocolSpec("paper-P1", "paper's reading: fixed seeded 60 subjects, six expressions, "
                                         "intensity 4 only (360 scans)",
                             BASIC_EXPRESSIONS, (4,), select_subjects=True, needs_intensity=True),
    "paper-P2": ProtocolSpec("paper-P2", "paper's reading: fixed seeded 60 subjects, six expressions, "
                                         "intensity 3 only (360 scans)",
                             BASIC_EXPRESSIONS, (3,), select_subjects=True, needs_intensity=True),
}


@dataclass
class ProtocolSelection:
    """Which samples a protocol run uses.

    Attributes:
        name: protocol name.
        run: run number (P2 re-draws subjects per run).
        indices: sorted dataset indices.
        subjects: the selected subject ids (sorted).
    """

    name: str
    run: int
    indices: np.ndarray
    subjects: List[str]


def _spec(name: str) -> ProtocolSpec:
    for key, spec in PROTOCOLS.items():
        if key.lower() == str(name).strip().lower():
            return spec
    raise DatasetError(f"unknown protocol {name!r}; available: {list(PROTOCOLS)}")


def describe_protocols() -> Dict[str, str]:
    """Protocol name -> one-line description (for CLI help)."""
    return {k: v.description for k, v in PROTOCOLS.items()}


def subject_kfold(subjects: Sequence[str], k: int = 10, seed: int = 0) -> List[Fold]:
    """Subject-independent k-fold split.

    Args:
        subjects: subject id of every sample.
        k: number of folds (>= 2).
        seed: shuffles which subjects share a fold.

    Returns:
        ``k`` pairs ``(train_indices, test_indices)`` of int64 arrays into
        ``subjects``; test sets are disjoint and cover every sample once.

    Raises:
        DatasetError: ``k < 2`` or fewer unique subjects than folds.
    """
    subj = np.asarray([str(s) for s in subjects])
    uniq = np.array(sorted(set(subj.tolist())))
    if k < 2:
        raise DatasetError(f"k-fold needs k >= 2, got {k}")
    if len(uniq) < k:
        raise DatasetError(f"{k}-fold subject-independent CV needs at least {k} subjects, got {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(uniq)
    folds: List[Fold] = []
    for group in np.array_split(perm, k):
        test = np.isin(subj, group)
        folds.append((np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)))
    return folds


def protocol_selection(dataset: Any, name: str, run: int = 0, seed: int = 0,
                       n_subjects: int = 60) -> ProtocolSelection:
    """Samples of ``dataset`` a protocol run uses.

    Args:
        dataset: anything with ``labels``, ``subjects`` and (optionally)
            ``intensities`` lists.
        name: protocol name (see :data:`PROTOCOLS`; case-insensitive).
        run: run number; P2 draws new subjects per run.
        seed: base seed of the subject draw.
        n_subjects: subjects to draw (paper: 60).

    Raises:
        DatasetError: unknown protocol, too few eligible subjects, or a
            protocol needing intensities on a dataset without them.
    """
    spec = _spec(name)
    labels = [canonical_name(lb) for lb in dataset.labels]
    subjects = [str(s) for s in dataset.subjects]
    intens = list(getattr(dataset, "intensities", None) or [None] * len(labels))
    keep = np.ones(len(labels), dtype=bool)
    if spec.classes is not None:
        keep &= np.array([lb in spec.classes for lb in labels], dtype=bool)
    if spec.intensities is not None:
        known = np.array([i is not None for i in intens], dtype=bool)
        if spec.needs_intensity and not known[keep].any():
            raise DatasetError(f"protocol {spec.name} selects intensities {list(spec.intensities)} but the "
                               "dataset has no intensity labels; use P1")
        keep &= ~known | np.array([i in spec.intensities for i in intens], dtype=bool)
    idx = np.flatnonzero(keep)
    chosen = sorted({subjects[i] for i in idx})
    if spec.select_subjects:
        need = set(spec.classes or ())
        shown: Dict[str, set] = {}
        for i in idx:
            shown.setdefault(subjects[i], set()).add(labels[i])
        eligible = sorted(s for s, ls in shown.items() if need <= ls)
        if len(eligible) < n_subjects:
            raise DatasetError(f"protocol {spec.name} draws {n_subjects} subjects showing all of "
                               f"{sorted(need)}, but only {len(eligible)} of {len(shown)} subjects do")
        rng = np.random.default_rng([seed, run] if spec.redraw_per_run else [seed])
        chosen = sorted(rng.choice(eligible, size=n_subjects, replace=False).tolist())
        idx = idx[np.isin(np.asarray(subjects)[idx], chosen)]
    if idx.size == 0:
        raise DatasetError(f"protocol {spec.name} selects no samples")
    return ProtocolSelection(name=spec.name, run=int(run), indices=idx.astype(np.int64), subjects=chosen)


def select_protocol(dataset: Any, name: str, run: int = 0, seed: int = 0, n_subjects: int = 60) -> np.ndarray:
    """Sorted dataset indices of a protocol run (see :func:`protocol_selection`).

    Raises:
        DatasetError: see :func:`protocol_selection`.
    """
    return protocol_selection(dataset, name, run, seed, n_subjects).indices


def protocol_splits(dataset: Any, name: str, k: int = 10, run: int = 0, seed: int = 0,
                    n_subjects: int = 60) -> Tuple[np.ndarray, List[Fold]]:
    """Selection and its subject-independent folds, both as dataset indices.

    The fold assignment uses ``seed + run`` so repeated runs of P1 re-shuffle
    the folds over the same subjects.

    Returns:
        ``(indices, folds)`` where each fold is ``(train, test)`` dataset indices.

    Raises:
        DatasetError: see :func:`protocol_selection` and :func:`subject_kfold`.
    """
    sel = protocol_selection(dataset, name, run, seed, n_subjects)
    subjects = [str(dataset.subjects[i]) for i in sel.indices]
    folds = subject_kfold(subjects, k, seed=seed + run)
    return sel.indices, [(sel.indices[tr], sel.indices[te]) for tr, te in folds]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cmcnn_training.datasets.protocols``: print a protocol run's selection as JSON.

    Output keys: ``protocol``, ``run``, ``seed``, ``count``, ``subjects``,
    ``folds`` (test subjects per fold). ``--subjects-only`` prints the subject
    ids space-separated, ready for ``cmcnn-train --subjects``.
    """
    import argparse
    import json
    import logging
    import sys

    from cmcnn_ros.tools import configure_logging

    from . import load_dataset

    parser = argparse.ArgumentParser(prog="python -m cmcnn_training.datasets.protocols",
                                     description="Print the samples/subjects/folds of a protocol run.")
    parser.add_argument("--dataset", required=True, help="registry name (kinect, bu3dfe, bosphorus)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--protocol", default="P1", help=f"one of {list(PROTOCOLS)}")
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--n-subjects", type=int, default=60)
    parser.add_argument("--subjects-only", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(quiet_level=logging.WARNING)
    try:
        ds = load_dataset(args.dataset, args.root)
        idx, folds = protocol_splits(ds, args.protocol, args.folds, args.run, args.seed, args.n_subjects)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    subjects = sorted({str(ds.subjects[i]) for i in idx})
    if args.subjects_only:
        print(" ".join(subjects))
        return 0
    print(json.dumps({"protocol": args.protocol, "run": args.run, "seed": args.seed, "count": int(len(idx)),
                      "subjects": subjects,
                      "folds": [sorted({str(ds.subjects[i]) for i in te}) for _, te in folds]}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
