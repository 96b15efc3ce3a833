"""Training on several datasets in one run: real 2-D faces with synthetic RGB-D.

Real expression photographs (FER2013, folder-per-class sets) have no depth;
the synthetic benchmark has depth but cartoon faces. One checkpoint serves
both a Kinect (grey + LBP + depth) and a colour-only camera when every batch
mixes them: a 2-D face carries the all-zero depth channel and
``depth_valid=False``, which is exactly the missing-depth input the node
feeds the network (the convention depth dropout trains on), so the texture
FENs learn real faces while the depth FEN and the fusion learn from the
RGB-D renders.

Each extra set is cropped by the same preprocessing (its own box mode: the
detector for camera frames, the given box for face crops) and cached on its
own; subjects are prefixed with the set's name so no two sets share one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from cmcnn_ros.classes import canonical_name
from cmcnn_ros.preprocessing.params import PreprocessingParams

from .config import BOX_MODES, ConfigError
from .crops import CropCacheInfo, CropSet, get_crops

logger = logging.getLogger(__name__)


@dataclass
class MixEntry:
    """One extra dataset of a mixed run."""

    dataset: str
    root: str
    box_mode: str = "detect"
    repeat: int = 1
    options: Dict[str, Any] = field(default_factory=dict)


def parse_mix(entries: Sequence[Union[str, Mapping[str, Any]]]) -> List[MixEntry]:
    """``NAME:ROOT[:BOX_MODE[:REPEAT]]`` strings or mappings -> :class:`MixEntry` list.

    Raises:
        ConfigError: a malformed entry, naming it.
    """
    out: List[MixEntry] = []
    for raw in entries:
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - {"dataset", "root", "box_mode", "repeat", "options"})
            if unknown or "dataset" not in raw or "root" not in raw:
                raise ConfigError(f"mix entry {dict(raw)}: needs dataset and root, may have box_mode, repeat, "
                                  f"options{f'; unknown keys {unknown}' if unknown else ''}")
            entry = MixEntry(str(raw["dataset"]), str(raw["root"]), str(raw.get("box_mode", "detect")),
                             raw.get("repeat", 1), dict(raw.get("options") or {}))
        else:
            parts = str(raw).split(":")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise ConfigError(f"mix entry {raw!r}: expected NAME:ROOT[:BOX_MODE[:REPEAT]]")
            entry = MixEntry(parts[0], parts[1], parts[2] if len(parts) > 2 and parts[2] else "detect",
                             parts[3] if len(parts) > 3 else 1)
        try:
            entry.repeat = int(entry.repeat)
        except (TypeError, ValueError):
            raise ConfigError(f"mix entry {raw!r}: repeat must be an integer") from None
        if entry.box_mode not in BOX_MODES or entry.repeat < 1:
            raise ConfigError(f"mix entry {raw!r}: box_mode must be one of {BOX_MODES} and repeat >= 1")
        out.append(entry)
    return out


def parse_val(raw: Union[str, Mapping[str, Any]], default_root: Optional[str]) -> MixEntry:
    """The validation set of ``--val``: ``NAME[:ROOT[:BOX_MODE]]`` or a mapping; ROOT defaults to ``--root``.

    E.g. ``fer2013::gt`` with ``options: {usage: PublicTest}`` in YAML.

    Raises:
        ConfigError: a malformed entry, naming it.
    """
    if isinstance(raw, Mapping):
        entry = {**dict(raw), "root": raw.get("root") or default_root}
    else:
        parts = str(raw).split(":")
        entry = {"dataset": parts[0], "root": (parts[1] if len(parts) > 1 else "") or default_root,
                 "box_mode": parts[2] if len(parts) > 2 and parts[2] else "detect"}
    if not entry.get("root"):
        raise ConfigError(f"val entry {raw!r}: no root, and --root is not set")
    return parse_mix([entry])[0]


def concat_crops(sets: Sequence[Tuple[str, CropSet]]) -> Tuple[CropSet, np.ndarray]:
    """One crop set of several (same modalities), subjects prefixed by each set's name.

    Returns:
        ``(crops, source_index)``: ``source_index[i]`` is the position in
        ``sets`` of the set row ``i`` came from.

    Raises:
        ConfigError: the sets have different modalities or crop sizes.
    """
    first = sets[0][1]
    for name, c in sets[1:]:
        if c.modalities != first.modalities or c.crop_size != first.crop_size:
            raise ConfigError(f"mixed set {name} has modalities {c.modalities} at {c.crop_size} px, the first "
                              f"{first.modalities} at {first.crop_size} px")
    cat = lambda attr: np.concatenate([getattr(c, attr) for _, c in sets])  # noqa: E731
    crops = CropSet(
        modalities=first.modalities,
        images={m: np.concatenate([c.images[m] for _, c in sets]) for m in first.modalities},
        depth_valid=cat("depth_valid"), labels=cat("labels"),
        subjects=np.concatenate([np.char.add(f"{name}/", c.subjects.astype(str)) if i else c.subjects
                                 for i, (name, c) in enumerate(sets)]),
        intensities=cat("intensities"), sources=cat("sources"), box_sources=cat("box_sources"),
        dataset_index=cat("dataset_index"), alignments=cat("alignments"),
        stats={name: c.stats for name, c in sets}, key="+".join(c.key[:12] for _, c in sets))
    source_index = np.concatenate([np.full(len(c), i, np.int64) for i, (_, c) in enumerate(sets)])
    return crops, source_index


def load_mix_crops(entries: Sequence[MixEntry], class_names: Sequence[str], params: PreprocessingParams,
                   modalities: Sequence[str], cache_dir: Optional[str], workers: int,
                   progress: bool, prefix: str = "mix") -> List[Tuple[str, CropSet, CropCacheInfo, int]]:
    """Crops of every extra set, restricted to ``class_names``: ``[(name, crops, cache info, repeat)]``.

    ``prefix`` names the sets (``mix0-fer2013``, ``val0-fer2013``) in logs and cache files.

    Raises:
        ConfigError / DatasetError / CropError: a set cannot be loaded or yields no crop.
    """
    from .datasets import load_dataset

    out = []
    for k, entry in enumerate(entries):
        ds = load_dataset(entry.dataset, entry.root, **entry.options)
        keep = [i for i, label in enumerate(ds.labels) if canonical_name(label) in class_names]
        if not keep:
            raise ConfigError(f"mix entry {entry.dataset}:{entry.root} has no samples of {list(class_names)}")
        view = ds if len(keep) == len(ds) else ds.subset(keep)
        crops, info = get_crops(view, params, modalities, cache_dir, box_mode=entry.box_mode, workers=workers,
                                progress=progress, name=f"{prefix}{k}-{entry.dataset}")
        logger.info("%s set %s (%s): %d crops, repeat %d", prefix, entry.dataset, entry.root, len(crops),
                    entry.repeat)
        out.append((f"{prefix}{k}-{entry.dataset}", crops, info, entry.repeat))
    return out
