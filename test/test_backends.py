"""Inference backends: ONNX Runtime gives PyTorch's scores, from the same checkpoint, with its temperature.

Real exports (torch's ONNX exporter) and real ONNX Runtime sessions; each test
caches its exports in its own folder, so nothing depends on what an earlier
run left in ``~/.cache``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.inference import Recognizer
from cmcnn_ros.inference.backends import (BACKENDS, MAX_SCORE_DIFFERENCE, BackendError, OnnxRuntimeBackend,
                                          TorchBackend, make_backend, model_digest)
from cmcnn_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmcnn_ros.model.cmcnn import cmcnn
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_ros.resources import find_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory) -> Path:
    """A default-preset checkpoint whose calibration temperature is not 1 (softmax(s / 2.5))."""
    torch.manual_seed(3)
    model = cmcnn(num_classes=7, temperature=2.5)
    path = tmp_path_factory.mktemp("ckpt") / "calibrated.pt"
    return save_checkpoint(path, model, EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams().to_dict())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


def _inputs(model, batch: int, seed: int) -> np.ndarray:
    s, m = model.config.input_size, len(model.modalities)
    return np.random.default_rng(seed).random((batch, m, s, s), dtype=np.float32)


@pytest.mark.parametrize("which", ["shipped", "calibrated"])
def test_onnxruntime_gives_the_pytorch_scores(which, calibrated_checkpoint, cache):
    """Same probabilities as CMCNN.predict_proba to 1e-4, batch 1 and 5, temperature included."""
    loaded = load_checkpoint(find_checkpoint(None) if which == "shipped" else calibrated_checkpoint)
    model = loaded.model.eval()
    if which == "calibrated":
        assert model.config.temperature == 2.5
    backend = make_backend(model, torch.device("cpu"), "onnxruntime", num_threads=1, cache=cache)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.max_difference <= MAX_SCORE_DIFFERENCE
    for batch, seed in ((1, 0), (5, 1), (7, 2)):
        x = _inputs(model, batch, seed)
        with torch.inference_mode():
            want = model.predict_proba(torch.from_numpy(x)).numpy()
            logits = model(torch.from_numpy(x)).numpy()
        got = backend(x)
        assert got.shape == (batch, 7) and got.dtype == np.float32
        assert np.abs(got - want).max() <= MAX_SCORE_DIFFERENCE
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    if which == "calibrated":
        # The temperature really is applied: softmax of the raw logits is another distribution.
        raw = np.exp(logits - logits.max(1, keepdims=True))
        raw /= raw.sum(1, keepdims=True)
        assert np.abs(raw - got).max() > 1e-3


def test_recognizer_on_onnxruntime_answers_like_torch(astronaut_frame, cache, monkeypatch):
    """The whole recognizer, shipped weights: same faces, scores within 1e-4, same expressions."""
    monkeypatch.setenv("CMCNN_CACHE_DIR", str(cache))
    path = find_checkpoint(None)
    ort = Recognizer.from_checkpoint(path, device="cpu", backend="onnxruntime")
    ref = Recognizer.from_checkpoint(path, device="cpu", backend="torch")
    assert ort.backend.name == "onnxruntime" and ref.backend.name == "torch"
    depth = np.full(astronaut_frame.shape[:2], 900, np.uint16)
    a, b = ort.recognize(astronaut_frame, depth), ref.recognize(astronaut_frame, depth)
    assert len(a.faces) == len(b.faces) == 1
    for x, y in zip(a.faces, b.faces):
        assert x.box == y.box and x.expression == y.expression
        assert np.abs(x.scores - y.scores).max() <= MAX_SCORE_DIFFERENCE


def test_export_is_cached_by_the_checkpoints_content(calibrated_checkpoint, cache, caplog):
    """Loaded again, the checkpoint's export comes from the cache; other weights get another file."""
    model = load_checkpoint(calibrated_checkpoint).model
    first = make_backend(model, torch.device("cpu"), "onnxruntime", cache=cache)
    again = make_backend(load_checkpoint(calibrated_checkpoint).model, torch.device("cpu"), "onnxruntime",
                         cache=cache)
    name = f"{model_digest(model)[:32]}.onnx"
    assert (cache / name).is_file()
    assert "cached" in again.description and name in again.description
    assert first.max_difference <= MAX_SCORE_DIFFERENCE and again.max_difference <= MAX_SCORE_DIFFERENCE
    # Another temperature is another model: another digest, never the stale file.
    other = load_checkpoint(calibrated_checkpoint).model
    other.config = other.config.replace(temperature=1.0)
    assert model_digest(other) != model_digest(model)


def test_a_damaged_cached_export_is_exported_again(tiny_checkpoint, tmp_path, caplog):
    model = load_checkpoint(tiny_checkpoint).model
    path = tmp_path / f"{model_digest(model)[:32]}.onnx"
    path.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="cmcnn_ros.inference.backends"):
        backend = make_backend(model, torch.device("cpu"), "onnxruntime", cache=tmp_path)
    assert "does not load" in caplog.text and "exporting it again" in caplog.text
    assert backend.description.endswith("exported)") and backend.max_difference <= MAX_SCORE_DIFFERENCE
    assert path.stat().st_size > 1000   # replaced by the good export


def test_non_finite_scores_stay_non_finite(overflowing_checkpoint, tmp_path):
    """A broken checkpoint answers NaN on both backends, so the recognizer's guard still sees it."""
    model = load_checkpoint(overflowing_checkpoint).model
    backend = make_backend(model, torch.device("cpu"), "onnxruntime", cache=tmp_path)
    assert backend.name == "onnxruntime"
    assert not np.all(np.isfinite(backend(_inputs(model, 2, 0))))


def test_bad_backend_names_and_devices_are_refused(tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint).model
    with pytest.raises(BackendError, match=r"unknown inference backend 'tensorrt': use auto, torch, onnxruntime"):
        make_backend(model, torch.device("cpu"), "tensorrt")
    assert BACKENDS == ("auto", "torch", "onnxruntime")
    # ONNX Runtime's CPU wheel has no CUDA provider: said before any GPU is touched.
    with pytest.raises(BackendError, match="needs ONNX Runtime's CUDA provider.*onnxruntime-gpu"):
        OnnxRuntimeBackend(model, torch.device("cuda"), cache=tmp_path)
    assert isinstance(make_backend(model, torch.device("cpu"), "torch"), TorchBackend)


def test_without_onnxruntime_auto_runs_torch_and_onnxruntime_says_what_to_install(run_python, tiny_checkpoint):
    """On a robot without ONNX Runtime: auto keeps working on PyTorch, the explicit choice fails in one line."""
    code = f"""
import logging, sys
sys.modules["onnxruntime"] = None   # as if it were not installed: importing it raises ImportError
logging.basicConfig(level=logging.INFO, format="%(message)s")
from cmcnn_ros.inference import Recognizer
from cmcnn_ros.inference.backends import BackendError
rec = Recognizer.from_checkpoint({str(tiny_checkpoint)!r}, device="cpu")
print("AUTO", rec.backend.name)
try:
    Recognizer.from_checkpoint({str(tiny_checkpoint)!r}, device="cpu", backend="onnxruntime")
except BackendError as exc:
    print("ERROR", exc)
"""
    out = run_python(code, timeout=120)
    assert "AUTO torch" in out.stdout
    assert "inference backend auto: onnxruntime is not installed" in out.stderr
    assert "ERROR onnxruntime is not installed" in out.stdout and "pip install onnxruntime==" in out.stdout
    assert sys.modules.get("onnxruntime", True) is not None   # this process untouched
