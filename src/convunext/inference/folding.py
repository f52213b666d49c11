"""BatchNorm folding: an eval-mode BatchNorm is a per-channel affine map, so it merges into the convolution next
to it (exact in real arithmetic; computed in float64, stored in the weights' dtype).

``conv -> BN`` always folds. ``BN -> conv`` folds only when the conv has no padding (zero padding would see the
BN's shift at the border instead of 0), e.g. ConvUNeXt's ``BN -> conv 2x2 stride 2`` down-sampling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.blocks import ConvNeXtBlock, DownStage, ReflectConv2d, Stem

__all__ = ["bn_affine", "fold_after", "fold_batchnorm", "fold_before"]


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


def fold_after(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weights of ``bn(conv(x))`` as one conv: ``weight`` is ``out x in/g x kh x kw``; returns float32 tensors."""
    affine = bn_affine(bn)
    assert affine is not None
    scale, shift = affine
    w = weight.detach().double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = (bias.detach().double() if bias is not None else torch.zeros_like(scale)) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_before(bn: nn.Module, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weights of ``conv(bn(x))`` as one conv; exact only for a dense conv *without padding* (zero padding
    would see ``shift`` at the border instead of 0)."""
    affine = bn_affine(bn)
    assert affine is not None
    scale, shift = affine
    w64 = weight.detach().double()
    b = bias.detach().double() if bias is not None else w64.new_zeros(weight.shape[0])
    b = b + (w64 * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    w = w64 * scale.view(1, -1, 1, 1)
    return w.to(weight.dtype), b.to(weight.dtype)


def _set_conv(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> None:
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)


def _foldable_conv(module: nn.Module) -> bool:
    return type(module) in (nn.Conv2d, ReflectConv2d)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold, **in place**, every eval-mode BatchNorm of ``model`` that sits next to a convolution into it.

    Handled: ``conv -> BN`` inside any ``nn.Sequential`` (UNet's DoubleConv, ResUNet's units, attention gates);
    ConvUNeXt's ``dwconv -> norm1`` and ``pwconv2 -> norm2`` (blocks), ``conv -> norm`` (stem) and
    ``norm -> conv 2x2 stride 2`` (down stages, no padding so the fold is exact). Folded BNs become
    ``nn.Identity``. BNs before an activation, a max-pool or a zero-padded conv stay (e.g. ResUNet's pre-activation
    BN, ConvUNeXt's decoder BN before the zero-padded upsampling). Use on a copy: the model must be in eval mode
    for the result to match. Returns the number of folded BatchNorms.
    """
    count = 0
    for module in list(model.modules()):
        if isinstance(module, ConvNeXtBlock):
            for conv_name, norm_name in (("dwconv", "norm1"), ("pwconv2", "norm2")):
                conv, norm = getattr(module, conv_name), getattr(module, norm_name)
                if bn_affine(norm) is not None:
                    _set_conv(conv, *fold_after(conv.weight, conv.bias, norm))
                    setattr(module, norm_name, nn.Identity())
                    count += 1
        elif isinstance(module, Stem):
            if bn_affine(module.norm) is not None:
                _set_conv(module.conv, *fold_after(module.conv.weight, module.conv.bias, module.norm))
                module.norm = nn.Identity()
                count += 1
        elif isinstance(module, DownStage):
            reduce = module.reduce
            plain = _foldable_conv(reduce) and reduce.padding == (0, 0) and reduce.groups == 1  # type: ignore[union-attr]
            if plain and bn_affine(module.norm) is not None:
                _set_conv(reduce, *fold_before(module.norm, reduce.weight, reduce.bias))  # type: ignore[arg-type]
                module.norm = nn.Identity()
                count += 1
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names[:-1], names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if _foldable_conv(conv) and bn_affine(norm) is not None:
                    _set_conv(conv, *fold_after(conv.weight, conv.bias, norm))  # type: ignore[arg-type]
                    module._modules[second] = nn.Identity()
                    count += 1
    return count
