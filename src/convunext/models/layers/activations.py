"""The activations the fused kernels compute in place, and how a module maps to one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ActivationKind", "activation", "activation_", "activation_kind", "fast_tanh"]

ActivationKind = Literal["gelu", "relu"]


def activation_kind(module: nn.Module) -> ActivationKind | None:
    """``"gelu"`` (exact erf form) or ``"relu"`` for those modules; ``None`` for any other (not fusable)."""
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    return None


def activation(kind: ActivationKind) -> Callable[[Tensor], Tensor]:
    """The out-of-place function of activation ``kind`` (differentiable)."""
    return torch.nn.functional.gelu if kind == "gelu" else torch.relu


def activation_(kind: ActivationKind) -> Callable[[Tensor], Tensor]:
    """The in-place function of activation ``kind``."""
    return torch.ops.aten.gelu_ if kind == "gelu" else torch.relu_


def fast_tanh(x: Tensor, inplace: bool = False) -> Tensor:
    """``tanh`` as ``2 sigmoid(2x) - 1`` (within 2e-7 absolute; about 4x faster than ``tanh`` on CPU), in place on
    ``x`` or into a new contiguous tensor (faster to compute with when ``x`` is a strided slice)."""
    return (x.mul_(2.0) if inplace else x.mul(2.0)).sigmoid_().mul_(2.0).sub_(1.0)
