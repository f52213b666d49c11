"""BatchNorm folding of a whole model, in place, for the generic (non-fused) inference path.

The arithmetic (:func:`bn_affine`, :func:`fold_after`, :func:`fold_before`) lives in
:mod:`convunext.models.layers.folding`, shared with the blocks' fast forms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.blocks import ConvNeXtBlock, DownStage, ReflectConv2d, Stem
from ..models.layers.folding import bn_affine, fold_after, fold_before

__all__ = ["bn_affine", "fold_after", "fold_batchnorm", "fold_before"]


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
