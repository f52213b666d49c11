"""The fast inference forms of ConvUNeXt's stages, and the walker that puts them into a model.

Every ConvUNeXt stage (:class:`~convunext.models.blocks.Stem`, ``DownStage``, ``GatedUpStage``) and block builds
its own fast form with ``fast_form()``; :func:`reparameterize_model` replaces each stage of a model by it, so the
fast model runs the model's own ``forward`` (one topology for every path). Where the eager model's CPU time goes:
the 1x1 layers (matrix products), GELU on the ``4 x dim`` hidden activation, and — under glibc's default
allocator — page faults: every temporary above 32 MiB is mapped fresh and zero-filled on first touch (one
480x480 hidden activation is 118 MB; the authors' model makes ~1 GB of them per image). The fast forms remove the
large temporaries instead of asking users to change their allocator:

* every BatchNorm is folded into the convolution before or after it (stem, blocks, down-sampling), or applied at low
  resolution (decoder: before the upsampling, whose zero padding for odd sizes does not commute with it);
* all work runs channels-last (NHWC), where every 1x1 layer is one matrix product over a contiguous block of pixels;
* each block runs **band by band over image rows**: the padded rows of the band (:mod:`.layers.padding`), the
  depthwise convolution of the band, then the MLP with residual and output activation (:mod:`.layers.mlp`) into a
  reused buffer — all in cache. The block writes its output over its input, each band one step behind, so the next
  band still reads the original rows of its halo;
* each decoder stage runs band by band too: the upsampling of the band's rows (:mod:`.layers.upsample`) and the
  folded gate and fusion conv (:mod:`.layers.gate`) — the concatenation is never built;
* the network's 1x1 head is applied to each band of the last block while it is in cache;
* the full-size maps that must exist (skips, stage outputs) live in each stage's per-thread workspace, reused from
  call to call: after the first call a forward pass allocates nothing large (only the returned logits);
* with several intra-op threads each image is cut into one chunk of rows per thread, run by worker threads with
  one intra-op thread each (:mod:`convunext.utils.threads`): no thread barrier after every small operator.

The fast forms are eval-only, run without autograd and equal the eager model within float32 rounding.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.threads import run_tasks, workers
from .layers.activations import ActivationKind, activation_
from .layers.banding import CHANNELS_LAST, DEFAULT_BAND_ELEMENTS, Workspace, band_rows, bands, chunks, flat
from .layers.gate import GateBuffers, GateWeights, gate_rows_
from .layers.mlp import mlp_rows_
from .layers.padding import padded_rows
from .layers.upsample import BandUpsampler

__all__ = [
    "FastBlock",
    "FastDownStage",
    "FastStem",
    "FastUpStage",
    "fast_form_problems",
    "reparameterize_model",
]


class _FastModule(nn.Module):
    """Eval-only: ``train()`` keeps it in eval mode."""

    def train(self, mode: bool = True) -> _FastModule:
        return super().train(False)


class FastBlock(_FastModule):
    """A ConvNeXt block with BN folded, computed band by band in place.

    For each band of rows: ``y = dwconv'(padded rows)`` (norm1 folded in), then ``y <- [act](x + act(y W1 + b1)
    W2' + b2')`` (norm2 folded in, :func:`~.layers.mlp.mlp_rows_`); ``y`` is then written over the band of ``x``.
    With a head (:meth:`attach_head`) the band's logits are computed instead and ``x`` is left alone.

    Shape: channels-last ``N x dim x H x W`` -> the same tensor, overwritten (or new ``N x K x H x W`` logits).
    """

    def __init__(
        self,
        dw: tuple[Tensor, Tensor, int, int],
        mlp: tuple[Tensor, Tensor, Tensor, Tensor],
        act: ActivationKind,
        out_act: bool,
        band_elements: int = DEFAULT_BAND_ELEMENTS,
    ) -> None:
        """``dw = (weight, bias, padding, groups)`` of the folded depthwise conv; ``mlp = (w1 C x H, b1, w2 H x C,
        b2)`` with norm2 folded into ``w2, b2``; ``out_act``: activation after the residual sum."""
        super().__init__()
        dw_weight, dw_bias, self.padding, self.groups = dw
        self.register_buffer("dw_weight", dw_weight.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("dw_bias", dw_bias)
        for name, tensor in zip(("w1", "b1", "w2", "b2"), mlp):
            self.register_buffer(name, tensor.contiguous())
        self.register_buffer("head_weight", None)
        self.register_buffer("head_bias", None)
        self.hidden = mlp[0].shape[1]
        self.act, self.out_act, self.band_elements = act, out_act, band_elements

    def attach_head(self, head: nn.Conv2d) -> None:
        """Compute the 1x1 conv ``head`` on each band of the output: :meth:`forward` then returns its logits."""
        k, c = head.out_channels, head.in_channels
        self.head_weight = head.weight.detach().reshape(k, c).t().contiguous()
        self.head_bias = head.bias.detach().clone() if head.bias is not None else head.weight.new_zeros(k)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``x``: channels-last ``N x dim x H x W``, overwritten (returned) unless a head is attached."""
        n, _, height, width = x.shape
        p = self.padding
        rows = band_rows(width, self.hidden, self.band_elements, minimum=p)
        out = None
        if self.head_weight is not None:
            k = self.head_weight.shape[1]
            out = torch.empty((n, k, height, width), dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST)
        tasks = []
        for image in range(n):
            for start, stop in chunks(height, workers(x.device), p):
                parts = bands(start, stop, rows, p)
                # a chunk's first and last band read rows of the neighbouring chunks, which another worker may be
                # overwriting: take their padded inputs now
                edges = {parts[0]: padded_rows(x, image, *parts[0], p)}
                edges[parts[-1]] = padded_rows(x, image, *parts[-1], p)
                tasks.append(functools.partial(self._chunk, x, out, image, parts, edges))
        run_tasks(tasks)
        return out if out is not None else x

    def _chunk(
        self,
        x: Tensor,
        out: Tensor | None,
        image: int,
        parts: list[tuple[int, int]],
        edges: dict[tuple[int, int], Tensor],
    ) -> None:
        """Process ``parts`` (consecutive bands of one image) in order, each band's output written one band late."""
        height, width = x.shape[-2:]
        xf = flat(x)
        of = flat(out) if out is not None else None
        longest = max(stop - start for start, stop in parts)
        hidden = torch.empty((longest * width, self.hidden), dtype=x.dtype, device=x.device)
        pending: tuple[int, int, Tensor] | None = None  # the previous band's output, written once its rows are read
        for start, stop in parts:
            source = edges.get((start, stop))
            if source is None:
                source = padded_rows(x, image, start, stop, self.padding)
            y = F.conv2d(source, self.dw_weight, self.dw_bias, groups=self.groups)
            if pending is not None:
                xf[pending[0] : pending[1]].copy_(pending[2])
                pending = None
            yf = flat(y.contiguous(memory_format=CHANNELS_LAST))
            first, last = (image * height + start) * width, (image * height + stop) * width
            residual = xf[first:last]
            mlp_rows_(
                yf, self.w1, self.b1, self.w2, self.b2, self.act, residual, self.out_act, yf, hidden[: last - first]
            )
            if of is not None:
                torch.addmm(self.head_bias, yf, self.head_weight, out=of[first:last])
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
    act: ActivationKind | None = None,
) -> Tensor:
    """``conv(x)`` (padded by :func:`~.layers.padding.same_pad`, or a ``stride``-``stride`` kernel without padding)
    written band by band into the channels-last ``out``, optionally followed by an in-place activation."""
    n, _, height, width = out.shape
    rows = band_rows(width, out.shape[1], band_elements)

    def chunk(image: int, start: int, stop: int) -> None:
        for first, last in bands(start, stop, rows, 1):
            if padding:
                source = padded_rows(x, image, first, last, padding)
            else:
                source = x[image : image + 1, :, first * stride : last * stride]
            band = out[image : image + 1, :, first:last]
            band.copy_(F.conv2d(source, weight, bias, stride=stride))
            if act is not None:
                activation_(act)(band)

    parts = chunks(height, workers(x.device), 1)
    run_tasks([functools.partial(chunk, image, start, stop) for image in range(n) for start, stop in parts])
    return out


