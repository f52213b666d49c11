"""Device names as users write them (``auto``, ``cpu``, ``cuda``, ``cuda:1``) turned into ``torch.device``, and
the name of the hardware a run used (training times only compare between runs on the same one)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ..errors import ConvUNeXtError


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises :class:`~convunext.errors.ConvUNeXtError` for a name torch does not know or CUDA on a machine without it,
    naming ``setting``: where the user gave the name (``--device``, or the config field ``train.device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConvUNeXtError(f"{setting} {name!r} is not a valid device (auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConvUNeXtError(f"{setting} {name!r} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConvUNeXtError(f"{setting} {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConvUNeXtError(f"{setting} {name!r} but Apple's MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConvUNeXtError(f"{setting} {name!r}: convunext runs on auto, cpu, cuda, cuda:N or mps")
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
