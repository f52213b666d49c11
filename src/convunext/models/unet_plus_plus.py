"""UNet++: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A nested U-Net architecture for
medical image segmentation", DLMIA 2018 (MICCAI workshop).

Nested, dense skip pathways: node ``X^{i,j}`` (depth ``i``, ``j``-th node along the skip) is

* ``j = 0``: the encoder, exactly UNet's (:class:`UNetEncoder`): ``X^{0,0} = DoubleConv(in, C)``, then
  max-pool + DoubleConv to ``2C, 4C, 8C, 8C``;
* ``j > 0``: ``DoubleConv(concat[X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})])`` with ``width_i`` outputs, ``up`` the
  bilinear x2 upsampling zero-padded to ``X^{i,0}``'s size (:class:`UpConcat`).

Widths (``C = width``): ``width_i = C, 2C, 4C, 8C, 8C`` for ``i = 0..4``. We chose the **halved bottom** of the
bilinear UNet (``8C`` rather than the paper's ``16C`` at ``X^{4,0}``) so that UNet, Attention UNet and UNet++ share
one encoder and differ only in their skip pathways, as in the paper's comparison; the full ``16C`` bottom would
give 9,159,714 parameters, more than ResUNet, which the ConvUNeXt paper reports as the largest model.
Convolutions are 3x3, bias-free, each followed by BN + ReLU; the heads are 1x1 convolutions ``C -> num_classes``.

With ``deep_supervision=True`` there is a head on each of ``X^{0,1}, X^{0,2}, X^{0,3}, X^{0,4}``; in training mode
``forward`` returns all four logits (the last, from ``X^{0,4}``, is the main output), in eval mode only the main one.

At the defaults (``in_channels=3, num_classes=2, width=32``) it has **6,209,570** parameters
(**6,209,768** with ``deep_supervision=True``: three extra 66-parameter heads).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel, check_channels
from .registry import register_model
from .unet import unet_widths
from .unet_blocks import DoubleConv, UNetEncoder, UpConcat

__all__ = ["UNetPlusPlus"]


@register_model("unet_plus_plus")
class UNetPlusPlus(SegmentationModel):
    """UNet++ (Zhou et al. 2018) with nested dense skips, bilinear upsampling and optional deep supervision.

    Args:
        in_channels: channels of the input image (3 for RGB, 1 for grey).
        num_classes: output channels, background included (binary segmentation uses 2 and softmax).
        width: base width ``C``; the nodes ``X^{i,j}`` of depth ``i = 0..4`` have ``C, 2C, 4C, 8C, 8C`` channels.
        deep_supervision: add heads on ``X^{0,1}``, ``X^{0,2}``, ``X^{0,3}`` and return them in training.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included);
        with ``deep_supervision=True`` in training mode, a list of four such tensors
        ``[from X^{0,1}, X^{0,2}, X^{0,3}, X^{0,4}]`` whose last entry is the main output.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, width: int = 32, deep_supervision: bool = False
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            check_channels(name, value)
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision={deep_supervision!r} is not valid; use True or False")
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        widths = unet_widths(width)
        self.depth = len(widths) - 1  # 4 downsamplings
        self.encoder = UNetEncoder(in_channels, widths)
        # nodes[f"x{i}_{j}"] builds X^{i,j} (j >= 1) from X^{i+1,j-1} and X^{i,0..j-1}.
        self.nodes = nn.ModuleDict(
            {
                f"x{i}_{j}": UpConcat(j * widths[i] + widths[i + 1], widths[i], DoubleConv)
                for j in range(1, self.depth + 1)
                for i in range(self.depth + 1 - j)
            }
        )
        self.head = nn.Conv2d(width, num_classes, 1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(self.depth - 1)) if deep_supervision else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``N x in_channels x H x W`` images -> ``N x num_classes x H x W`` logits (a list of 4 when deep
        supervision is on and the module is training)."""
        grid: list[list[torch.Tensor]] = [[feature] for feature in self.encoder(x)]  # grid[i][j] = X^{i,j}
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                grid[i].append(self.nodes[f"x{i}_{j}"](grid[i + 1][j - 1], *grid[i][:j]))
        main = self.head(grid[0][self.depth])
        if self.aux_heads is None or not self.training:
            return main
        return [head(feature) for head, feature in zip(self.aux_heads, grid[0][1:])] + [main]
