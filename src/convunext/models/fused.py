"""Memory-lean fused training kernels for ConvUNeXt's per-pixel layers (opt-in, results unchanged).

Two per-pixel chains dominate ConvUNeXt's activation memory: the blocks' inverted-bottleneck MLP and the decoder's
gated skip fusion. Both are computed here by custom autograd functions on bands of pixels of channels-last tensors:
the forward pass saves only its inputs, the backward pass recomputes each band's intermediates in cache.

**MLP** (:func:`pointwise_mlp`).

In a ConvUNeXt block the MLP ``1x1 conv (dim -> 4 dim) -> GELU -> 1x1 conv (4 dim -> dim)`` acts on every pixel
independently. Autograd's plain version keeps the ``4 x dim`` pre-activation and activation for the backward pass
and allocates their gradients there: per full-resolution block of a batch of 4 at 256x256 that is four 134 MB
tensors, each a fresh ``mmap`` + page faults under glibc's default allocator (3.3 GB of faults per training step
for the whole network). :func:`pointwise_mlp` computes the MLP on bands of pixels of a channels-last tensor
instead: the forward pass saves only the input; the backward pass recomputes each band's hidden activation in
cache (one extra ``dim x 4 dim`` product, +17% of the MLP's FLOPs) and accumulates the weight gradients band by
band. Results equal the plain MLP up to float32 rounding; parameters are the model's own ``nn.Conv2d`` weights.

**Gated fusion** (:func:`gated_fusion`): the decoder's ``[g1 g2 g3] = W_g u``,
``s' = sigmoid(W_f (g1 + s)) * s + sigmoid(g2) * tanh(g3)``, ``z = W_fuse [W_o s', u]`` — a dozen full-size
temporaries (and as many gradients) in autograd's version, none here.

:func:`enable_fused_training` switches every ConvNeXt block and gated decoder stage of a model to them; they take
effect on channels-last tensors (``train.channels_last``) and compose with activation checkpointing. With several
intra-op threads the pixels are split into one range per thread, run by :mod:`convunext.utils.threads` workers
(one intra-op thread each; weight gradients are accumulated per range and summed).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.threads import ranges, run_tasks, workers

__all__ = ["DEFAULT_BAND_ELEMENTS", "enable_fused_training", "gated_fusion", "pointwise_mlp"]

DEFAULT_BAND_ELEMENTS = 1 << 20
"""Values of one band's widest temporary (4 MiB in float32): stays in cache, far below glibc's mmap threshold."""


def _activation_kind(act: nn.Module) -> str | None:
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    if isinstance(act, nn.ReLU):
        return "relu"
    return None


class _BandedMLP(torch.autograd.Function):
    """``out = act(x W1^T + b1) W2^T + b2`` on ``P x C`` rows, band by band; backward recomputes the hidden."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, kind: str, band: int
    ) -> Tensor:
        pixels, hidden = x.shape[0], w1.shape[0]
        out = x.new_empty((pixels, w2.shape[0]))
        w1t, w2t = w1.t(), w2.t()
        act_ = torch.ops.aten.gelu_ if kind == "gelu" else torch.relu_

        def chunk(first: int, last: int) -> None:
            buffer = x.new_empty((min(band, last - first), hidden))
            for start in range(first, last, band):
                stop = min(last, start + band)
                h = torch.addmm(b1, x[start:stop], w1t, out=buffer[: stop - start])
                act_(h)
                torch.addmm(b2, h, w2t, out=out[start:stop])

        run_tasks([functools.partial(chunk, *r) for r in ranges(pixels, workers(x.device))])
        ctx.save_for_backward(x, w1, b1, w2)
        ctx.kind, ctx.band = kind, band
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w1, b1, w2 = ctx.saved_tensors
        grad = grad.contiguous()
        pixels, hidden, band, kind = x.shape[0], w1.shape[0], ctx.band, ctx.kind
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_b2 = grad.sum(0)
        w1t = w1.t()
        parts = ranges(pixels, workers(x.device))
        partials = [(torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)) for _ in parts]

        def chunk(first: int, last: int, grad_w1: Tensor, grad_b1: Tensor, grad_w2: Tensor) -> None:
            rows = min(band, last - first)
            pre_buf, act_buf, grad_buf = (x.new_empty((rows, hidden)) for _ in range(3))
            for start in range(first, last, band):
                stop = min(last, start + band)
                m = stop - start
                xb, gb = x[start:stop], grad[start:stop]
                pre = torch.addmm(b1, xb, w1t, out=pre_buf[:m])
                if kind == "gelu":
                    act = torch._C._nn.gelu(pre, out=act_buf[:m])
                else:
                    act = torch.clamp_min(pre, 0.0, out=act_buf[:m])
                grad_w2.addmm_(gb.t(), act)
                grad_h = torch.mm(gb, w2, out=grad_buf[:m])
                if kind == "gelu":
                    grad_pre = torch.ops.aten.gelu_backward.grad_input(grad_h, pre, grad_input=act)  # act is spent
                else:
                    grad_pre = grad_h.masked_fill_(pre <= 0, 0.0)
                grad_w1.addmm_(grad_pre.t(), xb)
                grad_b1.add_(grad_pre.sum(0))
                if grad_x is not None:
                    torch.mm(grad_pre, w1, out=grad_x[start:stop])

        run_tasks([functools.partial(chunk, *r, *acc) for r, acc in zip(parts, partials)])
        grad_w1, grad_b1, grad_w2 = (torch.stack(list(g)).sum(0) if len(g) > 1 else g[0] for g in zip(*partials))
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None


