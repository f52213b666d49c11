"""How the banded kernels cut their work: band sizes, row ranges, pixel views and the reused workspace.

A banded kernel computes a per-pixel chain on a few rows (or pixels) at a time, so that its temporaries stay in
cache and far below glibc's mmap threshold (above it every temporary is a fresh ``mmap`` whose pages the kernel
zero-fills on first touch). With several intra-op threads the rows are first cut into one chunk per thread
(:mod:`convunext.utils.threads`).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CHANNELS_LAST",
    "DEFAULT_BAND_ELEMENTS",
    "Workspace",
    "band_rows",
    "bands",
    "chunks",
    "flat",
    "from_rows",
    "rows_eligible",
    "sum_partials",
]

CHANNELS_LAST = torch.channels_last

DEFAULT_BAND_ELEMENTS = 1 << 20
"""Values in one band's widest temporary (1 Mi floats = 4 MiB): small enough to stay in cache and far below glibc's
32 MiB mmap threshold, large enough for the matrix products to run near peak. Every banded kernel uses it."""


def flat(x: Tensor) -> Tensor:
    """The ``(N*H*W) x C`` pixel-major view of a channels-last ``N x C x H x W`` tensor (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_rows(rows: Tensor, like: Tensor) -> Tensor:
    """``(N*H*W) x D`` pixel rows -> the ``N x D x H x W`` channels-last view, ``N, H, W`` taken from ``like``."""
    n, _, h, w = like.shape
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def rows_eligible(dtype: torch.dtype, *maps: Tensor) -> bool:
    """Whether the banded ops can take ``maps`` as pixel rows: channels-last, of ``dtype``, autocast off."""
    return all(m.is_contiguous(memory_format=CHANNELS_LAST) and m.dtype == dtype for m in maps) and not any(
        torch.is_autocast_enabled(m.device.type) for m in maps
    )


def sum_partials(partials: list[list[Tensor]]) -> list[Tensor]:
    """Per-worker gradient accumulators (one list per worker, same layout) -> their sums."""
    return [torch.stack(list(g)).sum(0) if len(g) > 1 else g[0] for g in zip(*partials)]


def band_rows(width: int, channels: int, band_elements: int, minimum: int = 1) -> int:
    """Rows per band so that a ``rows x width x channels`` temporary holds about ``band_elements`` values."""
    return max(minimum, 1, band_elements // max(1, width * channels))


def chunks(height: int, parts: int, minimum: int) -> list[tuple[int, int]]:
    """``parts`` (fewer if needed) contiguous row ranges covering ``[0, height)``, each at least ``minimum`` rows."""
    parts = max(1, min(parts, height // max(minimum, 1)))
    edges = [round(i * height / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def bands(start: int, stop: int, rows: int, minimum: int) -> list[tuple[int, int]]:
    """Row bands covering ``[start, stop)``: about ``rows`` rows each and, when the range allows, at least
    ``minimum`` (so a band's halo never reaches beyond its neighbours)."""
    length = stop - start
    count = max(1, length // max(rows, minimum, 1))
    edges = [start + round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class Workspace:
    """Full-size buffers reused across forward passes, one set per thread (a forward pass is not re-entrant).

    ``get(key, shape, like)`` returns the channels-last buffer stored under ``key`` when its shape, dtype and device
    match, else allocates (and keeps) a new one. A buffer made under ``torch.inference_mode`` is not reused outside
    it (PyTorch forbids writing into inference tensors there). Copies (``copy.deepcopy``) and pickles start empty.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(self) -> dict[str, Tensor]:
        """This thread's buffers (key -> tensor)."""
        store = getattr(self._local, "buffers", None)
        if store is None:
            store = self._local.buffers = {}
        return store

    def get(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The ``shape`` buffer (channels-last, ``like``'s dtype and device) stored under ``key``."""
        store = self.buffers()
        buffer = store.get(key)
        if (
            buffer is None
            or buffer.shape != shape
            or buffer.dtype != like.dtype
            or buffer.device != like.device
            or (buffer.is_inference() and not torch.is_inference_mode_enabled())
        ):
            store.pop(key, None)
            buffer = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)
            store[key] = buffer
        return buffer

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()
