"""The rows of the paper's Tables I-III and the paper's numbers (Section IV-C, IV-F).

Every row is one training configuration: input modalities (G grey, L LBP,
H HOG, B Gabor, D depth), fusion (CMFN, or plain concatenation of the
max+average pooled FEN features, the paper's "without CMFN"), loss, and the
split it is trained and tested on (``kfold``: subject-independent k-fold;
``illum``: the same folds, trained on one light range and tested on another).

Rows with the same configuration are one training: Table I's "soft focal,
gamma 2" is the paper's default loss on the full model, i.e. Table II's
G+L+D+CMFN row, so ``soft-focal-2.0`` is an alias of ``G+L+D+CMFN``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from cmcnn_ros.modalities import MODALITIES

LETTERS: Dict[str, str] = {"G": "grey", "L": "lbp", "H": "hog", "B": "gabor", "D": "depth"}
#: Canonical channel order of a row's modalities (the model reads them in this order).
MODALITY_ORDER: Tuple[str, ...] = MODALITIES


class RowError(ValueError):
    """Unknown row name, or a row this dataset/protocol cannot run."""


@dataclass(frozen=True)
class Row:
    """One training configuration of the sweep.

    Attributes:
        name: the row's name in the report (``G+L+D+CMFN``, ``focal-2.0``, ``illum:G`` ...).
        modalities: model input channels, canonical order.
        fusion: ``cmfn`` or ``concat``.
        loss: ``soft_focal``, ``focal`` or ``ce``.
        gamma: focal gamma (ignored by ``ce``).
        sigma: soft-label sigma (``soft_focal`` only).
        split: ``kfold`` or ``illum``.
    """

    name: str
    modalities: Tuple[str, ...]
    fusion: str = "cmfn"
    loss: str = "soft_focal"
    gamma: float = 2.0
    sigma: float = 0.1
    split: str = "kfold"

    @property
    def slug(self) -> str:
        """File-name form of the name (``G+L+D+CMFN`` -> ``G_L_D_CMFN``)."""
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.name).strip("_")

    @property
    def uses_depth(self) -> bool:
        return "depth" in self.modalities

    def spec(self) -> Dict[str, object]:
        """JSON-able settings (part of the resume fingerprint)."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d


def _mods(letters: str) -> Tuple[str, ...]:
    wanted = {LETTERS[c] for c in letters.split("+")}
    return tuple(m for m in MODALITY_ORDER if m in wanted)


def _ablation(name: str) -> Row:
    """``G+L+D+CMFN`` -> modalities G, L, D with CMFN; ``G+L`` -> concatenation."""
    parts = name.split("+")
    cmfn = parts[-1] == "CMFN"
    letters = "+".join(parts[:-1] if cmfn else parts)
    return Row(name=name, modalities=_mods(letters), fusion="cmfn" if cmfn else "concat")


FULL = "G+L+D+CMFN"
#: Tables II and III, in the paper's order.
ABLATION_ROWS: Tuple[str, ...] = (
    "G", "L", "H", "B", "D", "G+L", "G+L+CMFN", "G+D", "G+D+CMFN", "L+D", "L+D+CMFN", "G+L+D",
    "G+H+D+CMFN", "G+B+D+CMFN", FULL)
#: Table I (loss functions on the full model), in the paper's order, plus our soft row.
SOFT_SIGMA_OWN = 0.7
LOSS_ROWS: Tuple[str, ...] = ("CCE", "focal-1.5", "soft-focal-1.5", "focal-2.5", "soft-focal-2.5", "focal-2.0",
                              "soft-focal-2.0", f"soft-focal-2.0-sigma{SOFT_SIGMA_OWN}")
#: Illumination-shift rows (not in the paper; its claim "depth holds where grey fails").
ILLUM_ROWS: Tuple[str, ...] = ("illum:G", "illum:D", "illum:G+D+CMFN", "illum:G+L+D+CMFN")
#: Fig. 7's six models, in the paper's panel order.
TSNE_ROWS: Tuple[str, ...] = (FULL, "G+L+D", "G+D", "G+L", "G", "D")
#: Names that are the same training as another row.
ALIASES: Dict[str, str] = {"soft-focal-2.0": FULL}


def _loss_row(name: str) -> Row:
    full = _mods("G+L+D")
    if name == "CCE":
        return Row(name, full, loss="ce", gamma=0.0, sigma=0.0)
    m = re.fullmatch(r"(soft-)?focal-([0-9.]+)(?:-sigma([0-9.]+))?", name)
    if not m:
        raise RowError(f"not a loss row: {name}")
    soft, gamma, sigma = m.group(1), float(m.group(2)), m.group(3)
    if soft:
        return Row(name, full, loss="soft_focal", gamma=gamma, sigma=float(sigma) if sigma else 0.1)
    return Row(name, full, loss="focal", gamma=gamma, sigma=0.0)


def _build_catalogue() -> Dict[str, Row]:
    rows: Dict[str, Row] = {}
    for name in ABLATION_ROWS:
        rows[name] = _ablation(name)
    for name in LOSS_ROWS:
        if name not in ALIASES:
            rows[name] = _loss_row(name)
    for name in ILLUM_ROWS:
        base = _ablation(name.split(":", 1)[1])
        rows[name] = Row(name, base.modalities, base.fusion, split="illum")
    return rows


