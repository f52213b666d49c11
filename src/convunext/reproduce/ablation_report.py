"""The report of an ablation study: per dataset and study row, the model's cost, its test Dice and mIoU over seeds
and their differences to the compared model and to the paper's ConvUNeXt, with a paired test of each Dice difference
over the test images (``STUDY.csv``, ``STUDY.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..evaluation.compare import PairedComparison, paired_comparison, statistics_note
from ..models.cost import model_cost
from ..models.variants import MACRO_NOTE, Study, arguments_text
from ..utils.table import markdown_table
from .budgets import Budget
from .plan import RunSpec
from .report import (
    DATASET_TITLES,
    FLOPS_SIZE,
    config_model_kwargs,
    header_lines,
    params_text,
    runs_and_recipe_lines,
    seed_averaged_scores,
    summarize,
)

SCORES = (("dice", "test_dice_fg_mean"), ("miou", "test_miou_cm"))
"""The study's scores: its short name and the ``summary.csv`` column it is read from."""


COMPARED = ("previous", "final")
"""The two models each study row is compared with: the row's compared model (``parent``) and the paper's ConvUNeXt."""


def seed_averaged_dice(specs: Sequence[RunSpec]) -> dict[tuple[str, str], dict[str, float]]:
    """Per ``(dataset, model)`` of the tested ``specs``: each test image's Dice averaged over the model's seeds
    (:func:`~convunext.reproduce.report.seed_averaged_scores`), read once for every comparison of the report."""
    runs: dict[tuple[str, str], list[RunSpec]] = {}
    for spec in specs:
        runs.setdefault((spec.dataset, spec.model), []).append(spec)
    return {key: seed_averaged_scores(group) for key, group in runs.items()}


def paired_dice(
    scores: Mapping[tuple[str, str], Mapping[str, float]], dataset: str, model_a: str | None, model_b: str
) -> PairedComparison | None:
    """``model_b`` against ``model_a`` on ``dataset``'s test images, from their seed-averaged Dice ``scores``
    (:func:`seed_averaged_dice`, :func:`~convunext.evaluation.compare.paired_comparison`); ``None`` when either
    model has no tested run there, or both are the same model."""
    scores_a, scores_b = scores.get((dataset, model_a or "")), scores.get((dataset, model_b))
    if scores_a is None or scores_b is None or model_a == model_b:
        return None
    return paired_comparison(scores_a, scores_b, labels=(f"{dataset} / {model_a}", f"{dataset} / {model_b}"))


def _paired_columns(compared: str, comparison: PairedComparison | None) -> dict[str, Any]:
    """``STUDY.csv``'s paired-test columns of the Dice difference to ``compared`` (NaN and empty without a test)."""
    prefix = f"dice_vs_{compared}"
    if comparison is None:
        return {**{f"{prefix}_{key}": math.nan for key in ("ci_low", "ci_high", "p")}, f"{prefix}_wtl": ""}
    return {
        f"{prefix}_ci_low": comparison.ci_low,
        f"{prefix}_ci_high": comparison.ci_high,
        f"{prefix}_p": comparison.p_value,
        f"{prefix}_wtl": f"{comparison.wins}/{comparison.ties}/{comparison.losses}",
    }


def study_summary(study: Study, rows: Sequence[Mapping[str, Any]], specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """``STUDY.csv``: for each dataset and study row, the model's params and GFLOPs (at 3x480x480; of its runs,
    else computed with the arguments the dataset's config gives, so rows still to run show their cost too), the
    seeds, Dice and mIoU (mean and sample std over seeds; NaN without a finished run), the differences of the means
    to the row's compared model (``previous``) and to the paper's ConvUNeXt (``final``), and the paired test of each
    Dice difference over the test images (:func:`paired_dice`): its confidence interval (``_ci_low``, ``_ci_high``),
    Wilcoxon p-value (``_p``) and images won / tied / lost (``_wtl``), over the model's ``test_images``."""
    stats = {(entry["dataset"], entry["model"]): entry for entry in summarize(rows)}
    scores = seed_averaged_dice(specs)
    dataset_specs = {spec.dataset: spec for spec in specs}  # any of a dataset's specs: one recipe per report

    def cost(dataset: str, model: str) -> dict[str, Any]:
        entry = stats.get((dataset, model))
        if entry is None:
            params, gflops = model_cost(model, FLOPS_SIZE, **config_model_kwargs(dataset_specs[dataset]))
            return {"params": params, f"gflops_{FLOPS_SIZE}": gflops}
        return {"params": entry["params"], f"gflops_{FLOPS_SIZE}": entry[f"gflops_{FLOPS_SIZE}"]}

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
                **cost(dataset, row.name),
                "seeds": entry.get("seeds", 0),
                "test_images": len(scores.get((dataset, row.name), {})),
            }
            for name, column in SCORES:
                record[f"{name}_mean"] = mean(dataset, row.name, column)
                record[f"{name}_std"] = float(entry.get(f"{column}_std", math.nan))
            for name, column in SCORES:
                record[f"{name}_vs_previous"] = record[f"{name}_mean"] - mean(dataset, row.parent, column)
                record[f"{name}_vs_final"] = record[f"{name}_mean"] - mean(dataset, study.final, column)
            for compared, model in zip(COMPARED, (row.parent, study.final)):
                record.update(_paired_columns(compared, paired_dice(scores, dataset, model, row.name)))
            out.append(record)
    return out


