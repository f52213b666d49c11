"""Building blocks of the UNet-family baselines (UNet, Attention UNet, UNet++, ResUNet).

Every module here works on NCHW tensors. :class:`DoubleConv` and :class:`PreActResidualUnit` read
``grad_checkpointing`` and :class:`UpConcat` reads ``exportable`` (switched by the model's ``set_*`` methods).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .layers.recompute import maybe_recompute
from .layers.upsample import upsample_to


class DoubleConv(nn.Sequential):
    """UNet's unit: ``(conv 3x3 -> BN -> ReLU) x 2``; the middle width defaults to ``out_channels``.

    Shape: ``N x in_channels x H x W -> N x out_channels x H x W``.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.grad_checkpointing = False  # see SegmentationModel.set_grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x in x H x W -> N x out x H x W``."""
        return maybe_recompute(self, super().forward, x)


UnitFactory = Callable[[int, int], nn.Module]
"""Builds a convolutional unit ``N x in x H x W -> N x out x H x W`` from ``(in_channels, out_channels)``."""


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit of ResUNet (Zhang, Liu & Wang 2018; He et al. 2016 "identity mappings").

    ``body = BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 3x3``, ``shortcut = conv 1x1 -> BN`` when the width
    changes (identity otherwise); the output is ``body(x) + shortcut(x)`` with no activation after the sum.
    With ``first=True`` the leading ``BN -> ReLU`` is dropped (ResUNet's input unit sees the raw image).
    All convolutions are bias-free (each is followed by a BN, or feeds one in the next unit).

    Shape: ``N x in_channels x H x W -> N x out_channels x H x W``.
    """

    def __init__(self, in_channels: int, out_channels: int, first: bool = False) -> None:
        super().__init__()
        pre: list[nn.Module] = [] if first else [nn.BatchNorm2d(in_channels), nn.ReLU()]
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.grad_checkpointing = False  # see SegmentationModel.set_grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x in x H x W -> N x out x H x W``."""
        return maybe_recompute(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class UNetEncoder(nn.Module):
    """The contracting path shared by the UNet-family baselines.

    ``in_conv = in_unit(in_channels, widths[0])`` (``in_unit`` defaults to ``unit``), then for each further
    width a stage ``max-pool 2x2 -> unit(previous, width) -> (depth - 1) x unit(width, width)``, ``depths``
    giving each stage's unit count (default one). ``forward`` returns every stage's output, shallowest first:
    the skips, then the bottom.

    Shape: ``N x in_channels x H x W -> [N x widths[i] x floor(H / 2^i) x floor(W / 2^i) for each i]``.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        unit: UnitFactory = DoubleConv,
        in_unit: UnitFactory | None = None,
        depths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        depths = tuple(depths) if depths is not None else (1,) * (len(widths) - 1)
        if not widths:
            raise ValueError("widths must name at least one stage width")
        if len(depths) != len(widths) - 1 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths={depths!r} is not valid; give {len(widths) - 1} positive unit counts")
        self.widths = widths
        self.in_conv = (in_unit or unit)(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), unit(a, b), *(unit(b, b) for _ in range(d - 1)))
            for a, b, d in zip(widths[:-1], widths[1:], depths)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.in_conv(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class AdditiveAttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net (Oktay et al. 2018), gating after upsampling.

    With the gating signal ``g`` (upsampled deep features) and the skip ``x`` at the same resolution::

        alpha = sigmoid(BN(psi(relu(BN(W_g g) + BN(W_x x)))))   # N x 1 x H x W, in [0, 1]
        return alpha * x

    ``W_g``, ``W_x`` are 1x1 convolutions to ``inter_channels`` and ``psi`` a 1x1 convolution to one channel.

    Shape: ``(N x gate_channels x H x W, N x skip_channels x H x W) -> N x skip_channels x H x W``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.relu = nn.ReLU()
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def coefficients(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``alpha`` in ``[0, 1]``: ``(N x Cg x H x W, N x Cx x H x W) -> N x 1 x H x W``."""
        return self.psi(self.relu(self.w_g(g) + self.w_x(x)))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.coefficients(g, x) * x


class UpConcat(nn.Module):
    """Decoder stage of the UNet-family baselines: upsample, (gate), concatenate, convolve.

    ``up = upsample_to(deep, skips[0])`` (bilinear x2, zero-pad to the skip's size); with a ``gate`` each skip
    becomes ``gate(up, skip)``; then ``unit(concat[*skips, up])``. One skip for UNet-like decoders, several
    for UNet++'s dense skip pathways.

    Shape: deep ``N x c x h x w`` and skips ``N x c_i x H x W`` -> ``N x out_channels x H x W``, where
    ``in_channels = c + sum(c_i)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, unit: UnitFactory = DoubleConv, gate: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.gate = gate
        self.conv = unit(in_channels, out_channels)
        self.exportable = False  # see SegmentationModel.set_exportable

    def forward(self, deep: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        if not skips:
            raise ValueError("UpConcat needs at least one skip tensor")
        up = upsample_to(deep, skips[0], self.exportable)
        if self.gate is not None:
            skips = tuple(self.gate(up, skip) for skip in skips)
        return self.conv(torch.cat([*skips, up], dim=1))


def unet_up_unit(in_channels: int, out_channels: int) -> DoubleConv:
    """UNet's bilinear decoder unit: :class:`DoubleConv` with a middle width of ``in_channels // 2``."""
    return DoubleConv(in_channels, out_channels, in_channels // 2)
