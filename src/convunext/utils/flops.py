"""Parameter and FLOP counts (a multiply-add counts as 2 FLOPs, as ``torch.utils.flop_counter`` does)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on a zero tensor of ``input_shape`` (``N x C x H x W``) on
    the model's device; a model on the ``meta`` device is counted without computing anything."""
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()
