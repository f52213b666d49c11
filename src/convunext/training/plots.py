"""``progress.png``: loss, validation Dice/mIoU and learning-rate curves of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..utils.io import atomic_path


def plot_progress(history: Sequence[dict[str, float]], path: str | Path) -> None:
    """Draw the curves of ``history`` (rows of ``metrics.csv``) into ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    evaluated = [row for row in history if not math.isnan(row["val_dice"])]
    figure, (loss_axis, metric_axis, lr_axis) = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker=".", label="train loss (CE + Dice)")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_title("training loss")
    metric_axis.plot([r["epoch"] for r in evaluated], [r["val_dice"] for r in evaluated], marker="o", label="Dice (fg)")
    metric_axis.plot([r["epoch"] for r in evaluated], [r["val_miou"] for r in evaluated], marker="s", label="mIoU")
    metric_axis.set_ylim(0, 1)
    metric_axis.set_xlabel("epoch")
    metric_axis.set_title("validation")
    metric_axis.legend(loc="lower right")
    lr_axis.plot(epochs, [row["lr"] for row in history], marker=".")
    lr_axis.set_xlabel("epoch")
    lr_axis.set_title("learning rate (end of epoch)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for axis in (loss_axis, metric_axis, lr_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