class FastStem(_FastModule):
    """ConvUNeXt's stem (``conv k x k -> BN -> act -> block``): BN folded, the conv banded, then a fast block.

    Shape: ``N x in x H x W`` -> channels-last ``N x C x H x W`` (a workspace buffer).
    """

    def __init__(
        self, conv: tuple[Tensor, Tensor, int], act: ActivationKind, block: FastBlock, band_elements: int
    ) -> None:
        """``conv = (weight, bias, padding)`` with the BN folded in."""
        super().__init__()
        weight, bias, self.padding = conv
        self.register_buffer("weight", weight.contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", bias)
        self.act, self.block, self.band_elements = act, block, band_elements
        self.workspace = Workspace()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``N x in x H x W`` images -> the stem's channels-last output."""
        if x.dim() != 4 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"expected N x {self.weight.shape[1]} x H x W images, got shape {tuple(x.shape)}")
        n, _, height, width = x.shape
        out = self.workspace.get("out", (n, self.weight.shape[0], height, width), x)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        _banded_conv(x, self.weight, self.bias, out, self.padding, 1, self.band_elements, self.act)
        return self.block(out)


class FastDownStage(_FastModule):
    """A down stage with its BN folded into the stride-2 conv (exact: no padding), banded, then fast blocks.
    With max-pool down-sampling (``affine`` given) the BN stays a separate affine map (max-pool does not commute
    with a negative scale) and that part runs unbanded.

    Shape: channels-last ``N x in x H x W`` -> ``N x out x floor(H/2) x floor(W/2)`` (a workspace buffer).
    """

    def __init__(
        self,
        conv: tuple[Tensor, Tensor],
        affine: tuple[Tensor, Tensor] | None,
        blocks: list[FastBlock],
        band_elements: int,
    ) -> None:
        """``conv = (weight, bias)``: the 2x2 stride-2 conv with the BN folded in, or (``affine = (scale,
        shift)``, the BN) the 1x1 conv after the max-pool."""
        super().__init__()
        self.register_buffer("weight", conv[0].contiguous(memory_format=CHANNELS_LAST))
        self.register_buffer("bias", conv[1])
        self.maxpool = affine is not None
        self.register_buffer("scale", None if affine is None else affine[0].view(1, -1, 1, 1))
        self.register_buffer("shift", None if affine is None else affine[1].view(1, -1, 1, 1))
        self.blocks = nn.ModuleList(blocks)
        self.band_elements = band_elements
        self.workspace = Workspace()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Channels-last ``N x in x H x W`` -> the stage output (channels-last)."""
        n, _, height, width = x.shape
        if min(height, width) < 2:
            raise ValueError(f"a {height}x{width} map cannot be halved: ConvUNeXt needs images of at least 16 x 16")
        out = self.workspace.get("out", (n, self.weight.shape[0], height // 2, width // 2), x)
        if self.maxpool:
            pooled = F.max_pool2d(torch.addcmul(self.shift, x, self.scale), 2)
            out.copy_(F.conv2d(pooled, self.weight, self.bias))
        else:
            _banded_conv(x, self.weight, self.bias, out, 0, 2, self.band_elements)
        for block in self.blocks:
            out = block(out)
        return out


class FastUpStage(_FastModule):
    """A gated decoder stage computed band by band over the rows.

    The BN on the deep input is applied at low resolution (it commutes with the bilinear upsampling but not with
    the zero padding for odd sizes); then for each band of rows the upsampled, zero-padded deep input ``u``
    (:class:`~.layers.upsample.BandUpsampler`) and the folded gate and fusion conv (:func:`~.layers.gate.gate_rows_`)
    give the fusion conv's output, and a fast block runs on it.

    Shape: deep ``N x c x h x w``, skip ``N x c x H x W`` -> ``N x out x H x W`` (``N x K x H x W`` with a head).
    """

    def __init__(
        self, affine: tuple[Tensor, Tensor], weights: GateWeights, block: FastBlock, band_elements: int
    ) -> None:
        """``affine = (scale, shift)`` of the deep input's BN; ``weights``: :func:`~.layers.gate.fold_gate`'s."""
        super().__init__()
        self.register_buffer("scale", affine[0].view(1, -1, 1, 1))
        self.register_buffer("shift", affine[1].view(1, -1, 1, 1))
        for name, tensor in zip(GateWeights._fields, weights):
            self.register_buffer(name, None if tensor is None else tensor.contiguous())
        self.block, self.band_elements = block, band_elements
        self.workspace = Workspace()

    def attach_head(self, head: nn.Conv2d) -> None:
        """Compute the network's 1x1 ``head`` inside the block's bands (see :meth:`FastBlock.attach_head`)."""
        self.block.attach_head(head)

    @torch.no_grad()
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Deep ``x1`` and skip ``x2`` (channels-last) -> the stage output."""
        weights = GateWeights(*(getattr(self, name) for name in GateWeights._fields))
        c = x1.shape[1]
        n, _, height, width = x2.shape
        deep = self.workspace.get("deep", tuple(x1.shape), x1)
        torch.addcmul(self.shift, x1, self.scale, out=deep)  # the BN, at low resolution
        deep_nhwc = deep.permute(0, 2, 3, 1)  # N x h x w x c, contiguous
        z = self.workspace.get("out", (n, weights.w_s.shape[1], height, width), x2)
        upsampler = BandUpsampler((x1.shape[2], x1.shape[3]), (height, width), x1.device)
        sf, zf = flat(x2.contiguous(memory_format=CHANNELS_LAST)), flat(z)
        rows = band_rows(width, weights.w_u.shape[1], self.band_elements)

        def chunk(image: int, start: int, stop: int) -> None:
            parts = bands(start, stop, rows, 1)
            band_pixels = max(last - first for first, last in parts) * width
            u_buf = x2.new_empty((band_pixels, c))
            buffers = GateBuffers(band_pixels, c, weights.w_u.shape[1], x2)
            for first_row, last_row in parts:
                m = (last_row - first_row) * width
                u = upsampler.rows(deep_nhwc[image], first_row, last_row, u_buf[:m].view(-1, width, c)).view(m, c)
                first = (image * height + first_row) * width
                gate_rows_(u, sf[first : first + m], weights, zf[first : first + m], buffers)

        parts = chunks(height, workers(x2.device), 1)
        run_tasks([functools.partial(chunk, image, start, stop) for image in range(n) for start, stop in parts])
        return self.block(z)