def pointwise_mlp(
    x: Tensor, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d, band_elements: int | None = None
) -> Tensor:
    """``fc2(act(fc1(x)))`` for 1x1 convolutions ``fc1``, ``fc2`` (with bias) and a GELU/ReLU ``act``.

    Computed band by band (see the module docstring) when ``x`` is channels-last and the layers qualify, else by
    the plain modules. Shape: ``N x C x H x W -> N x C_out x H x W`` (channels-last strides when fused).
    """
    kind = _activation_kind(act)
    plain = (
        kind is None
        or fc1.bias is None
        or fc2.bias is None
        or fc1.kernel_size != (1, 1)
        or fc2.kernel_size != (1, 1)
        or fc1.groups != 1
        or fc2.groups != 1
        or not x.is_contiguous(memory_format=torch.channels_last)
        or x.dtype != fc1.weight.dtype
        or torch.is_autocast_enabled(x.device.type)
    )
    if plain:
        return fc2(act(fc1(x)))
    n, c, h, w = x.shape
    hidden, out_channels = fc1.out_channels, fc2.out_channels
    band = max(64, (band_elements or DEFAULT_BAND_ELEMENTS) // hidden)
    flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = _BandedMLP.apply(
        flat, fc1.weight.view(hidden, c), fc1.bias, fc2.weight.view(out_channels, hidden), fc2.bias, kind, band
    )
    return out.view(n, h, w, out_channels).permute(0, 3, 1, 2)


def _tanh(x: Tensor) -> Tensor:
    """``tanh`` as ``2 sigmoid(2x) - 1`` (within 2e-7 absolute; about 4x faster than ``torch.tanh`` on CPU)."""
    return (x * 2.0).sigmoid_().mul_(2.0).sub_(1.0)


class _BandedGate(torch.autograd.Function):
    """ConvUNeXt's gated skip fusion on ``P x c`` rows, band by band (see :func:`gated_fusion`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        s: Tensor,
        wg: Tensor,
        bg: Tensor,
        wf: Tensor,
        bf: Tensor,
        wo: Tensor,
        bo: Tensor,
        wz: Tensor,
        bz: Tensor,
        band: int,
    ) -> Tensor:
        pixels, c = u.shape
        out = u.new_empty((pixels, wz.shape[0]))
        wa, wb = wz[:, :c], wz[:, c:]  # the concatenation is [gated skip, upsampled]

        def chunk(first: int, last: int) -> None:
            for start in range(first, last, band):
                stop = min(last, start + band)
                ub, sb = u[start:stop], s[start:stop]
                g = torch.addmm(bg, ub, wg.t())
                g1, g2, g3 = g[:, :c], g[:, c : 2 * c], g[:, 2 * c :]
                f = torch.addmm(bf, g1 + sb, wf.t()).sigmoid_()
                gated = f.mul_(sb).addcmul_(g2.sigmoid(), _tanh(g3))
                o = torch.addmm(bo, gated, wo.t())
                torch.addmm(bz, o, wa.t(), out=out[start:stop]).addmm_(ub, wb.t())

        run_tasks([functools.partial(chunk, *r) for r in ranges(pixels, workers(u.device))])
        ctx.save_for_backward(u, s, wg, bg, wf, bf, wo, bo, wz)
        ctx.band = band
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, s, wg, bg, wf, bf, wo, bo, wz = ctx.saved_tensors
        grad = grad.contiguous()
        pixels, c = u.shape
        band = ctx.band
        wa, wb = wz[:, :c], wz[:, c:]
        grad_u, grad_s = torch.empty_like(u), torch.empty_like(s)
        gbz = grad.sum(0)
        parts = ranges(pixels, workers(u.device))
        partials = [tuple(torch.zeros_like(t) for t in (wg, bg, wf, bf, wo, bo, wz)) for _ in parts]

        def chunk(first: int, last: int, gwg: Tensor, gbg: Tensor, gwf: Tensor, gbf: Tensor, gwo: Tensor,
                  gbo: Tensor, gwz: Tensor) -> None:  # fmt: skip
            gwa, gwb = gwz[:, :c], gwz[:, c:]
            for start in range(first, last, band):
                stop = min(last, start + band)
                ub, sb, dz = u[start:stop], s[start:stop], grad[start:stop]
                # recompute the band's forward
                g = torch.addmm(bg, ub, wg.t())
                g1, g2, g3 = g[:, :c], g[:, c : 2 * c], g[:, 2 * c :]
                t = g1 + sb
                f = torch.addmm(bf, t, wf.t()).sigmoid_()
                sig2, tanh3 = g2.sigmoid(), _tanh(g3)
                gated = torch.addcmul(sig2 * tanh3, f, sb)
                o = torch.addmm(bo, gated, wo.t())
                # z = o Wa^T + u Wb^T + bz
                gwa.addmm_(dz.t(), o)
                gwb.addmm_(dz.t(), ub)
                d_o = dz @ wa
                torch.mm(dz, wb, out=grad_u[start:stop])
                # o = gated Wo^T + bo
                gwo.addmm_(d_o.t(), gated)
                gbo.add_(d_o.sum(0))
                d_gated = d_o @ wo
                # gated = f * s + sig2 * tanh3
                torch.mul(d_gated, f, out=grad_s[start:stop])
                d_pre_f = (d_gated * sb).mul_(f).mul_(1.0 - f)  # through the sigmoid
                d_g = torch.empty_like(g)
                torch.mul(d_gated * tanh3, sig2 * (1.0 - sig2), out=d_g[:, c : 2 * c])
                torch.mul(d_gated * sig2, 1.0 - tanh3 * tanh3, out=d_g[:, 2 * c :])
                # f = sigmoid(t Wf^T + bf), t = g1 + s
                gwf.addmm_(d_pre_f.t(), t)
                gbf.add_(d_pre_f.sum(0))
                torch.mm(d_pre_f, wf, out=d_g[:, :c])  # d t = d g1
                grad_s[start:stop] += d_g[:, :c]
                # g = u Wg^T + bg
                gwg.addmm_(d_g.t(), ub)
                gbg.add_(d_g.sum(0))
                grad_u[start:stop].addmm_(d_g, wg)

        run_tasks([functools.partial(chunk, *r, *acc) for r, acc in zip(parts, partials)])
        gwg, gbg, gwf, gbf, gwo, gbo, gwz = (
            torch.stack(list(g)).sum(0) if len(g) > 1 else g[0] for g in zip(*partials)
        )
        return grad_u, grad_s, gwg, gbg, gwf, gbf, gwo, gbo, gwz, gbz, None


def gated_fusion(u: Tensor, s: Tensor, gate: nn.Module, fuse: nn.Conv2d, band_elements: int | None = None) -> Tensor:
    """``fuse(concat[gate(u, s), u])`` of a :class:`~convunext.models.blocks.GatedUpStage` (``gate`` its
    :class:`~convunext.models.blocks.SkipGate`), computed band by band when ``u`` and ``s`` are channels-last.

    Shape: upsampled ``u`` and skip ``s``, both ``N x c x H x W`` -> ``N x out x H x W``.
    """
    convs = (gate.gate, gate.forget, gate.out, fuse)
    plain = (
        any(conv.bias is None or conv.kernel_size != (1, 1) or conv.groups != 1 for conv in convs)
        or not u.is_contiguous(memory_format=torch.channels_last)
        or not s.is_contiguous(memory_format=torch.channels_last)
        or u.dtype != fuse.weight.dtype
        or torch.is_autocast_enabled(u.device.type)
    )
    if plain:
        return fuse(torch.cat([gate(u, s), u], dim=1))
    n, c, h, w = u.shape
    out_channels = fuse.out_channels
    band = max(64, (band_elements or DEFAULT_BAND_ELEMENTS) // (4 * c + out_channels))
    flat_u = u.permute(0, 2, 3, 1).reshape(n * h * w, c)
    flat_s = s.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = _BandedGate.apply(
        flat_u,
        flat_s,
        gate.gate.weight.view(3 * c, c),
        gate.gate.bias,
        gate.forget.weight.view(c, c),
        gate.forget.bias,
        gate.out.weight.view(c, c),
        gate.out.bias,
        fuse.weight.view(out_channels, 2 * c),
        fuse.bias,
        band,
    )
    return out.view(n, h, w, out_channels).permute(0, 3, 1, 2)


def enable_fused_training(model: nn.Module, enabled: bool = True) -> int:
    """Switch every ConvNeXt block (MLP) and gated decoder stage of ``model`` to the fused kernels (or back with
    ``enabled=False``); returns how many modules were switched. Weights, state_dict and results are unchanged; the
    kernels take effect on channels-last tensors (``model.to(memory_format=torch.channels_last)``)."""
    from .blocks import ConvNeXtBlock, GatedUpStage

    count = 0
    for module in model.modules():
        if isinstance(module, ConvNeXtBlock):
            module.fused_mlp = enabled
            count += 1
        elif isinstance(module, GatedUpStage):
            module.fused_gate = enabled
            count += 1
    return count
