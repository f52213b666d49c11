"""The definition of ConvUNeXt's skip gate and fusion conv on folded weights (:mod:`.gate` explains the folding):
:class:`GateWeights`, :func:`fold_gate` and the reference :func:`gate_reference` that :mod:`.gate`'s banded kernels and
:mod:`.compiled_gate`'s compiled one are checked against."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GateWeights", "fold_gate", "gate_reference"]


class GateWeights(NamedTuple):
    """The folded weights (see the module docstring); ``w_f``/``b_f`` are ``None`` for a stage without a gate.

    Shapes: ``w_u`` ``c x (3c + D)`` (``c x D`` without gate), ``b_u`` its width, ``w_s`` ``c x D``, ``w_f``
    ``c x c``, ``b_f`` ``c``.
    """

    w_u: Tensor
    b_u: Tensor
    w_s: Tensor
    w_f: Tensor | None = None
    b_f: Tensor | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> GateWeights:
        """The same weights with ``fn`` applied to each tensor."""
        return GateWeights(*(None if t is None else fn(t) for t in self))


def fold_gate(
    fuse_w: Tensor, fuse_b: Tensor, gate: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] | None
) -> GateWeights:
    """Fold ``fuse`` (``D x 2c`` over ``[skip, upsampled]``, bias ``D``) and ``gate = (W_g 3c x c, b_g, W_f c x c,
    b_f, W_o c x c, b_o)`` (or ``None``) into :class:`GateWeights`; differentiable."""
    c = fuse_w.shape[1] // 2
    w_skip, w_up = fuse_w[:, :c], fuse_w[:, c:]
    if gate is None:
        return GateWeights(w_up.t(), fuse_b, w_skip.t())
    wg, bg, wf, bf, wo, bo = gate
    return GateWeights(torch.cat([wg, w_up]).t(), torch.cat([bg, fuse_b + w_skip @ bo]), (w_skip @ wo).t(), wf.t(), bf)


def gate_reference(u: Tensor, s: Tensor, weights: GateWeights) -> Tensor:
    """``z`` of the module docstring. Shapes: ``u``, ``s`` ``P x c`` -> ``P x D``."""
    g = u @ weights.w_u + weights.b_u
    if weights.w_f is None:
        return g + s @ weights.w_s
    c = u.shape[1]
    g1, g2, g3, f = g[:, :c], g[:, c : 2 * c], g[:, 2 * c : 3 * c], g[:, 3 * c :]
    gated = torch.sigmoid((g1 + s) @ weights.w_f + weights.b_f) * s + torch.sigmoid(g2) * torch.tanh(g3)
    return f + gated @ weights.w_s
