"""Opt-in tuning of glibc's ``malloc`` for PyTorch on CPU (see docs/speed.md).

glibc serves every allocation larger than its mmap threshold (dynamic, at most 32 MiB by default) with a fresh
``mmap``; the kernel then zero-fills each 4 KiB page on first touch and ``munmap`` returns it on ``free``. A
training step of ConvUNeXt allocates gigabytes of such temporaries, so page faults can take a quarter of the time.
Raising the mmap and trim thresholds keeps that memory in the heap for reuse, the effect of

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296

set from inside the process. The price: memory freed by PyTorch stays mapped (RSS remains at its peak).
The trainer calls it on CPUs (``train.tune_malloc: auto``, :mod:`convunext.training.fast_paths`); nothing else does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["tune_glibc_malloc"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1


def tune_glibc_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = INT_MAX) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes, capped at 2 GiB - 1) with ``mallopt``.

    Returns ``True`` when both were accepted, ``False`` on a non-glibc system (nothing changed). Affects the
    whole process from then on; allocations already mapped are not moved.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(M_MMAP_THRESHOLD, min(int(mmap_threshold), INT_MAX))
    ok_trim = mallopt(M_TRIM_THRESHOLD, min(int(trim_threshold), INT_MAX))
    return bool(ok_mmap and ok_trim)
