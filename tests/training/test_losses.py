from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convunext.training.losses import SegmentationLoss, soft_dice


def test_hand_computed_uniform_logits() -> None:
    # probabilities are 0.5 everywhere; target = [0, 1]
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # class 0: p=[.5,.5], t=[1,0] -> I=.5, |p|+|t|=2 -> (2*.5+1)/(2+1)=2/3 ; class 1 the same
    expected = math.log(2) + (1 - 2 / 3)
    assert SegmentationLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # smooth 0: dice = 0.5 per class
    assert SegmentationLoss(smooth=0.0)(logits, target).item() == pytest.approx(math.log(2) + 0.5, abs=1e-6)


def test_hand_computed_with_ignore() -> None:
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    # only pixel 0 counts: CE = ln 2; class 0: I=.5, sums=1.5 -> (1+1)/(1.5+1)=0.8 ; class 1: I=0, sums=.5 -> 1/1.5
    dice = (0.8 + 1 / 1.5) / 2
    assert SegmentationLoss()(logits, target).item() == pytest.approx(math.log(2) + 1 - dice, abs=1e-6)
    # smooth 0: class 0 dice 1/1.5, class 1 dice 0
    expected = math.log(2) + 1 - (1 / 1.5) / 2
    assert SegmentationLoss(smooth=0.0)(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # the ignored pixel's logits have no influence
    other = logits.clone()
    other[0, :, 0, 1] = torch.tensor([5.0, -3.0])
    assert SegmentationLoss()(other, target).item() == pytest.approx(SegmentationLoss()(logits, target).item())


def test_ce_and_dice_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    target = torch.randint(0, 3, (2, 5, 4))
    ce, dice_loss = SegmentationLoss().terms(logits, target)
    assert ce.item() == pytest.approx(nn.functional.cross_entropy(logits, target).item(), abs=1e-6)
    combined = SegmentationLoss(ce_weight=0.3, dice_weight=2.0)(logits, target)
    assert combined.item() == pytest.approx(0.3 * ce.item() + 2.0 * dice_loss.item(), abs=1e-6)


def test_perfect_prediction_dice_term_near_zero() -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40.0
    ce, dice_loss = SegmentationLoss(smooth=0.0).terms(logits, target)
    assert ce.item() < 1e-6 and dice_loss.item() < 1e-6


def test_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(2, 2, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), 255)
    for smooth in (1.0, 0.0):
        loss = SegmentationLoss(smooth=smooth)(logits, target)
        assert torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() == 0
        logits.grad = None


def test_image_vs_batch_reduction() -> None:
    # two images, one all background, one all foreground; prediction uniform
    probs = torch.full((2, 2, 1, 2), 0.5)
    target = torch.tensor([[[0, 0]], [[1, 1]]])
    per_image = soft_dice(probs, target, smooth=0.0, reduction="image")
    # image 0: class 0 I=1, sums=1+2 -> 2/3 ; class 1 I=0 -> 0. image 1 symmetric
    assert torch.allclose(per_image, torch.tensor([[2 / 3, 0.0], [0.0, 2 / 3]]))
    batch = soft_dice(probs, target, smooth=0.0, reduction="batch")
    # class 0: I=1, sums=2+2 -> 0.5 ; class 1 the same
    assert torch.allclose(batch, torch.tensor([0.5, 0.5]))
    loss_img = SegmentationLoss(smooth=0.0, ce_weight=0.0)(probs.log(), target)
    loss_batch = SegmentationLoss(smooth=0.0, ce_weight=0.0, dice_reduction="batch")(probs.log(), target)
    assert loss_img.item() == pytest.approx(1 - 1 / 3, abs=1e-6)
    assert loss_batch.item() == pytest.approx(0.5, abs=1e-6)


def test_deep_supervision_list_is_averaged() -> None:
    torch.manual_seed(1)
    target = torch.randint(0, 2, (2, 6, 6))
    outputs = [torch.randn(2, 2, 6, 6) for _ in range(3)]
    criterion = SegmentationLoss()
    expected = sum(criterion(o, target).item() for o in outputs) / 3
    assert criterion(outputs, target).item() == pytest.approx(expected, abs=1e-6)
    assert criterion(tuple(outputs), target).item() == pytest.approx(expected, abs=1e-6)


def test_bad_inputs() -> None:
    criterion = SegmentationLoss()
    with pytest.raises(ValueError, match="outside"):
        criterion(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 2], [1, 255]]]))
    with pytest.raises(ValueError):
        criterion(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        criterion(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError):
        SegmentationLoss(dice_reduction="pixel")  # type: ignore[arg-type]


def test_half_precision_logits() -> None:
    logits = torch.randn(1, 2, 4, 4).to(torch.bfloat16)
    target = torch.randint(0, 2, (1, 4, 4))
    loss = SegmentationLoss()(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(SegmentationLoss()(logits.float(), target).item(), abs=1e-6)


def test_loss_decreases_on_tiny_batch() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 1, 12, 12)
    target = (image[:, 0] > 0.3).long()
    target[:, 0, :] = 255  # an ignored row
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    criterion = SegmentationLoss()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = criterion(model(image), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
