"""selflabel.losses: Dice + CE by hand, ignored voxels, loss and voxel weights, and the DDP reduction of its sums."""

from __future__ import annotations

import math

import pytest
import torch

from selflabel.labels import IGNORE_INDEX
from selflabel.losses import DeepSupervisionLoss, DiceCELoss


def test_loss_skips_ignored_voxels():
    """Two pixels, uniform logits, target [organ 1, ignore]: CE = ln 2, Dice = 2*0.5/(0.5+1) = 2/3."""
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    loss, parts = DiceCELoss(num_classes=2, smooth=0.0)(logits, target)
    assert parts["ce"] == pytest.approx(math.log(2))
    assert parts["dice"] == pytest.approx(2 / 3)
    assert float(loss) == pytest.approx(math.log(2) + 1 - 2 / 3)
    # Were the ignored pixel counted as background, the Dice would be 2*0.5/(1+1) = 0.5.
    _, counted = DiceCELoss(num_classes=2, smooth=0.0)(logits, torch.tensor([[[1, 0]]]))
    assert counted["dice"] == pytest.approx(0.5)


def test_ignored_voxels_get_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 1, 2] = IGNORE_INDEX
    target[1, :, 0] = IGNORE_INDEX
    loss, _ = DiceCELoss(num_classes=3)(logits, target)
    loss.backward()
    ignored = (target == IGNORE_INDEX)[:, None].expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0


def test_loss_weights_are_settings():
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    loss, _ = DiceCELoss(2, dice_weight=0.0, ce_weight=2.0, smooth=0.0)(logits, target)
    assert float(loss) == pytest.approx(2 * math.log(2))
    loss, parts = DiceCELoss(2, dice_weight=3.0, ce_weight=0.0, smooth=0.0)(logits, target)
    assert float(loss) == pytest.approx(3 * (1 - parts["dice"])) and parts["dice"] == pytest.approx(0.5)


def test_soft_voxel_weights_scale_each_voxel_s_share_of_the_sums_once():
    """Weighted Dice and CE by hand: 2 sum(w p g) / (sum(w p) + sum(w g)) per organ, sum(w CE) / sum(w)."""
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    weight = torch.rand(2, 5, 5)
    _, parts = DiceCELoss(3, smooth=0.0)(logits, target, weight)
    probs = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    w = weight[:, None]
    dice = 2 * (w * probs * onehot).sum((0, 2, 3)) / ((w * probs).sum((0, 2, 3)) + (w * onehot).sum((0, 2, 3)))
    ce = (weight * torch.nn.functional.cross_entropy(logits, target, reduction="none")).sum() / weight.sum()
    assert parts["dice"] == pytest.approx(float(dice[1:].mean()), rel=1e-5)
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_reduced_statistics_of_two_halves_give_the_loss_of_the_whole_batch():
    """As under DDP: each half sums its Dice and CE statistics with the other's, so both get the global loss."""
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 5, 5)
    target = torch.randint(0, 3, (4, 5, 5))
    target[3, :2] = IGNORE_INDEX
    whole, whole_parts = DiceCELoss(3)(logits, target)
    recorded = []
    DiceCELoss(3, reduce=lambda t: recorded.append(t) or t)(logits[2:], target[2:])
    half, half_parts = DiceCELoss(3, reduce=lambda t: t + recorded[0])(logits[:2], target[:2])
    assert float(half) == pytest.approx(float(whole), rel=1e-6)
    assert half_parts == pytest.approx(whole_parts, rel=1e-6)
    alone, _ = DiceCELoss(3)(logits[:2], target[:2])
    assert abs(float(alone) - float(whole)) > 1e-3  # the reduction is what makes them equal


def test_voxel_weights_of_1_change_nothing_and_0_ignores_the_voxel():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    plain = DiceCELoss(3)(logits, target)
    ones = DiceCELoss(3)(logits, target, torch.ones(2, 4, 4))
    assert float(ones[0]) == pytest.approx(float(plain[0]), rel=1e-6) and ones[1] == pytest.approx(plain[1])
    weight = torch.ones(2, 4, 4)
    weight[1, 2:] = 0
    ignored = target.clone()
    ignored[1, 2:] = IGNORE_INDEX
    zeroed = DiceCELoss(3)(logits, target, weight)
    assert float(zeroed[0]) == pytest.approx(float(DiceCELoss(3)(logits, ignored)[0]), rel=1e-6)
    half = DiceCELoss(3, dice_weight=0.0)(logits, target, torch.full((2, 4, 4), 0.5))  # CE is a weighted mean
    assert float(half[0]) == pytest.approx(float(DiceCELoss(3, dice_weight=0.0)(logits, target)[0]), rel=1e-6)


def test_deep_supervision_weighs_each_output_against_the_subsampled_target():
    torch.manual_seed(2)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 1, 1] = IGNORE_INDEX  # a pixel the 1/2 output reads (every other pixel from index 1)
    weight = torch.rand(2, 8, 8)
    outputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    base = DiceCELoss(3)
    loss, parts = DeepSupervisionLoss(base)(outputs, target, weight)
    by_hand = [base(outputs[0], target, weight)[0], base(outputs[1], target[:, 1::2, 1::2], weight[:, 1::2, 1::2])[0],
               base(outputs[2], target[:, 2::4, 2::4], weight[:, 2::4, 2::4])[0]]  # fmt: skip
    assert float(loss) == pytest.approx(float(4 * by_hand[0] + 2 * by_hand[1] + by_hand[2]) / 7, rel=1e-6)
    assert parts == base(outputs[0], target, weight)[1]
    single, _ = DeepSupervisionLoss(base)(outputs[0], target, weight)
    assert float(single) == pytest.approx(float(by_hand[0]))
