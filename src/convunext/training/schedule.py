"""Learning-rate schedules of the two recipes, as a factor of the peak lr at each optimiser step.

Warm-up is linear from ``warmup_start_factor`` to 1 over ``warmup_epochs``; afterwards the ``paper`` recipe decays
exponentially (``decay_gamma`` per epoch, applied smoothly per iteration) and the ``reference`` recipe polynomially,
``(1 - t)^poly_power`` with ``t`` the fraction of post-warm-up steps done; ``decay: cosine`` gives
``(1 + cos(pi t)) / 2`` — all stepped once per iteration. :func:`compress_schedule` fits a schedule to another
length with the same proportions (what ``train.time_budget_minutes`` and the ``cpu`` reproduce budget do).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from .config import ExperimentConfig, OptimConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, optim: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of a run of ``epochs`` epochs."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(optim.warmup_epochs * steps_per_epoch)), total)
    if step < warmup:
        return optim.warmup_start_factor + (1.0 - optim.warmup_start_factor) * step / warmup
    done = step - warmup
    if optim.decay == "exponential":
        return optim.decay_gamma ** (done / steps_per_epoch)
    fraction = min(1.0, done / max(1, total - warmup))
    if optim.decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    return (1.0 - fraction) ** optim.poly_power


def compress_schedule(optim: OptimConfig, from_epochs: int, to_epochs: int) -> OptimConfig:
    """``optim`` fitted to a run of ``to_epochs`` instead of ``from_epochs``, in the same proportions: the warm-up
    keeps its fraction of the run, and the exponential decay ends at the same fraction of the peak lr
    (``decay_gamma^(from - warm-up)``); poly and cosine decays are defined on the fraction of the run already."""
    scale = to_epochs / from_epochs
    warmup = optim.warmup_epochs * scale
    gamma = optim.decay_gamma
    if optim.decay == "exponential" and to_epochs > warmup:
        gamma = gamma ** (max(0.0, from_epochs - optim.warmup_epochs) / (to_epochs - warmup))
    return dataclasses.replace(optim, warmup_epochs=round(warmup, 6), decay_gamma=round(gamma, 8))


def with_length(config: ExperimentConfig, epochs: int) -> ExperimentConfig:
    """A copy of ``config`` that trains ``epochs`` epochs, its schedule fitted to them (:func:`compress_schedule`)."""
    fitted = copy.deepcopy(config)
    fitted.optim = compress_schedule(config.optim, config.train.epochs, epochs)
    fitted.train.epochs = epochs
    return fitted


def steps_epochs(steps: int, steps_per_epoch: int) -> int:
    """The fewest whole epochs of ``steps_per_epoch`` optimiser steps that make ``steps``."""
    return math.ceil(steps / steps_per_epoch)


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, optim: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` that follows :func:`lr_factor`; call ``scheduler.step()`` after every batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, optim))
