"""Confusion matrices (rows = target class, columns = predicted class), per image and over a whole dataset, and
what follows from the dataset-wide one: IoU per class, the paper's mIoU and pixel accuracy."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .utils import as_labels, as_mask, as_target, check_labels, nan_mean, ratio

__all__ = ["ConfusionMatrix", "confusion_matrix", "per_image_confusion"]


def per_image_confusion(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    mask: Tensor | None = None,
) -> Tensor:
    """One confusion matrix per image.

    Args:
        pred: N x K x H x W scores (argmax taken) or N x H x W class ids.
        target: N x H x W labels in ``[0, K)`` or ``ignore_index``.
        num_classes: K.
        ignore_index: label of pixels to skip.
        mask: optional N x H x W bool; only pixels where it is true count.

    Returns:
        N x K x K int64 on the input's device; ``[n, t, p]`` = pixels of image n with target t predicted p.
    """
    labels = as_labels(pred)
    target = as_target(target, labels.shape)
    valid = target != ignore_index
    check_labels(target, valid, num_classes, ignore_index)
    if mask is not None:
        valid = valid & as_mask(mask, target.shape, "mask")
    if bool(valid.any()) and int(labels[valid].max()) >= num_classes:
        raise ValueError(f"prediction holds class ids >= num_classes={num_classes}")
    n = target.shape[0]
    image_index = torch.arange(n, device=target.device).view(n, 1, 1).expand_as(target)
    flat = (image_index * num_classes + target) * num_classes + labels
    counts = torch.bincount(flat[valid], minlength=n * num_classes * num_classes)
    return counts.view(n, num_classes, num_classes)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix K x K int64 (rows target, columns prediction) over all non-ignored pixels of a batch."""
    return per_image_confusion(pred, target, num_classes, ignore_index).sum(dim=0)


class ConfusionMatrix:
    """Dataset-wide K x K confusion matrix (int64, rows target, columns prediction) skipping ignore pixels.

    ``update(pred, target)`` with pred N x K x H x W scores or N x H x W ids and target N x H x W;
    then ``iou_per_class()``, ``mean_iou()`` (over all classes including background), ``pixel_accuracy()``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: pred N x K x H x W (scores) or N x H x W (ids), target N x H x W."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def merge(self, other: ConfusionMatrix | Tensor) -> None:
        """Add another accumulator's counts (or a K x K count tensor)."""
        matrix = other.matrix if isinstance(other, ConfusionMatrix) else other
        if tuple(matrix.shape) != tuple(self.matrix.shape):
            raise ValueError(f"cannot merge a {tuple(matrix.shape)} confusion matrix into {tuple(self.matrix.shape)}")
        self.matrix += matrix.to(device="cpu", dtype=torch.int64)

    def iou_per_class(self) -> Tensor:
        """K float64: ``TP / (TP + FP + FN)`` per class; NaN for a class absent from target and prediction."""
        m = self.matrix.double()
        tp = torch.diagonal(m)
        union = m.sum(dim=0) + m.sum(dim=1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def mean_iou(self) -> float:
        """Mean IoU over classes *including background* (NaN classes skipped): the paper's mIoU."""
        return nan_mean(self.iou_per_class().tolist())

    def pixel_accuracy(self) -> float:
        """Global pixel accuracy: correctly classified / all counted pixels (NaN when empty)."""
        return ratio(int(torch.diagonal(self.matrix).sum()), int(self.matrix.sum()))

    def class_accuracy(self) -> Tensor:
        """K float64 recall per class ``TP / (TP + FN)`` (NaN for a class absent from the target)."""
        m = self.matrix.double()
        actual = m.sum(dim=1)
        return torch.where(actual > 0, torch.diagonal(m) / actual.clamp(min=1), torch.full_like(actual, math.nan))
