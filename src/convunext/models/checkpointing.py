"""Activation checkpointing: recompute each block's activations in the backward pass instead of storing them.

ConvUNeXt's 7x7 kernels and 4x MLP make its activations large (the paper notes the memory cost); checkpointing every
block trades about one extra forward pass for most of that memory. Parameters and state_dict keys are unchanged,
and BN running statistics are updated exactly once (:mod:`convunext.models.layers.checkpoint`).

The switch is the ``grad_checkpointing`` attribute the blocks read (``model.set_grad_checkpointing()`` on a
registry model); :func:`enable_activation_checkpointing` is the same for any module tree.
"""

from __future__ import annotations

from torch import nn

from .base import set_switch
from .blocks import ConvNeXtBlock
from .unet_blocks import DoubleConv, PreActResidualUnit

__all__ = ["CHECKPOINTED_BLOCKS", "enable_activation_checkpointing"]

CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (ConvNeXtBlock, DoubleConv, PreActResidualUnit)
"""The repeated unit of every registry model: ConvUNeXt's block, UNet's / Attention UNet's / UNet++'s DoubleConv,
ResUNet's pre-activation residual unit."""


def enable_activation_checkpointing(
    model: nn.Module, block_types: tuple[type[nn.Module], ...] = CHECKPOINTED_BLOCKS, enabled: bool = True
) -> int:
    """Make every block of ``block_types`` inside ``model`` recompute its activations during backward (or stop,
    with ``enabled=False``); returns how many blocks changed.

    Only applies in training mode with gradients enabled (inference is unaffected). Gradients, outputs and BN
    running statistics are the same as without checkpointing.

    Raises:
        ValueError: a type in ``block_types`` that does not read the ``grad_checkpointing`` switch.
    """
    return set_switch(model, "grad_checkpointing", enabled, types=block_types)
