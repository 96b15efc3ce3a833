"""ICT-FaceKit light morphable model: loading, identities and blendshape blending.

The synthetic benchmark stands in for the licensed RGB-D expression databases
the paper evaluates on (Section IV-A: BU-3DFE, Bosphorus; Kinect sets
VT-KFER and CCZU-FER). Those databases pose six basic expressions at four
intensities per subject; this module provides the geometry for the same
design: a seeded identity per ``subject_id`` (so subject-independent splits
are reproducible) and linear blendshapes for the expressions::

    mesh = neutral + sum_i a_i * identity_i + sum_j w_j * expression_j

Units of the packed model are centimetres, +y up, +z out of the face.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "ict_facekit_light.npz"

# Vertex index ranges (inclusive start, exclusive end) from the data README.
FACE_VERTICES = (0, 9409)
BACK_HEAD_VERTICES = (9409, 11248)
MOUTH_SOCKET_VERTICES = (11248, 13294)
EYE_SOCKET_VERTICES = (13294, 14062)
GUMS_TONGUE_VERTICES = (14062, 17039)
TEETH_VERTICES = (17039, 21451)
EYEBALL_VERTICES = (21451, 24591)

NUM_IDENTITY_MODES = 100
# Identity coefficients are drawn ~N(0, 1) and clipped: the tails of a
# 100-dimensional Gaussian produce caricatures that no database contains.
IDENTITY_CLIP = 2.5
# Seed salt so identity streams differ from any other use of the subject id.
_IDENTITY_SALT = 0x1D3A7


class FaceKitError(ValueError):
    """The face model file or a request against it is invalid."""


@dataclass(frozen=True)
class FaceKitModel:
    """The packed ICT-FaceKit light model with bases flattened for fast blending.

    Attributes:
        neutral: ``(V, 3)`` float32 generic neutral mesh in cm.
        identity_basis: ``(100, V*3)`` float32 identity PCA offsets.
        expression_basis: ``(53, V*3)`` float32 blendshape offsets.
        expression_names: blendshape names in basis order.
        triangles: ``(F, 3)`` int32 vertex indices.
        triangle_material: ``(F,)`` int8 index into ``material_names``.
        material_names: material name per index.
        landmarks68: ``(68,)`` int32 vertex index of each Multi-PIE landmark.
    """

    neutral: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    expression_names: Tuple[str, ...]
    triangles: np.ndarray
    triangle_material: np.ndarray
    material_names: Tuple[str, ...]
    landmarks68: np.ndarray

    @property
    def num_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def num_expressions(self) -> int:
        return len(self.expression_names)

    @functools.cached_property
    def _expression_lookup(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.expression_names)}

    def expression_index(self, name: str) -> int:
        """Index of a blendshape by its ARKit-style name.

        Raises:
            FaceKitError: the model has no blendshape of that name.
        """
        try:
            return self._expression_lookup[name]
        except KeyError:
            raise FaceKitError(
                f"unknown blendshape {name!r}; the model has {list(self.expression_names)}") from None

    def material_index(self, name: str) -> int:
        """Index of a material by name.

        Raises:
            FaceKitError: no such material.
        """
        if name not in self.material_names:
            raise FaceKitError(f"unknown material {name!r}; the model has {list(self.material_names)}")
        return self.material_names.index(name)


_REQUIRED_KEYS = ("neutral", "identity_deltas", "expression_deltas", "expression_names",
                  "triangles", "triangle_material", "material_names", "landmarks68")


@functools.lru_cache(maxsize=2)
def load_facekit(path: Optional[Union[str, Path]] = None) -> FaceKitModel:
    """Load (once per process) the packed ICT-FaceKit model.

    Args:
        path: the ``.npz`` file; default is the copy shipped with the package.

    Raises:
        FaceKitError: the file is missing, unreadable or lacks an array.
    """
    file = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not file.is_file():
        raise FaceKitError(f"ICT-FaceKit model file not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [k for k in _REQUIRED_KEYS if k not in data.files]
            if missing:
                raise FaceKitError(f"{file} is not a packed ICT-FaceKit model: missing {missing}")
            arrays = {k: data[k] for k in _REQUIRED_KEYS}
    except (OSError, ValueError) as exc:
        if isinstance(exc, FaceKitError):
            raise
        raise FaceKitError(f"cannot read ICT-FaceKit model {file}: {exc}") from exc
    neutral = np.ascontiguousarray(arrays["neutral"], dtype=np.float32)
    v = neutral.shape[0]
    ident = arrays["identity_deltas"]
    expr = arrays["expression_deltas"]
    if ident.shape[1:] != (v, 3) or expr.shape[1:] != (v, 3):
        raise FaceKitError(f"{file}: basis shapes {ident.shape}, {expr.shape} do not match {v} vertices")
    model = FaceKitModel(
        neutral=neutral,
        identity_basis=np.ascontiguousarray(ident.reshape(ident.shape[0], -1), dtype=np.float32),
        expression_basis=np.ascontiguousarray(expr.reshape(expr.shape[0], -1), dtype=np.float32),
        expression_names=tuple(str(s) for s in arrays["expression_names"]),
        triangles=np.ascontiguousarray(arrays["triangles"], dtype=np.int32),
        triangle_material=np.ascontiguousarray(arrays["triangle_material"], dtype=np.int8),
        material_names=tuple(str(s) for s in arrays["material_names"]),
        landmarks68=np.ascontiguousarray(arrays["landmarks68"], dtype=np.int32),
    )
    logger.debug("loaded ICT-FaceKit model %s: %d vertices, %d triangles", file, v, len(model.triangles))
    return model


def _check_subject_id(subject_id: int) -> int:
    if isinstance(subject_id, (bool, np.bool_)) or not isinstance(subject_id, (int, np.integer)):
        raise FaceKitError(f"subject_id must be a non-negative int, got {subject_id!r}")
    if subject_id < 0:
        raise FaceKitError(f"subject_id must be a non-negative int, got {subject_id}")
    return int(subject_id)


def subject_rng(subject_id: int, stream: int) -> np.random.Generator:
    """A generator seeded only by the subject id and a stream number.

    Separate streams (shape, appearance, expression style) keep each one
    stable when another one changes how many numbers it draws.

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
    """
    return np.random.default_rng([_IDENTITY_SALT, _check_subject_id(subject_id), int(stream)])


def identity_coefficients(subject_id: int, num_modes: int = NUM_IDENTITY_MODES) -> np.ndarray:
    """Deterministic identity coefficients ``~N(0, 1)`` (clipped) for a subject.

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
    """
    rng = subject_rng(subject_id, stream=0)
    return np.clip(rng.standard_normal(num_modes), -IDENTITY_CLIP, IDENTITY_CLIP).astype(np.float32)


@functools.lru_cache(maxsize=64)
def identity_mesh(subject_id: int) -> np.ndarray:
    """Neutral-expression mesh ``(V, 3)`` float32 (cm) of a subject, cached.

    The returned array is read-only because it is shared through the cache.

    Raises:
        FaceKitError: ``subject_id`` is not a non-negative int.
    """
    model = load_facekit()
    coeffs = identity_coefficients(subject_id, model.identity_basis.shape[0])
    verts = model.neutral.reshape(-1) + coeffs @ model.identity_basis
    out = verts.reshape(-1, 3).astype(np.float32)
    out.setflags(write=False)
    return out


def blend_expression(base: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Add blendshape offsets to a mesh.

    Args:
        base: ``(V, 3)`` neutral-expression mesh (e.g. :func:`identity_mesh`).
        weights: ``(53,)`` blendshape weights (usually in [0, 1]).

    Returns:
        A new ``(V, 3)`` float32 mesh.

    Raises:
        FaceKitError: wrong shapes.
    """
    model = load_facekit()
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (model.num_expressions,):
        raise FaceKitError(f"expression weights must have shape ({model.num_expressions},), got {w.shape}")
    if base.shape != model.neutral.shape:
        raise FaceKitError(f"base mesh must have shape {model.neutral.shape}, got {base.shape}")
    # A dense GEMV over all 53 shapes is faster than gathering the active
    # rows (the gather copies megabytes).
    out = base.reshape(-1) + w @ model.expression_basis
    return out.reshape(-1, 3)
