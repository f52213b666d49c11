"""Distributed training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`context_from_environment` turns them into a
:class:`DistributedContext` (NCCL on CUDA, gloo on CPU). Without them everything runs as one process and the
context's collective operations are no-ops, so the trainer has one code path.

Batch size under DDP: ``optim.batch_size`` is *per process*; one optimiser step sees a global batch of
``batch_size x WORLD_SIZE`` images (DDP averages the gradients of the ranks). To keep the paper's batch of 4 on
two GPUs, set ``optim.batch_size=2``. BatchNorm normalises with each process's own batch unless
``sync_batchnorm`` (CUDA only) is on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from ..errors import ConvUNeXtError
from ..utils.device import resolve_device


@dataclass
class DistributedContext:
    """Rank, world size and device of this process, plus the few collectives the trainer needs."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    sync_batchnorm: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, plots and checkpoints; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: ``model`` itself, or DDP around it (with SyncBatchNorm if asked) when distributed."""
        if not self.enabled:
            return model
        if self.sync_batchnorm:
            if self.device.type != "cuda":  # PyTorch's SyncBatchNorm raises mid-forward on CPU tensors
                raise ConvUNeXtError(
                    "SyncBatchNorm needs CUDA (PyTorch has no CPU/gloo implementation); drop --sync-batchnorm "
                    "for a CPU run (each process then normalises with its own batch statistics)"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks (returns a new tensor; identity in a single process)."""
        if not self.enabled:
            return tensor
        reduced = tensor.clone()
        torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)
        return reduced

    def mean_of(self, total: torch.Tensor, count: int) -> float:
        """Global mean from each rank's ``total`` and ``count`` (a weighted mean, not a mean of means)."""
        stacked = self.reduce(torch.stack([total.double(), torch.tensor(float(count), device=total.device).double()]))
        return (stacked[0] / stacked[1].clamp_min(1)).item()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable objects; identity in a single process)."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) into every rank's ``model``, in place.

        DDP broadcasts buffers at the start of each training forward, but every rank then updates its running
        statistics with its own batch; without this, ranks would validate their shards with different
        statistics from the ones rank 0 saves in the checkpoint.
        """
        if not self.enabled:
            return
        for buffer in model.buffers():
            torch_dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        """Leave the process group (if this context joined one)."""
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def single_process(device: torch.device | None = None) -> DistributedContext:
    """The context of an ordinary, non-distributed run."""
    return DistributedContext(device=device or torch.device("cpu"))


def context_from_environment(device: str = "auto", sync_batchnorm: bool = False) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or return a single-process context.

    Each rank uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is available (and ``device`` is not ``cpu``), else the
    CPU with gloo.
    """

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    requested = resolve_device(device, setting="train.device")  # a clear error for cuda without CUDA, or a bad name
    if world_size <= 1:
        return single_process(requested)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = requested.type == "cuda"
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConvUNeXtError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); "
                "start at most one process per GPU (--nproc_per_node / --devices)"
            )
        torch.cuda.set_device(torch_device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=torch_device, sync_batchnorm=sync_batchnorm)
