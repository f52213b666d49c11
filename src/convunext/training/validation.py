"""Validating a run: the metrics of a model on the validation split (sharded across ranks, reduced exactly), after
its BatchNorm statistics are recomputed on training crops (``train.precise_bn_batches``), and those of the EMA
weights the same way (``train.ema_decay``).

The best checkpoint is the one of highest :func:`selection_dice`: the mean per-image foreground Dice, except for the
slices of volumes, where it is the Dice of whole validation volumes (``volume_dice_fg_mean``,
:class:`~convunext.evaluation.volumes.SliceVolumeDice`) — a mean over slices would count every empty slice
predicted empty as a perfect 1.0."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import DatasetInfo, EvalTransform, TransformedDataset, pad_collate
from ..evaluation.evaluate import evaluate_model
from ..evaluation.threshold import ThresholdChoice, ThresholdSearch
from ..evaluation.volumes import SliceVolumeDice
from ..inference import Inferer
from ..inference.optimize import optimize_for_inference
from .batchnorm_stats import recompute_batchnorm_statistics
from .config import ExperimentConfig
from .distributed import DistributedContext
from .ema import ModelEma

__all__ = ["Validation", "ValidationPoint", "selection_dice", "threshold_record"]


def selection_dice(metrics: dict[str, float]) -> float:
    """The validation Dice that selects the best checkpoint (see the module docstring); NaN for no metrics (an epoch
    without validation)."""
    return metrics.get("volume_dice_fg_mean", metrics.get("dice_fg_mean", math.nan))


class ValidationPoint(NamedTuple):
    """The results of one validation of a run."""

    metrics: dict[str, float]
    """The model's metrics (its BatchNorm statistics recomputed first, with ``train.precise_bn_batches``)."""
    running_bn_dice: float
    """The model's Dice before its statistics were recomputed (``train.validate_running_bn``; else NaN)."""
    ema_metrics: dict[str, float]
    """The EMA weights' metrics (empty without ``train.ema_decay``)."""