def _score(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _delta(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.4f}"


def _step(entry: Mapping[str, Any]) -> str:
    return f"↳ {entry['step']}" if entry["side_branch"] else entry["step"]


def _paired_cell(entry: Mapping[str, Any], compared: str, final: str) -> str:
    """A paired test in one cell: "difference [CI], p P, wins/ties/losses"."""
    prefix = f"dice_vs_{compared}"
    if entry["model"] == (entry["compared_with"] if compared == "previous" else final):
        return "the same model"
    if not entry[f"{prefix}_wtl"]:
        return "—"
    interval = f"[{entry[f'{prefix}_ci_low']:+.4f}, {entry[f'{prefix}_ci_high']:+.4f}]"
    return f"{entry[prefix]:+.4f} {interval}, p {entry[f'{prefix}_p']:.3g}, {entry[f'{prefix}_wtl']}"


def paired_lines(study: Study, dataset: str, summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The section "paired comparisons (test images)" of ``dataset``: per row with a tested run, its paired tests
    against the compared model (cumulative studies) and ConvUNeXt (no lines when no row has a test)."""
    compared = COMPARED if study.cumulative else COMPARED[1:]
    tested = [e for e in summary if e["dataset"] == dataset and any(e[f"dice_vs_{c}_wtl"] for c in compared)]
    if not tested:
        return []
    headers = ["Step", "Model", *(["Δ Dice vs previous"] if study.cumulative else []), "Δ Dice vs ConvUNeXt"]
    table = [[_step(e), f"`{e['model']}`", *(_paired_cell(e, c, study.final) for c in compared)] for e in tested]
    return [
        f"### {DATASET_TITLES[dataset]}: paired comparisons (test images)",
        "",
        f"Can the test set tell the two models apart? Per test image ({tested[0]['test_images']} images), each "
        "model's Dice is averaged over its seeds, then paired by image name; a cell gives the mean difference (this "
        "row - the compared model), its confidence interval, the p-value and the images won / tied / lost. An "
        "interval that straddles 0 means these runs do not separate the two models. " + statistics_note(),
        "",
        markdown_table(headers, table),
        "",
    ]


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
    row_change = (
        "changes one choice of the previous step (a side branch, of its step's previous one)"
        if study.cumulative
        else "reverts one of ConvUNeXt's choices"
    )
    intro = f"Each row {row_change}; Δ columns are differences of the mean test Dice."
    if study.cumulative:
        intro += " Side branches (`↳`) are the alternatives the paper tried at a step and did not keep."
    lines += [intro, ""]
    headers = ["Step", "Change", "Model", "Params", f"GFLOPs (3x{FLOPS_SIZE}x{FLOPS_SIZE})", "Dice", "mIoU"]
    headers += [*(["Δ Dice vs previous"] if study.cumulative else []), "Δ Dice vs ConvUNeXt"]
    for dataset in dict.fromkeys(entry["dataset"] for entry in summary):
        table = []
        for entry in (e for e in summary if e["dataset"] == dataset):
            line = [
                _step(entry),
                entry["change"],
                f"`{entry['model']}`",
                params_text(int(entry["params"])),
                f"{entry[f'gflops_{FLOPS_SIZE}']:.1f}",
                _score(entry["dice_mean"], entry["dice_std"]),
                _score(entry["miou_mean"], entry["miou_std"]),
            ]
            line += [_delta(entry["dice_vs_previous"])] if study.cumulative else []
            table.append([*line, _delta(entry["dice_vs_final"])])
        lines += [f"## {DATASET_TITLES[dataset]}", "", markdown_table(headers, table), ""]
        lines += paired_lines(study, dataset, summary)
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
        f"Files: `{study.name}.csv` (these tables, with mIoU differences), `{study.name}-runs.csv` (one row per "
        f"run), `{study.name}.png` (the roadmap figure), `{study.name}.json` (what was asked, every invocation), and "
        f"the run folders under `runs/` ({len(rows)} runs).",
        "",
    ]
    return "\n".join(lines)