CATALOGUE: Dict[str, Row] = _build_catalogue()

#: The order a full sweep trains in: what the figures need first, Table I's
#: numerically duplicate sigma=0.1 rows last (see the report's note).
DEFAULT_ORDER: Tuple[str, ...] = (
    FULL, "G", "D", "G+D", "G+L", "G+L+D",
    "G+D+CMFN", "G+L+CMFN", "L", "L+D", "L+D+CMFN", "H", "B", "G+H+D+CMFN", "G+B+D+CMFN",
    "illum:G", "illum:D", "illum:G+D+CMFN", "illum:G+L+D+CMFN",
    "CCE", "focal-2.0", f"soft-focal-2.0-sigma{SOFT_SIGMA_OWN}", "focal-1.5", "focal-2.5",
    "soft-focal-1.5", "soft-focal-2.5")


def resolve(name: str) -> Row:
    """The row (after aliases) a name stands for.

    Raises:
        RowError: unknown name, listing the known ones.
    """
    key = ALIASES.get(name, name)
    if key not in CATALOGUE:
        known = list(DEFAULT_ORDER) + list(ALIASES)
        raise RowError(f"unknown row {name!r}; known rows: {', '.join(known)}")
    return CATALOGUE[key]


def select_rows(names: Optional[Sequence[str]], has_depth: bool, has_light: bool,
                explicit: bool) -> Tuple[List[Row], List[str]]:
    """Rows to run, in order, with duplicates (aliases) removed.

    Args:
        names: requested names (None = the whole default order).
        has_depth: the dataset has depth (FER2013 has not: 2-D rows only).
        has_light: the dataset records each frame's light (illumination split).
        explicit: ``names`` came from the user; a row the dataset cannot run
            is then an error instead of being left out.

    Returns:
        ``(rows, skipped)``: the rows, and one line per row left out and why.

    Raises:
        RowError: an unknown name, or an explicitly asked row the dataset cannot run.
    """
    rows: List[Row] = []
    skipped: List[str] = []
    for name in (names or DEFAULT_ORDER):
        row = resolve(name)
        why = None
        if row.uses_depth and not has_depth:
            why = f"row {name} needs depth, which this dataset does not have (2-D rows only: G, L, H, B, " \
                  "G+L, G+L+CMFN)"
        elif row.split == "illum" and not has_light:
            why = f"row {name} needs the illumination-shift split, which needs a per-frame light " \
                  "elevation (the synthetic benchmark's truth.csv); this dataset has none"
        if why:
            if explicit:
                raise RowError(why)
            skipped.append(why)
            continue
        if row not in rows:
            rows.append(row)
    if not rows:
        raise RowError("no row left to run on this dataset: " + "; ".join(skipped))
    return rows, skipped


# ---------------------------------------------------------------------------
# The paper's numbers (accuracy %)
# ---------------------------------------------------------------------------

#: Table I: VT-KFER, BU-3DFE P1, BU-3DFE P2, Bosphorus.
PAPER_TABLE_I: Dict[str, Tuple[float, float, float, float]] = {
    "CCE": (91.52, 87.88, 85.50, 83.38),
    "focal-1.5": (91.80, 87.31, 85.52, 84.22),
    "soft-focal-1.5": (92.50, 87.33, 85.85, 84.32),
    "focal-2.5": (91.86, 88.12, 85.61, 84.58),
    "soft-focal-2.5": (92.36, 88.68, 86.21, 84.98),
    "focal-2.0": (92.52, 88.38, 86.02, 84.76),
    "soft-focal-2.0": (93.86, 88.91, 86.28, 85.16),
}
#: Table II (BU-3DFE P1, P2) and Table III (Bosphorus).
PAPER_TABLE_II: Dict[str, Tuple[float, float]] = {
    "G": (84.04, 82.33), "L": (78.48, 77.14), "H": (71.32, 69.84), "B": (75.66, 74.68), "D": (80.11, 79.02),
    "G+L": (84.13, 82.36), "G+L+CMFN": (86.42, 84.81), "G+D": (85.08, 82.82), "G+D+CMFN": (86.65, 84.86),
    "L+D": (80.93, 79.46), "L+D+CMFN": (81.72, 80.18), "G+L+D": (86.07, 84.38),
    "G+H+D+CMFN": (84.71, 83.38), "G+B+D+CMFN": (86.86, 85.48), FULL: (88.91, 86.28),
}
PAPER_TABLE_III: Dict[str, float] = {
    "G": 81.23, "L": 76.15, "H": 70.12, "B": 74.22, "D": 77.82, "G+L": 81.86, "G+L+CMFN": 83.41,
    "G+D": 82.00, "G+D+CMFN": 83.58, "L+D": 78.21, "L+D+CMFN": 79.68, "G+L+D": 83.26,
    "G+H+D+CMFN": 83.28, "G+B+D+CMFN": 84.22, FULL: 85.16,
}
