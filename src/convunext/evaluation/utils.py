"""Helpers shared by the metric families: reading predictions, labels and masks (with the checks of
:mod:`convunext.evaluation.metrics`' conventions), and order-independent ratios and means."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def as_labels(pred: Tensor) -> Tensor:
    """Class ids N x H x W from scores N x K x H x W (argmax), labels N x H x W, or one label map H x W."""
    if pred.dim() == 4:
        return pred.argmax(dim=1)
    if pred.dim() == 3:
        if pred.is_floating_point():
            raise TypeError("a 3-D prediction must hold integer class ids; pass scores as N x K x H x W")
        return pred.long()
    if pred.dim() == 2:
        if pred.is_floating_point():
            raise TypeError("a 2-D prediction must hold integer class ids")
        return pred.long().unsqueeze(0)
    raise ValueError(f"prediction must be N x K x H x W scores or N x H x W labels, got shape {tuple(pred.shape)}")


def as_target(target: Tensor, shape: torch.Size) -> Tensor:
    """Integer labels N x H x W (a single H x W map gets a batch axis), checked against the prediction's shape."""
    if target.dim() == 2:
        target = target.unsqueeze(0)
    if target.is_floating_point():
        raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(shape):
        raise ValueError(f"target shape {tuple(target.shape)} does not match the prediction's {tuple(shape)}")
    return target.long()


def check_labels(target: Tensor, valid: Tensor, num_classes: int, ignore_index: int) -> None:
    """Refuse a label outside ``[0, num_classes)`` among the ``valid`` (not ignored) pixels."""
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad])[:5].tolist()
        raise ValueError(
            f"target holds labels {values} outside [0, {num_classes}) that are not the ignore value {ignore_index}"
        )


def as_mask(mask: Tensor, shape: torch.Size, what: str) -> Tensor:
    """A bool mask N x H x W (non-zero = true; a single H x W mask gets a batch axis) of the target's shape."""
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} shape {tuple(mask.shape)} does not match the target's {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def ratio(numerator: int | float, denominator: int | float, empty: float = math.nan) -> float:
    """``numerator / denominator``, or ``empty`` when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else empty


def nan_mean(values: Iterable[float]) -> float:
    """Order-independent (exactly rounded) mean; NaN values are skipped; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def nan_std(values: Iterable[float]) -> float:
    """Population standard deviation (ddof=0), order-independent; NaN values are skipped."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan
    mean = math.fsum(kept) / len(kept)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / len(kept))
