"""Checkpoint format tests: round trip, atomic write, validation errors."""

from __future__ import annotations

import os

import pytest
import torch

from cmcnn_ros.classes import EXPRESSIONS_WITH_NEUTRAL
from cmcnn_ros.model import (
    FORMAT,
    CheckpointError,
    CheckpointExistsError,
    ModelConfig,
    cmcnn,
    load_checkpoint,
    save_checkpoint,
)
from cmcnn_ros.model import checkpoint as ckpt_mod


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = ModelConfig(input_size=32, depth_widths=(2, 3, 4, 4), texture_widths=(2, 3, 4, 4),
                  depth_kernels=(3, 3, 3, 3), texture_kernels=(3, 3, 3, 3))
PRE = {"crop_size": 32, "lbp_P": 8, "lbp_R": 1.0}
NAMES = list(EXPRESSIONS_WITH_NEUTRAL)


def _trained_model():
    torch.manual_seed(1)
    model = cmcnn(CFG)
    # One training-mode pass moves the BatchNorm running stats off their defaults.
    model.train()(torch.rand(4, 3, 32, 32))
    return model.eval()


def test_round_trip_same_outputs(tmp_path):
    model = _trained_model()
    path = save_checkpoint(tmp_path / "m.pt", model, NAMES, PRE, metadata={"epochs": 3, "acc": 0.5})
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    assert loaded.model_config == CFG
    assert loaded.class_names == NAMES
    assert loaded.preprocessing == PRE
    assert loaded.metadata == {"epochs": 3, "acc": 0.5}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    # Safe loading: plain containers only.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1


def test_refuses_overwrite_and_overwrites_when_asked(tmp_path):
    model = _trained_model()
    path = save_checkpoint(tmp_path / "m.pt", model, NAMES, PRE)
    with pytest.raises(CheckpointExistsError, match="overwrite=True"):
        save_checkpoint(path, model, NAMES, PRE)
    save_checkpoint(path, model, NAMES, PRE, metadata={"v": 2}, overwrite=True)
    assert load_checkpoint(path).metadata == {"v": 2}


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    model = _trained_model()
    path = save_checkpoint(tmp_path / "m.pt", model, NAMES, PRE, metadata={"v": 1})
    before = path.read_bytes()

    def failing_save(obj, fh):
        fh.write(b"partial bytes")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, model, NAMES, PRE, metadata={"v": 2}, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # temp file removed


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(path)


def test_wrong_format_and_newer_version(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a cmcnn_ros checkpoint"):
        load_checkpoint(plain)
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE)
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_mismatched_weights(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE)
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["texture_widths"] = [2, 3, 5, 4]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["texture_widths"] = [2, 3, 4, 4]
    del raw["state_dict"]["fc.weight"]
    raw["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="missing 1 keys.*unexpected 1 keys"):
        load_checkpoint(path)


def test_bad_config_and_class_names(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE)
    raw = torch.load(path, weights_only=True)
    raw["class_names"] = NAMES[:6]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="num_classes=7"):
        load_checkpoint(path)
    raw["class_names"] = NAMES
    raw["model_config"]["bogus"] = 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="invalid model_config.*bogus"):
        load_checkpoint(path)


def test_save_validates_inputs(tmp_path):
    model = _trained_model()
    with pytest.raises(CheckpointError, match="num_classes=7"):
        save_checkpoint(tmp_path / "a.pt", model, NAMES[:6], PRE)
    with pytest.raises(CheckpointError, match="metadata holds a object"):
        save_checkpoint(tmp_path / "a.pt", model, NAMES, PRE, metadata={"x": object()})
    assert not (tmp_path / "a.pt").exists()


def test_refuses_fused_model(tmp_path):
    with pytest.raises(CheckpointError, match="fused for inference"):
        save_checkpoint(tmp_path / "f.pt", _trained_model().fuse_for_inference(), NAMES, PRE)


def test_non_finite_weights_are_refused(tmp_path):
    """Issue 10.7: a checkpoint with a NaN (or inf) weight is refused at load, naming the tensor."""
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["fc.weight"][0, 0] = float("nan")
    torch.save(raw, path)
    with pytest.raises(CheckpointError,
                       match=r"1 non-finite \(NaN or inf\) weights in 1 tensors \(e.g. \['fc.weight'\]\)"):
        load_checkpoint(path)
    raw["state_dict"]["fc.weight"][0, 0] = 0.0
    first = sorted(k for k, v in raw["state_dict"].items() if v.is_floating_point())[0]
    raw["state_dict"][first].view(-1)[:2] = float("inf")
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=rf"2 non-finite .*\['{first}'\].*re-train"):
        load_checkpoint(path)


def test_truncated_file_message_is_complete(tmp_path, random_checkpoint):
    """Issue 10.9: the reason is torch's whole first sentence, not cut at a character count."""
    path = tmp_path / "m.pt"
    data = random_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError) as torch_error:
        torch.load(path, weights_only=True)
    sentence = " ".join(str(torch_error.value).split()).split(". ")[0] + "."
    assert len(sentence) > 60   # the case that used to be cut: torch's text runs on for several sentences
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is truncated, corrupt or not a torch file (RuntimeError: "
                               f"{sentence}); re-copy or re-save it")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"EOFError: the file ends before the data does\); re-copy"):
        load_checkpoint(path)


def test_unsafe_pickle_message_has_no_terminal_escapes(tmp_path):
    """Issue 10.9: torch's weights_only refusal carries ANSI bold codes; the CheckpointError must not."""
    import argparse

    path = tmp_path / "args.pt"
    raw = torch.load(save_checkpoint(tmp_path / "m.pt", _trained_model(), NAMES, PRE), weights_only=True)
    raw["metadata"] = {"args": argparse.Namespace(lr=0.1)}   # what a training script might store
    torch.save(raw, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\x1b" not in text and "\n" not in text
    assert text == (f"checkpoint {path} is not a safe torch file: it holds the Python object argparse.Namespace, "
                    "which a safe (weights_only) load refuses; re-save it with "
                    "cmcnn_ros.model.checkpoint.save_checkpoint (plain containers and tensors only)")
