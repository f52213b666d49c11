"""convunext's process-wide settings, and the one call that tunes the process for its work.

Importing convunext changes nothing outside it: no environment variable, no setting of PyTorch, Pillow or the C
library, no thread. What does is :func:`configure`, which the ``convunext`` command and the
:class:`~convunext.training.trainer.Trainer` call, and which an application may call too.

**Settings** (:func:`settings`), read by convunext only. Each starts from an environment variable, read once, when
a setting is first needed; :func:`configure` changes them (it never writes ``os.environ``):

* ``fused_parallelism`` (``CONVUNEXT_FUSED_PARALLELISM``): how the banded kernels (fused training, the fast
  inference path) use several threads, ``pool`` (default; its worker threads start at the first banded call that
  has several intra-op threads) or ``openmp`` (:mod:`convunext.utils.threads`);
* ``max_image_pixels`` (``CONVUNEXT_MAX_IMAGE_PIXELS``): the largest image convunext reads, checked on the file's
  header before anything is decoded (default :data:`DEFAULT_MAX_IMAGE_PIXELS`; ``0`` = no limit);
* ``kernels`` (``CONVUNEXT_KERNELS``): whether ConvUNeXt runs the compiled CPU kernels
  (:mod:`convunext.models.layers.compiled`: the depthwise convolution, the block MLP and the decoder's gate in
  training; the MLP and gate forwards in the inference fast path), ``auto`` (default: each kernel where it loads,
  else its PyTorch reference after one notice), ``compiled`` (an error where a kernel cannot be loaded) or
  ``reference`` (PyTorch's operators only).

**Process tuning** (:func:`configure`): the intra-op thread count, glibc's ``malloc`` thresholds and Pillow's own
decompression-bomb guard. These are the process's, not convunext's, so nothing changes them unless asked.

**OpenMP's wait policy** cannot be set from inside a process that has imported torch: OpenMP reads
``OMP_WAIT_POLICY`` when torch loads it. The ``convunext`` command sets it to :data:`OMP_WAIT_POLICY` (unless set)
before it imports torch, and gives it to the processes it starts; an application that wants the same sets it in
its environment, or in ``os.environ`` before its first ``import torch``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ConvUNeXtError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "FUSED_PARALLELISM_ENV",
    "FusedParallelism",
    "KERNELS_ENV",
    "KernelMode",
    "MAX_IMAGE_PIXELS_ENV",
    "OMP_WAIT_POLICY",
    "Settings",
    "configure",
    "glibc_function",
    "runs_on_glibc",
    "settings",
]

FusedParallelism = Literal["pool", "openmp"]
"""``pool``: one chunk of rows per worker thread, each with one intra-op thread; ``openmp``: the chunks one after
the other in the calling thread, every operator parallelised by PyTorch's OpenMP threads."""
FUSED_PARALLELISM_ENV = "CONVUNEXT_FUSED_PARALLELISM"
MAX_IMAGE_PIXELS_ENV = "CONVUNEXT_MAX_IMAGE_PIXELS"
KernelMode = Literal["auto", "compiled", "reference"]
"""The compiled kernels' use: each where it loads, each or an error, none (PyTorch's operators)."""
KERNELS_ENV = "CONVUNEXT_KERNELS"
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485
"""Pillow's own default limit: it warns above 89,478,485 pixels and refuses above twice that."""
OMP_WAIT_POLICY = "PASSIVE"
"""The OpenMP wait policy the ``convunext`` command runs with. Threads that spin while they wait stall each other
on a machine shared with other busy processes (a 2-core training step took 2.5x as long beside one CPU-bound
process, 1.8x with sleeping waits); on a quiet machine sleeping waits cost nothing measurable."""
MMAP_THRESHOLD = 1 << 30
"""glibc serves allocations above this many bytes with ``mmap`` once tuned (its default: at most 32 MiB)."""
_INT_MAX = 2**31 - 1
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class Settings:
    """convunext's settings (see the module docstring), and whether :func:`configure` tuned ``malloc``."""

    fused_parallelism: FusedParallelism = "pool"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    kernels: KernelMode = "auto"
    malloc_tuned: bool = False


_settings: Settings | None = None  # read from the environment at the first settings()


def settings() -> Settings:
    """The current settings; the first call reads them from the environment.

    Raises:
        ConvUNeXtError: an environment variable of the module docstring holds a value it cannot take.
    """
    global _settings
    if _settings is None:
        _settings = _from_environment(os.environ)
    return _settings


