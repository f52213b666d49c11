"""What rank 0 records of a run besides its checkpoints: ``metrics.csv`` (one row per epoch), ``progress.png``
(redrawn after each validation) and, with ``train.tensorboard``, TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ..utils.io import atomic_path
from .plots import plot_progress

__all__ = ["METRIC_COLUMNS", "RunLog", "write_metrics"]

METRIC_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_dice",
    "val_miou",
    "val_accuracy",
    "val_dice_running_bn",
    "val_dice_ema",
    "epoch_seconds",
)
"""``metrics.csv``'s columns: ``val_*`` are the model's validation metrics (after the BatchNorm statistics are
recomputed, with ``train.precise_bn_batches``); ``val_dice_running_bn`` is the Dice before that recomputation
(``train.validate_running_bn``) and ``val_dice_ema`` the EMA weights' Dice (NaN when the option is off or the epoch
not validated)."""


def write_metrics(directory: Path, history: list[dict[str, float]], plot: bool) -> None:
    """``metrics.csv`` of ``history`` (rows of :data:`METRIC_COLUMNS`) in ``directory``, and with ``plot`` its
    ``progress.png``."""
    with atomic_path(directory / "metrics.csv") as tmp, open(tmp, "w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        out.writeheader()
        for entry in history:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in entry.items()})
    if plot:
        plot_progress(history, directory / "progress.png")


class RunLog:
    """The records of the run in ``run_dir`` (see the module docstring); nothing is written before :meth:`add`
    or :meth:`start_tensorboard`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: Any = None

    def start_tensorboard(self) -> None:
        """Add TensorBoard scalars from now on, into ``run_dir/tensorboard`` (said and skipped when TensorBoard
        is not installed)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("train.tensorboard is on but tensorboard is not installed (pip install tensorboard); skipping it")
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def add(self, history: list[dict[str, float]]) -> None:
        """Record the last epoch of ``history``."""
        row = history[-1]
        # the plot (a quarter of a second) only when the validation curve moves: once per epoch it cost a short
        # CPU run (4 steps per epoch) several minutes
        write_metrics(self.run_dir, history, plot=not math.isnan(row["val_dice"]))
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["epoch"])

    def close(self) -> None:
        """Flush and close the TensorBoard file, if any."""
        if self.writer is not None:
            self.writer.close()
