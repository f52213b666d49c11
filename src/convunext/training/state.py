"""The state of a run in progress: the objects one :meth:`~convunext.training.trainer.Trainer.fit` works with and
the progress that the run's ``last_state.pt`` keeps, so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data import TransformedDataset
from .ema import ModelEma
from .run_log import RunLog

__all__ = ["TrainingState", "no_best_yet"]


def no_best_yet() -> dict[str, Any]:
    """:attr:`TrainingState.best` before any validation: every Dice beats it."""
    return {"epoch": 0, "dice": -math.inf, "metrics": {}, "stale": 0}


@dataclass
class TrainingState:
    """The data, optimiser, schedule, gradient scaler, log (written on rank 0) and EMA of one fit, and its
    progress: the last epoch trained, the best validation point so far (of the weights and of the EMA) and the
    metrics of every epoch."""

    augmented: TransformedDataset
    sampler: DistributedSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    log: RunLog
    epoch: int = 0  # the last epoch trained
    best: dict[str, Any] = field(default_factory=no_best_yet)
    best_ema: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "dice": -math.inf})
    history: list[dict[str, float]] = field(default_factory=list)
    ema: ModelEma | None = None

    def state_dict(self, model: nn.Module, world_size: int, config: dict[str, Any]) -> dict[str, Any]:
        """The training state after :attr:`epoch`, for ``last_state.pt``, with the ``config`` that trained it (what
        a resume is compared with: :mod:`~convunext.training.resume`)."""
        return {
            "config": config,
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "world_size": world_size,
            "epoch": self.epoch,
            "best": self.best,
            "best_ema": self.best_ema,
            "history": self.history,
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Continue from a :meth:`state_dict` (``model`` too): the next epoch is the one after the saved one."""
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        self.best_ema = state.get("best_ema", self.best_ema)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
