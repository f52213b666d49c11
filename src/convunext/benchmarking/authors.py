"""ConvUNeXt written the way the authors' reference code writes it — a **benchmark-only** baseline.

The reference implementation (Han, Jian & Wang 2022) computes every 1x1 layer inside the blocks and the decoder
gates as ``nn.Linear`` on tensors permuted to ``N x H x W x C`` and back, with no fusion: each permute, GELU,
``sigmoid``/``tanh`` product and the concatenation materialises a full-size tensor. Layer names and the module
tree follow the reference code, so the parity fixture's ``state_dict`` loads into :class:`AuthorsConvUNeXt`
unchanged (``strict=True``) and reproduces its outputs; :func:`authors_from_convunext` copies the weights of a
package :class:`~convunext.models.ConvUNeXt`, so the benchmark compares identical networks computed two ways.

Differences kept deliberately small: ``forward`` returns the logits tensor (the reference returns ``{"out": logits}``);
reflect padding fails on maps of 3 pixels or fewer as in the reference (inputs below 64 px per side).
Not registered in the model registry: use :class:`~convunext.models.ConvUNeXt` for everything but benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convunext import ConvUNeXt, rename_reference_key

__all__ = ["AuthorsConvUNeXt", "authors_from_convunext"]


class AuthorsBlock(nn.Module):
    """The reference ``Conv`` block: dwconv 7x7 (reflect) -> BN -> permute -> Linear -> GELU -> Linear -> permute
    -> BN -> GELU(residual + x). Shape: ``N x dim x H x W -> N x dim x H x W``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, padding_mode="reflect")
        self.norm1 = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act1 = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.norm1(self.dwconv(x))
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act1(self.pwconv1(x)))
        x = x.permute(0, 3, 1, 2)
        x = self.norm2(x)
        return self.act2(residual + x)


class AuthorsDown(nn.Sequential):
    """``BN -> conv 2x2 stride 2 -> blocks`` as one ``nn.Sequential`` (reference keys ``downN.0``, ``.1``, ``.2..``)."""

    def __init__(self, in_channels: int, out_channels: int, layer_num: int = 1) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2),
            *(AuthorsBlock(out_channels) for _ in range(layer_num)),
        )


class AuthorsUp(nn.Module):
    """The reference decoder stage: BN, bilinear x2, zero pad, gate with ``nn.Linear`` on permuted tensors,
    ``cat``, conv 1x1, block. Shape: deep ``N x in/2 x h x w``, skip ``N x in/2 x H x W`` -> ``N x out x H x W``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        c = in_channels // 2
        self.norm = nn.BatchNorm2d(c)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.gate = nn.Linear(c, 3 * c)
        self.linear1 = nn.Linear(c, c)
        self.linear2 = nn.Linear(c, c)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv = nn.Sequential(AuthorsBlock(out_channels))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(self.norm(x1))
        diff_y = x2.size(2) - x1.size(2)
        diff_x = x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        n, c, h, w = x1.shape
        x1 = x1.permute(0, 2, 3, 1)
        x2 = x2.permute(0, 2, 3, 1)
        gate = self.gate(x1).reshape(n, h, w, 3, c).permute(3, 0, 1, 2, 4)
        g1, g2, g3 = gate[0], gate[1], gate[2]
        x2 = torch.sigmoid(self.linear1(g1 + x2)) * x2 + torch.sigmoid(g2) * torch.tanh(g3)
        x2 = self.linear2(x2)
        x1 = x1.permute(0, 3, 1, 2)
        x2 = x2.permute(0, 3, 1, 2)
        return self.conv(self.conv1x1(torch.cat([x2, x1], dim=1)))


class AuthorsConvUNeXt(nn.Module):
    """The authors' ConvUNeXt (bilinear, base width ``base_c``), layer for layer as in their code.

    Shape: ``N x in_channels x H x W -> N x num_classes x H x W`` for ``H, W >= 64``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_c: int = 32) -> None:
        super().__init__()
        c = base_c
        self.in_channels, self.num_classes = in_channels, num_classes
        self.in_conv = nn.Sequential(
            nn.Conv2d(in_channels, c, kernel_size=7, padding=3, padding_mode="reflect"),
            nn.BatchNorm2d(c),
            nn.GELU(),
            AuthorsBlock(c),
        )
        self.down1 = AuthorsDown(c, 2 * c)
        self.down2 = AuthorsDown(2 * c, 4 * c)
        self.down3 = AuthorsDown(4 * c, 8 * c, layer_num=3)
        self.down4 = AuthorsDown(8 * c, 8 * c)
        self.up1 = AuthorsUp(16 * c, 4 * c)
        self.up2 = AuthorsUp(8 * c, 2 * c)
        self.up3 = AuthorsUp(4 * c, c)
        self.up4 = AuthorsUp(2 * c, c)
        self.out_conv = nn.Sequential(nn.Conv2d(c, num_classes, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.in_conv(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.out_conv(x)


def authors_from_convunext(model: ConvUNeXt) -> AuthorsConvUNeXt:
    """An :class:`AuthorsConvUNeXt` holding ``model``'s weights and BN statistics (same logits, computed the
    authors' way). ``model`` must have the reference architecture (the defaults; any ``in_channels``,
    ``num_classes``, ``width``) and is not modified."""
    authors = AuthorsConvUNeXt(model.in_channels, model.num_classes, model.stem.conv.out_channels)
    source = model.state_dict()
    state = {}
    for key, target in authors.state_dict().items():
        tensor = source[rename_reference_key(key)]
        state[key] = tensor.reshape(target.shape).clone()
    authors.load_state_dict(state, strict=True)
    return authors.train(model.training)
