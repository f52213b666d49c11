"""The ConvNeXt block's per-pixel MLP: ``act(x W1 + b1) W2 + b2`` (+ residual, + output activation).

One signature, three ways to run it, all on pixel rows (``P x C``: :func:`~.banding.flat` of a channels-last map):

* :func:`mlp_reference` — plain differentiable torch ops (the definition);
* :func:`banded_mlp` — band by band over the rows. With gradients it is a custom autograd function whose forward
  saves only its inputs and whose backward recomputes each band's hidden activation in cache (+17% of the MLP's
  FLOPs) and accumulates the weight gradients band by band: the ``4 x dim`` pre-activation, activation and their
  gradients (four full-size tensors in autograd's version) never exist. On float32 CPU rows that function is the
  compiled kernel of :mod:`.compiled_mlp` (the same scheme in tiles of rows, one C++ pass per tile) where it loads,
  else PyTorch's operators. Without gradients it is the inference kernel;
* :func:`mlp_rows_` — one band of the inference kernel into caller-owned buffers (the fused blocks run it on
  each band of rows right after the band's depthwise convolution).

With several intra-op threads the rows are split into one range per thread, run by :mod:`convunext.utils.threads`
workers (one intra-op thread each; weight gradients are accumulated per range and summed).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ...utils.threads import ranges, run_tasks, workers
from .activations import ActivationKind, activation, activation_
from .banding import DEFAULT_BAND_ELEMENTS, sum_partials
from .compiled_mlp import compiled_mlp, compiled_mlp_rows_

__all__ = ["banded_mlp", "mlp_reference", "mlp_rows_"]


def mlp_reference(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: ActivationKind,
    residual: Tensor | None = None,
    out_act: bool = False,
) -> Tensor:
    """``y = act(x w1 + b1) w2 + b2``, then ``y + residual`` and ``act(y)`` when asked.

    Shapes: ``x`` ``P x C``, ``w1`` ``C x H``, ``b1`` ``H``, ``w2`` ``H x D``, ``b2`` ``D``, ``residual``
    ``P x D`` -> ``P x D``.
    """
    fn = activation(act)
    y = fn(x @ w1 + b1) @ w2 + b2
    if residual is not None:
        y = y + residual
    return fn(y) if out_act else y


def mlp_rows_(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: ActivationKind,
    residual: Tensor | None,
    out_act: bool,
    out: Tensor,
    hidden: Tensor,
) -> Tensor:
    """:func:`mlp_reference` of one band into ``out`` (``P x D``, may alias ``x``: ``x`` is read first), with
    ``hidden`` (``P x H``) as scratch. In-place activations; no allocation. The compiled kernel runs it where it can
    (:func:`~.compiled_mlp.compiled_mlp_rows_`: contiguous float32 CPU tensors, the ``kernels`` setting)."""
    if compiled_mlp_rows_(x, w1, b1, w2, b2, act, residual, out_act, out):
        return out
    act_ = activation_(act)
    h = act_(torch.addmm(b1, x, w1, out=hidden))
    if residual is None:
        torch.addmm(b2, h, w2, out=out)
    else:
        torch.add(residual, b2, out=out).addmm_(h, w2)
    return act_(out) if out_act else out


def _forward(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: ActivationKind,
    residual: Tensor | None,
    out_act: bool,
    band: int,
) -> Tensor:
    """The banded forward pass (no autograd): ``band`` rows at a time, one range of rows per worker."""
    out = x.new_empty((x.shape[0], w2.shape[1]))

    def chunk(first: int, last: int) -> None:
        hidden = x.new_empty((min(band, last - first), w1.shape[1]))
        for start in range(first, last, band):
            stop = min(last, start + band)
            res = residual[start:stop] if residual is not None else None
            mlp_rows_(x[start:stop], w1, b1, w2, b2, act, res, out_act, out[start:stop], hidden[: stop - start])

    run_tasks([functools.partial(chunk, *r) for r in ranges(x.shape[0], workers(x.device))])
    return out


class _BandedMLP(torch.autograd.Function):
    """``act(x w1 + b1) w2 + b2`` on ``P x C`` rows, band by band; backward recomputes the hidden activation."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, act: ActivationKind, band: int
    ) -> Tensor:
        ctx.save_for_backward(x, w1, b1, w2)
        ctx.act, ctx.band = act, band
        return _forward(x, w1, b1, w2, b2, act, None, False, band)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w1, b1, w2 = ctx.saved_tensors
        grad = grad.contiguous()
        band, gelu = ctx.band, ctx.act == "gelu"
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        parts = ranges(x.shape[0], workers(x.device))
        partials = [[torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)] for _ in parts]

        def chunk(first: int, last: int, grad_w1: Tensor, grad_b1: Tensor, grad_w2: Tensor) -> None:
            pre_buf, act_buf, grad_buf = (x.new_empty((min(band, last - first), w1.shape[1])) for _ in range(3))
            for start in range(first, last, band):
                stop = min(last, start + band)
                m = stop - start
                xb, gb = x[start:stop], grad[start:stop]
                pre = torch.addmm(b1, xb, w1, out=pre_buf[:m])
                hidden = act_buf[:m]
                if gelu:
                    torch._C._nn.gelu(pre, out=hidden)
                else:
                    torch.clamp_min(pre, 0.0, out=hidden)
                grad_w2.addmm_(hidden.t(), gb)
                grad_h = torch.mm(gb, w2.t(), out=grad_buf[:m])
                if gelu:  # the activation buffer is spent: reuse it for the pre-activation's gradient
                    grad_pre = torch.ops.aten.gelu_backward.grad_input(grad_h, pre, grad_input=hidden)
                else:
                    grad_pre = grad_h.masked_fill_(pre <= 0, 0.0)
                grad_w1.addmm_(xb.t(), grad_pre)
                grad_b1.add_(grad_pre.sum(0))
                if grad_x is not None:
                    torch.mm(grad_pre, w1.t(), out=grad_x[start:stop])

        run_tasks([functools.partial(chunk, *r, *acc) for r, acc in zip(parts, partials)])
        grad_w1, grad_b1, grad_w2 = sum_partials(partials)
        return grad_x, grad_w1, grad_b1, grad_w2, grad.sum(0), None, None


def banded_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: ActivationKind,
    residual: Tensor | None = None,
    out_act: bool = False,
    band_elements: int = DEFAULT_BAND_ELEMENTS,
) -> Tensor:
    """:func:`mlp_reference` computed band by band (same arguments and shapes), about ``band_elements`` values in
    a band's hidden activation; differentiable (see the module docstring) when gradients are needed.

    Raises:
        ConvUNeXtError: with gradients, an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the compiled kernel
            cannot be loaded.
    """
    band = max(64, band_elements // w1.shape[1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w2, b2)):
        y = compiled_mlp(x, w1, b1, w2, b2, act)
        if y is None:
            y = _BandedMLP.apply(x, w1, b1, w2, b2, act, band)
        if residual is not None:
            y = y + residual
        return activation(act)(y) if out_act else y
    return _forward(x, w1, b1, w2, b2, act, residual, out_act, band)
