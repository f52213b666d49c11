"""Recomputing one module call's activations in backward instead of storing them (PyTorch's activation
checkpointing, :func:`torch.utils.checkpoint.checkpoint`), switched by the module's ``grad_checkpointing`` attribute.

The recomputation runs the module's BatchNorms again in training mode, which would update their running
statistics a second time; it therefore restores every running statistic of the module afterwards, so a model
that recomputes trains to exactly the same weights *and* statistics as the plain one.

Regions nest: a module that recomputes inside another one's recomputed call (a block inside a stage) runs plainly
there — the outer region already stores only its own inputs, and recomputing the inner one again would cost one
more forward pass of it for no memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["maybe_recompute"]

_RECOMPUTED_REGION = contextvars.ContextVar("convunext_recomputed_region", default=False)
"""Whether the current call runs inside a region that is recomputed in backward (its forward or its recompute)."""


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
    active = getattr(module, "grad_checkpointing", False) and module.training and torch.is_grad_enabled()
    if active and not _RECOMPUTED_REGION.get():
        region = functools.partial(_in_region, forward)
        return checkpoint(region, *args, use_reentrant=False, context_fn=functools.partial(_contexts, module))
    return forward(*args)


def _in_region(forward: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``forward(*args)`` marked as a recomputed region (for the modules it calls, see the module docstring)."""
    token = _RECOMPUTED_REGION.set(True)
    try:
        return forward(*args)
    finally:
        _RECOMPUTED_REGION.reset(token)
