"""ConvUNeXt's skip gate and fusion conv as one per-pixel op, on the folded weights both fast paths use.

With ``u`` the upsampled deep features and ``s`` the skip (pixel rows, ``P x c``), the decoder stage computes
``z = W_fuse [W_o s' + b_o, u] + b_fuse`` where ``[g1 g2 g3] = W_g u + b_g`` and
``s' = sigmoid(W_f (g1 + s) + b_f) * s + sigmoid(g2) * tanh(g3)``. :func:`fold_gate` rewrites it as

    [g1 | g2 | g3 | f] = u w_u + b_u          # the gate and the fusion half reading u: one product
    s' = sigmoid((g1 + s) w_f + b_f) * s + sigmoid(g2) * tanh(g3)
    z  = f + s' w_s                           # the gate's output layer multiplied into the fusion conv

(without a gate: ``z = u w_u + b_u + s w_s``), so the concatenation is never built. The ways to run it:

* :func:`gate_reference` — plain differentiable torch ops (the definition);
* :func:`banded_gate` — band by band; with gradients the compiled kernel of :mod:`.compiled_gate` where it runs,
  else a custom autograd function that saves only its inputs and recomputes each band in backward (a dozen
  full-size temporaries and as many gradients in autograd's version, none here); without gradients the inference
  kernel;
* :func:`gate_rows_` — one band of the inference kernel into caller-owned buffers.

``tanh`` is computed as ``2 sigmoid(2x) - 1`` (within 2e-7, 4x faster on CPU).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ...utils.threads import ranges, run_tasks, workers
from .activations import fast_tanh
from .banding import DEFAULT_BAND_ELEMENTS, sum_partials
from .compiled_gate import compiled_gate, compiled_gate_rows_
from .gate_definition import GateWeights, fold_gate, gate_reference

__all__ = ["GateWeights", "banded_gate", "fold_gate", "gate_reference", "gate_rows_"]


class GateBuffers:
    """Scratch of :func:`gate_rows_` for bands of up to ``rows`` pixel rows."""

    def __init__(self, rows: int, c: int, width: int, like: Tensor) -> None:
        self.g = like.new_empty((rows, width))
        self.t = like.new_empty((rows, c))
        self.s = like.new_empty((rows, c))


def gate_rows_(u: Tensor, s: Tensor, weights: GateWeights, out: Tensor, buffers: GateBuffers) -> Tensor:
    """:func:`gate_reference` of one band into ``out`` (``P x D``) with ``buffers`` as scratch; no allocation. The
    compiled kernel runs it where it can (:func:`~.compiled_gate.compiled_gate_rows_`)."""
    if compiled_gate_rows_(u, s, weights, out):
        return out
    m = u.shape[0]
    g = torch.addmm(weights.b_u, u, weights.w_u, out=buffers.g[:m])
    if weights.w_f is None:
        return torch.addmm(g, s, weights.w_s, out=out)
    c = u.shape[1]
    g1, g2, g3, f = g[:, :c], g[:, c : 2 * c], g[:, 2 * c : 3 * c], g[:, 3 * c :]
    t = torch.add(g1, s, out=buffers.t[:m])
    gated = torch.addmm(weights.b_f, t, weights.w_f, out=buffers.s[:m]).sigmoid_()
    gated.mul_(s).addcmul_(g2.sigmoid_(), fast_tanh(g3, inplace=True))
    return torch.addmm(f, gated, weights.w_s, out=out)


def _forward(u: Tensor, s: Tensor, weights: GateWeights, band: int) -> Tensor:
    """The banded forward pass (no autograd): ``band`` rows at a time, one range of rows per worker."""
    out = u.new_empty((u.shape[0], weights.w_s.shape[1]))

    def chunk(first: int, last: int) -> None:
        buffers = GateBuffers(min(band, last - first), u.shape[1], weights.w_u.shape[1], u)
        for start in range(first, last, band):
            stop = min(last, start + band)
            gate_rows_(u[start:stop], s[start:stop], weights, out[start:stop], buffers)

    run_tasks([functools.partial(chunk, *r) for r in ranges(u.shape[0], workers(u.device))])
    return out


def _backward_band(
    ub: Tensor, sb: Tensor, dz: Tensor, weights: GateWeights, grads: list[Tensor], du: Tensor, ds: Tensor
) -> None:
    """Recompute one band's forward and accumulate its gradients: ``grads`` (like ``weights``) += , ``du``,
    ``ds`` (the band's input gradients) = ."""
    w_u, b_u, w_s, w_f, b_f = weights
    g = torch.addmm(b_u, ub, w_u)
    if w_f is None or b_f is None:
        grads[2].addmm_(sb.t(), dz)
        torch.mm(dz, w_s.t(), out=ds)
        d_g = dz
    else:
        c = ub.shape[1]
        g1, g2, g3 = g[:, :c], g[:, c : 2 * c], g[:, 2 * c : 3 * c]
        t = g1 + sb
        f = torch.addmm(b_f, t, w_f).sigmoid_()
        sig2, tanh3 = g2.sigmoid(), fast_tanh(g3)  # contiguous: reused four times below
        gated = torch.addcmul(sig2 * tanh3, f, sb)
        grads[2].addmm_(gated.t(), dz)  # z = f_u + gated w_s
        d_gated = dz @ w_s.t()
        torch.mul(d_gated, f, out=ds)  # gated = f * s + sig2 * tanh3
        d_pre_f = (d_gated * sb).mul_(f).mul_(1.0 - f)
        d_g = torch.empty_like(g)
        d_g[:, 3 * c :] = dz
        torch.mul(d_gated * tanh3, sig2 * (1.0 - sig2), out=d_g[:, c : 2 * c])
        torch.mul(d_gated * sig2, 1.0 - tanh3 * tanh3, out=d_g[:, 2 * c : 3 * c])
        grads[3].addmm_(t.t(), d_pre_f)  # f = sigmoid(t w_f + b_f), t = g1 + s
        grads[4].add_(d_pre_f.sum(0))
        torch.mm(d_pre_f, w_f.t(), out=d_g[:, :c])
        ds += d_g[:, :c]
    grads[0].addmm_(ub.t(), d_g)  # g = u w_u + b_u
    grads[1].add_(d_g.sum(0))
    torch.mm(d_g, w_u.t(), out=du)


class _BandedGate(torch.autograd.Function):
    """:func:`gate_reference` on ``P x c`` rows, band by band; backward recomputes each band."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, s: Tensor, band: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        weights = GateWeights(*tensors)
        ctx.save_for_backward(u, s, *tensors)
        ctx.band = band
        return _forward(u, s, weights, band)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, s, *tensors = ctx.saved_tensors
        weights = GateWeights(*tensors)
        grad = grad.contiguous()
        band = ctx.band
        grad_u, grad_s = torch.empty_like(u), torch.empty_like(s)
        parts = ranges(u.shape[0], workers(u.device))
        partials = [[torch.zeros_like(t) for t in tensors] for _ in parts]

        def chunk(first: int, last: int, grads: list[Tensor]) -> None:
            for start in range(first, last, band):
                stop = min(last, start + band)
                rows = slice(start, stop)
                _backward_band(u[rows], s[rows], grad[rows], weights, grads, grad_u[rows], grad_s[rows])

        run_tasks([functools.partial(chunk, *r, acc) for r, acc in zip(parts, partials)])
        return (grad_u, grad_s, None, *sum_partials(partials))


def banded_gate(u: Tensor, s: Tensor, weights: GateWeights, band_elements: int = DEFAULT_BAND_ELEMENTS) -> Tensor:
    """:func:`gate_reference` computed band by band (same arguments and shapes), about ``band_elements`` values
    in a band's widest temporary; differentiable (see the module docstring) when gradients are needed."""
    band = max(64, band_elements // (weights.w_u.shape[1] + u.shape[1]))
    tensors = [t for t in weights if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, s, *tensors)):
        z = compiled_gate(u, s, weights)
        return _BandedGate.apply(u, s, band, *tensors) if z is None else z
    return _forward(u, s, weights, band)
