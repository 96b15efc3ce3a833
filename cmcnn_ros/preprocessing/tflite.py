"""Loading the shipped TFLite face models (BlazeFace, FaceMesh) with LiteRT.

The detector and landmark models are MediaPipe's ``.tflite`` files, shipped in
``models/detection/`` with their Apache-2.0 licence (see the README there).
They run on Google's LiteRT interpreter (``ai-edge-litert``); nothing is
downloaded at run time. A missing or corrupt model file stops start-up with
a :class:`~cmcnn_ros.preprocessing.params.PreprocessingError` that names the
file and says how to restore it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..resources import find_file
from .params import PreprocessingError

logger = logging.getLogger(__name__)

#: Folder of the model files, relative to the share directory / checkout.
MODEL_DIR = "models/detection"

#: Shipped model files and their SHA-256, so a truncated or replaced file is
#: caught at start-up rather than producing garbage boxes.
MODEL_FILES: Dict[str, str] = {
    "face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    "face_landmark.tflite": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
}

_RESTORE_HINT = ("restore it from the repository (`git checkout -- models/detection`) or reinstall the "
                 "package; the file ships with cmcnn_ros (models/detection/README.md says where it comes from)")

_verified: Dict[Path, bool] = {}
_lock = threading.Lock()


def model_path(name: str) -> Path:
    """Path of a shipped model file, verified against its checksum (once per process).

    Raises:
        PreprocessingError: unknown name, file missing, or checksum mismatch.
    """
    if name not in MODEL_FILES:
        raise PreprocessingError(f"unknown face model {name!r}; shipped: {sorted(MODEL_FILES)}")
    path = find_file(None, f"{MODEL_DIR}/{name}")
    if path is None:
        raise PreprocessingError(f"face model file {MODEL_DIR}/{name} is missing: {_RESTORE_HINT}")
    with _lock:
        if path not in _verified:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != MODEL_FILES[name]:
                raise PreprocessingError(
                    f"face model file {path} is corrupt (SHA-256 {digest[:12]}..., expected "
                    f"{MODEL_FILES[name][:12]}...): {_RESTORE_HINT}")
            _verified[path] = True
    return path


class TFLiteModel:
    """One shipped model on LiteRT, with one interpreter per calling thread.

    An interpreter holds its tensors, so it cannot serve two threads at once;
    each thread that calls :meth:`run` gets its own (made on its first call,
    freed with the thread). The recognizer's worker lanes
    (:class:`cmcnn_ros.parallel.Lanes`) can therefore run the tiles of a
    detection and the faces of a frame side by side: LiteRT releases the GIL
    while it computes.

    Args:
        name: file name in :data:`MODEL_FILES`.
        num_threads: interpreter threads; one is the predictable choice on a
            2-core robot computer (two were ~25 % faster but jittered more);
            the lanes are the way to use a second core.
    """

    def __init__(self, name: str, num_threads: int = 1) -> None:
        self.path = model_path(name)
        self.num_threads = int(num_threads)
        self.name = name
        self._local = threading.local()
        interp = self._interpreter()   # the first one now: a broken file stops start-up here
        inp = interp.get_input_details()[0]
        self.input_index = int(inp["index"])
        self.input_shape: Tuple[int, ...] = tuple(int(v) for v in inp["shape"])
        # Output order differs between model files: callers pick them by shape.
        self._outputs: List[Tuple[int, Tuple[int, ...]]] = [
            (int(d["index"]), tuple(int(v) for v in d["shape"])) for d in interp.get_output_details()]

    def _interpreter(self):
        """This thread's interpreter (made on first use)."""
        interp = getattr(self._local, "interp", None)
        if interp is None:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError as exc:
                raise PreprocessingError(
                    "the face detector needs the LiteRT runtime: pip install ai-edge-litert==2.3.0 "
                    f"(requirements.txt), or use detector 'haar' ({exc})") from exc
            try:
                interp = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise PreprocessingError(
                    f"face model file {self.path} does not load ({exc}): {_RESTORE_HINT}") from exc
            self._local.interp = interp
        return interp

    @property
    def input_size(self) -> int:
        """Side of the square input image (NHWC)."""
        return int(self.input_shape[1])

    def run(self, image: np.ndarray) -> List[np.ndarray]:
        """Run on one ``(S, S, 3)`` float32 image; outputs in the model's order."""
        interp = self._interpreter()
        interp.set_tensor(self.input_index, image[None].astype(np.float32, copy=False))
        interp.invoke()
        return [interp.get_tensor(i) for i, _ in self._outputs]

    def output_with_size(self, outputs: List[np.ndarray], size: int) -> np.ndarray:
        """The output whose last dimension is ``size``."""
        for (_, shape), value in zip(self._outputs, outputs):
            if shape[-1] == size:
                return value
        raise PreprocessingError(f"{self.name}: no output of size {size} (outputs {[s for _, s in self._outputs]})")
