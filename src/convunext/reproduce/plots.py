"""``dice_vs_params.png``: the reproduction's test Dice against parameter count."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.io import atomic_path
from .report import DATASET_TITLES, MODEL_TITLES, group_runs, mean_std


def plot_dice_vs_params(rows: Sequence[Mapping[str, Any]], path: Path, budget: str = "") -> None:
    """``dice_vs_params.png``: test Dice (mean ± std over seeds) against parameters, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_runs(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for (d, model), group in groups.items():
            if d != dataset:
                continue
            mean, std = mean_std([float(r["test_dice_fg_mean"]) for r in group])
            params = int(group[0]["params"]) / 1e6
            axis.errorbar(params, mean, yerr=0 if math.isnan(std) else std, marker="o", capsize=4)
            axis.annotate(MODEL_TITLES.get(model, model), (params, mean), textcoords="offset points", xytext=(6, 4))
        axis.set_xlabel("parameters (millions)")
        axis.set_ylabel("test Dice (per-image foreground, mean)")
        axis.set_title(DATASET_TITLES[dataset])
        axis.grid(alpha=0.3)
    seeds = len({row["seed"] for row in rows})
    figure.suptitle(f"test Dice vs parameters — budget {budget or '?'}, mean ± std over {seeds} seed(s)", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
