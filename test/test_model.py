"""CM-CNN network tests: shapes, gradients, eq. (3) against NumPy, config round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmcnn_ros.model import (
    CMFN,
    ConcatFusion,
    CrossModalAttention,
    ModelConfig,
    ModelConfigError,
    ModelInputError,
    cmcnn,
    make_loss,
    preset_config,
)
from cmcnn_ros.model.cmfn import ordered_pairs
from cmcnn_ros.model.fen import DepthFEN, TextureFEN


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBSETS = [
    ("grey",),
    ("lbp",),
    ("depth",),
    ("grey", "lbp"),
    ("grey", "depth"),
    ("lbp", "depth"),
    ("grey", "lbp", "depth"),
    ("grey", "hog", "depth"),
    ("grey", "gabor", "depth"),
]
# Tiny widths and 32x32 inputs keep every case to milliseconds; 32 -> 16 -> 8 -> 4 -> 2.
SMALL = {"input_size": 32, "depth_widths": (2, 3, 4, 4), "texture_widths": (2, 3, 4, 4), "depth_kernels": (3, 3, 3, 3),
             "texture_kernels": (3, 3, 3, 3)}


def _model(modalities, fusion="cmfn", **kw):
    torch.manual_seed(0)
    return cmcnn(ModelConfig(modalities=modalities, fusion=fusion, num_classes=kw.pop("num_classes", 7),
                             **{**SMALL, **kw}))


@pytest.mark.parametrize("fusion", ["cmfn", "concat"])
@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_shapes_finite_and_gradients(modalities, fusion):
    model = _model(modalities, fusion).train()
    m = len(modalities)
    x = torch.rand(3, m, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()
    c = 4
    expected_features = m * 2 * (m - 1) * c if (fusion == "cmfn" and m > 1) else 2 * m * c
    assert model.forward_features(x).shape == (3, expected_features)
    fen = model.fen_logits(x)
    assert list(fen) == list(modalities)
    assert all(v.shape == (3, 7) for v in fen.values())

    loss = make_loss("soft_focal", sigma=1.0)(logits, torch.tensor([0, 3, 6])) + sum(
        make_loss("cce")(v, torch.tensor([0, 3, 6])) for v in fen.values()
    )
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in params), [n for n, p in params if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    nonzero = sum(bool(p.grad.abs().sum() > 0) for _, p in params)
    assert nonzero >= 0.9 * len(params)


def test_fusion_type_and_attention_blocks():
    model = _model(("grey", "lbp", "depth"))
    assert isinstance(model.fusion, CMFN)
    assert model.fusion.pairs == [("grey", "lbp"), ("grey", "depth"), ("lbp", "grey"), ("lbp", "depth"),
                                  ("depth", "grey"), ("depth", "lbp")]
    assert len(model.fusion.blocks) == 6
    assert isinstance(_model(("grey",)).fusion, ConcatFusion)
    assert isinstance(_model(("grey", "depth"), "concat").fusion, ConcatFusion)
    assert isinstance(model.fens["depth"], DepthFEN) and isinstance(model.fens["grey"], TextureFEN)
    # Texture FEN: eight conv layers; depth FEN: four.
    n_conv = lambda mod: sum(isinstance(x, torch.nn.Conv2d) for x in mod.modules())  # noqa: E731
    assert n_conv(model.fens["grey"]) == 8 and n_conv(model.fens["depth"]) == 4


def test_full_size_feature_map_is_9x9():
    model = cmcnn(preset="tiny").eval()
    x = torch.rand(1, 3, 148, 148)
    with torch.inference_mode():
        feats = model.fen_features(x)
        probs = model.predict_proba(x)
        eq4 = model.eq4_scores(x)
        logits = model(x)
    assert all(f.shape[2:] == (9, 9) for f in feats)
    assert len({f.shape[1] for f in feats}) == 1
    torch.testing.assert_close(probs.sum(1), torch.ones(1))
    torch.testing.assert_close(eq4, torch.sigmoid(logits))
    assert probs.argmax(1) == eq4.argmax(1)


def test_eval_is_deterministic_and_batch_independent():
    model = _model(("grey", "lbp", "depth")).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def _attention_numpy(fg, fd, wq, bq, wk, bk, wv, bv, scale, normalize, softmax=False):
    """eq. (3) literally: C x N matrices, Att = sigma(G1^T D1), out = G2 Att^T + f_G."""
    c, h, w = fg.shape
    g = fg.reshape(c, h * w)
    d = fd.reshape(c, h * w)
    g1 = wq @ g + bq[:, None]
    g2 = wv @ g + bv[:, None]
    d1 = wk @ d + bk[:, None]
    logits = g1.T @ d1
    if scale:
        logits = logits / math.sqrt(g1.shape[0])
    if softmax:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        att = e / e.sum(axis=1, keepdims=True)
    else:
        att = 1.0 / (1.0 + np.exp(-logits))
    out = g2 @ att.T
    if normalize and not softmax:
        out = out / (h * w)
    return out.reshape(c, h, w) + fg


@pytest.mark.parametrize(
    "attention,scale,normalize", [("sigmoid", False, False), ("sigmoid", True, True), ("softmax", True, False)]
)
def test_cross_modal_attention_matches_numpy(attention, scale, normalize):
    block = CrossModalAttention(2, attention=attention, scale=scale, normalize=normalize).double()
    wq = np.array([[0.5, -1.0], [2.0, 0.25]])
    wk = np.array([[1.0, 0.5], [-0.5, 1.5]])
    wv = np.array([[0.3, 0.7], [-1.2, 0.4]])
    bq, bk, bv = np.array([0.1, -0.2]), np.array([0.0, 0.3]), np.array([-0.1, 0.05])
    with torch.no_grad():
        for conv, wt, b in ((block.query, wq, bq), (block.key, wk, bk), (block.value, wv, bv)):
            conv.weight.copy_(torch.from_numpy(wt).view(2, 2, 1, 1))
            conv.bias.copy_(torch.from_numpy(b))
    fg = np.array([[[1.0, 2.0], [0.5, -1.0]], [[0.0, 1.5], [-0.5, 2.0]]])
    fd = np.array([[[0.2, -0.3], [1.0, 0.4]], [[2.0, 0.1], [-1.0, 0.6]]])
    expected = _attention_numpy(fg, fd, wq, bq, wk, bk, wv, bv, scale, normalize, attention == "softmax")
    got = block(torch.from_numpy(fg)[None], torch.from_numpy(fd)[None])[0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    att = block.attention_map(torch.from_numpy(fg)[None], torch.from_numpy(fd)[None])
    assert att.shape == (1, 4, 4)


def test_ordered_pairs_two_modalities():
    assert ordered_pairs(("grey", "depth")) == [("grey", "depth"), ("depth", "grey")]


def test_config_round_trip_and_errors():
    cfg = preset_config("paper", num_classes=6, modalities=("grey", "hog", "depth"))
    d = cfg.to_dict()
    assert isinstance(d["modalities"], list) and d["texture_widths"] == [32, 64, 128, 256]
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ModelConfigError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**d, "widht": 3})
    with pytest.raises(ModelConfigError, match="unknown modality"):
        ModelConfig(modalities=("rgb",))
    with pytest.raises(ModelConfigError, match="same channel count"):
        ModelConfig(depth_widths=(8, 16, 32, 48))
    with pytest.raises(ModelConfigError, match="fusion"):
        ModelConfig(fusion="sum")
    with pytest.raises(ModelConfigError, match="unknown model preset"):
        cmcnn(preset="huge")
    # Depth-only may have its own width.
    assert ModelConfig(modalities=("depth",), depth_widths=(8, 16, 32, 48)).feature_channels == 48


def test_factory_overrides_and_presets():
    model = cmcnn(preset="tiny", num_classes=6, modalities=("lbp", "depth"), fusion="concat")
    assert model.num_classes == 6 and model.modalities == ("lbp", "depth")
    assert cmcnn(model.config).config == model.config
    assert cmcnn(model.config.to_dict(), num_classes=7).num_classes == 7
    paper, default = preset_config("paper"), preset_config("default")
    assert paper.texture_widths == (32, 64, 128, 256)
    assert default.texture_widths[-1] == default.depth_widths[-1]


def test_bad_input_is_a_clear_error():
    model = _model(("grey", "depth"))
    with pytest.raises(ModelInputError, match=r"\(B, 2, 32, 32\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ModelInputError, match="floating point"):
        model(torch.zeros(1, 2, 32, 32, dtype=torch.uint8))


def test_fen_parameters_cover_fen_and_head():
    model = _model(("grey", "depth"))
    ids = {id(p) for p in model.fen_parameters("depth")}
    own = list(model.fens["depth"].parameters()) + list(model.fen_heads["depth"].parameters())
    assert ids == {id(p) for p in own}
    with pytest.raises(ModelConfigError):
        model.fen_parameters("lbp")


def test_traceable_matches_eager():
    model = _model(("grey", "lbp", "depth")).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))


def test_embedding_norm_switch():
    with_bn = _model(("grey", "depth"))
    without = _model(("grey", "depth"), embedding_norm="none")
    assert isinstance(with_bn.neck, torch.nn.BatchNorm1d)
    assert isinstance(without.neck, torch.nn.Identity)
    with pytest.raises(ModelConfigError, match="embedding_norm"):
        ModelConfig(embedding_norm="layer")


def test_fuse_for_inference_same_outputs():
    model = _model(("grey", "lbp", "depth"))
    model.train()(torch.rand(4, 3, 32, 32))  # non-trivial BatchNorm statistics
    model.eval()
    fused = model.fuse_for_inference()
    assert fused.is_fused and not model.is_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


def test_single_sample_training_batch_is_a_clear_error():
    model = _model(("grey", "depth")).train()
    with pytest.raises(ModelInputError, match="2 or more samples"):
        model(torch.rand(1, 2, 32, 32))
    assert model.eval()(torch.rand(1, 2, 32, 32)).shape == (1, 7)
    assert _model(("grey", "depth"), embedding_norm="none").train()(torch.rand(1, 2, 32, 32)).shape == (1, 7)
