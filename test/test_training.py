"""Crop cache and trainer output behaviour (tiny handmade Kinect folder, real preprocessing).

The frames are textured noise with a ground-truth box: the Viola-Jones
detector finds no face there, so every crop comes from the ground-truth
fallback, which these tests also count.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmcnn_ros.model.checkpoint import load_checkpoint
from cmcnn_ros.preprocessing.params import PreprocessingParams
from cmcnn_training import fitting, train as train_mod
from cmcnn_training.crops import get_crops
from cmcnn_training.datasets import load_dataset
from cmcnn_training.engine import AugmentConfig, CropBatches

SUBJECTS = ("A", "B", "C", "D")
LABELS = ("happy", "sad")
BOX = (16, 16, 64, 64)


@pytest.fixture(scope="module")
def kinect_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinect")
    (root / "colour").mkdir()
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for s in SUBJECTS:
        for label in LABELS:
            name = f"{s}_{label}.png"
            img = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (5, 5), 0)
            if label == "happy":  # something learnable: a bright band in the lower half
                img[60:70, 30:66] = 250
            cv2.imwrite(str(root / "colour" / name), img)
            depth = np.full((96, 96), 1000, np.uint16)
            depth[BOX[1]:BOX[1] + BOX[3], BOX[0]:BOX[0] + BOX[2]] = 950
            cv2.imwrite(str(root / "depth" / name), depth)
            rows.append([f"colour/{name}", f"depth/{name}", label, s, 4, *BOX])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["colour", "depth", "label", "subject", "intensity", "box_x", "box_y", "box_w", "box_h"])
        w.writerows(rows)
    return root


PARAMS = PreprocessingParams(crop_size=32, min_face_size=40)


def test_crop_cache_hit_and_invalidation(kinect_root, tmp_path):
    ds = load_dataset("kinect", kinect_root)
    cache = tmp_path / "cache"
    crops, info = get_crops(ds, PARAMS, ("grey", "lbp", "depth"), cache, workers=0, progress=False)
    assert not info.hit and Path(info.path).is_file()
    assert len(crops) == len(ds) == 8
    # noise has no face: every crop fell back to the ground-truth box, and that was counted
    assert crops.stats["gt_no_face"] == 8 and crops.stats["kept"] == 8
    assert crops.images["grey"].dtype == np.uint8 and crops.images["depth"].dtype == np.float16
    assert crops.images["grey"].shape == (8, 32, 32)
    assert crops.depth_valid.all()
    assert sorted(set(crops.subjects.tolist())) == list(SUBJECTS)
    assert crops.intensities.tolist() == [4] * 8

    again, info2 = get_crops(ds, PARAMS, ("grey", "lbp", "depth"), cache, workers=0, progress=False)
    assert info2.hit and info2.path == info.path
    for m in crops.modalities:
        np.testing.assert_array_equal(again.images[m], crops.images[m])
    np.testing.assert_array_equal(again.labels, crops.labels)

    changed, info3 = get_crops(ds, PARAMS.replace(lbp_radius=2.0), ("grey", "lbp", "depth"), cache,
                               workers=0, progress=False)
    assert not info3.hit and info3.path != info.path
    assert not np.array_equal(changed.images["lbp"], crops.images["lbp"])
    _, info4 = get_crops(ds, PARAMS, ("grey", "depth"), cache, workers=0, progress=False)
    assert not info4.hit
    _, info5 = get_crops(ds.subset([0, 1, 2]), PARAMS, ("grey", "lbp", "depth"), cache, workers=0,
                         progress=False)
    assert not info5.hit
    assert len(list(cache.glob("*.npz"))) == 4
    assert not list(cache.glob("*.tmp"))


def test_flip_augmentation_recomputes_lbp(kinect_root, tmp_path):
    from cmcnn_ros.preprocessing.texture import lbp_image

    ds = load_dataset("kinect", kinect_root)
    crops, _ = get_crops(ds, PARAMS, ("grey", "lbp"), None, workers=0, progress=False)
    aug = AugmentConfig(enabled=True, flip_p=1.0, max_shift=0.0, max_scale=0.0, brightness=0.0, contrast=0.0,
                        rotate_deg=0.0, lowres_p=0.0)
    batches = CropBatches(crops, [0], np.zeros(len(crops), np.int64), ("grey", "lbp"), 1, augment=aug,
                          preprocessing=PARAMS)
    x, _ = next(iter(batches))
    flipped_grey = crops.images["grey"][0][:, ::-1]
    np.testing.assert_allclose(x[0, 0].numpy(), flipped_grey / 255.0, atol=1e-6)
    expected = np.rint(lbp_image(np.ascontiguousarray(flipped_grey), PARAMS) * 255) / 255
    np.testing.assert_allclose(x[0, 1].numpy(), expected, atol=1e-6)
    # and that differs from merely mirroring the LBP image (the codes are not mirror-symmetric)
    assert not np.allclose(x[0, 1].numpy(), crops.images["lbp"][0][:, ::-1] / 255.0)


def _argv(root, out, cache, *extra):
    return ["--root", str(root), "--output-dir", str(out), "--cache-dir", str(cache), "--workers", "0",
            "--model-preset", "tiny", "--preprocessing", "crop_size=32", "--preprocessing", "min_face_size=40",
            "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "4", "--folds", "1", "--no-progress",
            "--threads", "1", "--log-level", "WARNING", *extra]


def test_trainer_never_overwrites_and_survives_interruption(kinect_root, tmp_path, monkeypatch):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert train_mod.main(_argv(kinect_root, out, cache)) == 0
    ckpt = out / "checkpoint.pt"
    first = ckpt.read_bytes()
    loaded = load_checkpoint(ckpt)
    assert loaded.class_names == ["happy", "sad"]
    assert loaded.preprocessing["crop_size"] == 32            # the params used for the crops
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 1 and metrics["summary"] is None  # no held-out subjects

    # an existing checkpoint stops the run before any training
    assert train_mod.main(_argv(kinect_root, out, cache, "--epochs", "2")) == 2
    assert ckpt.read_bytes() == first

    # interrupted with --overwrite: the earlier checkpoint stays intact, no temp files
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fitting, "train_one_epoch", boom)   # the fit loop of every fold
    assert train_mod.main(_argv(kinect_root, out, cache, "--overwrite")) == 130
    assert ckpt.read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "run_config.json"]
    monkeypatch.undo()

    assert train_mod.main(_argv(kinect_root, out, cache, "--overwrite", "--seed", "3")) == 0
    assert ckpt.read_bytes() != first
    load_checkpoint(ckpt)


def test_kfold_writes_metrics_per_fold_and_optional_checkpoints(kinect_root, tmp_path):
    out = tmp_path / "cv"
    argv = _argv(kinect_root, out, tmp_path / "cache", "--folds", "2", "--save-fold-checkpoints")
    assert train_mod.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2
    tested = [s for f in metrics["folds"] for s in f["test_subjects"]]
    assert sorted(tested) == list(SUBJECTS)                  # every subject tested exactly once
    for f in metrics["folds"]:
        assert not set(f["test_subjects"]) & set(f["train_subjects"])
    s = metrics["summary"]
    accs = [f["metrics"]["accuracy"] for f in metrics["folds"]]
    assert s["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert s["accuracy_std"] == pytest.approx(np.std(accs))
    assert np.sum(s["confusion_matrix_pooled"]) == 8
    assert (out / "confusion_matrix.png").is_file()
    assert (out / "fold_00.pt").is_file() and (out / "fold_01.pt").is_file()
    assert not (out / "checkpoint.pt").exists()              # no --final: no final model


def test_bad_inputs_give_clear_errors(kinect_root, tmp_path, caplog):
    assert train_mod.main(_argv(kinect_root, tmp_path / "x", tmp_path / "c", "--folds", "9")) == 2
    assert "at least 9 subjects" in caplog.text
    assert train_mod.main(_argv(tmp_path / "missing", tmp_path / "y", tmp_path / "c")) == 2
    assert train_mod.main(_argv(kinect_root, tmp_path / "z", tmp_path / "c", "--model", "depth_widths=[1]")) == 2


def test_select_face_prefers_the_annotated_face_and_reports_fallbacks():
    from types import SimpleNamespace as F

    from cmcnn_ros.boxes import iou
    from cmcnn_training.crops import select_face

    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    near, far = F(box=(100, 100, 80, 80)), F(box=(400, 100, 120, 120))
    assert select_face([far, near], (105, 98, 80, 84)) == (near, "detector")
    assert select_face([far], (105, 98, 80, 84)) == (None, "gt_wrong_face")
    assert select_face([], (105, 98, 80, 84)) == (None, "gt_no_face")
    assert select_face([], None) == (None, "no_face")
    assert select_face([near, far], None) == (far, "detector")  # no annotation: the largest face