class Validation:
    """The validation of one run.

    Args:
        config: the run's configuration (``train.precise_bn_batches``, ``train.validate_running_bn``,
            ``data.eval_tile_size``, the batch size and seed that draw the crops of the statistics).
        dataset: the validation split.
        info: its description (normalisation, classes).
        device: where the models run.
        dist: the distributed context: each rank validates its shard of the images.
        fast: validate through :func:`~convunext.inference.optimize_for_inference` of the weights
            (``train.fast_validation``).
        forward: the run's training-mode forward pass, ``forward(model, images) -> logits`` (its memory format
            and autocast), with which the BatchNorm statistics are recomputed.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        dataset: Dataset,
        info: DatasetInfo,
        device: torch.device,
        dist: DistributedContext,
        fast: bool,
        forward: Callable[[nn.Module, Tensor], object],
    ) -> None:
        self.config, self.info, self.device, self.dist, self.fast, self.forward = (
            config,
            info,
            device,
            dist,
            fast,
            forward,
        )
        self.shard = _Shard(dataset, dist.rank, dist.world_size)
        self.case_names: list[str] | None = getattr(dataset, "case_names", None) if info.volume else None
        self.inferer = Inferer(tile_size=config.data.eval_tile_size, device=device)

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Metrics of ``model`` on the validation split, as it is (its BatchNorm statistics untouched); for a
        binary model also the Dice-optimal ``threshold`` on these images and the ``dice_at_threshold``
        (:class:`~convunext.evaluation.threshold.ThresholdSearch`, from the same probabilities) — not for the
        slices of volumes, whose ``volume_dice_fg_mean`` is the Dice of whole volumes at the argmax."""
        self.dist.broadcast_buffers(model)  # every shard is evaluated with the model rank 0 checkpoints
        info = self.info
        volumes = None
        if self.case_names is not None:
            volumes = SliceVolumeDice(self.case_names, info.num_classes, info.ignore_index)
        # the threshold search scores images one by one: on the slices of volumes, the empty ones would bias it
        search = ThresholdSearch(ignore_index=info.ignore_index) if info.num_classes == 2 and volumes is None else None

        def on_image(sample: dict[str, Any], probs: Tensor) -> None:
            if search is not None:
                search.update(probs[0, 1], **_truth(sample))
            if volumes is not None:
                volumes.update(sample["name"], probs[0].argmax(0).cpu(), sample["mask"])

        metrics = evaluate_model(
            optimize_for_inference(model) if self.fast else model,
            self.shard,
            EvalTransform(info.mean, info.std),
            info.num_classes,
            self.inferer,
            progress=False,
            topology="off",  # skeletons cost CPU seconds every validation; the test report has them
            on_image=on_image,
        )
        if self.dist.enabled:
            metrics.gather_across_processes()
        results = metrics.compute()
        if volumes is not None:
            if self.dist.enabled:
                volumes.counts = self.dist.reduce(volumes.counts.to(self.device)).cpu()
            results["volume_dice_fg_mean"] = volumes.dice()
        if search is not None:
            if self.dist.enabled:
                search.gather_across_processes()
            choice = search.best()
            results.update(threshold=choice.threshold, dice_at_threshold=choice.dice)
        return results

    def point(
        self, model: nn.Module, ema: ModelEma | None, augmented: TransformedDataset, epoch: int
    ) -> ValidationPoint:
        """Validate ``model`` (and ``ema``) at ``epoch``, their statistics recomputed on that epoch's crops of
        ``augmented`` first (the checkpoint saved after keeps those statistics)."""
        train = self.config.train
        running_bn_dice = math.nan
        if train.precise_bn_batches:
            if train.validate_running_bn:
                running_bn_dice = selection_dice(self.metrics(model))
            self.recompute_statistics(model, augmented, epoch)
        metrics = self.metrics(model)
        ema_metrics: dict[str, float] = {}
        if ema is not None:
            if train.precise_bn_batches:
                self.recompute_statistics(ema.module, augmented, epoch)
            ema_metrics = self.metrics(ema.module)
        return ValidationPoint(metrics, running_bn_dice, ema_metrics)

    def recompute_statistics(self, model: nn.Module, augmented: TransformedDataset, epoch: int) -> None:
        """Set ``model``'s BatchNorm statistics to those of ``train.precise_bn_batches`` batches of epoch
        ``epoch``'s training crops (:func:`~convunext.training.batchnorm_stats.recompute_batchnorm_statistics`),
        drawn in an order fixed by the seed and the epoch (so a resumed run repeats it)."""
        cfg = self.config
        batch, count = cfg.optim.batch_size, cfg.train.precise_bn_batches * cfg.optim.batch_size
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        rounds = -(-count // len(augmented))
        order = torch.cat([torch.randperm(len(augmented), generator=generator) for _ in range(rounds)])[:count]
        batches = (
            pad_collate([augmented[int(i)] for i in order[start : start + batch]])["image"].to(self.device)
            for start in range(0, count, batch)
        )
        recompute_batchnorm_statistics(model, batches, self.forward)


def _truth(sample: dict[str, Any]) -> dict[str, Any]:
    """A validation sample's ``target`` and ``fov`` for :meth:`ThresholdSearch.update`."""
    return {"target": sample["mask"], "fov": sample["fov"]}


def threshold_record(metrics: dict[str, float]) -> dict[str, Any]:
    """A checkpoint's ``meta["threshold"]`` from its validation metrics (:meth:`Validation.metrics`): the
    Dice-optimal threshold on the validation split, the Dice there and at the argmax."""
    choice = ThresholdChoice(
        metrics["threshold"], metrics["dice_at_threshold"], metrics["dice_fg_mean"], int(metrics["num_images"])
    )
    return choice.record("val")


class _Shard(Dataset):
    """Every ``world_size``-th item starting at ``rank`` (no padding, so each image is evaluated once)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
        self.info = getattr(dataset, "info", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]