def _from_environment(environ: Mapping[str, str]) -> Settings:
    parallelism = environ.get(FUSED_PARALLELISM_ENV, "").strip().lower() or "pool"
    if parallelism not in get_args(FusedParallelism):
        raise ConvUNeXtError(
            f"{FUSED_PARALLELISM_ENV}={environ[FUSED_PARALLELISM_ENV]!r} is not valid; use pool or openmp"
        )
    pixels = environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    try:
        limit = int(pixels.replace("_", "")) if pixels else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConvUNeXtError(f"{MAX_IMAGE_PIXELS_ENV}={pixels!r}: expected a whole number of pixels (0 = no limit)")
    kernels = environ.get(KERNELS_ENV, "").strip().lower() or "auto"
    if kernels not in get_args(KernelMode):
        raise ConvUNeXtError(f"{KERNELS_ENV}={environ[KERNELS_ENV]!r} is not valid; use auto, compiled or reference")
    return Settings(fused_parallelism=parallelism, max_image_pixels=limit, kernels=kernels)  # type: ignore[arg-type]


def configure(
    *,
    fused_parallelism: FusedParallelism | None = None,
    max_image_pixels: int | None = None,
    kernels: KernelMode | None = None,
    threads: int | None = None,
    tune_malloc: bool = False,
) -> Settings:
    """Set convunext's settings and tune the process for its work; returns the settings now in force.

    Each argument left out (None, or ``tune_malloc=False``) leaves that part as it is, so ``configure()`` alone
    only applies what the settings ask of the process: it raises Pillow's decompression-bomb guard
    (``PIL.Image.MAX_IMAGE_PIXELS``, above which Pillow warns, and twice which it refuses) to
    ``max_image_pixels`` when lower, so that Pillow neither warns about nor refuses an image convunext accepts.
    It never lowers Pillow's guard.

    Args:
        fused_parallelism: ``"pool"`` or ``"openmp"`` (see the module docstring).
        max_image_pixels: the largest image convunext reads, in pixels; ``0`` = no limit.
        kernels: ``"auto"``, ``"compiled"`` or ``"reference"`` (see the module docstring); read at each call of
            a compiled kernel's operator, so it takes effect at once.
        threads: PyTorch's intra-op thread count (``torch.set_num_threads``).
        tune_malloc: raise glibc's ``mmap`` and trim thresholds (to :data:`MMAP_THRESHOLD` and 2 GiB), so that the
            large temporaries of a training step are reused from the heap instead of being mapped, zero-filled
            page by page and unmapped at every step (the glibc tunables of docs/speed.md, set from inside the
            process). Memory freed by PyTorch then stays mapped (RSS stays at its peak); allocations already
            mapped are not moved. Cannot be undone; nothing happens on another C library
            (:attr:`Settings.malloc_tuned` stays False).

    Raises:
        ConvUNeXtError: an environment variable of the module docstring holds a value it cannot take.
        ValueError: an argument out of its range.
    """
    global _settings
    changes: dict[str, object] = {}
    if fused_parallelism is not None:
        if fused_parallelism not in get_args(FusedParallelism):
            raise ValueError(f"fused_parallelism={fused_parallelism!r} is not valid; use 'pool' or 'openmp'")
        changes["fused_parallelism"] = fused_parallelism
    if max_image_pixels is not None:
        if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 0:
            raise ValueError(f"max_image_pixels={max_image_pixels!r} is not valid; use pixels >= 0 (0 = no limit)")
        changes["max_image_pixels"] = max_image_pixels
    if kernels is not None:
        if kernels not in get_args(KernelMode):
            raise ValueError(f"kernels={kernels!r} is not valid; use 'auto', 'compiled' or 'reference'")
        changes["kernels"] = kernels
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} is not valid; use a positive integer")
    if tune_malloc and not settings().malloc_tuned:
        changes["malloc_tuned"] = _tune_glibc_malloc()
    _settings = dataclasses.replace(settings(), **changes)  # type: ignore[arg-type]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _raise_pillow_guard(_settings.max_image_pixels)
    return _settings


def _raise_pillow_guard(limit: int) -> None:
    """Raise Pillow's ``MAX_IMAGE_PIXELS`` to ``limit`` (0 = none) where it is lower."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and (limit == 0 or limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit or None


def runs_on_glibc() -> bool:
    """Whether this process's C library is glibc (whose ``malloc`` :func:`configure` can tune)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def glibc_function(name: str) -> Any:
    """glibc's function ``name`` (a ctypes function, its types to set), or None in a process whose C library is not
    glibc, or whose glibc lacks it (``mallinfo2`` came with 2.33)."""
    if not runs_on_glibc():
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _tune_glibc_malloc() -> bool:
    """glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` set with ``mallopt``; whether both were accepted."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_accepted = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_accepted = mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    return bool(mmap_accepted and trim_accepted)
