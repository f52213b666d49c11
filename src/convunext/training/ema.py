"""Exponential moving average (EMA) of a model's weights, evaluated in place of the raw weights.

The average smooths the noise of the last optimiser steps, which matters most in short trainings. The idea is
timm's ``ModelEmaV3`` (with its warmup) and, before it, Polyak averaging; this is an independent implementation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ModelEma"]


def _paired(name: str, averaged: Mapping[str, Tensor], model: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``(averaged tensor, model tensor)`` pairs by name; a ``ValueError`` when the two sets of names differ."""
    if averaged.keys() != model.keys():
        missing, unexpected = sorted(averaged.keys() - model.keys()), sorted(model.keys() - averaged.keys())
        raise ValueError(f"the model's {name} do not match the EMA copy's (missing {missing}, unexpected {unexpected})")
    return [(averaged[key], model[key]) for key in averaged]


class ModelEma:
    """An averaged copy of ``model``: after the ``n``-th :meth:`update` (counting from 0), every floating-point
    parameter is ``ema = d * ema + (1 - d) * p`` with ``d = decay_at(n)``; buffers (BatchNorm running statistics,
    ``num_batches_tracked``) and non-float parameters are copied from the model.

    Args:
        model: the plain (not DDP-wrapped) model being trained; the copy lives on its device, in its dtypes.
        decay: the decay ``d`` once warmed up, strictly between 0 and 1 (0.999 averages roughly the last 1000
            steps).
        warmup: use ``d = min(decay, (1 + n) / (10 + n))``, so the first updates follow the model closely instead
            of keeping its random initialisation for thousands of steps.

    Attributes:
        module: the averaged model, in eval mode with ``requires_grad=False``; evaluate or save this.
        updates: how many updates were done.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r} is not valid; use a number strictly between 0 and 1")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, n: int) -> float:
        """The decay ``d`` of update number ``n`` (0 for the first)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model`` (the module given to the constructor, after an optimiser step).

        Raises:
            ValueError: ``model``'s parameter or buffer names differ from the copy's.
        """
        parameters = _paired("parameters", dict(self.module.named_parameters()), dict(model.named_parameters()))
        buffers = _paired("buffers", dict(self.module.named_buffers()), dict(model.named_buffers()))
        averaged = [(ema, p) for ema, p in parameters if ema.is_floating_point()]
        copied = buffers + [(ema, p) for ema, p in parameters if not ema.is_floating_point()]
        if averaged:  # the foreach ops refuse empty lists
            ema_tensors, model_tensors = map(list, zip(*averaged))
            torch._foreach_lerp_(ema_tensors, model_tensors, 1 - self.decay_at(self.updates))
        for ema, value in copied:
            ema.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        """``{"module": the averaged model's state_dict, "updates": the update count}``: enough to resume exactly."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state_dict` returned (the module's keys strictly)."""
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
