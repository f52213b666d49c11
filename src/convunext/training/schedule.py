"""Learning-rate schedules of the two recipes, as a factor of the peak lr at each optimiser step.

Warm-up is linear from ``warmup_start_factor`` to 1 over ``warmup_epochs``; afterwards the ``paper`` recipe decays
exponentially (``decay_gamma`` per epoch, applied smoothly per iteration) and the ``reference`` recipe polynomially,
``(1 - t)^poly_power`` with ``t`` the fraction of post-warm-up steps done — both stepped once per iteration.
"""

from __future__ import annotations

import torch

from .config import OptimConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, optim: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of a run of ``epochs`` epochs."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(optim.warmup_epochs * steps_per_epoch)), total)
    if step < warmup:
        return optim.warmup_start_factor + (1.0 - optim.warmup_start_factor) * step / warmup
    done = step - warmup
    if optim.decay == "exponential":
        return optim.decay_gamma ** (done / steps_per_epoch)
    remaining = max(1, total - warmup)
    return max(0.0, 1.0 - done / remaining) ** optim.poly_power


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, optim: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` that follows :func:`lr_factor`; call ``scheduler.step()`` after every batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, optim))
