"""The decoders' upsampling: bilinear x2 (``align_corners=True``), zero-padded to the skip's size, and its banded
form, which computes any band of output rows from the low-resolution map (the full-size map is never built).

The zero padding is split evenly, the extra pixel at the bottom/right, as in UNet; it handles the odd sizes the
encoder produces by flooring at each stride-2 step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BandUpsampler", "upsample_to"]


def upsample_to(x: Tensor, reference: Tensor, exportable: bool = False) -> Tensor:
    """Upsample ``x`` by 2 and zero-pad it to ``reference``'s H, W (the eager reference).

    With ``exportable`` the padding is applied even when it is zero (no shape-dependent ``if`` for graph export).
    Shape: ``N x C x h x w -> N x C x H x W``.
    """
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    dy = reference.shape[-2] - x.shape[-2]
    dx = reference.shape[-1] - x.shape[-1]
    if exportable or dy or dx:
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
    return x


def _indices(size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices ``i0, i1`` and weights ``lam`` of a x2 bilinear, align_corners=True upsampling of ``size``
    samples (as PyTorch computes them: float32 source coordinates)."""
    out = 2 * size
    scale = torch.tensor(size - 1, dtype=torch.float32) / max(out - 1, 1)  # float32, as PyTorch's kernel
    source = torch.arange(out, dtype=torch.float32, device=device) * scale.to(device)
    i0 = source.floor().long().clamp_(max=size - 1)
    lam = source - i0.float()
    i1 = (i0 + 1).clamp_(max=size - 1)
    return i0, i1, lam


class BandUpsampler:
    """:func:`upsample_to` of a ``h x w`` map to ``height x width``, one band of output rows at a time.

    Shape of :meth:`rows`: low-resolution image ``h x w x C`` (pixel-major) -> ``out``, ``rows x width x C``.
    """

    def __init__(self, low: tuple[int, int], size: tuple[int, int], device: torch.device) -> None:
        (low_h, low_w), (self.height, self.width) = low, size
        self.rows_i0, self.rows_i1, self.rows_lam = _indices(low_h, device)
        self.cols_i0, self.cols_i1, cols_lam = _indices(low_w, device)
        self.cols_lam = cols_lam.view(1, -1, 1)
        self.top, self.left = (self.height - 2 * low_h) // 2, (self.width - 2 * low_w) // 2
        self.up_h, self.up_w = 2 * low_h, 2 * low_w
        self.padded = (self.height, self.width) != (self.up_h, self.up_w)

    def rows(self, source: Tensor, first: int, last: int, out: Tensor) -> Tensor:
        """Write output rows ``[first, last)`` of the upsampled, zero-padded ``source`` into ``out``."""
        if self.padded:
            out.zero_()
        inner0, inner1 = max(first, self.top), min(last, self.top + self.up_h)
        if inner1 > inner0:
            span = slice(inner0 - self.top, inner1 - self.top)
            lam = self.rows_lam[span].view(-1, 1, 1)
            vertical = torch.lerp(
                source.index_select(0, self.rows_i0[span]), source.index_select(0, self.rows_i1[span]), lam
            )
            torch.lerp(
                vertical.index_select(1, self.cols_i0),
                vertical.index_select(1, self.cols_i1),
                self.cols_lam,
                out=out[inner0 - first : inner1 - first, self.left : self.left + self.up_w],
            )
        return out
