"""Activation checkpointing: recompute each block's activations in the backward pass instead of storing them.

ConvUNeXt's 7x7 kernels and 4x MLP make its activations large (the paper notes the memory cost); checkpointing every
block trades about one extra forward pass for most of that memory. Parameters and state_dict keys are unchanged.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvNeXtBlock, DoubleConv

CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (ConvNeXtBlock, DoubleConv)


def enable_activation_checkpointing(
    model: nn.Module, block_types: tuple[type[nn.Module], ...] = CHECKPOINTED_BLOCKS
) -> int:
    """Make every block of ``block_types`` inside ``model`` recompute its activations during backward.

    Only applies in training mode with gradients enabled (inference is unaffected). Returns the number of blocks.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, block_types) and not getattr(module, "_checkpointed", False):
            forward = module.forward

            @functools.wraps(forward)
            def checkpointed(*args, _forward=forward, _module=module, **kwargs):  # type: ignore[no-untyped-def]
                if _module.training and torch.is_grad_enabled():
                    return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
                return _forward(*args, **kwargs)

            module.forward = checkpointed  # type: ignore[method-assign]
            module._checkpointed = True  # type: ignore[assignment]
            count += 1
    return count
