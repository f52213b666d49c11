"""Building blocks shared by the models of this package.

Every module here works on NCHW tensors. The ConvUNeXt pieces (:class:`ConvNeXtBlock`,
:class:`DownStage`, :class:`GatedUpStage`) expose the ablation knobs of the paper's Section 3 through
one :class:`BlockOptions` value, so a whole network can be re-configured from its constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ActivationName = Literal["gelu", "relu"]
NormName = Literal["bn", "ln"]
ResidualStyle = Literal["resnet", "convnext"]
DownsampleName = Literal["conv", "maxpool"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}
NORMS = ("bn", "ln")
RESIDUAL_STYLES = ("resnet", "convnext")
DOWNSAMPLES = ("conv", "maxpool")


def check_choice(name: str, value: object, choices: tuple[object, ...] | list[object]) -> None:
    """Raise ``ValueError`` naming ``name`` and the valid ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an ``N x C x H x W`` tensor (the "channels first" LayerNorm of ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


def make_norm(kind: str, channels: int) -> nn.Module:
    """``BatchNorm2d`` for ``"bn"``, channels-first ``LayerNorm`` for ``"ln"``."""
    check_choice("norm", kind, NORMS)
    return nn.BatchNorm2d(channels) if kind == "bn" else LayerNorm2d(channels, eps=1e-6)


def make_activation(kind: str) -> nn.Module:
    """A fresh activation module: ``"gelu"`` or ``"relu"``."""
    check_choice("act", kind, tuple(ACTIVATIONS))
    return ACTIVATIONS[kind]()


class ReflectConv2d(nn.Conv2d):
    """A "same" convolution with reflect padding (ConvUNeXt's choice) that keeps working on tiny maps.

    Reflect padding by ``p`` needs ``p`` < H and W; on smaller maps (the bottom of the network for inputs under
    ``16 * (p + 1)`` pixels, where the authors' model raises an error) it falls back to replicate padding.
    Weights and outputs equal ``nn.Conv2d(..., padding=k // 2, padding_mode="reflect")`` wherever that works.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, groups=groups)
        self.same_padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.same_padding
        if p:
            x = F.pad(x, (p, p, p, p), mode="reflect" if min(x.shape[-2:]) > p else "replicate")
        return super().forward(x)


@dataclass(frozen=True)
class BlockOptions:
    """The per-block ablation knobs of ConvUNeXt (paper Section 3). Defaults are the paper's choices.

    Attributes:
        kernel_size: spatial kernel of the block's large convolution (paper tried 3/5/7/9; odd only).
        depthwise: depthwise (groups = channels) large convolution; ``False`` makes it a dense convolution.
        expansion: width multiplier of the inverted bottleneck MLP; ``1`` turns the inverted bottleneck off.
        act: ``"gelu"`` or ``"relu"``.
        norm: ``"bn"`` (BatchNorm) or ``"ln"`` (channels-first LayerNorm).
        residual: ``"resnet"`` (activation after the sum) or ``"convnext"`` (plain sum).
    """

    kernel_size: int = 7
    depthwise: bool = True
    expansion: int = 4
    act: ActivationName = "gelu"
    norm: NormName = "bn"
    residual: ResidualStyle = "resnet"

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size!r} is not valid; use an odd positive integer (3, 5, 7, 9)")
        if not isinstance(self.expansion, int) or self.expansion < 1:
            raise ValueError(f"expansion={self.expansion!r} is not valid; use a positive integer (4 = paper, 1 = off)")
        check_choice("act", self.act, tuple(ACTIVATIONS))
        check_choice("norm", self.norm, NORMS)
        check_choice("residual", self.residual, RESIDUAL_STYLES)


class ConvNeXtBlock(nn.Module):
    """ConvUNeXt's basic unit: large-kernel conv, norm, inverted-bottleneck MLP, norm, residual.

    ``x -> dwconv(k x k, reflect padding) -> norm1 -> pwconv1 (dim -> e*dim) -> act -> pwconv2 (e*dim -> dim)``
    ``-> norm2``, then ``act(x + input)`` (ResNet style, the paper's choice) or ``x + input`` (ConvNeXt style).
    The 1x1 layers are convolutions, so the block stays NCHW end to end. With ``fused_mlp`` (set by
    :func:`~convunext.models.fused.enable_fused_training`) the MLP runs band by band on channels-last inputs.

    Shape: ``N x dim x H x W -> N x dim x H x W``.
    """

    def __init__(self, dim: int, options: BlockOptions = BlockOptions()) -> None:
        super().__init__()
        k = options.kernel_size
        hidden = dim * options.expansion
        self.dwconv = ReflectConv2d(dim, dim, k, groups=dim if options.depthwise else 1)
        self.norm1 = make_norm(options.norm, dim)
        self.pwconv1 = nn.Conv2d(dim, hidden, 1)
        self.act = make_activation(options.act)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = make_norm(options.norm, dim)
        self.out_act = make_activation(options.act) if options.residual == "resnet" else nn.Identity()
        self.fused_mlp = False  # see convunext.models.fused.enable_fused_training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.dwconv(x))
        if self.fused_mlp:
            from .fused import pointwise_mlp

            y = pointwise_mlp(y, self.pwconv1, self.act, self.pwconv2)
        else:
            y = self.pwconv2(self.act(self.pwconv1(y)))
        return self.out_act(self.norm2(y) + x)


def make_blocks(dim: int, depth: int, options: BlockOptions) -> nn.Sequential:
    """``depth`` consecutive :class:`ConvNeXtBlock` of width ``dim``."""
    return nn.Sequential(*(ConvNeXtBlock(dim, options) for _ in range(depth)))


class Stem(nn.Module):
    """ConvUNeXt's input stage: ``conv k x k (reflect) -> norm -> act -> ConvNeXtBlock``.

    Shape: ``N x in_channels x H x W -> N x width x H x W``.
    """

    def __init__(self, in_channels: int, width: int, options: BlockOptions = BlockOptions()) -> None:
        super().__init__()
        self.conv = ReflectConv2d(in_channels, width, options.kernel_size)
        self.norm = make_norm(options.norm, width)
        self.act = make_activation(options.act)
        self.block = ConvNeXtBlock(width, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.norm(self.conv(x))))


class DownStage(nn.Module):
    """Halve the resolution, change the width, then run ``depth`` blocks.

    ``norm(in) -> conv 2x2 stride 2 (in -> out)`` (the paper's choice) or, with ``downsample="maxpool"``,
    ``norm(in) -> max-pool 2x2 -> conv 1x1 (in -> out)``; then ``depth`` x :class:`ConvNeXtBlock`.

    Shape: ``N x in_channels x H x W -> N x out_channels x floor(H/2) x floor(W/2)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        options: BlockOptions = BlockOptions(),
        downsample: DownsampleName = "conv",
    ) -> None:
        super().__init__()
        check_choice("downsample", downsample, DOWNSAMPLES)
        self.norm = make_norm(options.norm, in_channels)
        if downsample == "conv":
            self.reduce: nn.Module = nn.Conv2d(in_channels, out_channels, 2, stride=2)
        else:
            self.reduce = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(in_channels, out_channels, 1))
        self.blocks = make_blocks(out_channels, depth, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.reduce(self.norm(x)))


def upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Upsample ``x`` by 2 (bilinear, ``align_corners=True``) and zero-pad it to ``reference``'s H, W.

    The zero padding is split evenly, extra pixel at the bottom/right, as in UNet; it handles the odd sizes
    the encoder produces by flooring at each stride-2 step. Shape: ``N x C x h x w -> N x C x H x W``.
    """
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    dy = reference.shape[-2] - x.shape[-2]
    dx = reference.shape[-1] - x.shape[-1]
    if dy or dx:
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
    return x


class SkipGate(nn.Module):
    """ConvUNeXt's LSTM-inspired attention gate on a skip connection (all "linear" layers are 1x1 convs).

    With the upsampled deep features ``x1`` and the skip ``x2`` (both ``N x c x H x W``)::

        g1, g2, g3 = split(W_gate x1, 3)
        x2 = sigmoid(W_forget (g1 + x2)) * x2 + sigmoid(g2) * tanh(g3)
        return W_out x2

    Shape: ``(N x c x H x W, N x c x H x W) -> N x c x H x W``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels, 3 * channels, 1)
        self.forget = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        g1, g2, g3 = self.gate(x1).chunk(3, dim=1)
        x2 = torch.sigmoid(self.forget(g1 + x2)) * x2 + torch.sigmoid(g2) * torch.tanh(g3)
        return self.out(x2)


