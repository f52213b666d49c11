"""The report of a reproduction: one row per run, statistics over seeds, ``results.csv``, ``summary.csv`` and the
text of ``results.md``."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data import dataset_info, dataset_spec, list_datasets
from ..errors import ConvUNeXtError
from ..evaluation.compare import average_scores, comparison_table, paired_comparison, read_scores, statistics_note
from ..evaluation.observers import SECOND_OBSERVER_NOTE, second_observer_metrics
from ..models.cost import model_cost
from ..training.trainer import model_kwargs_from_config
from ..training.validation import selection_dice
from ..utils.io import atomic_path
from ..utils.table import markdown_table
from .budgets import Budget
from .plan import RunSpec

DATASET_TITLES = {name: dataset_spec(name).title for name in list_datasets()}
VESSEL_DATASETS = tuple(name for name in list_datasets() if dataset_spec(name).vessel_metrics)
MODEL_TITLES = {
    "convunext": "ConvUNeXt",
    "unet": "UNet",
    "attention_unet": "Attention UNet",
    "unet_plus_plus": "UNet++",
    "resunet": "ResUNet",
}
REFERENCE_MODEL = "convunext"
"""The model every other is compared with, image by image (:func:`paired_with_reference`)."""
FLOPS_SIZE = 480
FOV_METRICS = (
    ("fov_sensitivity", "Sensitivity"),
    ("fov_specificity", "Specificity"),
    ("fov_accuracy", "Accuracy"),
    ("fov_auc", "AUC"),
)
VOLUME_METRIC_PREFIXES = ("dice_", "hd95_", "assd_", "nsd_")
"""Test metrics of a volume dataset beyond :data:`TEST_METRICS` (``dice_<class>``, ``hd95_mean``...), kept in rows."""
TEST_METRICS = ("dice_fg_mean", "miou_cm", "pixel_accuracy", "iou_fg_cm", *(key for key, _ in FOV_METRICS))
SECOND_OBSERVER = "Second observer"
"""The row of the second observer's scores, under the models, for datasets that have one (:func:`observer_scores`)."""


def _training_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return math.fsum(float(row["epoch_seconds"]) for row in csv.DictReader(handle))


def config_model_kwargs(spec: RunSpec) -> dict[str, Any]:
    """The model arguments ``spec``'s config gives, as the trainer builds them
    (:func:`~convunext.training.trainer.model_kwargs_from_config`)."""
    data = spec.config.data
    return model_kwargs_from_config(spec.config, dataset_info(data.name, data.root, **data.options))


def _model_kwargs(spec: RunSpec) -> dict[str, Any]:
    """The run's model arguments: its best checkpoint's, else (a committed report whose weights were not kept) its
    config's (:func:`config_model_kwargs`)."""
    best = spec.run_dir / "best.json"
    if best.is_file():
        return json.loads(best.read_text())["model"]["kwargs"]
    return config_model_kwargs(spec)


def collect_row(spec: RunSpec, test_metrics: Mapping[str, Any], report_dir: str | Path) -> dict[str, Any]:
    """The ``results.csv`` row of a finished, tested run (its folder relative to ``report_dir``, so a committed
    report names no path of the machine it ran on)."""
    summary = json.loads((spec.run_dir / "summary.json").read_text())
    params, gflops = model_cost(spec.model, FLOPS_SIZE, **_model_kwargs(spec))
    row: dict[str, Any] = {
        "dataset": spec.dataset,
        "model": spec.model,
        "seed": spec.seed,
        "params": params,
        f"gflops_{FLOPS_SIZE}": gflops,
    }
    for key in TEST_METRICS:
        value = test_metrics.get(key)
        row[f"test_{key}"] = math.nan if value is None else float(value)
    if "hd95_mean" in test_metrics:  # a volume dataset's record: its distances and per-class scores too
        for key, value in test_metrics.items():
            if key.startswith(VOLUME_METRIC_PREFIXES) and key not in TEST_METRICS:
                row[f"test_{key}"] = math.nan if value is None else float(value)
    row["best_val_epoch"] = summary["best_epoch"]
    row["best_val_dice"] = selection_dice(summary["best_val_metrics"])
    row["epochs_run"] = summary["epochs_run"]
    row["train_seconds"] = _training_seconds(spec.run_dir)
    row["device"] = summary.get("device", "not recorded")  # summaries before 2026-12-03 did not name it
    row["run_dir"] = Path(os.path.relpath(spec.run_dir, report_dir)).as_posix()
    return row


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n-1) of the non-NaN ``values``; NaN where undefined (std of one value)."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else math.nan)


