"""Guards that refuse a run before it starts, instead of letting it pad or swap its way into the kernel's OOM killer:
a crop larger than every training image (:func:`check_crop_size`), and a training step estimated to need more memory
than the device has available (:func:`estimate_step_memory`, :func:`available_memory`, :func:`check_step_memory`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import FileDataset, SyntheticDataset
from ..data.io import image_size
from ..errors import ConvUNeXtError
from .config import DataConfig, ExperimentConfig

PROBE_SIDE = 64  # side of the probe crop whose activations estimate a training step's memory


def check_crop_size(dataset: Dataset, data: DataConfig) -> None:
    """Refuse a crop larger than any training image can become at the largest random resize: every crop would
    then be mostly padding (ignored pixels), at the memory cost of the whole crop (a 4096 crop of 64-pixel images
    takes gigabytes)."""
    sizes = _image_sizes(dataset)
    high = data.scale_range[1]
    reach = max(round(max(size) * high) for size in sizes)
    if data.crop_size <= reach:
        return
    smallest, largest = min(sizes, key=_area), max(sizes, key=_area)
    extent = _pixels(largest) if smallest == largest else f"{_pixels(smallest)} to {_pixels(largest)}"
    raise ConvUNeXtError(
        f"data.crop_size={data.crop_size} is larger than any training image, even after the random resize "
        f"(data.scale_range up to x{high:g}): the images are {extent} px, at most {reach} px on a side after "
        f"resizing, so every crop would be mostly padding; use data.crop_size <= {reach}"
    )


def _image_sizes(dataset: Any) -> list[tuple[int, int]]:
    """``(height, width)`` of every image of ``dataset``, from the file headers where there are files."""
    if isinstance(dataset, SyntheticDataset):
        return [(dataset.size, dataset.size)] * len(dataset)
    if isinstance(dataset, FileDataset):
        return [image_size(record.image) for record in dataset.records]
    return [tuple(item["image"].shape[-2:]) for item in dataset]


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _pixels(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def estimate_step_memory(
    model: nn.Module, probe: Callable[[nn.Module, int], object], device: torch.device, crop_size: int, batch_size: int
) -> int:
    """Bytes that one training step of ``model`` on ``batch_size`` crops of ``crop_size`` pixels needs, estimated
    without running one: the parameters with their gradients and AdamW's two moments, plus the activations autograd
    keeps for the backward pass, measured by ``probe(model_copy, side)`` (the forward pass and loss of one crop of
    ``side`` = at most :data:`PROBE_SIDE` pixels) and scaled by pixels x batch (activation memory grows linearly
    with both). A lower bound: the backward pass's own temporaries and the allocator's slack come on top."""
    side = min(crop_size, PROBE_SIDE)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    saved = saved_activation_bytes(model, lambda copied: probe(copied, side), device)
    return int(4 * parameters + saved * batch_size * (crop_size / side) ** 2)


def saved_activation_bytes(model: nn.Module, run: Callable[[nn.Module], object], device: torch.device) -> int:
    """Bytes of the tensors autograd saves while ``run`` runs a copy of ``model`` (so its BatchNorm statistics stay
    untouched), with the random stream restored afterwards."""
    copied = copy.deepcopy(model).train()
    parameters = {p.untyped_storage().data_ptr() for p in copied.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(copied)
    return sum(saved.values())


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """Bytes that a training step on ``device`` can still allocate, and where the figure comes from: CUDA's free
    memory (plus what PyTorch has cached unused), or on the CPU ``MemAvailable`` of ``/proc/meminfo`` and the
    headroom under a cgroup v2 memory limit (containers, batch schedulers), whichever is less. None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free on {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return None
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append((headroom, "cgroup memory limit"))
    return min(found) if found else None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup v2 ``memory.max`` (its page cache counts as free), None if none."""
    try:
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        stat = dict(entry.split() for entry in (folder / "memory.stat").read_text().splitlines())
        used = int((folder / "memory.current").read_text()) - int(stat.get("file", 0))
        return int(limit) - used
    except (OSError, StopIteration, ValueError):
        return None


def check_step_memory(config: ExperimentConfig, device: torch.device, estimate: Callable[[], int]) -> None:
    """Refuse a training step of ``config`` that ``estimate()`` (bytes, called only where the free memory is known)
    says needs more memory than ``device`` has available (:func:`available_memory`; on a CPU shared by
    ``LOCAL_WORLD_SIZE`` processes, their sum)."""
    available = available_memory(device)
    if available is None:
        return
    free, source = available
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    need = estimate() * processes
    if need <= free:
        return
    crop = config.data.crop_size
    each = f", x {processes} processes" if processes > 1 else ""
    recompute = "" if config.train.recompute_activations else ", or set train.recompute_activations=true"
    raise ConvUNeXtError(
        f"one training step needs about {_bytes_text(need)} (estimated: {config.model.name}, batch "
        f"{config.optim.batch_size} of {crop}x{crop} crops{each}) but only {_bytes_text(free)} is available "
        f"({source}); lower optim.batch_size or data.crop_size{recompute}"
    )


def _bytes_text(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while count >= 1024 and index < len(units) - 1:
        count, index = count / 1024, index + 1
    return f"{count:.1f} {units[index]}"
