"""ConvUNeXt's building blocks, and the helpers every model's constructor uses.

Every module here works on NCHW tensors. :class:`ConvNeXtBlock`, :class:`Stem`, :class:`DownStage` and
:class:`GatedUpStage` keep the ablation knobs of the paper's Section 3 (one :class:`BlockOptions` value, so a whole
network is re-configured from its constructor); they compute with the ops of :mod:`convunext.models.layers`, read
the switches of :class:`~convunext.models.base.SegmentationModel` and build their own fast inference form
(``fast_form()``, see :mod:`convunext.models.fast`), refusing with a clear error the options it does not support.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConvUNeXtError
from .fast import FastBlock, FastDownStage, FastStem, FastUpStage
from .layers.activations import activation_kind
from .layers.banding import DEFAULT_BAND_ELEMENTS, flat, from_rows, rows_eligible
from .layers.folding import bn_affine, fold_after, fold_before, require_bn_affine
from .layers.gate import GateWeights, banded_gate, fold_gate
from .layers.mlp import banded_mlp
from .layers.padding import ReflectConv2d
from .layers.recompute import maybe_recompute
from .layers.upsample import upsample_to

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


FAST_FORM_OPTIONS: dict[str, tuple[object, ...] | None] = {
    "kernel_size": None,
    "depthwise": None,
    "expansion": None,
    "act": ("gelu", "relu"),
    "norm": ("bn",),
    "residual": ("resnet", "convnext"),
}
"""The :class:`BlockOptions` values the fast forms support (``None``: every valid value). A field missing here
(a new option) makes every fast form refuse the block, so no option is ever silently ignored."""


def _options_problem(options: BlockOptions) -> str | None:
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name not in FAST_FORM_OPTIONS:
            return f"the fast form does not know the option {field.name}={value!r}"
        allowed = FAST_FORM_OPTIONS[field.name]
        if allowed is not None and value not in allowed:
            return f"{field.name}={value!r} has no fast form (it supports {', '.join(map(repr, allowed))})"
    return None


def _modules_problem(acts: tuple[nn.Module, ...], norms: tuple[nn.Module, ...]) -> str | None:
    for act in acts:
        if activation_kind(act) is None:
            return f"the activation {act!r} has no fast form (it supports exact GELU and ReLU)"
    for norm in norms:
        if bn_affine(norm) is None:
            return f"{norm!r} has no fast form (it needs BatchNorm with running statistics)"
    return None


def _refuse(stage: nn.Module) -> None:
    problem = stage.fast_form_problem()  # type: ignore[operator]
    if problem is not None:
        raise ConvUNeXtError(f"{type(stage).__name__}: {problem}")


class ConvNeXtBlock(nn.Module):
    """ConvUNeXt's basic unit: large-kernel conv, norm, inverted-bottleneck MLP, norm, residual.

    ``x -> dwconv(k x k, reflect padding) -> norm1 -> pwconv1 (dim -> e*dim) -> act -> pwconv2 (e*dim -> dim)``
    ``-> norm2``, then ``act(x + input)`` (ResNet style, the paper's choice) or ``x + input`` (ConvNeXt style).
    The 1x1 layers are convolutions, so the block stays NCHW end to end. Switches: ``grad_checkpointing``,
    ``fused_training`` (the MLP through :func:`~convunext.models.layers.mlp.banded_mlp` on channels-last inputs, and
    the depthwise convolution through :func:`~convunext.models.layers.depthwise.depthwise_conv7` on channels-last
    float32 CPU inputs in training, see :meth:`~convunext.models.layers.padding.ReflectConv2d.takes_compiled`),
    ``exportable`` (neither: plain operators for graph export).

    Shape: ``N x dim x H x W -> N x dim x H x W``.
    """

    def __init__(self, dim: int, options: BlockOptions = BlockOptions()) -> None:
        super().__init__()
        self.options = options
        k = options.kernel_size
        hidden = dim * options.expansion
        self.dwconv = ReflectConv2d(dim, dim, k, groups=dim if options.depthwise else 1)
        self.norm1 = make_norm(options.norm, dim)
        self.pwconv1 = nn.Conv2d(dim, hidden, 1)
        self.act = make_activation(options.act)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = make_norm(options.norm, dim)
        self.out_act = make_activation(options.act) if options.residual == "resnet" else nn.Identity()
        self.grad_checkpointing = False
        self.fused_training = False
        self.exportable = False  # see SegmentationModel.set_exportable: plain operators only
        self.band_elements = DEFAULT_BAND_ELEMENTS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_recompute(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.dwconv(x, compiled=self.fused_training))
        kind = activation_kind(self.act)
        fused = self.fused_training and not self.exportable and kind is not None
        if fused and rows_eligible(self.pwconv1.weight.dtype, y):
            y = from_rows(banded_mlp(flat(y), *self._mlp_matrices(), kind, band_elements=self.band_elements), y)
        else:
            y = self.pwconv2(self.act(self.pwconv1(y)))
        return self.out_act(self.norm2(y) + x)

    def _mlp_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w1 dim x hidden, b1, w2 hidden x dim, b2)``: views of the 1x1 convs as the MLP op takes them."""
        hidden, dim = self.pwconv1.weight.shape[:2]
        w1, w2 = self.pwconv1.weight.view(hidden, dim).t(), self.pwconv2.weight.view(dim, hidden).t()
        return w1, self.pwconv1.bias, w2, self.pwconv2.bias

    def fast_form_problem(self) -> str | None:
        """Why this block has no fast form, or ``None``."""
        return _options_problem(self.options) or _modules_problem((self.act,), (self.norm1, self.norm2))

    def fast_form(self, band_elements: int = DEFAULT_BAND_ELEMENTS) -> FastBlock:
        """The eval-only, BN-folded, banded, in-place form of this block (:class:`~convunext.models.fast.FastBlock`).

        Raises:
            ConvUNeXtError: an option or layer the fast form does not support (:meth:`fast_form_problem`).
        """
        _refuse(self)
        dw_w, dw_b = fold_after(self.dwconv.weight, self.dwconv.bias, self.norm1)
        w2, b2 = fold_after(self.pwconv2.weight, self.pwconv2.bias, self.norm2)
        w1, b1 = self._mlp_matrices()[:2]
        dim, hidden = w1.shape
        return FastBlock(
            (dw_w, dw_b, self.dwconv.same_padding, self.dwconv.groups),
            (w1.detach().clone(), b1.detach().clone(), w2.reshape(dim, hidden).t(), b2),
            activation_kind(self.act),  # type: ignore[arg-type]
            self.options.residual == "resnet",
            band_elements,
        )


def make_blocks(dim: int, depth: int, options: BlockOptions) -> nn.Sequential:
    """``depth`` consecutive :class:`ConvNeXtBlock` of width ``dim``."""
    return nn.Sequential(*(ConvNeXtBlock(dim, options) for _ in range(depth)))


class Stem(nn.Module):
    """ConvUNeXt's input stage: ``conv k x k (reflect) -> norm -> act -> ConvNeXtBlock``.

    Shape: ``N x in_channels x H x W -> N x width x H x W``.
    """

    def __init__(self, in_channels: int, width: int, options: BlockOptions = BlockOptions()) -> None:
        super().__init__()
        self.options = options
        self.conv = ReflectConv2d(in_channels, width, options.kernel_size)
        self.norm = make_norm(options.norm, width)
        self.act = make_activation(options.act)
        self.block = ConvNeXtBlock(width, options)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_recompute(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.norm(self.conv(x))))

    def fast_form_problem(self) -> str | None:
        """Why this stage has no fast form, or ``None``."""
        own = _options_problem(self.options) or _modules_problem((self.act,), (self.norm,))
        return own or self.block.fast_form_problem()

    def fast_form(self, band_elements: int = DEFAULT_BAND_ELEMENTS) -> FastStem:
        """The fast form (:class:`~convunext.models.fast.FastStem`); raises ``ConvUNeXtError`` like
        :meth:`ConvNeXtBlock.fast_form`."""
        _refuse(self)
        w, b = fold_after(self.conv.weight, self.conv.bias, self.norm)
        kind = activation_kind(self.act)
        return FastStem((w, b, self.conv.same_padding), kind, self.block.fast_form(band_elements), band_elements)  # type: ignore[arg-type]


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
        self.options, self.downsample = options, downsample
        self.norm = make_norm(options.norm, in_channels)
        if downsample == "conv":
            self.reduce: nn.Module = nn.Conv2d(in_channels, out_channels, 2, stride=2)
        else:
            self.reduce = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(in_channels, out_channels, 1))
        self.blocks = make_blocks(out_channels, depth, options)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_recompute(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.reduce(self.norm(x)))

    def fast_form_problem(self) -> str | None:
        """Why this stage has no fast form, or ``None``."""
        if self.downsample not in ("conv", "maxpool"):
            return f"downsample={self.downsample!r} has no fast form (it supports 'conv', 'maxpool')"
        own = _options_problem(self.options) or _modules_problem((), (self.norm,))
        return own or next((p for b in self.blocks if (p := b.fast_form_problem()) is not None), None)

    def fast_form(self, band_elements: int = DEFAULT_BAND_ELEMENTS) -> FastDownStage:
        """The fast form (:class:`~convunext.models.fast.FastDownStage`); raises ``ConvUNeXtError`` like
        :meth:`ConvNeXtBlock.fast_form`."""
        _refuse(self)
        blocks = [block.fast_form(band_elements) for block in self.blocks]
        if self.downsample == "conv":
            conv = fold_before(self.norm, self.reduce.weight, self.reduce.bias)  # type: ignore[arg-type]
            return FastDownStage(conv, None, blocks, band_elements)
        pointwise = self.reduce[1]  # type: ignore[index]
        dtype = pointwise.weight.dtype
        affine = tuple(t.to(dtype) for t in require_bn_affine(self.norm))
        conv = (pointwise.weight.detach().clone(), pointwise.bias.detach().clone())
        return FastDownStage(conv, affine, blocks, band_elements)  # type: ignore[arg-type]


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
    ``concat[x2, x1] -> conv 1x1 (in -> out) -> ConvNeXtBlock(out)``. Switches: ``exportable`` (plain PyTorch
    operators only), ``fused_training`` (gate and fusion through :func:`~convunext.models.layers.gate.banded_gate`
    on channels-last inputs, unless exportable).

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
        self.options, self.attention_gate = options, attention_gate
        self.norm = make_norm(options.norm, half)
        self.gate = SkipGate(half) if attention_gate else None
        self.fuse = nn.Conv2d(in_channels, out_channels, 1)
        self.block = ConvNeXtBlock(out_channels, options)
        self.exportable = False
        self.fused_training = False
        self.grad_checkpointing = False
        self.band_elements = DEFAULT_BAND_ELEMENTS

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return maybe_recompute(self, self._forward, x1, x2)

    def _forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = upsample_to(self.norm(x1), x2, self.exportable)
        if self.fused_training and not self.exportable and rows_eligible(self.fuse.weight.dtype, x1, x2):
            z = from_rows(banded_gate(flat(x1), flat(x2), self.gate_weights(), self.band_elements), x2)
        else:
            if self.gate is not None:
                x2 = self.gate(x1, x2)
            z = self.fuse(torch.cat([x2, x1], dim=1))
        return self.block(z)

    def gate_weights(self, dtype: torch.dtype | None = None) -> GateWeights:
        """The gate and fusion conv folded for :mod:`convunext.models.layers.gate` (differentiable; computed in
        ``dtype`` when given)."""
        convs = (self.fuse,) if self.gate is None else (self.fuse, self.gate.gate, self.gate.forget, self.gate.out)
        tensors = [t.to(dtype) if dtype else t for conv in convs for t in (conv.weight.flatten(1), conv.bias)]
        return fold_gate(tensors[0], tensors[1], tuple(tensors[2:]) if self.gate is not None else None)  # type: ignore[arg-type]

    def fast_form_problem(self) -> str | None:
        """Why this stage has no fast form, or ``None``."""
        return _options_problem(self.options) or _modules_problem((), (self.norm,)) or self.block.fast_form_problem()

    def fast_form(self, band_elements: int = DEFAULT_BAND_ELEMENTS) -> FastUpStage:
        """The fast form (:class:`~convunext.models.fast.FastUpStage`); raises ``ConvUNeXtError`` like
        :meth:`ConvNeXtBlock.fast_form`."""
        _refuse(self)
        dtype = self.fuse.weight.dtype
        with torch.no_grad():
            weights = self.gate_weights(torch.float64).map(lambda t: t.to(dtype))
        affine = tuple(t.to(dtype) for t in require_bn_affine(self.norm))
        return FastUpStage(affine, weights, self.block.fast_form(band_elements), band_elements)  # type: ignore[arg-type]
