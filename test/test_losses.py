"""Loss tests (Section III-E, eq. 5) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from cmcnn_ros.model import (
    CrossEntropyLoss,
    FocalLoss,
    LossError,
    SoftFocalLoss,
    cross_entropy,
    focal_loss,
    make_loss,
    soft_focal_loss,
    soft_labels,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# logits (0, ln 2, ln 5) -> softmax (1/8, 2/8, 5/8): exact probabilities to check against.
LOGITS = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]], dtype=torch.float64)
P = [1 / 8, 2 / 8, 5 / 8]


def test_soft_labels_sigma_0_1_is_one_hot():
    y = soft_labels(torch.tensor([0, 3, 6]), 7, sigma=0.1, dtype=torch.float64)
    torch.testing.assert_close(y, torch.eye(7, dtype=torch.float64)[[0, 3, 6]], rtol=0, atol=1e-12)
    # The neighbour weight is exp(-50), not exactly zero.
    assert y[1, 2].item() == pytest.approx(math.exp(-50) / (1 + 2 * math.exp(-50) + 2 * math.exp(-200)), rel=1e-9)


def test_soft_labels_sigma_1_is_the_gaussian():
    y = soft_labels(torch.tensor([1]), 4, sigma=1.0, dtype=torch.float64)[0]
    w = [math.exp(-((k - 1) ** 2) / 2) for k in range(4)]
    expected = torch.tensor([v / sum(w) for v in w], dtype=torch.float64)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-15)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-15)


def test_cross_entropy_by_hand():
    assert cross_entropy(LOGITS, torch.tensor([2])).item() == pytest.approx(-math.log(5 / 8), rel=1e-12)
    soft = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
    assert cross_entropy(LOGITS, soft).item() == pytest.approx(-0.5 * math.log(2 / 8) - 0.5 * math.log(5 / 8),
                                                               rel=1e-12)
    smoothed = cross_entropy(LOGITS, torch.tensor([2]), label_smoothing=0.3).item()
    y = [0.1, 0.1, 0.8]
    assert smoothed == pytest.approx(-sum(yk * math.log(pk) for yk, pk in zip(y, P)), rel=1e-12)
    # Agrees with torch's own implementation.
    ref = torch.nn.functional.cross_entropy(LOGITS, torch.tensor([2]), label_smoothing=0.3).item()
    assert smoothed == pytest.approx(ref, rel=1e-12)


def test_focal_loss_by_hand():
    # -alpha (1 - p_t)^gamma log p_t with p_t = 2/8, gamma = 2, alpha = 1.
    expected = -((1 - 2 / 8) ** 2) * math.log(2 / 8)
    assert focal_loss(LOGITS, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-12)
    assert focal_loss(LOGITS, torch.tensor([1]), alpha=0.5, gamma=1.5).item() == pytest.approx(
        -0.5 * (1 - 2 / 8) ** 1.5 * math.log(2 / 8), rel=1e-12
    )
    # gamma = 0 is cross-entropy.
    assert focal_loss(LOGITS, torch.tensor([1]), gamma=0.0).item() == pytest.approx(-math.log(2 / 8), rel=1e-12)
    # Per-class alpha picks alpha_t.
    per_class = focal_loss(LOGITS, torch.tensor([2]), alpha=[1.0, 2.0, 3.0]).item()
    assert per_class == pytest.approx(-3.0 * (3 / 8) ** 2 * math.log(5 / 8), rel=1e-12)


def test_soft_focal_loss_by_hand():
    y = [0.2, 0.3, 0.5]
    target = torch.tensor([y], dtype=torch.float64)
    expected = -sum(yk * (1 - pk) ** 2 * math.log(pk) for yk, pk in zip(y, P))
    assert soft_focal_loss(LOGITS, target).item() == pytest.approx(expected, rel=1e-12)
    # sigma = 0.1 from a hard label equals the hard focal loss.
    hard = focal_loss(LOGITS, torch.tensor([1])).item()
    assert soft_focal_loss(LOGITS, torch.tensor([1]), sigma=0.1).item() == pytest.approx(hard, rel=1e-12)
    # sigma = 1: explicit Gaussian weights.
    w = [math.exp(-((k - 1) ** 2) / 2) for k in range(3)]
    yg = [v / sum(w) for v in w]
    expected_g = -sum(yk * (1 - pk) ** 2 * math.log(pk) for yk, pk in zip(yg, P))
    assert soft_focal_loss(LOGITS, torch.tensor([1]), sigma=1.0).item() == pytest.approx(expected_g, rel=1e-12)


def test_reductions_and_modules():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)], [1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([2, 0])
    per = soft_focal_loss(logits, target, reduction="none")
    assert per.shape == (2,)
    assert per[1].item() == pytest.approx(-((2 / 3) ** 2) * math.log(1 / 3), rel=1e-12)
    assert soft_focal_loss(logits, target, reduction="sum").item() == pytest.approx(per.sum().item())
    assert SoftFocalLoss()(logits, target).item() == pytest.approx(per.mean().item())
    assert FocalLoss()(logits, target).item() == pytest.approx(per.mean().item(), rel=1e-12)
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-12
    )


def test_gradients_finite_for_confident_logits():
    logits = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)
    loss = soft_focal_loss(logits, torch.tensor([0]), sigma=0.5, gamma=1.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_make_loss():
    assert isinstance(make_loss("soft_focal"), SoftFocalLoss)
    assert isinstance(make_loss("focal", gamma=1.5), FocalLoss)
    assert isinstance(make_loss("cross_entropy"), CrossEntropyLoss)
    assert make_loss("soft_focal", sigma=0.7).sigma == 0.7
    with pytest.raises(LossError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(LossError, match="bad arguments"):
        make_loss("cce", gamma=2.0)


def test_bad_targets_are_clear_errors():
    with pytest.raises(LossError, match=r"class indices in \[0, 3\)"):
        focal_loss(LOGITS, torch.tensor([3]))
    with pytest.raises(LossError, match="soft targets"):
        soft_focal_loss(LOGITS, torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(LossError, match="sigma"):
        soft_labels(torch.tensor([0]), 3, sigma=0.0)
    with pytest.raises(LossError, match="reduction"):
        cross_entropy(LOGITS, torch.tensor([0]), reduction="avg")
    with pytest.raises(LossError, match="logits"):
        cross_entropy(torch.zeros(3), torch.tensor([0]))
