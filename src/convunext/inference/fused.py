"""Fused, memory-lean ConvUNeXt for inference (built by :func:`convunext.inference.optimize_for_inference`).

Where the time of the eager model goes on a CPU: the 1x1 layers (matrix products), GELU on the ``4 x dim`` hidden
activation, and — with glibc's default allocator — page faults: every temporary larger than 32 MiB is mapped fresh
from the OS and zero-filled by the kernel on first touch (one 480x480 hidden activation is 118 MB; the authors'
model makes ~1 GB of them per image). This module removes the large temporaries instead of asking users to change
their allocator:

* every BatchNorm is folded into the convolution before or after it (stem, blocks, down-sampling), or applied at low
  resolution (decoder: before the upsampling, whose zero padding for odd sizes does not commute with it);
* all work runs channels-last (NHWC), where every 1x1 layer is one matrix product over a contiguous block of pixels;
* each ConvNeXt block runs **band by band over image rows**: the reflect-padded rows of the band (a few hundred
  KB), the depthwise convolution of the band, ``pwconv1 -> GELU -> pwconv2 -> + residual -> GELU`` as two matrix
  products into a reused buffer with in-place activations — all in cache. The block writes its output over its
  input (each band one step behind, so the next band still reads the original rows it needs for its halo);
* each decoder stage runs band by band too: bilinear upsampling (align_corners, zero padding for odd sizes) of the
  band's rows, the gate (``[g1 g2 g3] = W u``, ``sigmoid(W_f (g1 + s)) * s + sigmoid(g2) * tanh(g3)``), the gate's
  output layer multiplied into the fusion conv, and the fusion conv's half that reads ``u`` stacked onto the gate
  matrix so both come from one product — the concatenation is never built;
* the network's 1x1 head is applied to each band of the last block while it is in cache;
* the full-size maps that must exist (skips, stage inputs) live in a per-thread workspace reused from call to call,
  so after the first call a forward pass allocates nothing large (only the returned logits);
* with several intra-op threads each image is cut into one chunk of rows per thread, and the chunks run on worker
  threads with one intra-op thread each (:mod:`convunext.utils.threads`): no thread barrier after every small
  operator, which matters on a machine shared with other busy processes.

The result equals the eager model within float32 rounding (about 1e-6 relative). ``tanh`` is computed as
``2 sigmoid(2x) - 1`` (within 2e-7 absolute, 4x faster on CPU).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConvUNeXtError
from ..models.blocks import ConvNeXtBlock, DownStage, GatedUpStage, LayerNorm2d, ReflectConv2d, SkipGate, Stem
from ..models.convunext import ConvUNeXt
from ..utils.threads import run_tasks as _run
from ..utils.threads import workers as _workers
from .folding import bn_affine, fold_after, fold_before

__all__ = [
    "DEFAULT_BAND_ELEMENTS",
    "FastConvUNeXt",
    "FusedConvNeXtBlock",
    "FusedDownStage",
    "FusedGatedUpStage",
    "FusedStem",
    "fusable",
]

CHANNELS_LAST = torch.channels_last

DEFAULT_BAND_ELEMENTS = 1 << 20
"""Values in one band's widest temporary (1 Mi floats = 4 MiB): small enough to stay in cache and far below glibc's
32 MiB mmap threshold, large enough for the matrix products to run near peak."""


class Workspace:
    """Full-size buffers reused across forward passes, one set per thread (a forward pass is not re-entrant).

    ``get(key, shape, like)`` returns the channels-last buffer stored under ``key`` when its shape, dtype and device
    match, else allocates (and keeps) a new one. Copies (``copy.deepcopy``) and pickles start empty.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(self) -> dict[str, Tensor]:
        """This thread's buffers (key -> tensor)."""
        store = getattr(self._local, "buffers", None)
        if store is None:
            store = self._local.buffers = {}
        return store

    def get(self, key: str, shape: tuple[int, int, int, int], like: Tensor) -> Tensor:
        store = self.buffers()
        buffer = store.get(key)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            store.pop(key, None)
            buffer = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)
            store[key] = buffer
        return buffer

    def clear(self) -> None:
        """Free this thread's buffers."""
        self.buffers().clear()

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()


