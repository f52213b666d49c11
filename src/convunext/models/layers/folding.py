"""BatchNorm folding arithmetic: an eval-mode BatchNorm is a per-channel affine map, so it merges into the
convolution next to it (exact in real arithmetic; computed in float64, returned in the weights' dtype).

``conv -> BN`` always folds. ``BN -> conv`` folds only when the conv has no padding (zero padding would see the
BN's shift at the border instead of 0), e.g. ConvUNeXt's ``BN -> conv 2x2 stride 2`` down-sampling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConvUNeXtError

__all__ = ["bn_affine", "fold_after", "fold_before", "require_bn_affine"]


def bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` (float64, length C) with ``bn(x) == x * scale + shift`` in eval mode, or ``None``.

    ``None`` when ``bn`` is not a BatchNorm using running statistics (then it is not a fixed affine map).
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return None
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def require_bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """:func:`bn_affine`, raising ``ConvUNeXtError`` for a module that is not a fixed affine map."""
    affine = bn_affine(bn)
    if affine is None:
        raise ConvUNeXtError(f"cannot fold {bn!r}: not a BatchNorm with running statistics")
    return affine


def fold_after(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weights of ``bn(conv(x))`` as one conv: ``weight`` is ``out x in/g x kh x kw``."""
    scale, shift = require_bn_affine(bn)
    w = weight.detach().double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = (bias.detach().double() if bias is not None else torch.zeros_like(scale)) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_before(bn: nn.Module, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weights of ``conv(bn(x))`` as one conv; exact only for a dense conv *without padding* (zero padding
    would see ``shift`` at the border instead of 0)."""
    scale, shift = require_bn_affine(bn)
    w64 = weight.detach().double()
    b = bias.detach().double() if bias is not None else w64.new_zeros(weight.shape[0])
    b = b + (w64 * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    w = w64 * scale.view(1, -1, 1, 1)
    return w.to(weight.dtype), b.to(weight.dtype)
