"""Device names as users write them (``auto``, ``cpu``, ``cuda``, ``cuda:1``) turned into ``torch.device``, and
the name of the hardware a run used (training times only compare between runs on the same one)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ..errors import ConvUNeXtError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises :class:`~convunext.errors.ConvUNeXtError` for a name torch does not know or CUDA on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConvUNeXtError(f"train.device={name!r} is not a valid device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvUNeXtError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    """The hardware behind ``device``, e.g. ``"GPU NVIDIA H200"`` or ``"CPU AMD EPYC (AVX2, 2 threads)"``.

    On CPU it names the vector instructions PyTorch uses: two CPUs of one vendor name can differ by a factor of
    three in training speed (AVX2 vs AVX-512 with AMX).
    """
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU {processor_name()} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
