"""The paper's Dice: per image, per foreground class, from per-image confusion matrices (and the per-image IoU
that comes with it)."""

from __future__ import annotations

import torch
from torch import Tensor

from .confusion import per_image_confusion

__all__ = ["foreground_dice", "foreground_scores"]


def foreground_scores(cm: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-foreground-class Dice and IoU from N x K x K confusion matrices.

    Returns two N x (K-1) float64 tensors; a class absent from both target and prediction scores 1.0.
    """
    cm = cm.double()
    tp = torch.diagonal(cm, dim1=1, dim2=2)[:, 1:]
    predicted = cm.sum(dim=1)[:, 1:]
    actual = cm.sum(dim=2)[:, 1:]
    total = predicted + actual
    union = total - tp
    ones = torch.ones_like(tp)
    dice = torch.where(total > 0, 2.0 * tp / torch.where(total > 0, total, ones), ones)
    iou = torch.where(union > 0, tp / torch.where(union > 0, union, ones), ones)
    return dice, iou


def foreground_dice(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """The paper's per-image Dice: foreground classes only, ignore pixels skipped.

    For each image and each foreground class ``c >= 1``: ``2 |P_c ∩ T_c| / (|P_c| + |T_c|)`` over the image's
    non-ignored pixels, 1.0 when class c is absent from both (empty-foreground convention); the image's value
    is the mean over foreground classes (for binary segmentation: the Dice of class 1).

    Args:
        pred: N x K x H x W scores (argmax taken) or N x H x W class ids.
        target: N x H x W labels in ``[0, K)`` or ``ignore_index``.
        num_classes: K (>= 2).
        ignore_index: label of pixels to skip.

    Returns:
        N float64 Dice values (CPU), one per image. Average them over images for the paper's Dice.
    """
    if num_classes < 2:
        raise ValueError("foreground Dice needs num_classes >= 2 (class 0 is background)")
    dice, _ = foreground_scores(per_image_confusion(pred, target, num_classes, ignore_index).cpu())
    return dice.mean(dim=1)
