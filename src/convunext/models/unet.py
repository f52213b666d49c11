"""UNet: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional networks for biomedical image segmentation",
MICCAI 2015 — the bilinear-upsampling variant of the widely used PyTorch reference lineage (WZMIAOMIAO's
``deep-learning-for-image-processing`` UNet, from which the ConvUNeXt authors' code derives).

Layer plan (``C = width``; every conv 3x3 is bias-free and followed by BN + ReLU; see :class:`DoubleConv`):

* encoder (:class:`UNetEncoder`): ``in_conv = DoubleConv(in, C)``, then max-pool 2x2 + DoubleConv
  ``C -> 2C``, ``2C -> 4C``, ``4C -> 8C``, ``8C -> 8C`` (the bottom is ``16C // 2``: halved because the decoder
  upsamples bilinearly and so cannot halve the width itself);
* decoder (:class:`UpConcat`): bilinear x2, zero-pad to the skip, ``concat[skip, up]``, then
  ``DoubleConv(in, out, mid=in // 2)``: ``16C -> 4C``, ``8C -> 2C``, ``4C -> C``, ``2C -> C``;
* head: conv 1x1 ``C -> num_classes`` (with bias).

At the defaults (``in_channels=3, num_classes=2, width=32``) it has **4,318,434** parameters.

:class:`UNetBase` is this network with an optional gate on every skip; Attention UNet reuses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import SegmentationModel, check_channels
from .registry import register_model
from .unet_blocks import UNetEncoder, UpConcat, unet_up_unit

__all__ = ["GateFactory", "UNet", "UNetBase", "unet_widths"]

GateFactory = Callable[[int, int], nn.Module]
"""Builds a skip gate from ``(gate_channels, skip_channels)``; called as ``gate(upsampled_deep, skip)``."""


def unet_widths(width: int) -> tuple[int, int, int, int, int]:
    """Encoder widths of the bilinear UNet: ``(C, 2C, 4C, 8C, 8C)`` for ``C = width`` (bottom halved)."""
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


class EncoderDecoderNet(SegmentationModel):
    """The wiring the UNet family shares: ``encoder`` returns its skip maps (shallowest first) and the bottom map,
    each of ``ups`` (deepest first) upsamples the map and fuses it with one skip, and a 1x1 ``head`` gives the
    logits. Subclasses build the three modules.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W``.
    """

    encoder: nn.Module
    ups: nn.ModuleList
    head: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x in_channels x H x W`` image batch -> ``N x num_classes x H x W`` logits."""
        *skips, x = self.encoder(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


class UNetBase(EncoderDecoderNet):
    """The bilinear UNet, optionally with a gate on each skip connection (``gate=None``: plain UNet).

    Args:
        in_channels: channels of the input image.
        num_classes: output channels (logits), background included.
        width: base width ``C``; the encoder has ``C, 2C, 4C, 8C, 8C`` channels.
        gate: factory of the skip gates, called with ``(gate_channels, skip_channels)`` for each decoder stage.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, gate: GateFactory | None = None) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            check_channels(name, value)
        self.in_channels, self.num_classes = in_channels, num_classes
        widths = unet_widths(width)
        self.encoder = UNetEncoder(in_channels, widths)
        skips = widths[-2::-1]  # 8C, 4C, 2C, C: the skip of each decoder stage, deepest first
        outs = (*skips[1:], width)  # 4C, 2C, C, C
        ups, deep = [], widths[-1]
        for skip, out in zip(skips, outs):
            ups.append(UpConcat(deep + skip, out, unet_up_unit, gate(deep, skip) if gate else None))
            deep = out
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(width, num_classes, 1)


@register_model("unet")
class UNet(UNetBase):
    """UNet (Ronneberger et al. 2015), bilinear variant; 4,318,434 parameters at the defaults.

    Args:
        in_channels: channels of the input image (3 for RGB, 1 for grey).
        num_classes: output channels, background included (binary segmentation uses 2 and softmax).
        width: base width ``C``; the encoder has ``C, 2C, 4C, 8C, 8C`` channels.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 32) -> None:
        super().__init__(in_channels, num_classes, width)
