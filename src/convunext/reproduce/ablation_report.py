"""The report of an ablation study: per dataset and study row, the model's cost, its test Dice and mIoU over seeds
and their differences to the compared model and to the paper's ConvUNeXt (``STUDY.csv``, ``STUDY.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.variants import MACRO_NOTE, Study, arguments_text
from ..utils.table import markdown_table
from .budgets import Budget
from .plan import RunSpec
from .report import (
    DATASET_TITLES,
    FLOPS_SIZE,
    header_lines,
    params_text,
    runs_and_recipe_lines,
    summarize,
)

SCORES = (("dice", "test_dice_fg_mean"), ("miou", "test_miou_cm"))
"""The study's scores: its short name and the ``summary.csv`` column it is read from."""


def study_summary(study: Study, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``STUDY.csv``: for each dataset and study row, the model's params and GFLOPs (of its runs, at
    3x480x480), the seeds, Dice and mIoU (mean and sample std over seeds; NaN without a finished run), and the
    differences of the means to the row's compared model (``previous``) and to the paper's ConvUNeXt (``final``)."""
    stats = {(entry["dataset"], entry["model"]): entry for entry in summarize(rows)}

    def mean(dataset: str, model: str | None, column: str) -> float:
        entry = stats.get((dataset, model))
        return float(entry[f"{column}_mean"]) if entry else math.nan

    out = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        for row in study.rows:
            entry = stats.get((dataset, row.name), {})
            record: dict[str, Any] = {
                "dataset": dataset,
                "step": row.label,
                "model": row.name,
                "short": row.short,
                "change": row.change,
                "side_branch": row.branch,
                "compared_with": row.parent or "",
                "params": entry.get("params", ""),
                f"gflops_{FLOPS_SIZE}": entry.get(f"gflops_{FLOPS_SIZE}", math.nan),
                "seeds": entry.get("seeds", 0),
            }
            for name, column in SCORES:
                record[f"{name}_mean"] = mean(dataset, row.name, column)
                record[f"{name}_std"] = float(entry.get(f"{column}_std", math.nan))
            for name, column in SCORES:
                record[f"{name}_vs_previous"] = record[f"{name}_mean"] - mean(dataset, row.parent, column)
                record[f"{name}_vs_final"] = record[f"{name}_mean"] - mean(dataset, study.final, column)
            out.append(record)
    return out


def _score(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _delta(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.4f}"


def study_markdown(
    study: Study,
    summary: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    context: Mapping[str, Any],
    specs: Sequence[RunSpec],
) -> str:
    """The text of ``STUDY.md``: the budget and protocol, one table per dataset, the models' arguments, the runs
    and the recipe."""
    lines = header_lines(f"ConvUNeXt ablation: {study.title}", budget, context, rows)
    compared = "the previous step (a side branch: its step's previous)" if study.cumulative else "ConvUNeXt"
    lines += [
        f"Each row changes one choice ({compared}); Δ columns are differences of the mean test Dice. Side branches "
        "(`↳`) are the alternatives the paper tried at a step and did not keep.",
        "",
    ]
    headers = ["Step", "Change", "Model", "Params", f"GFLOPs (3x{FLOPS_SIZE}x{FLOPS_SIZE})", "Dice", "mIoU"]
    headers += [*(["Δ Dice vs previous"] if study.cumulative else []), "Δ Dice vs ConvUNeXt"]
    for dataset in dict.fromkeys(entry["dataset"] for entry in summary):
        table = []
        for entry in (e for e in summary if e["dataset"] == dataset):
            line = [
                f"↳ {entry['step']}" if entry["side_branch"] else entry["step"],
                entry["change"],
                f"`{entry['model']}`",
                params_text(int(entry["params"])) if entry["params"] != "" else "—",
                "—" if math.isnan(entry[f"gflops_{FLOPS_SIZE}"]) else f"{entry[f'gflops_{FLOPS_SIZE}']:.1f}",
                _score(entry["dice_mean"], entry["dice_std"]),
                _score(entry["miou_mean"], entry["miou_std"]),
            ]
            line += [_delta(entry["dice_vs_previous"])] if study.cumulative else []
            table.append([*line, _delta(entry["dice_vs_final"])])
        lines += [f"## {DATASET_TITLES[dataset]}", "", markdown_table(headers, table), ""]
    models = [[f"`{model}`", arguments_text(model)] for model in study.models]
    lines += [
        "## Models",
        "",
        "Each is a registered name (`convunext train --model NAME`); the arguments that differ from the paper's "
        "ConvUNeXt (`width`, `in_channels` and `num_classes` are the recipe's):",
        "",
        markdown_table(["Model", "Arguments (vs ConvUNeXt)"], models),
        "",
        *([MACRO_NOTE, ""] if study.cumulative else []),
    ]
    lines += runs_and_recipe_lines(rows, specs)
    lines += [
        f"Files: `{study.name}.csv` (this table, with mIoU differences), `{study.name}-runs.csv` (one row per run), "
        f"`{study.name}.png` (the roadmap figure), `{study.name}.json` (what was asked), and the run folders under "
        f"`runs/` ({len(rows)} runs).",
        "",
    ]
    return "\n".join(lines)
