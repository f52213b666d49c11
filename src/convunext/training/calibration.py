"""Measuring what a run's work costs, for its time budget (:mod:`convunext.training.time_budget`): a training step,
a validation and an epoch's save, each timed on a copy of the model so that the run itself (its weights, random
state and data order) is untouched."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import save_checkpoint_set
from ..data import TransformedDataset
from .ema import ModelEma
from .plots import plot_progress
from .run_log import METRIC_COLUMNS, write_metrics
from .step import TrainingStep
from .time_budget import RunCosts
from .validation import Validation

__all__ = ["CALIBRATION_STEPS", "measure_run_costs"]

CALIBRATION_STEPS = 5
"""Timed training steps (after one untimed) behind :func:`measure_run_costs`: with 3, one 10-minute DRIVE run
timed its step at a slow moment (2.40 s against 1.95-2.05 s in its neighbours) and ended 17% short."""


def measure_run_costs(
    model: nn.Module,
    step: TrainingStep,
    validation: Validation,
    augmented: TransformedDataset,
    loader: DataLoader,
    save_near: Path | None,
) -> RunCosts:
    """The costs of a run's work, measured on a copy of ``model``.

    Args:
        model: the run's model (copied; the copy trains with the run's optimiser and, with ``train.ema_decay``,
            its EMA).
        step: the run's training step.
        validation: the run's validation, timed as one validation point with its precise-BN and EMA work (and the
            progress plot drawn after it).
        augmented: the run's training crops; epoch 0's are used (the run's epochs start at 1).
        loader: the batches of ``augmented``: the median of :data:`CALIBRATION_STEPS` steps over them, after one.
        save_near: a folder on the disk the run saves to, where an epoch's checkpoint set and logs are written
            (twice: the first save pays one-off costs) into a scratch folder, removed after; None times no save
            (a rank that does not save).
    """
    rng = torch.get_rng_state()
    probe = copy.deepcopy(model)
    ema_decay = step.config.train.ema_decay
    probe_ema = ModelEma(probe, ema_decay) if ema_decay else None
    optimizer = step.optimizer(probe)
    probe.train()
    augmented.set_epoch(0)
    times: list[float] = []
    while len(times) < CALIBRATION_STEPS + 1:
        for batch in loader:
            began = time.perf_counter()
            loss = step.loss(probe, batch["image"].to(step.device), batch["mask"].to(step.device))
            step.update(probe, optimizer, loss, ema=probe_ema)
            times.append(time.perf_counter() - began)
            if len(times) > CALIBRATION_STEPS:
                break
    began = time.perf_counter()
    validation.point(probe, probe_ema, augmented, 0)
    validation_seconds = time.perf_counter() - began
    save_seconds = 0.0
    if save_near is not None:
        state = {"model": probe.state_dict(), "optimizer": optimizer.state_dict()}
        history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": epoch} for epoch in range(1, 3)]
        same_disk = save_near if save_near.is_dir() else None
        with tempfile.TemporaryDirectory(prefix=".time-budget-", dir=same_disk) as scratch:
            for _ in range(2):
                began = time.perf_counter()
                save_checkpoint_set(Path(scratch), probe, {}, state, best=True)
                write_metrics(Path(scratch), history, plot=False)
                save_seconds = time.perf_counter() - began
                plot_progress(history, Path(scratch) / "progress.png")  # drawn after each validation
                plot_seconds = time.perf_counter() - began - save_seconds
            validation_seconds += plot_seconds
    torch.set_rng_state(rng)
    return RunCosts(len(loader), statistics.median(times[1:]), validation_seconds, save_seconds)
