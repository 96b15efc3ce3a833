"""Where the CM-CNN network runs at inference: PyTorch or ONNX Runtime, one interface.

The recognizer's network (Sections III-C to III-E of Ni et al., IEEE TCDS
2023) is small (48 px crops, ~0.4 M parameters in the default weights), so on
a CPU most of a PyTorch eager call is framework overhead rather than
arithmetic. Measured on 2 cores (``benchmarks/bench_network.py``, README:
Benchmarks), ONNX Runtime runs the same graph about three times faster at
batch 1 and 5 than the BatchNorm-folded eager model; ``torch.compile`` and
TorchScript were measured too and not chosen (see the README).

Backends (the node's ``inference_backend`` parameter, ``--backend`` of the
tools):

``torch``
    The checkpoint's model with BatchNorm folded and channels-last weights
    (:meth:`~cmcnn_ros.model.cmcnn.CMCNN.fuse_for_inference`), on any device.
``onnxruntime``
    The same model exported to ONNX (probabilities included: ``softmax(s/T)``
    of :meth:`~cmcnn_ros.model.cmcnn.CMCNN.predict_proba`, so the calibration
    temperature travels with it) and run by ONNX Runtime: its CPU provider,
    or its CUDA provider for ``device: cuda`` (``onnxruntime-gpu``).
``auto`` (default)
    ``onnxruntime`` when it is installed, can export, has a provider for the
    device and agrees with PyTorch; otherwise ``torch``, with one log line
    saying why. So a robot without ONNX Runtime, or a GPU without its CUDA
    provider, keeps working on PyTorch.

There is never a second weights file to keep in step: the ONNX graph is
exported from the loaded checkpoint and cached under
:func:`cmcnn_ros.resources.cache_dir` ``/onnx``, named by a hash of the
model's configuration, its weights and the exporter's versions. A changed
checkpoint has another name; a cached file that fails to load or to agree
with PyTorch is exported again. Every build checks the exported graph against
PyTorch on a fixed input (largest difference <= :data:`MAX_SCORE_DIFFERENCE`)
before it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..atomic_io import write_bytes_atomic
from ..model.cmcnn import CMCNN
from ..resources import cache_dir

logger = logging.getLogger(__name__)

#: The names the ``inference_backend`` setting takes, in every entry point.
BACKENDS = ("auto", "torch", "onnxruntime")
#: What every entry point uses unless told otherwise (node, tools, stream, recognizer).
DEFAULT_BACKEND = "auto"
#: Largest score difference an exported graph may show against PyTorch on the check input.
MAX_SCORE_DIFFERENCE = 1e-4
#: Bumped when the export changes in a way the cache key would not see.
_EXPORT_FORMAT = "cmcnn-onnx-1"
#: The pip pins (requirements.txt), for error messages.
ORT_INSTALL_HINT = "pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2"


class BackendError(ValueError):
    """The requested inference backend cannot run this model here; the message says what to do.

    Attributes:
        missing: a package is not installed (an expected case on a robot, not a fault).
    """

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class TorchBackend:
    """The PyTorch model with BatchNorm folded (what ran before ONNX Runtime; any device).

    Attributes:
        model: the fused copy that runs (hooks on it see every batch).
        description: one line for logs and diagnostics.
    """

    name = "torch"

    def __init__(self, model: CMCNN, device: torch.device) -> None:
        self.device = device
        # BatchNorm folded into the convs: same outputs, fewer passes over the
        # full-resolution maps (measured in benchmarks/bench_network.py).
        self.model = model.eval().fuse_for_inference().to(device)
        self.description = f"torch ({device})"

    @torch.inference_mode()
    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, C)`` float32 for a model input ``(B, M, S, S)``."""
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
        return self.model.predict_proba(x).float().cpu().numpy()


