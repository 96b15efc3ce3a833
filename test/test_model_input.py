"""Training and serving feed the network the same input for the same frame.

One real photograph with a face (scikit-image's astronaut) and a synthetic
registered depth map go once through the node's path (checkpoint ->
``Recognizer.recognize`` on the raw ``uint16`` depth, the tensor caught on
its way into the network) and once through the trainer's (a Kinect folder on
disk -> dataset item -> crop cache written and read back -> ``CropBatches``
as training and ``cmcnn-evaluate`` batch it). Every modality channel must be
equal bit for bit: a different normalisation, precision, channel order or
crop in either path fails here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.inference import Recognizer
from cmcnn_ros.modalities import MODALITIES
from cmcnn_ros.model import cmcnn
from cmcnn_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmcnn_ros.preprocessing import PreprocessingParams
from cmcnn_ros.preprocessing.model_input import build_model_input, load, mirror_images, store
from cmcnn_ros.preprocessing.params import PreprocessingError
from cmcnn_ros.preprocessing.texture import TextureImages
from cmcnn_training.crops import get_crops
from cmcnn_training.datasets import load_dataset
from cmcnn_training.engine import CropBatches, flipped_crops

#: Every modality, in an order unlike the canonical one (channel order is part of the contract).
MODS = ("depth", "gabor", "grey", "hog", "lbp")
assert sorted(MODS) == sorted(MODALITIES)


def _frame() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut (BGR) and a registered depth map in millimetres: a face-sized dome, holes, background."""
    colour = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    h, w = colour.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = ((xx - 225.0) / 70.0) ** 2 + ((yy - 125.0) / 90.0) ** 2
    depth = np.where(r2 < 1.0, 900.0 + 60.0 * r2 + 3.0 * np.sin(xx / 4.0), 1650.0)
    depth_mm = np.rint(depth).astype(np.uint16)
    depth_mm[100:104, 200:260] = 0   # a sensor hole across the face
    depth_mm[::9, ::7] = 0           # and scattered dropouts
    return colour, depth_mm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = cmcnn(preset="tiny", num_classes=7, modalities=MODS)
    path = tmp_path_factory.mktemp("ckpt") / "all-modalities.pt"
    save_checkpoint(path, model, EXPRESSIONS_WITH_NEUTRAL, PreprocessingParams().to_dict())
    return path


def _serving(checkpoint: Path, colour: np.ndarray, depth_mm: np.ndarray, flip_tta: bool = False):
    """The network's input for the frame on the node's path, and the recognizer and its result."""
    rec = Recognizer.from_checkpoint(checkpoint, device="cpu", backend="torch",   # the hook sees its input
                                     flip_tta=flip_tta)
    seen = []
    hook = rec.model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    try:
        result = rec.recognize(colour, depth_mm)
    finally:
        hook.remove()
    assert len(result.faces) == 1 and result.faces[0].depth_valid
    assert len(seen) == 1
    return seen[0], rec, result


def _serving_input(checkpoint: Path, colour: np.ndarray, depth_mm: np.ndarray) -> torch.Tensor:
    return _serving(checkpoint, colour, depth_mm)[0]


def _training_crops(checkpoint: Path, colour: np.ndarray, depth_mm: np.ndarray, tmp_path: Path):
    root = tmp_path / "kinect"
    (root / "colour").mkdir(parents=True)
    (root / "depth").mkdir()
    assert cv2.imwrite(str(root / "colour" / "a.png"), colour)
    assert cv2.imwrite(str(root / "depth" / "a.png"), depth_mm)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["colour", "depth", "label", "subject", "intensity", "box_x", "box_y", "box_w", "box_h"])
        w.writerow(["colour/a.png", "depth/a.png", "happy", "s1", "", "", "", "", ""])
    ckpt = load_checkpoint(checkpoint)
    params = PreprocessingParams.from_checkpoint(ckpt.preprocessing)
    modalities = tuple(ckpt.model_config.modalities)
    ds = load_dataset("kinect", root)
    cache = tmp_path / "cache"
    built, info = get_crops(ds, params, modalities, cache, workers=0, progress=False)
    assert not info.hit and built.stats["detector"] == 1
    crops, info = get_crops(ds, params, modalities, cache, workers=0, progress=False)
    assert info.hit   # read back from the .npz, as every later run and fold reads it
    return crops, params, modalities


def _batch_input(crops, params, modalities) -> torch.Tensor:
    batches = CropBatches(crops, [0], np.zeros(len(crops), np.int64), modalities, batch_size=1,
                          preprocessing=params)
    x, _ = next(iter(batches))
    return x


def _training_input(checkpoint: Path, colour: np.ndarray, depth_mm: np.ndarray, tmp_path: Path) -> torch.Tensor:
    return _batch_input(*_training_crops(checkpoint, colour, depth_mm, tmp_path))


