"""ConvUNeXt's "same" padding rule — reflect, or replicate on maps too small to reflect — and its banded form.

Reflect padding by ``p`` needs ``p`` < H and W; on smaller maps (the bottom of the network for inputs under
``16 * (p + 1)`` pixels, where the authors' model raises an error) the rule falls back to replicate padding.
An exported graph cannot keep that shape-dependent branch, so with ``exportable`` it always reflects.
A depthwise :class:`ReflectConv2d` can run the compiled kernel of :mod:`.depthwise` in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .banding import CHANNELS_LAST, rows_eligible
from .depthwise import KERNEL_SIZES, depthwise_conv7

__all__ = ["ReflectConv2d", "pad_mode", "padded_rows", "same_pad"]


def pad_mode(height: int, width: int, padding: int, exportable: bool = False) -> str:
    """``"reflect"``, or ``"replicate"`` when a side is not larger than ``padding`` (never with ``exportable``)."""
    return "reflect" if exportable or min(height, width) > padding else "replicate"


def same_pad(x: Tensor, padding: int, exportable: bool = False) -> Tensor:
    """Pad every side of ``N x C x H x W`` by ``padding`` with :func:`pad_mode`'s mode (the eager reference)."""
    if not padding:
        return x
    mode = pad_mode(x.shape[-2], x.shape[-1], padding, exportable)
    return F.pad(x, (padding, padding, padding, padding), mode=mode)


def padded_rows(x: Tensor, image: int, start: int, stop: int, padding: int) -> Tensor:
    """Rows ``[start - p, stop + p)`` of :func:`same_pad` (image ``image`` of ``x``), without padding the whole map:
    ``1 x C x (stop - start + 2p) x (W + 2p)``, channels-last."""
    if not padding:
        return x[image : image + 1, :, start:stop]
    height = x.shape[2]
    low, high = max(0, start - padding), min(height, stop + padding)
    top, bottom = padding - (start - low), padding - (high - stop)
    rows = x[image : image + 1, :, low:high]
    mode = pad_mode(height, x.shape[3], padding)
    return F.pad(rows, (padding, padding, top, bottom), mode=mode).contiguous(memory_format=CHANNELS_LAST)


class ReflectConv2d(nn.Conv2d):
    """A "same" convolution padded by :func:`same_pad` (ConvUNeXt's choice) that keeps working on tiny maps.

    Weights and outputs equal ``nn.Conv2d(..., padding=k // 2, padding_mode="reflect")`` wherever that works.
    ``exportable`` (set by ``model.set_exportable()``) drops the replicate fallback for graph export.
    ``forward(x, compiled=True)`` (the fused training path of ConvUNeXt's block) convolves with
    :func:`~.depthwise.depthwise_conv7` where :meth:`takes_compiled` holds; the result is the same.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, groups=groups)
        self.same_padding = kernel_size // 2
        self.exportable = False

    @property
    def compiled_depthwise(self) -> bool:
        """Whether this is a depthwise convolution of a kernel size the compiled kernel is built for."""
        depthwise = self.groups == self.in_channels == self.out_channels
        return depthwise and self.kernel_size[0] in KERNEL_SIZES

    def takes_compiled(self, x: Tensor) -> bool:
        """Whether ``forward(x, compiled=True)`` runs the compiled kernel's path: a :attr:`compiled_depthwise`
        convolution, not exportable, on a channels-last float32 CPU input, autocast off, with gradients recorded
        (the kernel is there for the weight gradient; inference keeps its own paths)."""
        cpu_float32 = x.device.type == "cpu" and self.weight.dtype == torch.float32
        eligible = cpu_float32 and torch.is_grad_enabled() and rows_eligible(torch.float32, x)
        return eligible and self.compiled_depthwise and not self.exportable

    def forward(self, x: Tensor, compiled: bool = False) -> Tensor:
        """``N x in x H x W -> N x out x H x W``; with ``compiled``, through :func:`~.depthwise.depthwise_conv7`
        where :meth:`takes_compiled` holds (which then runs the compiled kernel or PyTorch's convolution, as the
        ``depthwise`` setting of :mod:`convunext.runtime` says)."""
        padded = same_pad(x, self.same_padding, self.exportable)
        if compiled and self.takes_compiled(x):
            return depthwise_conv7(padded, self.weight, self.bias, padding=0)
        return super().forward(padded)
