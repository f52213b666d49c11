"""Fast CPU/GPU inference: a derived, eval-only copy of a trained model, verified to give the same logits.

``optimize_for_inference(model)`` never touches the training model. It returns a new module that

* folds every BatchNorm into the convolution next to it (exact in real arithmetic: eval-mode BN is a per-channel
  affine map) — after the conv (``conv -> BN``: ConvNeXt blocks, stem, UNet's DoubleConv, ResUNet, attention gates)
  and before it where nothing sits in between (``BN -> conv 2x2 stride 2`` of ConvUNeXt's down stages);
* runs channels-last (NHWC) — oneDNN's fast layout for convolutions on CPU;
* for ConvUNeXt, replaces the blocks by *fused* kernels (``fuse=True``). Every 1x1 layer of ConvUNeXt acts per
  pixel, so a block's MLP ``pwconv1 -> GELU -> pwconv2 -> + residual -> GELU`` and the whole gated decoder stage
  (gate, forget gate, ``sigmoid``/``tanh`` arithmetic, output layer, concatenation, 1x1 fusion) can be computed
  band by band over the pixels with matrix products into small reused buffers and in-place activations. The
  ``4 x dim`` hidden activation (118 MB for one 480x480 image) is never materialised: each band's is a few MB and
  stays in cache, and the glibc allocator, which maps every temporary over 32 MiB fresh from the OS (page faults
  cost ~25% of the authors' model's time), sees far fewer large allocations. Linear maps that follow each other
  are multiplied together (the gate's output layer into the fusion conv) and the two layers that read the
  upsampled deep input share one matrix product;
* optionally goes through ``torch.compile`` (``compile=True``; applied to the folded channels-last model, which
  inductor fuses itself; the first call compiles, ~1 minute on a 2-core CPU).

The result is an :class:`InferenceModel` (``N x C x H x W`` in, contiguous ``N x K x H x W`` logits out); it
always runs without autograd. :class:`OnnxRuntimeModule` runs an exported ONNX model with ONNX Runtime behind the
same interface (see :mod:`convunext.inference.export`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConvUNeXtError
from ..models.blocks import (
    ConvNeXtBlock,
    DownStage,
    GatedUpStage,
    LayerNorm2d,
    ReflectConv2d,
    SkipGate,
    Stem,
    upsample_to,
)
from ..models.convunext import ConvUNeXt

__all__ = [
    "BACKENDS",
    "FastConvUNeXt",
    "InferenceModel",
    "OnnxRuntimeModule",
    "fold_batchnorm",
    "make_backend",
    "optimize_for_inference",
]

BACKENDS = ("eager", "fast", "compile", "onnx")
"""Inference back-ends of :func:`make_backend` (and ``convunext predict --backend``)."""

CHANNELS_LAST = torch.channels_last
MIN_SIZE_KEY = "convunext.min_input_size"
"""Metadata key of exported files holding the smallest image side the graph accepts."""

# Elements of one band's widest temporary (1 Mi floats = 4 MiB): small enough to stay in L2/L3 cache and far
# below glibc's 32 MiB mmap threshold, large enough that the matrix products run near peak.
DEFAULT_BAND_ELEMENTS = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm folding


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` (float64, length C) with ``bn(x) == x * scale + shift`` in eval mode, or ``None``.

    ``None`` when ``bn`` is not a BatchNorm using running statistics (then it is not a fixed affine map).
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _fold_after(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weights of ``bn(conv(x))`` as one conv: ``weight`` is ``out x in/g x kh x kw``; returns float32 tensors."""
    affine = _bn_affine(bn)
    assert affine is not None
    scale, shift = affine
    w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = (bias.double() if bias is not None else torch.zeros_like(scale)) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def _fold_before(bn: nn.Module, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weights of ``conv(bn(x))`` as one conv; exact only for a dense conv *without padding* (zero padding
    would see ``shift`` at the border instead of 0)."""
    affine = _bn_affine(bn)
    assert affine is not None
    scale, shift = affine
    w64 = weight.double()
    b = bias.double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
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
                if _bn_affine(norm) is not None:
                    _set_conv(conv, *_fold_after(conv.weight, conv.bias, norm))
                    setattr(module, norm_name, nn.Identity())
                    count += 1
        elif isinstance(module, Stem):
            if _bn_affine(module.norm) is not None:
                _set_conv(module.conv, *_fold_after(module.conv.weight, module.conv.bias, module.norm))
                module.norm = nn.Identity()
                count += 1
        elif isinstance(module, DownStage):
            reduce = module.reduce
            if _foldable_conv(reduce) and reduce.padding == (0, 0) and reduce.groups == 1:  # type: ignore[union-attr]
                if _bn_affine(module.norm) is not None:
                    _set_conv(reduce, *_fold_before(module.norm, reduce.weight, reduce.bias))  # type: ignore[arg-type]
                    module.norm = nn.Identity()
                    count += 1
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names[:-1], names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if _foldable_conv(conv) and _bn_affine(norm) is not None:
                    _set_conv(conv, *_fold_after(conv.weight, conv.bias, norm))  # type: ignore[arg-type]
                    module._modules[second] = nn.Identity()
                    count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------
# Fused ConvUNeXt


def _flat(x: Tensor) -> Tensor:
    """The ``(N*H*W) x C`` pixel-major view of a channels-last ``N x C x H x W`` tensor (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _empty_nhwc(n: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    return torch.empty((n, c, h, w), dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)


def _activation_(kind: str) -> Callable[[Tensor], Tensor]:
    """The in-place form of activation ``kind`` (``"gelu"``, exact erf form, or ``"relu"``)."""
    if kind == "gelu":
        return torch.ops.aten.gelu_
    if kind == "relu":
        return torch.relu_
    raise ConvUNeXtError(f"cannot fuse activation {kind!r}")


def _activation_kind(module: nn.Module) -> str:
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ConvUNeXtError(f"cannot fuse activation {module!r}")


def _tanh_(x: Tensor) -> Tensor:
    """In-place ``tanh`` as ``2 * sigmoid(2x) - 1`` (within 2e-7 absolute; ~4x faster than ``tanh`` on CPU)."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def _same_conv(x: Tensor, weight: Tensor, bias: Tensor, padding: int, groups: int) -> Tensor:
    """:class:`ReflectConv2d`'s convolution (reflect padding, replicate on maps too small to reflect)."""
    if padding:
        x = F.pad(x, (padding,) * 4, mode="reflect" if min(x.shape[-2:]) > padding else "replicate")
    return F.conv2d(x, weight, bias, groups=groups).contiguous(memory_format=CHANNELS_LAST)


def _band(rows: int, width: int, band_elements: int) -> int:
    """Pixels per band so that a ``band x width`` temporary holds about ``band_elements`` values."""
    return max(64, min(rows, band_elements // max(width, 1)))


class FusedConvNeXtBlock(nn.Module):
    """:class:`~convunext.models.blocks.ConvNeXtBlock` with BN folded and its per-pixel MLP fused band by band.

    ``y = dwconv'(x)`` (one oneDNN call, BN folded in), then for each band of pixels
    ``h = act(y_b W1 + b1)``; ``y_b <- act(x_b + b2' + h W2')`` written over ``y`` itself, so the block allocates the
    padded input and one output map only. With ``head`` (the network's last 1x1 conv) the logits of each band are
    computed while it is in cache. Shape: ``N x dim x H x W`` (channels-last) ``-> N x dim x H x W`` (or
    ``N x K x H x W`` with ``head``).
    """

    def __init__(self, block: ConvNeXtBlock, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        dw, pw1, pw2 = block.dwconv, block.pwconv1, block.pwconv2
        if not isinstance(dw, ReflectConv2d):
            raise ConvUNeXtError("cannot fuse a block whose large convolution is not a ReflectConv2d")
        dw_w, dw_b = _fold_after(dw.weight, dw.bias, block.norm1)
        pw2_w, pw2_b = _fold_after(pw2.weight, pw2.bias, block.norm2)
        self.dim, self.hidden = pw1.in_channels, pw1.out_channels
        self.padding, self.groups = dw.same_padding, dw.groups
        self.register_buffer("dw_weight", dw_w.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("dw_bias", dw_b)
        self.register_buffer("w1", pw1.weight.detach().reshape(self.hidden, self.dim).t().contiguous())
        self.register_buffer("b1", pw1.bias.detach().clone())
        self.register_buffer("w2", pw2_w.reshape(self.dim, self.hidden).t().contiguous())
        self.register_buffer("b2", pw2_b)
        self.act = _activation_kind(block.act)
        self.resnet = not isinstance(block.out_act, nn.Identity)
        self.band_elements = band_elements

    def forward(self, x: Tensor, head: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``x``: channels-last ``N x dim x H x W``; ``head``: ``(W_head^T [dim x K], b_head [K])`` or ``None``."""
        act_ = _activation_(self.act)
        y = _same_conv(x, self.dw_weight, self.dw_bias, self.padding, self.groups)
        n, _, h, w = y.shape
        x = x.contiguous(memory_format=CHANNELS_LAST)
        xf, yf = _flat(x), _flat(y)
        pixels = xf.shape[0]
        band = _band(pixels, self.hidden, self.band_elements)
        hidden = torch.empty((band, self.hidden), dtype=y.dtype, device=y.device)
        out = y
        if head is not None:
            out = _empty_nhwc(n, head[0].shape[1], h, w, y)
        of = _flat(out)
        for start in range(0, pixels, band):
            stop = min(start + band, pixels)
            hb = hidden[: stop - start]
            yb = yf[start:stop]
            act_(torch.addmm(self.b1, yb, self.w1, out=hb))
            torch.add(xf[start:stop], self.b2, out=yb)  # y_b is consumed: reuse it for the output
            yb.addmm_(hb, self.w2)
            if self.resnet:
                act_(yb)
            if head is not None:
                torch.addmm(head[1], yb, head[0], out=of[start:stop])
        return out


class FusedStem(nn.Module):
    """ConvUNeXt's stem with BN folded into the conv and the activation in place, then a fused block."""

    def __init__(self, stem: Stem, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        conv = stem.conv
        w, b = _fold_after(conv.weight, conv.bias, stem.norm)
        self.padding = conv.same_padding
        self.register_buffer("weight", w.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", b)
        self.act = _activation_kind(stem.act)
        self.block = FusedConvNeXtBlock(stem.block, band_elements)

    def forward(self, x: Tensor) -> Tensor:
        """Channels-last ``N x in x H x W`` -> ``N x C x H x W``."""
        y = _same_conv(x, self.weight, self.bias, self.padding, 1)
        return self.block(_activation_(self.act)(y))


class FusedDownStage(nn.Module):
    """:class:`~convunext.models.blocks.DownStage` with its BN folded into the stride-2 conv (exact: no padding);
    with max-pool downsampling the BN stays a separate affine map (max-pool does not commute with a negative scale).
    """

    def __init__(self, stage: DownStage, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        reduce = stage.reduce
        self.maxpool = not isinstance(reduce, nn.Conv2d)
        if self.maxpool:
            conv = reduce[1]  # type: ignore[index]
            affine = _bn_affine(stage.norm)
            assert affine is not None
            scale, shift = affine
            self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
            self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
            w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        else:
            w, b = _fold_before(stage.norm, reduce.weight, reduce.bias)  # type: ignore[arg-type]
        self.register_buffer("weight", w.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", b)
        self.blocks = nn.ModuleList(FusedConvNeXtBlock(block, band_elements) for block in stage.blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Channels-last ``N x in x H x W`` -> ``N x out x floor(H/2) x floor(W/2)``."""
        if self.maxpool:
            x = F.conv2d(F.max_pool2d(torch.addcmul(self.shift, x, self.scale), 2), self.weight, self.bias)
        else:
            x = F.conv2d(x, self.weight, self.bias, stride=2)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        for block in self.blocks:
            x = block(x)
        return x


class FusedGatedUpStage(nn.Module):
    """:class:`~convunext.models.blocks.GatedUpStage` computed band by band over the pixels.

    The BN on the deep input is applied at low resolution (bilinear upsampling commutes with it, the zero padding
    for odd sizes does not, so it is not folded). With ``u`` the upsampled deep input and ``s`` the skip, per band::

        [g1 | g2 | g3 | f] = u [W_gate | W_fuse_u] + b          # one product for both layers reading u
        s' = sigmoid((g1 + s) W_forget + b_forget) * s + sigmoid(g2) * tanh(g3)
        z  = f + s' (W_out W_fuse_s)                            # gate output layer folded into the fusion conv

    which equals ``fuse(concat[W_out s' + b_out, u])`` without the concatenation. Then a fused block.
    Shape: deep ``N x c x h x w``, skip ``N x c x H x W`` -> ``N x out x H x W`` (``N x K x H x W`` with ``head``).
    """

    def __init__(self, stage: GatedUpStage, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        affine = _bn_affine(stage.norm)
        assert affine is not None
        scale, shift = affine
        c = stage.fuse.in_channels // 2
        out = stage.fuse.out_channels
        self.c, self.out = c, out
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
        fuse_w = stage.fuse.weight.detach().double().reshape(out, 2 * c)
        fuse_b = stage.fuse.bias.detach().double()
        w_skip, w_up = fuse_w[:, :c], fuse_w[:, c:]  # concat order is [skip, upsampled]
        gate: SkipGate | None = stage.gate
        self.gated = gate is not None
        if gate is not None:
            gate_w = gate.gate.weight.detach().double().reshape(3 * c, c)
            out_w = gate.out.weight.detach().double().reshape(c, c)
            w_u = torch.cat([gate_w, w_up])  # (3c + out) x c
            b_u = torch.cat([gate.gate.bias.detach().double(), fuse_b + w_skip @ gate.out.bias.detach().double()])
            w_s = w_skip @ out_w  # out x c
            self.register_buffer("w_forget", gate.forget.weight.detach().reshape(c, c).t().contiguous())
            self.register_buffer("b_forget", gate.forget.bias.detach().clone())
        else:
            w_u, b_u, w_s = w_up, fuse_b, w_skip
        dtype = stage.fuse.weight.dtype
        self.register_buffer("w_u", w_u.t().contiguous().to(dtype))
        self.register_buffer("b_u", b_u.to(dtype))
        self.register_buffer("w_s", w_s.t().contiguous().to(dtype))
        self.block = FusedConvNeXtBlock(stage.block, band_elements)
        self.band_elements = band_elements

    def forward(self, x1: Tensor, x2: Tensor, head: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Deep ``x1`` and skip ``x2`` (channels-last) -> the stage output (``head``: see the fused block)."""
        c = self.c
        up = upsample_to(torch.addcmul(self.shift, x1, self.scale), x2).contiguous(memory_format=CHANNELS_LAST)
        x2 = x2.contiguous(memory_format=CHANNELS_LAST)
        n, _, h, w = x2.shape
        z = _empty_nhwc(n, self.out, h, w, x2)
        uf, sf, zf = _flat(up), _flat(x2), _flat(z)
        pixels = uf.shape[0]
        width = self.w_u.shape[1]
        band = _band(pixels, width, self.band_elements)
        g_buf = torch.empty((band, width), dtype=z.dtype, device=z.device)
        s_buf = torch.empty((band, c), dtype=z.dtype, device=z.device) if self.gated else g_buf
        t_buf = torch.empty((band, c), dtype=z.dtype, device=z.device) if self.gated else g_buf
        for start in range(0, pixels, band):
            stop = min(start + band, pixels)
            m = stop - start
            g = torch.addmm(self.b_u, uf[start:stop], self.w_u, out=g_buf[:m])
            skip = sf[start:stop]
            if self.gated:
                g1, g2, g3, f = g[:, :c], g[:, c : 2 * c], g[:, 2 * c : 3 * c], g[:, 3 * c :]
                t = torch.add(g1, skip, out=t_buf[:m])
                s = torch.addmm(self.b_forget, t, self.w_forget, out=s_buf[:m]).sigmoid_()
                s.mul_(skip).addcmul_(g2.sigmoid_(), _tanh_(g3))
                torch.addmm(f, s, self.w_s, out=zf[start:stop])
            else:
                torch.addmm(g, skip, self.w_s, out=zf[start:stop])
        return self.block(z, head)


class FastConvUNeXt(nn.Module):
    """Eval-only fused ConvUNeXt built from a trained :class:`~convunext.models.ConvUNeXt` (BatchNorm only).

    Same logits as the source model in eval mode (float32 rounding apart, well within 1e-4 relative), computed
    channels-last with fused per-pixel kernels (see the module docstring). It keeps no reference to the source
    model. Shape: ``N x in_channels x H x W -> N x num_classes x H x W`` (channels-last strides).
    """

    def __init__(self, model: ConvUNeXt, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        if not fusable(model):
            raise ConvUNeXtError("FastConvUNeXt needs a ConvUNeXt with BatchNorm (running statistics) everywhere")
        self.in_channels, self.num_classes = model.in_channels, model.num_classes
        self.stem = FusedStem(model.stem, band_elements)
        self.downs = nn.ModuleList(
            FusedDownStage(stage, band_elements) for stage in (model.down1, model.down2, model.down3, model.down4)
        )
        self.ups = nn.ModuleList(
            FusedGatedUpStage(stage, band_elements) for stage in (model.up1, model.up2, model.up3, model.up4)
        )
        k, c = model.head.out_channels, model.head.in_channels
        self.register_buffer("head_weight", model.head.weight.detach().reshape(k, c).t().contiguous())
        self.register_buffer("head_bias", model.head.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """``N x in_channels x H x W`` images -> ``N x num_classes x H x W`` logits (channels-last)."""
        with torch.no_grad():
            skips = [self.stem(x.contiguous(memory_format=CHANNELS_LAST))]
            for down in self.downs:
                skips.append(down(skips[-1]))
            x = skips.pop()
            last = len(self.ups) - 1
            for i, up in enumerate(self.ups):
                x = up(x, skips.pop(), (self.head_weight, self.head_bias) if i == last else None)
            return x


def fusable(model: nn.Module) -> bool:
    """Whether :class:`FastConvUNeXt` can be built from ``model``: a ConvUNeXt whose norms are all BatchNorms with
    running statistics and whose activations are ReLU or exact GELU."""
    if not isinstance(model, ConvUNeXt):
        return False
    for module in model.modules():
        if isinstance(module, LayerNorm2d):
            return False
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _bn_affine(module) is None:
            return False
        if isinstance(module, nn.GELU) and module.approximate != "none":
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# The public entry points


class InferenceModel(nn.Module):
    """An eval-only inference module: converts the input's memory format, runs ``module`` without autograd and
    returns contiguous ``N x K x H x W`` logits.

    Attributes:
        module: the optimised network (fused, folded, or compiled).
        description: what was applied, e.g. ``"fused+bn-folded+channels-last"``.
    """

    def __init__(self, module: nn.Module, channels_last: bool, description: str) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.description = description
        self.eval()

    def train(self, mode: bool = True) -> InferenceModel:
        """Always stays in eval mode (the folded BatchNorms have no training behaviour)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> ``N x K x H x W`` logits."""
        if self.channels_last:
            x = x.contiguous(memory_format=CHANNELS_LAST)
        with torch.no_grad():
            out = self.module(x)
        return out.contiguous()


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    fuse: bool = True,
    compile: bool = False,
    band_elements: int = DEFAULT_BAND_ELEMENTS,
) -> InferenceModel:
    """A new eval-only model computing ``model``'s eval-mode logits faster; ``model`` itself is not modified.

    Args:
        model: any registry model (trained or not), in any mode.
        channels_last: run in NHWC memory format (oneDNN's fast path on CPU).
        fold_bn: fold BatchNorms into adjacent convolutions (:func:`fold_batchnorm`).
        fuse: for ConvUNeXt with BatchNorm, use :class:`FastConvUNeXt` (fused per-pixel kernels, BN folded and
            channels-last whatever the two flags above say). Ignored for other models and with ``compile``.
        compile: ``torch.compile`` the (folded, channels-last) model; the first call compiles (slow).
        band_elements: size of the fused kernels' band buffers, in values.

    Returns:
        An :class:`InferenceModel`: ``N x C x H x W -> N x K x H x W`` logits equal to ``model.eval()(x)`` within
        float32 rounding (1e-4 relative), for any size the source model accepts, odd sizes included.
    """
    source = copy.deepcopy(model).eval()
    for p in source.parameters():
        p.requires_grad_(False)
    if fuse and not compile and fusable(source):
        fast = FastConvUNeXt(source, band_elements)  # type: ignore[arg-type]
        return InferenceModel(fast, True, "fused+bn-folded+channels-last")
    parts = []
    if fold_bn and fold_batchnorm(source):
        parts.append("bn-folded")
    if channels_last:
        source = source.to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload]
        parts.append("channels-last")
    module: nn.Module = source
    if compile:
        module = torch.compile(source)  # type: ignore[assignment]
        parts.insert(0, "compiled")
    return InferenceModel(module, channels_last, "+".join(parts) or "eager")


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConvUNeXtError(
            "the ONNX backend needs onnxruntime, an optional extra: pip install 'convunext[onnx]'"
        ) from None
    return onnxruntime


class OnnxRuntimeModule(nn.Module):
    """Runs an ONNX model (file path or serialized bytes) with ONNX Runtime; takes and returns torch tensors.

    Args:
        model: path of a ``.onnx`` file or its bytes (input ``N x C x H x W`` float32, output the logits).
        num_threads: intra-op threads (default: ``torch.get_num_threads()``).
        providers: ONNX Runtime execution providers (default CPU, or CUDA first when available).

    Raises:
        ConvUNeXtError: onnxruntime is not installed, or the model cannot be loaded.
    """

    def __init__(
        self, model: str | Path | bytes, num_threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        super().__init__()
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            name = "the ONNX model" if isinstance(model, bytes) else str(model)
            raise ConvUNeXtError(f"{name}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[-1].name  # several outputs (deep supervision): the last
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.min_size = int(metadata.get(MIN_SIZE_KEY, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` float tensor -> ``N x K x H x W`` logits (float32, on ``x``'s device).

        Raises:
            ConvUNeXtError: an image side below the exported graph's minimum (64 px for ConvUNeXt).
        """
        if min(x.shape[-2:]) < self.min_size:
            raise ConvUNeXtError(
                f"input {'x'.join(map(str, x.shape))} is too small for the ONNX model: every side must be at least "
                f"{self.min_size} px (use the eager or fast backend for smaller images)"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)


def make_backend(model: nn.Module, backend: str = "eager") -> nn.Module:
    """``model`` prepared for inference by ``backend``: ``"eager"`` (the model itself), ``"fast"``
    (:func:`optimize_for_inference`), ``"compile"`` (the same plus ``torch.compile``) or ``"onnx"`` (exported
    in memory and run by :class:`OnnxRuntimeModule`). The source model is never modified.

    Raises:
        ConvUNeXtError: unknown backend, or onnx/onnxruntime missing for ``"onnx"``.
    """
    if backend == "eager":
        return model
    if backend == "fast":
        return optimize_for_inference(model)
    if backend == "compile":
        return optimize_for_inference(model, compile=True)
    if backend == "onnx":
        from .export import export_onnx_bytes

        _require_onnxruntime()
        return OnnxRuntimeModule(export_onnx_bytes(model))
    raise ConvUNeXtError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def timed_first_call(model: nn.Module, x: Tensor) -> float:
    """Seconds taken by the first call of ``model`` on ``x`` (for ``torch.compile``: the compile time)."""
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start