def _pm(values: Sequence[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_runs(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The rows by ``(dataset, model)``, in order of first appearance (one row per seed in each group)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"]), []).append(row)
    return groups


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``summary.csv``: per dataset and model, the mean and sample std (n-1) over seeds of every test metric."""
    out = []
    for (dataset, model), group in group_runs(rows).items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "seeds": len(group),
            "params": group[0]["params"],
            f"gflops_{FLOPS_SIZE}": group[0][f"gflops_{FLOPS_SIZE}"],
        }
        for key in (*(f"test_{k}" for k in TEST_METRICS), "train_seconds"):
            mean, std = mean_std([float(r[key]) for r in group])
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean, std
        out.append(entry)
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` to ``path`` atomically (floats with 6 significant digits); the columns are every row's keys
    in order of appearance (a volume dataset's rows have more), a missing cell empty."""
    fields = list(dict.fromkeys(key for row in rows for key in row)) if rows else ["dataset", "model", "seed"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def params_text(params: int) -> str:
    """``3.51M`` or ``45.2k``."""
    return f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"


def header_lines(
    title: str, budget: Budget, context: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The top of a report: ``title``, the budget that produced it, the command, versions, seeds and protocol."""
    seeds = sorted({int(row["seed"]) for row in rows})
    return [
        f"# {title} — budget `{budget.name}`",
        "",
        f"**Produced by the `{budget.name}` budget**: {budget.description}",
        "",
        f"- command: `{context.get('command')}` (the latest; the runs may come from several invocations, each listed "
        f"in `{context.get('record_file')}`)",
        f"- finished: {context.get('finished')}; convunext {__version__}, torch {torch.__version__}, "
        f"{context.get('device')}; seeds: {', '.join(map(str, seeds))} ({len(seeds)} per model)",
        "- protocol: the best checkpoint of each run is chosen on the **validation** split (carved from the "
        "training images); the **test** split is evaluated once, with that checkpoint. Same recipe for every model.",
        "- Dice = mean over test images of the per-image foreground Dice; mIoU = mean IoU over classes *including "
        "background* from one confusion matrix over the test set (the paper's definitions; see SPEC section 6). "
        "Values are mean ± sample std over seeds (no ± with one seed).",
        "",
    ]


def model_title(model: str) -> str:
    """How a report names ``model``: the paper's name of a registry model, a variant's own name."""
    return MODEL_TITLES.get(model, model)


def runs_and_recipe_lines(rows: Sequence[Mapping[str, Any]], specs: Sequence[RunSpec]) -> list[str]:
    """The end of a report: each dataset and model's runs (epochs, validation Dice, minutes and hardware per seed),
    then each dataset's recipe."""
    runs = []
    for (dataset, model), group in group_runs(rows).items():
        runs.append(
            [
                DATASET_TITLES[dataset],
                model_title(model),
                str(len(group)),
                ", ".join(f"{int(r['best_val_epoch'])}/{int(r['epochs_run'])}" for r in group),
                _pm([float(r["best_val_dice"]) for r in group]),
                ", ".join(f"{float(r['train_seconds']) / 60:.1f}" for r in group),
                ", ".join(str(r["device"]) for r in group),
            ]
        )
    lines = [
        "## Runs",
        "",
        markdown_table(
            ["Dataset", "Model", "Seeds", "Best val epoch / epochs", "Val Dice", "Train min / seed", "Hardware / seed"],
            runs,
        ),
        "",
        "Training minutes compare only between runs on the same hardware: runs of one report may come from several "
        "machines (they are resumable and can be added a few at a time).",
        "",
        "## Recipe",
        "",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        first = next(spec for spec in specs if spec.dataset == dataset)
        config = first.recorded_config() or first.config  # as trained: a length in steps resolved to epochs
        optim, train, data = config.optim, config.train, config.data
        length = f"{train.epochs} epoch(s)"
        if train.steps is not None:
            length = f"{train.steps} optimiser steps ({train.epochs} epochs)"
        lines.append(
            f"- {DATASET_TITLES[dataset]}: {length}, crop {data.crop_size}, batch {optim.batch_size} "
            f"(per process), AdamW lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {optim.recipe} schedule "
            f"(warm-up {optim.warmup_epochs:g} epoch(s), "
            + (f"decay x{optim.decay_gamma:g} per epoch" if optim.decay == "exponential" else "poly decay")
            + f"), validation every {train.eval_every} epoch(s)"
            + (f", model kwargs {config.model.kwargs}" if config.model.kwargs else "")
        )
    return [*lines, ""]


def seed_averaged_scores(runs: Sequence[RunSpec]) -> dict[str, float]:
    """Per test image (by name), its Dice averaged over ``runs`` (the tested seeds of one model on one dataset),
    read from each run's ``test/per_image.csv`` — for a volume dataset, per test volume from ``per_volume.csv``."""
    return average_scores([read_scores(_scores_file(spec.test_dir)) for spec in runs], [s.label for s in runs])


def _scores_file(test_dir: Path) -> Path:
    """A test report's per-item scores: ``per_volume.csv`` of a volume dataset, else ``per_image.csv``."""
    volumes = test_dir / "per_volume.csv"
    return volumes if volumes.is_file() else test_dir / "per_image.csv"


def volume_class_lines(dataset: str, models: Sequence[str], groups: Mapping[tuple[str, str], list]) -> list[str]:
    """The lines of ``results.md``'s per-class table of a volume dataset: each model's Dice, HD95 and ASSD (mm) per
    foreground class, mean ± std over seeds; none for a 2D dataset."""
    rows = [row for (name, _), group in groups.items() if name == dataset for row in group]
    classes = list(
        dict.fromkeys(key[len("test_dice_") :] for row in rows for key in row if key.startswith("test_dice_"))
    )
    classes = [name for name in classes if name != "fg_mean"]
    if not classes:
        return []
    headers = ["Model", *(f"{name} {metric}" for name in classes for metric in ("Dice", "HD95 (mm)", "ASSD (mm)"))]
    table = []
    for model in models:
        group = groups.get((dataset, model), [])
        if group:
            cells = [
                _pm([float(r[f"test_{metric}_{name}"]) for r in group], digits)
                for name in classes
                for metric, digits in (("dice", 4), ("hd95", 2), ("assd", 2))
            ]
            table.append([model_title(model), *cells])
    return [
        f"### {DATASET_TITLES[dataset]}: per class, over whole test volumes",
        "",
        "Dice over each whole volume; HD95 and ASSD in mm from the voxel spacing (MONAI's conventions), averaged over "
        "the volumes where they are finite (a class in only one of prediction and truth has none); per-volume "
        "values in each run's `test/per_volume.csv`.",
        "",
        markdown_table(headers, table),
        "",
    ]


def paired_with_reference(dataset: str, models: Sequence[str], specs: Sequence[RunSpec]) -> list[str]:
    """The lines of ``results.md``'s section "paired comparison with ConvUNeXt (test images)" for ``dataset``:
    each model's per-image test Dice averaged over its seeds, paired by image name with ConvUNeXt's (also averaged
    over its seeds) and compared (:func:`~convunext.evaluation.compare.paired_comparison`). No lines when the
    dataset has no ConvUNeXt run or no other model."""
    runs = {model: [spec for spec in specs if (spec.dataset, spec.model) == (dataset, model)] for model in models}
    runs = {model: found for model, found in runs.items() if found}
    if REFERENCE_MODEL not in runs or len(runs) < 2:
        return []
    reference = seed_averaged_scores(runs[REFERENCE_MODEL])
    if len(reference) < 2:  # a leave-one-out fold tests one image
        return [
            f"### {DATASET_TITLES[dataset]}: paired comparison with ConvUNeXt (test images)",
            "",
            f"None: the test split holds {len(reference)} image, and a paired comparison needs at least 2 (with "
            "leave-one-out folds, compare the models over the folds' reports).",
            "",
        ]
    others = []
    for model in runs:
        if model != REFERENCE_MODEL:
            label = model_title(model)
            comparison = paired_comparison(
                reference, seed_averaged_scores(runs[model]), labels=(f"{dataset} / ConvUNeXt", label)
            )
            others.append(([label, str(len(runs[model])), f"{comparison.scores_b.mean():.4f}"], comparison))
    reference_row = [
        MODEL_TITLES[REFERENCE_MODEL],
        str(len(runs[REFERENCE_MODEL])),
        f"{others[0][1].scores_a.mean():.4f}",
    ]
    return [
        f"### {DATASET_TITLES[dataset]}: paired comparison with ConvUNeXt (test images)",
        "",
        "Per test image, each model's Dice is averaged over that model's seeds, then paired by image name with "
        "ConvUNeXt's seed-averaged Dice on the same image "
        f"({others[0][1].n} images). Difference = model - ConvUNeXt (positive: the model scored higher); wins / ties "
        "/ losses count the images where the model's seed-averaged Dice is higher / equal / lower. "
        + statistics_note(),
        "",
        comparison_table(["Model", "Seeds", "Dice (seed-averaged)"], reference_row, others, "ConvUNeXt"),
        "",
    ]


def observer_scores(dataset: str, specs: Sequence[RunSpec]) -> dict[str, float] | str | None:
    """The second observer's scores on the test images of ``dataset`` that its tested runs cover (their
    ``test/per_image.csv``), read from the runs' data folder with their options
    (:func:`~convunext.evaluation.observers.second_observer_metrics`).

    Returns:
        The scores; None for a dataset without a second observer or without a tested run; the one-line reason when
        they cannot be computed (a copy without the second observer's files), so that the models' results are still
        reported.
    """
    runs = [spec for spec in specs if spec.dataset == dataset and (spec.test_dir / "per_image.csv").is_file()]
    if dataset_spec(dataset).second_observer is None or not runs:
        return None
    names = list(dict.fromkeys(name for spec in runs for name in read_scores(spec.test_dir / "per_image.csv")))
    data = runs[0].config.data
    try:
        return second_observer_metrics(dataset, data.root, "test", names, **data.options)
    except ConvUNeXtError as error:
        return str(error)


def _observer_cell(scores: dict[str, float] | str | None, key: str) -> str:
    """A table cell of the second observer: ``key``'s score, or — (no score, or none of that kind: AUC)."""
    return f"{scores[key]:.4f}" if isinstance(scores, dict) and key in scores else "—"


def _observer_lines(observers: Mapping[str, dict[str, float] | str | None]) -> list[str]:
    """The note under a table with a second-observer row, and why any dataset's could not be scored."""
    failed = "".join(
        f" Not scored on {DATASET_TITLES[name]}: {why}." for name, why in observers.items() if isinstance(why, str)
    )
    return [SECOND_OBSERVER_NOTE + failed, ""]


def results_markdown(
    rows: Sequence[Mapping[str, Any]], budget: Budget, context: Mapping[str, Any], specs: Sequence[RunSpec]
) -> str:
    """The text of ``results.md``: the budget, the paper-style tables (with a second-observer row for the datasets
    that have one, :func:`observer_scores`), the recipe and the protocol."""
    groups = group_runs(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    observers = {dataset: observer_scores(dataset, specs) for dataset in datasets}
    observers = {dataset: scores for dataset, scores in observers.items() if scores is not None}
    lines = header_lines("ConvUNeXt reproduction", budget, context, rows)
    headers = ["Model", "Params", f"GFLOPs (3x{FLOPS_SIZE}x{FLOPS_SIZE})"]
    for dataset in datasets:
        headers += [f"{DATASET_TITLES[dataset]} Dice", f"{DATASET_TITLES[dataset]} mIoU"]
    table = []
    for model in models:
        first = next(group[0] for (d, m), group in groups.items() if m == model)
        line = [model_title(model), params_text(int(first["params"])), f"{float(first[f'gflops_{FLOPS_SIZE}']):.1f}"]
        for dataset in datasets:
            group = groups.get((dataset, model), [])
            line += [_pm([float(r["test_dice_fg_mean"]) for r in group])]
            line += [_pm([float(r["test_miou_cm"]) for r in group])]
        table.append(line)
    if observers:
        table.append(
            [
                SECOND_OBSERVER,
                "—",
                "—",
                *(
                    _observer_cell(observers.get(dataset), key)
                    for dataset in datasets
                    for key in ("dice_fg_mean", "miou_cm")
                ),
            ]
        )
    lines += ["## Test results", "", markdown_table(headers, table), ""]
    if observers:
        lines += _observer_lines(observers)
    for dataset in (d for d in datasets if d in VESSEL_DATASETS):
        vessel = []
        for model in models:
            group = groups.get((dataset, model), [])
            vessel.append(
                [model_title(model), *(_pm([float(r[f"test_{key}"]) for r in group]) for key, _ in FOV_METRICS)]
            )
        if dataset in observers:
            vessel.append([SECOND_OBSERVER, *(_observer_cell(observers[dataset], key) for key, _ in FOV_METRICS)])
        lines += [
            f"### {DATASET_TITLES[dataset]}: vessel metrics inside the field of view",
            "",
            markdown_table(["Model", *(label for _, label in FOV_METRICS)], vessel),
            "",
        ]
    for dataset in datasets:
        lines += volume_class_lines(dataset, models, groups)
    for dataset in datasets:
        lines += paired_with_reference(dataset, models, specs)
    lines += runs_and_recipe_lines(rows, specs)
    lines += [
        f"Files: `results.csv` (one row per run), `summary.csv` (mean/std), `dice_vs_params.png`, and the run "
        f"folders under `runs/` ({len(rows)} runs).",
        "",
    ]
    return "\n".join(lines)