class GatedUpStage(nn.Module):
    """ConvUNeXt's decoder stage: upsample the deep input, gate the skip, fuse, one block.

    ``x1 <- upsample_to(norm(x1), x2)``; ``x2 <- SkipGate(x1, x2)`` (or unchanged with ``attention_gate=False``);
    ``concat[x2, x1] -> conv 1x1 (in -> out) -> ConvNeXtBlock(out)``.

    Shape: deep ``N x in/2 x h x w`` and skip ``N x in/2 x H x W`` -> ``N x out_channels x H x W``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: BlockOptions = BlockOptions(),
        attention_gate: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % 2:
            raise ValueError(f"in_channels={in_channels} must be even (deep input and skip have in_channels/2 each)")
        half = in_channels // 2
        self.norm = make_norm(options.norm, half)
        self.gate = SkipGate(half) if attention_gate else None
        self.fuse = nn.Conv2d(in_channels, out_channels, 1)
        self.block = ConvNeXtBlock(out_channels, options)
        self.fused_gate = False  # see convunext.models.fused.enable_fused_training

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = upsample_to(self.norm(x1), x2)
        if self.fused_gate and self.gate is not None:
            from .fused import gated_fusion

            return self.block(gated_fusion(x1, x2, self.gate, self.fuse))
        if self.gate is not None:
            x2 = self.gate(x1, x2)
        return self.block(self.fuse(torch.cat([x2, x1], dim=1)))


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


def check_channels(name: str, value: int) -> None:
    """Reject a non-positive or non-integer channel count with a ``ValueError`` naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; use a positive integer")


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces of the UNet-family baselines (UNet, Attention UNet, UNet++, ResUNet).

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def forward(self, deep: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        if not skips:
            raise ValueError("UpConcat needs at least one skip tensor")
        up = upsample_to(deep, skips[0])
        if self.gate is not None:
            skips = tuple(self.gate(up, skip) for skip in skips)
        return self.conv(torch.cat([*skips, up], dim=1))


def unet_up_unit(in_channels: int, out_channels: int) -> DoubleConv:
    """UNet's bilinear decoder unit: :class:`DoubleConv` with a middle width of ``in_channels // 2``."""
    return DoubleConv(in_channels, out_channels, in_channels // 2)