def test_training_and_serving_build_identical_model_inputs(checkpoint, tmp_path):
    colour, depth_mm = _frame()
    served = _serving_input(checkpoint, colour, depth_mm)
    trained = _training_input(checkpoint, colour, depth_mm, tmp_path)
    assert served.dtype == trained.dtype == torch.float32
    assert served.shape == trained.shape == (1, len(MODS), 148, 148)
    for j, name in enumerate(MODS):
        channel = served[0, j]
        # a real face crop, not a constant that any two paths would agree on
        assert float(channel.std()) > 0.02, name
        assert 0.0 <= float(channel.min()) and float(channel.max()) <= 1.0, name
        assert torch.equal(channel, trained[0, j]), (
            f"{name}: serving and training inputs differ (max |diff| "
            f"{float((channel - trained[0, j]).abs().max()):.3g})")


def test_the_comparison_sees_storage_precision():
    """The identity above is exact: rounding a crop to the cache's precision is visible to it."""
    rng = np.random.default_rng(1)
    crop = rng.random((1, 148, 148), dtype=np.float32)
    for name, stored_type in (("depth", np.float16), ("hog", np.uint8), ("grey", np.uint8)):
        stored = store(name, crop)
        assert stored.dtype == stored_type
        x = build_model_input({name: crop}, (name,))
        assert np.array_equal(x[:, 0], load(stored))                     # live crops are stored, then read
        assert np.array_equal(build_model_input({name: stored}, (name,)), x)   # as cached crops are read
        assert not np.array_equal(x[:, 0], crop)                         # and that rounding is not a no-op
    valid = np.array([True, False])
    two = np.ones((2, 148, 148), np.float32)
    x = build_model_input({"grey": two, "depth": two}, ("grey", "depth"), depth_valid=valid)
    assert x[0, 1].min() == 1.0 and not x[1, 1].any() and x[1, 0].min() == 1.0


def test_flip_tta_mirrors_alike_for_training_and_serving(checkpoint, tmp_path):
    """The node's ``flip_tta`` runs the face and its mirror image in one batch and averages their scores;
    the mirror image is the trainer's (``cmcnn-train --tta-flip``, ``cmcnn-evaluate --tta-flip``) bit for bit."""
    colour, depth_mm = _frame()
    x, rec, result = _serving(checkpoint, colour, depth_mm, flip_tta=True)
    assert x.shape == (2, len(MODS), 148, 148)
    plain = _serving_input(checkpoint, colour, depth_mm)
    assert torch.equal(x[:1], plain)                       # the face itself, as without flip_tta
    for name in ("grey", "depth"):
        j = MODS.index(name)
        assert torch.equal(x[1, j], x[0, j].flip(-1)), name
    # an LBP code is not mirror symmetric: the mirror's LBP is recomputed, not the LBP image mirrored
    # (the magnitude of the symmetric Gabor bank happens to be)
    j = MODS.index("lbp")
    assert not torch.equal(x[1, j], x[0, j].flip(-1))
    crops, params, modalities = _training_crops(checkpoint, colour, depth_mm, tmp_path)
    trained = _batch_input(flipped_crops(crops, params), params, modalities)
    for j, name in enumerate(MODS):
        assert torch.equal(x[1, j], trained[0, j]), (
            f"{name}: mirrored serving and training inputs differ by "
            f"{float((x[1, j] - trained[0, j]).abs().max()):.3g}")
    both = rec.classify(x.numpy())
    assert not np.allclose(both[0], both[1], atol=1e-4)    # the mirror image scores differently
    np.testing.assert_allclose(result.faces[0].scores, 0.5 * (both[0] + both[1]), atol=1e-6)
    assert result.faces[0].expression == EXPRESSIONS_WITH_NEUTRAL[int(np.argmax(both[0] + both[1]))]


def test_mirror_images_keeps_types_and_needs_grey():
    rng = np.random.default_rng(3)
    grey = rng.random((2, 32, 32), dtype=np.float32)
    depth = rng.random((2, 32, 32), dtype=np.float32)
    params = PreprocessingParams(crop_size=32)
    texture = TextureImages(params)
    live = mirror_images({"grey": grey, "lbp": np.zeros_like(grey), "depth": depth}, texture)
    stored = mirror_images({"grey": store("grey", grey), "lbp": store("lbp", np.zeros_like(grey)),
                            "depth": store("depth", depth)}, texture)
    assert live["lbp"].dtype == np.float32 and stored["lbp"].dtype == np.uint8 and stored["depth"].dtype == np.float16
    np.testing.assert_array_equal(live["depth"], depth[:, :, ::-1])
    for i in range(2):
        expected = texture("lbp", np.ascontiguousarray(store("grey", grey[i])[:, ::-1]))
        np.testing.assert_array_equal(live["lbp"][i], expected)
        np.testing.assert_array_equal(stored["lbp"][i], store("lbp", expected))
    with pytest.raises(PreprocessingError, match="grey crop"):
        mirror_images({"lbp": store("lbp", grey)}, texture)