class OnnxRuntimeBackend:
    """The checkpoint's network exported to ONNX, run by ONNX Runtime.

    Attributes:
        model: the fused PyTorch model (CPU) the export was checked against.
        max_difference: largest probability difference to it on the check input.
        description: one line for logs and diagnostics (version, provider, exported or cached).

    Args:
        model: the loaded CM-CNN (its weights and config name the cached export).
        device: ``cpu`` or a CUDA device (needs ONNX Runtime's CUDA provider).
        num_threads: intra-op threads of the CPU provider (None: one).
        cache: folder of exported graphs; None exports into memory only.

    Raises:
        BackendError: ONNX Runtime or the exporter is missing, the device has
            no provider, or the export disagrees with PyTorch.
    """

    name = "onnxruntime"

    def __init__(self, model: CMCNN, device: torch.device, num_threads: Optional[int] = None,
                 cache: Optional[Path] = None) -> None:
        ort = _import_onnxruntime()
        self.device = device
        self.providers = _providers(ort, device)
        reference = model.eval().fuse_for_inference(channels_last=False)
        self.model = reference
        options = ort.SessionOptions()
        # One intra-op thread unless told otherwise: the network is small, and one thread was
        # faster than two at batch 1 and 5 (0.8 vs 1.2 ms, 3.9 vs 4.7 ms on 2 cores:
        # benchmarks/bench_network.py --presets weights), leaving the other core to detection.
        options.intra_op_num_threads = int(num_threads) if num_threads else 1
        options.inter_op_num_threads = 1
        # Spinning worker threads would take the core the node's other pipeline
        # stage (detection, landmarks) is using; idle threads sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        digest = model_digest(model)
        path = cache / f"{digest[:32]}.onnx" if cache is not None else None
        graph, source = None, "exported"
        if path is not None and path.is_file():
            graph, source = path.read_bytes(), f"cached {path}"
        for attempt in range(2):
            if graph is None:
                graph = export_onnx(reference)
                source = "exported"
                if path is not None:
                    _save(path, graph)
            try:
                self._session = ort.InferenceSession(graph, options, providers=self.providers)
                self._input = self._session.get_inputs()[0].name
                difference = self._difference(reference)
            except Exception as exc:
                if source == "exported" or attempt:
                    raise BackendError(f"ONNX Runtime cannot run the exported network: {exc}") from exc
                logger.warning("cached ONNX graph %s does not load (%s); exporting it again", path, exc)
                graph = None
                continue
            if difference <= MAX_SCORE_DIFFERENCE:
                break
            if source == "exported":
                raise BackendError(
                    f"the ONNX export differs from the PyTorch model by {difference:.2e} in the class "
                    f"probabilities (allowed {MAX_SCORE_DIFFERENCE:g}); use the torch backend")
            logger.warning("cached ONNX graph %s differs from the PyTorch model by %.2e; exporting it again",
                           path, difference)
            graph = None
        self.max_difference = difference
        provider = self._session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} ({provider}, {source})"

    def _difference(self, reference: CMCNN) -> float:
        """Largest |p_onnx - p_torch| on a fixed input (batch 3), NaN-aware (equal NaNs count as 0)."""
        s, m = reference.config.input_size, len(reference.modalities)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(3, m, s, s, generator=gen)
        with torch.inference_mode():
            want = reference.predict_proba(x).numpy()
        got = self(x.numpy())
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        diff[np.isnan(got) & np.isnan(want)] = 0.0
        return float(np.nan_to_num(diff, nan=np.inf).max())

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, C)`` float32 for a model input ``(B, M, S, S)``."""
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        return self._session.run(None, {self._input: x})[0]


Backend = Union[TorchBackend, OnnxRuntimeBackend]


def make_backend(model: CMCNN, device: torch.device, backend: str = DEFAULT_BACKEND,
                 num_threads: Optional[int] = None, cache: Union[Path, None, str] = "default") -> Backend:
    """The backend named by ``backend`` for ``model`` on ``device``.

    Args:
        model: the loaded network (not modified).
        device: a resolved torch device (``cmcnn_ros.device.resolve_device``).
        backend: one of :data:`BACKENDS`.
        num_threads: CPU threads of the ONNX Runtime session (torch's are set
            by the caller with ``torch.set_num_threads``).
        cache: folder of exported graphs; ``"default"`` is
            :func:`~cmcnn_ros.resources.cache_dir` ``/onnx``, None keeps exports in memory.

    Raises:
        BackendError: an unknown name, or ``onnxruntime`` asked for where it cannot run.
    """
    problem = backend_problem(backend)
    if problem:
        raise BackendError(problem)
    if cache == "default":
        cache = cache_dir() / "onnx"
    cache = Path(cache) if cache is not None else None
    if backend == "torch":
        return TorchBackend(model, device)
    try:
        return OnnxRuntimeBackend(model, device, num_threads, cache)
    except BackendError as exc:
        if backend == "onnxruntime":
            raise
        # A missing package is a normal robot set-up; a failing export is worth a warning.
        (logger.info if exc.missing else logger.warning)("inference backend auto: %s; running the network on torch",
                                                          exc)
        return TorchBackend(model, device)


def backend_problem(name: str) -> Optional[str]:
    """What is wrong with a backend name, in one line, or None."""
    if name not in BACKENDS:
        return f"unknown inference backend {name!r}: use {', '.join(BACKENDS)}"
    return None


def model_digest(model: CMCNN) -> str:
    """SHA-256 of what an export depends on: the model's config and weights, torch's and the exporter's versions.

    Two loads of one checkpoint give the same digest; any changed weight,
    temperature or setting gives another, so a cached export cannot go stale.
    """
    h = hashlib.sha256()
    h.update(f"{_EXPORT_FORMAT}|torch {torch.__version__}|{_exporter_versions()}".encode())
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Probabilities(nn.Module):
    """The exported function: ``predict_proba`` (logits, then the one softmax with the temperature)."""

    def __init__(self, model: CMCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x)


def export_onnx(model: CMCNN) -> bytes:
    """``model.predict_proba`` as a serialised ONNX graph with a dynamic batch dimension.

    Uses torch's ``torch.export``-based exporter (the legacy TorchScript one is
    deprecated). Takes seconds; callers cache the result.

    Raises:
        BackendError: the exporter's packages (``onnx``, ``onnxscript``) are missing or the export fails.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"exporting to ONNX needs onnx and onnxscript ({exc}): {ORT_INSTALL_HINT}",
                           missing=True) from exc
    s, m = model.config.input_size, len(model.modalities)
    example = torch.zeros(2, m, s, s)
    t0 = time.perf_counter()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                _Probabilities(model).eval(), (example,), None, dynamo=True, optimize=True,
                input_names=["crops"], output_names=["probabilities"],
                dynamic_shapes={"x": {0: torch.export.Dim("faces", min=1, max=4096)}}, verbose=False)
        graph = program.model_proto.SerializeToString()
    except Exception as exc:
        raise BackendError(f"exporting the network to ONNX failed: {type(exc).__name__}: {exc}") from exc
    logger.info("exported the network to ONNX in %.1f s", time.perf_counter() - t0)
    return graph


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's progress chatter and deprecation notices (torch's, not ours) out of the node's log."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in levels:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def _exporter_versions() -> str:
    """The exporter packages' versions, read from their metadata: importing them would cost the node
    ~70 MB of memory even when the export comes from the cache."""
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for name in ("onnx", "onnxscript"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} missing")
    return ", ".join(versions)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(f"onnxruntime is not installed ({exc}): {ORT_INSTALL_HINT}", missing=True) from exc
    return onnxruntime


def _providers(ort, device: torch.device) -> list:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(
            f"device {device} needs ONNX Runtime's CUDA provider, which this onnxruntime lacks "
            f"(providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu in its "
            "place, or use the torch backend", missing=True)
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def _save(path: Path, graph: bytes) -> None:
    """Cache an export; an unwritable cache only costs the next start another export."""
    try:
        write_bytes_atomic(path, graph)
    except OSError as exc:
        logger.warning("cannot cache the ONNX export in %s (%s); it will be exported again next time", path, exc)
