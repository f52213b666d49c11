"""The report figures: ``dice_vs_params.png`` (a reproduction's test Dice against parameter count) and an ablation
study's roadmap figure (``STUDY.png``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.io import atomic_path
from .report import DATASET_TITLES, FLOPS_SIZE, group_runs, mean_std, model_title, params_text

STEP_COLOUR, BRANCH_COLOUR, FINAL_COLOUR = "#4c72b0", "#c4c4c4", "#c44e52"


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
            axis.annotate(model_title(model), (params, mean), textcoords="offset points", xytext=(6, 4))
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


def plot_study(summary: Sequence[Mapping[str, Any]], title: str, final: str, path: Path) -> None:
    """An ablation study's figure in the style of ConvNeXt's roadmap: one horizontal bar per study row (top to
    bottom), its test Dice (mean, ± std over seeds), and its parameters and GFLOPs at the right; side branches are
    hatched grey with grey italic ``↳`` labels, the paper's model (``final``) red. One panel per dataset; ``summary`` is
    :func:`~convunext.reproduce.ablation_report.study_summary`'s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    datasets = list(dict.fromkeys(entry["dataset"] for entry in summary))
    count = len(summary) // len(datasets)
    figure, axes = plt.subplots(1, len(datasets), figsize=(9 * len(datasets), 1.6 + 0.42 * count), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        entries = [entry for entry in summary if entry["dataset"] == dataset]
        means = [float(entry["dice_mean"]) for entry in entries]
        finite = [mean for mean in means if not math.isnan(mean)] or [0.0]
        spread = max(max(finite) - min(finite), 0.01)
        low, high = max(0.0, min(finite) - 0.6 * spread), max(finite) + 0.35 * spread
        right = blended_transform_factory(axis.transAxes, axis.transData)
        for y, (entry, mean) in enumerate(zip(entries, means)):
            branch = bool(entry["side_branch"])
            cost = f"{params_text(int(entry['params']))}  {float(entry[f'gflops_{FLOPS_SIZE}']):.1f} GFLOPs"
            axis.text(1.02, y, cost, transform=right, va="center", fontsize=8)
            if math.isnan(mean):
                axis.text(low, y, " not run", va="center", fontsize=8, color="grey")
                continue
            colour = BRANCH_COLOUR if branch else FINAL_COLOUR if entry["model"] == final else STEP_COLOUR
            std = float(entry["dice_std"])
            axis.barh(
                y,
                mean - low,
                left=low,
                height=0.6 if branch else 0.75,
                color=colour,
                hatch="//" if branch else None,
                edgecolor="white" if not branch else "grey",
                xerr=None if math.isnan(std) else std,
                capsize=3,
            )
            axis.text(mean, y, f" {mean:.4f}", va="center", fontsize=8)
        labels = [f"{'↳ ' if entry['side_branch'] else ''}{entry['step']}  {entry['short']}" for entry in entries]
        axis.set_yticks(range(len(entries)), labels=labels, fontsize=9)
        for label, entry in zip(axis.get_yticklabels(), entries):
            if entry["side_branch"]:
                label.set(color="dimgrey", style="italic")
        axis.invert_yaxis()
        axis.set_xlim(low, high)
        axis.set_xlabel("test Dice (per-image foreground, mean over seeds)")
        axis.set_title(f"{DATASET_TITLES[dataset]}   (params, GFLOPs at 3x{FLOPS_SIZE}x{FLOPS_SIZE} on the right)")
        axis.grid(axis="x", alpha=0.3)
    legend = [
        Patch(color=STEP_COLOUR, label="step"),
        Patch(facecolor=BRANCH_COLOUR, hatch="//", edgecolor="grey", label="side branch (not kept)"),
        Patch(color=FINAL_COLOUR, label="ConvUNeXt"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.04, 0.93, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