def fast_form_problems(model: nn.Module) -> list[str]:
    """Why ``model`` has no fast form: the problems its stages report (``fast_form_problem()``), or that it has no
    stage with a fast form; empty when :func:`reparameterize_model` can convert it."""
    stages = [m for m in model.modules() if callable(getattr(m, "fast_form_problem", None))]
    if not stages:
        return [f"{type(model).__name__} has no stage with a fast form"]
    return sorted({problem for stage in stages if (problem := stage.fast_form_problem()) is not None})


def reparameterize_model(
    model: nn.Module, band_elements: int = DEFAULT_BAND_ELEMENTS, inplace: bool = False
) -> nn.Module:
    """``model`` with every stage replaced by its fast form (``stage.fast_form(band_elements)``), the model's own
    ``forward`` wiring kept. After a module's stages are converted, its ``reparameterize()`` (if any) runs: e.g.
    ConvUNeXt moves its head into the last block. Works on a deep copy unless ``inplace``.

    Raises:
        ConvUNeXtError: a stage whose options its fast form does not support (see :func:`fast_form_problems`).
    """
    model = model if inplace else copy.deepcopy(model)
    if callable(getattr(model, "fast_form", None)):
        return model.fast_form(band_elements)
    for name, child in model.named_children():
        setattr(model, name, reparameterize_model(child, band_elements, inplace=True))
    hook = getattr(model, "reparameterize", None)
    if callable(hook):
        hook()
    return model.eval()
