"""The machine a benchmark runs on: CPU, cores, threads, versions, memory allocator, load, and its matmul peak."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch

from ..utils.device import processor_name

__all__ = ["allocator_description", "machine_description", "machine_short_name", "matmul_peak_gflops"]


def allocator_description() -> str:
    """The memory allocator in use: LD_PRELOAD'ed tcmalloc/jemalloc (seen in ``/proc/self/maps``), GLIBC_TUNABLES."""
    parts = []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            parts.append(name)
    if not parts:
        parts.append(f"glibc malloc ({platform.libc_ver()[0]} {platform.libc_ver()[1]})".replace(" )", ")"))
    if os.environ.get("LD_PRELOAD"):
        parts.append(f"LD_PRELOAD={os.environ['LD_PRELOAD']}")
    if os.environ.get("GLIBC_TUNABLES"):
        parts.append(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")
    return ", ".join(parts)


def matmul_peak_gflops(scale: int = 1, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a few matrix products (square and the tall-skinny shapes of 1x1 layers) on this CPU
    with the current thread count; ``scale`` divides the sizes (``--quick``)."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (8192, 256, 1024), (16384, 128, 512)):
        m, k, n = max(64, m // scale), max(16, k // scale), max(16, n // scale)
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)
        fastest = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            fastest = min(fastest, time.perf_counter() - start)
        best = max(best, 2 * m * k * n / fastest / 1e9)
    return best


def machine_description(device: str = "cpu") -> dict[str, str]:
    """CPU model, cores, threads, PyTorch, Python, OS, allocator and load (name -> text)."""
    info = {
        "CPU": processor_name(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "Python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
        "allocator": allocator_description(),
    }
    if hasattr(os, "getloadavg"):
        info["load average (1/5/15 min) at start"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    return info


def machine_short_name() -> str:
    """The CPU family and logical core count for a results file name, e.g. ``epyc-2core``, ``xeon-8core``."""
    words = re.sub(r"\((r|tm)\)", " ", processor_name().lower()).split()
    skip = {"amd", "intel", "genuineintel", "authenticamd", "cpu", "processor", "apple"}
    family = next((re.sub(r"[^a-z0-9]", "", w) for w in words if w not in skip), "") or platform.machine()
    return f"{family}-{os.cpu_count()}core"
