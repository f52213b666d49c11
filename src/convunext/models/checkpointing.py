"""Activation checkpointing: recompute each block's activations in the backward pass instead of storing them.

ConvUNeXt's 7x7 kernels and 4x MLP make its activations large (the paper notes the memory cost); checkpointing every
block trades about one extra forward pass for most of that memory. Parameters and state_dict keys are unchanged.

The blocks hold BatchNorms: the recomputation runs them again in training mode, which would update their running
statistics a second time. The recomputation therefore restores every running statistic of the block afterwards,
so a checkpointed model trains to exactly the same weights *and* statistics as the plain one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvNeXtBlock, DoubleConv, PreActResidualUnit

CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (ConvNeXtBlock, DoubleConv, PreActResidualUnit)
"""The repeated unit of every registry model: ConvUNeXt's block, UNet's / Attention UNet's / UNet++'s DoubleConv,
ResUNet's pre-activation residual unit."""


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm running statistics of ``module`` on exit (used around the recomputation)."""
    saved = [
        (buffer, buffer.detach().clone())
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm)
        for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def enable_activation_checkpointing(
    model: nn.Module, block_types: tuple[type[nn.Module], ...] = CHECKPOINTED_BLOCKS
) -> int:
    """Make every block of ``block_types`` inside ``model`` recompute its activations during backward.

    Only applies in training mode with gradients enabled (inference is unaffected). Gradients, outputs and BN
    running statistics are the same as without checkpointing. Returns the number of blocks.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, block_types) and not getattr(module, "_checkpointed", False):
            forward = module.forward

            def contexts(_module: nn.Module = module) -> tuple[contextlib.AbstractContextManager, ...]:
                return contextlib.nullcontext(), _running_stats_kept(_module)

            @functools.wraps(forward)
            def checkpointed(*args, _forward=forward, _module=module, _contexts=contexts, **kwargs):  # type: ignore[no-untyped-def]
                if _module.training and torch.is_grad_enabled():
                    return checkpoint(_forward, *args, use_reentrant=False, context_fn=_contexts, **kwargs)
                return _forward(*args, **kwargs)

            module.forward = checkpointed  # type: ignore[method-assign]
            module._checkpointed = True  # type: ignore[assignment]
            count += 1
    return count
