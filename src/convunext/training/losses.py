"""The training loss of the paper: cross-entropy + soft Dice, with an ignore label.

Definition (``SegmentationLoss``), for logits ``z`` (N x K x H x W) and integer labels ``y`` (N x H x W):

* ``valid = (y != ignore_index)``; ignored pixels take no part in either term.
* **Cross-entropy**: the mean over valid pixels of ``-log softmax(z)[y]`` (as
  ``F.cross_entropy(..., ignore_index=...)`` with reduction ``"mean"``). With no valid pixel it is 0.
* **Soft Dice**: ``p = softmax(z, dim=1)``, ``t = one_hot(y)``, both restricted to valid pixels. For every
  class ``k`` *including background* ``dice_k = (2 * sum(p_k * t_k) + smooth) / (sum(p_k) + sum(t_k) + smooth)``,
  and the Dice loss is ``1 - mean(dice)``.

  * ``dice_reduction="image"`` (default) sums over the pixels of each image separately and averages
    ``dice`` over images and classes. This is what the authors' reference code does: its
    ``dice_coeff`` loops over the images of the batch, computes one Dice per image and class over the
    non-ignored pixels, and ``multiclass_dice_coeff`` averages those over classes (epsilon ``1e-6``).
  * ``dice_reduction="batch"`` sums over all pixels of the batch per class (one Dice per class), the
    "batch Dice" of nnU-Net; smoother for batches with empty foreground.

  A class absent from both the prediction mass and the labels (e.g. every pixel ignored) gets
  ``dice_k = 1`` even with ``smooth=0``, as in the reference code.
* ``loss = ce_weight * ce + dice_weight * (1 - mean dice)``.

Smoothing: the reference uses ``smooth=1e-6``; the default here, ``1.0``, is the common "+1" soft Dice and
only matters for images (crops) where a class has few pixels. Pass ``smooth=1e-6`` to match the reference
bit for bit.

Deep supervision: ``forward`` also takes a list/tuple of logits (each N x K x H x W at the label's size, as
UNet++ returns in training mode) and returns the mean of the loss over them, as the reference code averages
its four outputs.

All arithmetic is in float32 even for half-precision logits (autocast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationLoss", "soft_dice"]


def soft_dice(
    probabilities: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    smooth: float = 1.0,
    reduction: Literal["image", "batch"] = "image",
) -> Tensor:
    """Per-class soft Dice of probabilities against integer labels, ignoring ``ignore_index`` pixels.

    Args:
        probabilities: N x K x H x W, e.g. a softmax over classes.
        target: N x H x W integer labels in ``[0, K)`` or ``ignore_index``.
        ignore_index: label of pixels excluded from the sums.
        smooth: added to numerator and denominator.
        reduction: ``"image"``: one Dice per image and class, returns N x K;
            ``"batch"``: sums over the whole batch, returns K.

    Returns:
        Dice values in ``[0, 1]``: N x K (``"image"``) or K (``"batch"``). A class with zero
        denominator (absent from both) has Dice 1.
    """
    if probabilities.dim() != 4:
        raise ValueError(f"probabilities must be N x K x H x W, got shape {tuple(probabilities.shape)}")
    num_classes = probabilities.shape[1]
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.zeros_like(target))
    mask = valid.unsqueeze(1).to(probabilities.dtype)
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(probabilities.dtype) * mask
    probs = probabilities * mask
    if reduction == "image":
        dims: tuple[int, ...] = (2, 3)
    elif reduction == "batch":
        dims = (0, 2, 3)
    else:
        raise ValueError(f"reduction must be 'image' or 'batch', got {reduction!r}")
    intersection = (probs * one_hot).sum(dim=dims)
    denominator = probs.sum(dim=dims) + one_hot.sum(dim=dims) + smooth
    nonzero = denominator > 0
    safe_denominator = torch.where(nonzero, denominator, torch.ones_like(denominator))
    dice = (2.0 * intersection + smooth) / safe_denominator
    return torch.where(nonzero, dice, torch.ones_like(dice))


class SegmentationLoss(nn.Module):
    """Cross-entropy + soft Dice over every class (background included), skipping ``ignore_index`` pixels.

    See the module docstring for the exact definition. ``forward(logits, target)`` takes logits
    N x K x H x W (or a list/tuple of them: deep supervision, averaged) and int64 labels N x H x W,
    and returns a scalar. A batch whose pixels are all ignored gives 0 (finite, with a graph).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        dice_reduction: Literal["image", "batch"] = "image",
    ) -> None:
        super().__init__()
        if dice_reduction not in ("image", "batch"):
            raise ValueError(f"dice_reduction must be 'image' or 'batch', got {dice_reduction!r}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.ignore_index = int(ignore_index)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.dice_reduction: Literal["image", "batch"] = dice_reduction

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, ce_weight={self.ce_weight}, dice_weight={self.dice_weight}, "
            f"smooth={self.smooth}, dice_reduction={self.dice_reduction!r}"
        )

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The two unweighted terms for one output: ``(cross_entropy, 1 - mean soft Dice)``, scalars.

        Args:
            logits: N x K x H x W.
            target: N x H x W integer labels in ``[0, K)`` or ``ignore_index``.
        """
        if logits.dim() != 4:
            raise ValueError(f"logits must be N x K x H x W, got shape {tuple(logits.shape)}")
        if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
            raise ValueError(
                f"target must be N x H x W matching logits {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
        num_classes = logits.shape[1]
        target = target.long()
        valid = target != self.ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target))
        if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
            bad = torch.unique(target[valid & ((labels < 0) | (labels >= num_classes))])[:5].tolist()
            raise ValueError(
                f"target holds labels {bad} outside [0, {num_classes}) that are not the ignore value "
                f"{self.ignore_index}"
            )
        logits = logits.float()
        n_valid = valid.sum()
        ce_sum = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        ce = ce_sum / n_valid.clamp(min=1).to(ce_sum.dtype)
        dice = soft_dice(
            torch.softmax(logits, dim=1), target, self.ignore_index, self.smooth, reduction=self.dice_reduction
        )
        return ce, 1.0 - dice.mean()

    def forward(self, logits: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        """Loss for logits N x K x H x W (or a list/tuple of them, averaged) against labels N x H x W."""
        if isinstance(logits, (list, tuple)):
            if not logits:
                raise ValueError("got an empty list of outputs")
            return torch.stack([self.forward(item, target) for item in logits]).mean()
        ce, dice_loss = self.terms(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice_loss