def _flat(x: Tensor) -> Tensor:
    """The ``(N*H*W) x C`` pixel-major view of a channels-last ``N x C x H x W`` tensor (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _activation_(kind: str) -> Callable[[Tensor], Tensor]:
    """The in-place form of activation ``kind`` (``"gelu"``, exact erf form, or ``"relu"``)."""
    return torch.ops.aten.gelu_ if kind == "gelu" else torch.relu_


def _activation_kind(module: nn.Module) -> str:
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ConvUNeXtError(f"cannot fuse activation {module!r}")


def _tanh_(x: Tensor) -> Tensor:
    """In-place ``tanh`` as ``2 * sigmoid(2x) - 1`` (within 2e-7 absolute; ~4x faster than ``tanh`` on CPU)."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def _band_rows(width: int, channels: int, band_elements: int, minimum: int = 1) -> int:
    """Rows per band so that a ``rows x width x channels`` temporary holds about ``band_elements`` values."""
    return max(minimum, 1, band_elements // max(1, width * channels))


def _pad_mode(height: int, width: int, padding: int) -> str:
    """:class:`ReflectConv2d`'s rule: reflect padding, replicate on maps too small to reflect."""
    return "reflect" if min(height, width) > padding else "replicate"


def _padded_rows(x: Tensor, image: int, start: int, stop: int, padding: int, mode: str) -> Tensor:
    """Rows ``[start - p, stop + p)`` of image ``image`` of ``x`` padded by ``p`` columns each side, with
    reflect/replicate rows beyond the image edges: ``1 x C x (stop - start + 2p) x (W + 2p)``, channels-last."""
    if not padding:
        return x[image : image + 1, :, start:stop]
    height = x.shape[2]
    low, high = max(0, start - padding), min(height, stop + padding)
    top, bottom = padding - (start - low), padding - (high - stop)
    rows = x[image : image + 1, :, low:high]
    return F.pad(rows, (padding, padding, top, bottom), mode=mode).contiguous(memory_format=CHANNELS_LAST)


def _chunks(height: int, parts: int, minimum: int) -> list[tuple[int, int]]:
    """``parts`` (fewer if needed) contiguous row ranges covering ``[0, height)``, each at least ``minimum`` rows."""
    parts = max(1, min(parts, height // max(minimum, 1)))
    edges = [round(i * height / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _bands(start: int, stop: int, rows: int, minimum: int) -> list[tuple[int, int]]:
    """Row bands covering ``[start, stop)``: about ``rows`` rows each and, when the range allows, at least
    ``minimum`` (so a band's halo never reaches beyond its neighbours)."""
    length = stop - start
    count = max(1, length // max(rows, minimum, 1))
    edges = [start + round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class FusedConvNeXtBlock(nn.Module):
    """:class:`~convunext.models.blocks.ConvNeXtBlock` with BN folded, computed band by band in place.

    For each band of rows: ``y = dwconv'(padded rows)`` (norm1 folded in), ``h = act(y W1 + b1)``,
    ``y <- act(x + b2' + h W2')`` (norm2 folded in); ``y`` is then written over the band of ``x``. With ``head``
    (the network's 1x1 head) the band's logits are computed instead and ``x`` is left alone.

    Shape: channels-last ``N x dim x H x W`` -> the same tensor, overwritten (or new ``N x K x H x W`` logits).
    """

    def __init__(self, block: ConvNeXtBlock, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        dw, pw1, pw2 = block.dwconv, block.pwconv1, block.pwconv2
        if not isinstance(dw, ReflectConv2d):
            raise ConvUNeXtError("cannot fuse a block whose large convolution is not a ReflectConv2d")
        dw_w, dw_b = fold_after(dw.weight, dw.bias, block.norm1)
        pw2_w, pw2_b = fold_after(pw2.weight, pw2.bias, block.norm2)
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
        """``x``: channels-last ``N x dim x H x W`` (overwritten unless ``head``); ``head``: ``(W^T [dim x K], b)``."""
        n, _, height, width = x.shape
        p = self.padding
        mode = _pad_mode(height, width, p)
        rows = _band_rows(width, self.hidden, self.band_elements, minimum=p)
        out = None
        if head is not None:
            out = torch.empty(
                (n, head[0].shape[1], height, width), dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST
            )
        tasks = []
        for image in range(n):
            for start, stop in _chunks(height, _workers(x.device), p):
                bands = _bands(start, stop, rows, p)
                # a chunk's first and last band read rows of the neighbouring chunks, which another worker may be
                # overwriting: take their padded inputs now
                edges = {bands[0]: _padded_rows(x, image, *bands[0], p, mode)}
                edges[bands[-1]] = _padded_rows(x, image, *bands[-1], p, mode)
                tasks.append(functools.partial(self._chunk, x, out, head, image, bands, edges, mode))
        _run(tasks)
        return out if out is not None else x

    def _chunk(
        self,
        x: Tensor,
        out: Tensor | None,
        head: tuple[Tensor, Tensor] | None,
        image: int,
        bands: list[tuple[int, int]],
        edges: dict[tuple[int, int], Tensor],
        mode: str,
    ) -> None:
        """Process ``bands`` (consecutive rows of one image) in order, each band's output written one band late."""
        act_ = _activation_(self.act)
        height, width = x.shape[-2:]
        xf = _flat(x)
        of = _flat(out) if out is not None else None
        longest = max(stop - start for start, stop in bands)
        hidden = torch.empty((longest * width, self.hidden), dtype=x.dtype, device=x.device)
        pending: tuple[int, int, Tensor] | None = None  # the previous band's output, written once its rows are read
        for start, stop in bands:
            source = edges.get((start, stop))
            if source is None:
                source = _padded_rows(x, image, start, stop, self.padding, mode)
            y = F.conv2d(source, self.dw_weight, self.dw_bias, groups=self.groups)
            if pending is not None:
                xf[pending[0] : pending[1]].copy_(pending[2])
                pending = None
            yf = _flat(y.contiguous(memory_format=CHANNELS_LAST))
            first, last = (image * height + start) * width, (image * height + stop) * width
            hb = hidden[: last - first]
            act_(torch.addmm(self.b1, yf, self.w1, out=hb))
            torch.add(xf[first:last], self.b2, out=yf)
            yf.addmm_(hb, self.w2)
            if self.resnet:
                act_(yf)
            if head is not None and of is not None:
                torch.addmm(head[1], yf, head[0], out=of[first:last])
            else:
                pending = (first, last, yf)
        if pending is not None:
            xf[pending[0] : pending[1]].copy_(pending[2])


def _banded_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    out: Tensor,
    padding: int,
    stride: int,
    band_elements: int,
    activation: str | None = None,
) -> Tensor:
    """``conv(x)`` (reflect/replicate "same" padding ``padding``, or a ``stride``-``stride`` kernel without padding)
    written band by band into the channels-last ``out``, optionally followed by an in-place activation."""
    n, _, height, width = out.shape
    mode = _pad_mode(x.shape[-2], x.shape[-1], padding)
    rows = _band_rows(width, out.shape[1], band_elements)

    def chunk(image: int, start: int, stop: int) -> None:
        for first, last in _bands(start, stop, rows, 1):
            if padding:
                source = _padded_rows(x, image, first, last, padding, mode)
            else:
                source = x[image : image + 1, :, first * stride : last * stride]
            band = out[image : image + 1, :, first:last]
            band.copy_(F.conv2d(source, weight, bias, stride=stride))
            if activation is not None:
                _activation_(activation)(band)

    parts = _chunks(height, _workers(x.device), 1)
    _run([functools.partial(chunk, image, start, stop) for image in range(n) for start, stop in parts])
    return out


class FusedStem(nn.Module):
    """ConvUNeXt's stem (``conv 7x7 reflect -> BN -> GELU -> block``), BN folded, banded, then a fused block.

    Shape: ``N x in x H x W`` -> channels-last ``N x C x H x W`` (a workspace buffer).
    """

    def __init__(self, stem: Stem, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        conv = stem.conv
        w, b = fold_after(conv.weight, conv.bias, stem.norm)
        self.padding, self.out_channels = conv.same_padding, conv.out_channels
        self.register_buffer("weight", w.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", b)
        self.act = _activation_kind(stem.act)
        self.block = FusedConvNeXtBlock(stem.block, band_elements)
        self.band_elements = band_elements

    def forward(self, x: Tensor, workspace: Workspace) -> Tensor:
        n, _, height, width = x.shape
        out = workspace.get("stem", (n, self.out_channels, height, width), x)
        _banded_conv(x, self.weight, self.bias, out, self.padding, 1, self.band_elements, self.act)
        return self.block(out)


class FusedDownStage(nn.Module):
    """:class:`~convunext.models.blocks.DownStage` with its BN folded into the stride-2 conv (exact: no padding),
    banded, then fused blocks. With max-pool down-sampling the BN stays a separate affine map (max-pool does not
    commute with a negative scale) and that part runs unbanded.

    Shape: channels-last ``N x in x H x W`` -> ``N x out x floor(H/2) x floor(W/2)`` (a workspace buffer).
    """

    def __init__(self, stage: DownStage, key: str, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        reduce = stage.reduce
        self.key = key
        self.maxpool = not isinstance(reduce, nn.Conv2d)
        conv = reduce[1] if self.maxpool else reduce  # type: ignore[index]
        self.out_channels = conv.out_channels
        if self.maxpool:
            affine = bn_affine(stage.norm)
            assert affine is not None
            self.register_buffer("scale", affine[0].float().view(1, -1, 1, 1))
            self.register_buffer("shift", affine[1].float().view(1, -1, 1, 1))
            w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        else:
            w, b = fold_before(stage.norm, conv.weight, conv.bias)
        self.register_buffer("weight", w.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", b)
        self.blocks = nn.ModuleList(FusedConvNeXtBlock(block, band_elements) for block in stage.blocks)
        self.band_elements = band_elements

    def forward(self, x: Tensor, workspace: Workspace) -> Tensor:
        n, _, height, width = x.shape
        out = workspace.get(self.key, (n, self.out_channels, height // 2, width // 2), x)
        if self.maxpool:
            pooled = F.max_pool2d(torch.addcmul(self.shift, x, self.scale), 2)
            out.copy_(F.conv2d(pooled, self.weight, self.bias))
        else:
            _banded_conv(x, self.weight, self.bias, out, 0, 2, self.band_elements)
        for block in self.blocks:
            out = block(out)
        return out


def _upsample_indices(size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices ``i0, i1`` and weights ``lam`` of a x2 bilinear, align_corners=True upsampling of ``size``
    samples (as PyTorch computes them: float32 source coordinates)."""
    out = 2 * size
    scale = torch.tensor(size - 1, dtype=torch.float32) / max(out - 1, 1)  # float32, as PyTorch's kernel
    source = torch.arange(out, dtype=torch.float32, device=device) * scale.to(device)
    i0 = source.floor().long().clamp_(max=size - 1)
    lam = source - i0.float()
    i1 = (i0 + 1).clamp_(max=size - 1)
    return i0, i1, lam


class FusedGatedUpStage(nn.Module):
    """:class:`~convunext.models.blocks.GatedUpStage` computed band by band over the rows.

    The BN on the deep input is applied at low resolution (it commutes with the bilinear upsampling but not with
    the zero padding for odd sizes). With ``u`` a band of the upsampled, zero-padded deep input and ``s`` the skip::

        [g1 | g2 | g3 | f] = u [W_gate | W_fuse_u] + b          # one product for both layers reading u
        s' = sigmoid((g1 + s) W_forget + b_forget) * s + sigmoid(g2) * tanh(g3)
        z  = f + s' (W_out W_fuse_s)                            # gate output layer folded into the fusion conv

    which is ``fuse(concat[W_out s' + b_out, u])`` without the concatenation; then a fused block on ``z``.
    Shape: deep ``N x c x h x w``, skip ``N x c x H x W`` -> ``N x out x H x W`` (``N x K x H x W`` with ``head``).
    """

    def __init__(self, stage: GatedUpStage, key: str, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        affine = bn_affine(stage.norm)
        assert affine is not None
        c = stage.fuse.in_channels // 2
        out = stage.fuse.out_channels
        self.key, self.c, self.out = key, c, out
        self.register_buffer("scale", affine[0].float().view(1, -1, 1, 1))
        self.register_buffer("shift", affine[1].float().view(1, -1, 1, 1))
        fuse_w = stage.fuse.weight.detach().double().reshape(out, 2 * c)
        fuse_b = stage.fuse.bias.detach().double()
        w_skip, w_up = fuse_w[:, :c], fuse_w[:, c:]  # the concatenation is [skip, upsampled]
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

    def forward(
        self, x1: Tensor, x2: Tensor, workspace: Workspace, head: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Deep ``x1`` and skip ``x2`` (channels-last) -> the stage output (``head``: see the fused block)."""
        c = self.c
        n, _, height, width = x2.shape
        low_h, low_w = x1.shape[-2:]
        deep = workspace.get(self.key + ".deep", tuple(x1.shape), x1)  # type: ignore[arg-type]
        torch.addcmul(self.shift, x1, self.scale, out=deep)  # the BN, at low resolution
        deep_nhwc = deep.permute(0, 2, 3, 1)  # N x h x w x c, contiguous
        z = workspace.get(self.key, (n, self.out, height, width), x2)
        rows_i0, rows_i1, rows_lam = _upsample_indices(low_h, x1.device)
        cols_i0, cols_i1, cols_lam = _upsample_indices(low_w, x1.device)
        cols_lam = cols_lam.view(1, -1, 1)
        top, left = (height - 2 * low_h) // 2, (width - 2 * low_w) // 2  # zero padding (odd sizes)
        padded = height != 2 * low_h or width != 2 * low_w
        sf, zf = _flat(x2.contiguous(memory_format=CHANNELS_LAST)), _flat(z)
        width_g = self.w_u.shape[1]
        rows = _band_rows(width, width_g, self.band_elements)

        def chunk(image: int, start: int, stop: int) -> None:
            bands = _bands(start, stop, rows, 1)
            band_pixels = max(last - first for first, last in bands) * width
            u_buf = torch.zeros((band_pixels, c), dtype=x2.dtype, device=x2.device)
            g_buf = torch.empty((band_pixels, width_g), dtype=x2.dtype, device=x2.device)
            if self.gated:
                s_buf = torch.empty((band_pixels, c), dtype=x2.dtype, device=x2.device)
                t_buf = torch.empty((band_pixels, c), dtype=x2.dtype, device=x2.device)
            for first_row, last_row in bands:
                m = (last_row - first_row) * width
                u = u_buf[:m].view(last_row - first_row, width, c)
                # bilinear x2 upsampling of the band's rows, zero-padded to the skip's size
                inner0, inner1 = max(first_row, top), min(last_row, top + 2 * low_h)
                if padded:
                    u.zero_()
                if inner1 > inner0:
                    r0, r1 = rows_i0[inner0 - top : inner1 - top], rows_i1[inner0 - top : inner1 - top]
                    lam = rows_lam[inner0 - top : inner1 - top].view(-1, 1, 1)
                    source = deep_nhwc[image]
                    vertical = torch.lerp(source.index_select(0, r0), source.index_select(0, r1), lam)
                    torch.lerp(
                        vertical.index_select(1, cols_i0),
                        vertical.index_select(1, cols_i1),
                        cols_lam,
                        out=u[inner0 - first_row : inner1 - first_row, left : left + 2 * low_w],
                    )
                first, last = (image * height + first_row) * width, (image * height + last_row) * width
                g = torch.addmm(self.b_u, u_buf[:m], self.w_u, out=g_buf[:m])
                skip = sf[first:last]
                if self.gated:
                    g1, g2, g3, f = g[:, :c], g[:, c : 2 * c], g[:, 2 * c : 3 * c], g[:, 3 * c :]
                    t = torch.add(g1, skip, out=t_buf[:m])
                    s = torch.addmm(self.b_forget, t, self.w_forget, out=s_buf[:m]).sigmoid_()
                    s.mul_(skip).addcmul_(g2.sigmoid_(), _tanh_(g3))
                    torch.addmm(f, s, self.w_s, out=zf[first:last])
                else:
                    torch.addmm(g, skip, self.w_s, out=zf[first:last])

        parts = _chunks(height, _workers(x2.device), 1)
        _run([functools.partial(chunk, image, start, stop) for image in range(n) for start, stop in parts])
        return self.block(z, head)


def fusable(model: nn.Module) -> bool:
    """Whether :class:`FastConvUNeXt` can be built from ``model``: a ConvUNeXt whose norms are all BatchNorms with
    running statistics and whose activations are ReLU or exact GELU."""
    if not isinstance(model, ConvUNeXt):
        return False
    for module in model.modules():
        if isinstance(module, LayerNorm2d):
            return False
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and bn_affine(module) is None:
            return False
        if isinstance(module, nn.GELU) and module.approximate != "none":
            return False
    return True


class FastConvUNeXt(nn.Module):
    """Eval-only fused ConvUNeXt built from a :class:`~convunext.models.ConvUNeXt` with BatchNorm (see module doc).

    Holds folded copies of the weights (no reference to the source model) and a per-thread :class:`Workspace`.
    Runs without autograd. Shape: ``N x in_channels x H x W -> N x num_classes x H x W`` logits (channels-last
    strides), for every size the source model accepts.
    """

    def __init__(self, model: ConvUNeXt, band_elements: int = DEFAULT_BAND_ELEMENTS) -> None:
        super().__init__()
        if not fusable(model):
            raise ConvUNeXtError("FastConvUNeXt needs a ConvUNeXt with BatchNorm (running statistics) everywhere")
        self.in_channels, self.num_classes = model.in_channels, model.num_classes
        self.stem = FusedStem(model.stem, band_elements)
        downs = (model.down1, model.down2, model.down3, model.down4)
        self.downs = nn.ModuleList(FusedDownStage(s, f"down{i + 1}", band_elements) for i, s in enumerate(downs))
        ups = (model.up1, model.up2, model.up3, model.up4)
        self.ups = nn.ModuleList(FusedGatedUpStage(s, f"up{i + 1}", band_elements) for i, s in enumerate(ups))
        k, c = model.head.out_channels, model.head.in_channels
        self.register_buffer("head_weight", model.head.weight.detach().reshape(k, c).t().contiguous())
        self.register_buffer("head_bias", model.head.bias.detach().clone())
        self.workspace = Workspace()

    def train(self, mode: bool = True) -> FastConvUNeXt:
        """Always stays in eval mode."""
        return super().train(False)

    def workspace_bytes(self) -> int:
        """Bytes held by this thread's workspace (the full-size maps reused across calls)."""
        return sum(t.numel() * t.element_size() for t in self.workspace.buffers().values())

    def forward(self, x: Tensor) -> Tensor:
        """``N x in_channels x H x W`` images -> ``N x num_classes x H x W`` logits (channels-last)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected N x {self.in_channels} x H x W images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"ConvUNeXt needs images of at least 16 x 16 pixels, got {tuple(x.shape[-2:])}")
        workspace = self.workspace
        with torch.no_grad():
            skips = [self.stem(x.contiguous(memory_format=CHANNELS_LAST), workspace)]
            for down in self.downs:
                skips.append(down(skips[-1], workspace))
            x = skips.pop()
            last = len(self.ups) - 1
            for i, up in enumerate(self.ups):
                x = up(x, skips.pop(), workspace, (self.head_weight, self.head_bias) if i == last else None)
            return x
