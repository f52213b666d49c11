"""Recomputing one module call's activations in backward instead of storing them (PyTorch's activation
checkpointing, :func:`torch.utils.checkpoint.checkpoint`), switched by the module's ``grad_checkpointing`` attribute.

The recomputation runs the module's BatchNorms again in training mode, which would update their running
statistics a second time; it therefore restores every running statistic of the module afterwards, so a model
that recomputes trains to exactly the same weights *and* statistics as the plain one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["maybe_recompute"]


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


def _contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _running_stats_kept(module)


def maybe_recompute(module: nn.Module, forward: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``forward(*args)``, its activations recomputed in backward when ``module.grad_checkpointing`` is set,
    ``module`` is training and gradients are enabled (inference is unaffected). Outputs, gradients and BN
    statistics are unchanged."""
    if getattr(module, "grad_checkpointing", False) and module.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, context_fn=functools.partial(_contexts, module))
    return forward(*args)
