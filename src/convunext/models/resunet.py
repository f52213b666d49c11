"""ResUNet: Z. Zhang, Q. Liu, Y. Wang, "Road extraction by deep residual U-Net", IEEE Geoscience and Remote
Sensing Letters 15(5), 2018 — a UNet built from pre-activation residual units.

Unit (:class:`PreActResidualUnit`): ``BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 3x3`` plus a shortcut
(identity, or conv 1x1 + BN when the width changes); the input unit drops the leading ``BN -> ReLU``.
Convolutions are bias-free.

Layer plan (``C = width``), adapted to the other baselines so the comparison is like-for-like:

* encoder (:class:`UNetEncoder`): input unit ``in -> C``, then four stages ``max-pool 2x2 -> units``:
  ``C -> 2C`` (1 unit), ``2C -> 4C`` (1), ``4C -> 8C`` (3), ``8C -> 8C`` (1). The paper downsamples with a
  stride-2 first convolution and has three levels; we use four max-pool levels and UNet's halved ``8C`` bottom
  like the other baselines (so odd sizes floor the same way), and ConvUNeXt's ``(1, 1, 3, 1)`` stage depths;
* decoder (:class:`UpConcat`): bilinear x2, zero-pad to the skip, ``concat[skip, up]``, one residual unit back
  to the skip's width: ``16C -> 8C``, ``12C -> 4C``, ``6C -> 2C``, ``3C -> C``;
* head: conv 1x1 ``C -> num_classes`` (with bias).

At the defaults (``in_channels=3, num_classes=2, width=32``) it has **7,502,338** parameters, the largest of
the five models: ConvUNeXt's 3,505,730 are **0.467** of it (the ConvUNeXt paper reports ~46%).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from .base import check_channels
from .registry import register_model
from .unet import EncoderDecoderNet, unet_widths
from .unet_blocks import PreActResidualUnit, UNetEncoder, UpConcat

__all__ = ["ResUNet"]


@register_model("resunet")
class ResUNet(EncoderDecoderNet):
    """ResUNet (Zhang, Liu & Wang 2018): a UNet of pre-activation residual units; 7,502,338 parameters at the
    defaults (ConvUNeXt / ResUNet = 0.467).

    Args:
        in_channels: channels of the input image (3 for RGB, 1 for grey).
        num_classes: output channels, background included (binary segmentation uses 2 and softmax).
        width: base width ``C``; the encoder has ``C, 2C, 4C, 8C, 8C`` channels.
        depths: residual units in each of the four encoder stages (default ``(1, 1, 3, 1)``).

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, width: int = 32, depths: Sequence[int] = (1, 1, 3, 1)
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            check_channels(name, value)
        depths = tuple(depths)
        if len(depths) != 4 or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in depths):
            raise ValueError(f"depths={depths!r} is not valid; give four positive unit counts, e.g. (1, 1, 3, 1)")
        self.in_channels, self.num_classes = in_channels, num_classes
        widths = unet_widths(width)
        self.encoder = UNetEncoder(
            in_channels, widths, PreActResidualUnit, partial(PreActResidualUnit, first=True), depths
        )
        ups, deep = [], widths[-1]
        for skip in widths[-2::-1]:  # 8C, 4C, 2C, C
            ups.append(UpConcat(deep + skip, skip, PreActResidualUnit))
            deep = skip
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(width, num_classes, 1)
