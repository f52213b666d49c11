"""How a run feeds its training step: augmented crops of the training split, this rank's shard of them in a
seeded order, and their batches."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import DatasetInfo, TrainTransform, TransformedDataset, pad_collate
from ..errors import ConvUNeXtError
from .config import ExperimentConfig
from .distributed import DistributedContext

__all__ = ["training_batches"]


def training_batches(
    config: ExperimentConfig, dataset: Dataset, info: DatasetInfo, dist: DistributedContext, device: torch.device
) -> tuple[TransformedDataset, DistributedSampler, DataLoader]:
    """The augmented training crops of ``dataset`` (``data.*`` of ``config``), their sampler (this rank's shard,
    shuffled from ``train.seed``) and loader of ``optim.batch_size`` crops; the crops of epoch ``e`` follow
    ``set_epoch(e)`` of the first two.

    ``data.num_workers`` None loads in the training process on CPU (a worker would take a core from the step) and
    with ``min(8, cores - 1)`` workers with CUDA. The last incomplete batch is dropped, unless the split holds less
    than one global batch (``optim.batch_size`` x processes).

    Raises:
        ConvUNeXtError: the training split is empty.
    """
    transform = TrainTransform(
        config.data.crop_size,
        info.mean,
        info.std,
        scale_range=config.data.scale_range,
        hflip=config.data.hflip,
        vflip=config.data.vflip,
    )
    augmented = TransformedDataset(dataset, transform, seed=config.train.seed)
    sampler = DistributedSampler(
        augmented, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.train.seed
    )
    workers = config.data.num_workers
    if workers is None:
        workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0
    batch_size = config.optim.batch_size
    loader = DataLoader(
        augmented,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=pad_collate,
        pin_memory=device.type == "cuda",
        drop_last=len(augmented) >= batch_size * dist.world_size,
        persistent_workers=False,
    )
    if len(loader) == 0:
        raise ConvUNeXtError(f"dataset {info.name!r}: the training split is empty")
    return augmented, sampler, loader
