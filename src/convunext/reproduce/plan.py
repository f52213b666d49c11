"""Planning a reproduction: where each dataset lives, and every run with its config and folder."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import dataset_spec, list_datasets
from ..errors import ConvUNeXtError
from ..utils.io import sha256_file
from .budgets import Budget

_WITH_PRESET = [spec for spec in map(dataset_spec, list_datasets()) if spec.preset]
DATASET_DIRS = {spec.name: spec.folder_name for spec in _WITH_PRESET if spec.folder_name}
"""The datasets with a preset that a reproduction finds under the data root, with their folders (``DRIVE/``, ...)."""
DATASETS = (*DATASET_DIRS, *(spec.name for spec in _WITH_PRESET if not spec.folder_name))
"""Every dataset a reproduction trains on, those with a preset: the downloaded ones, then the generated ones."""
_NOT_RECIPE = ("data.root", "train.time_budget_plan")
"""Besides the execution fields (:data:`~convunext.training.config.EXECUTION_FIELDS`), what a reproduction may
change between invocations: where the data lives, and a budget's plan (measured on each machine)."""
_PLANNED_BY_TIME_BUDGET = ("train.epochs", "optim.warmup_epochs", "optim.decay_gamma")
"""What a ``train.time_budget_minutes`` plan resolves (a run with a budget keeps its measured length)."""


@dataclass
class RunSpec:
    """One training run of the reproduction: a dataset, a model, a seed, its config and its folder."""

    dataset: str
    model: str
    seed: int
    config: Any  # ExperimentConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.dataset} / {self.model} / seed {self.seed}"

    @property
    def test_dir(self) -> Path:
        return self.run_dir / "test"

    def recorded_config(self) -> Any:
        """The ``ExperimentConfig`` its run folder records (``config.yaml``: a length given in ``train.steps``
        resolved to whole epochs of its data), or None before the run has started."""
        from ..training.config import ExperimentConfig

        saved_file = self.run_dir / "config.yaml"
        return ExperimentConfig.from_yaml(saved_file) if saved_file.is_file() else None

    def status(self) -> str:
        """``done`` (trained and tested), ``evaluate`` (trained, test pending), ``resume`` or ``new``."""
        if (self.run_dir / "summary.json").is_file():
            return "done" if self._tested() else "evaluate"
        if (self.run_dir / "last_state.pt").is_file():
            return "resume"
        return "new"

    def _tested(self) -> bool:
        """Whether the test report describes the best checkpoint; a report whose weights are not in the folder
        (a committed report: checkpoints stay out of git) stands for them, as they cannot be tested again."""
        report = self.test_dir / "metrics.json"
        best = self.run_dir / "best.safetensors"
        if not report.is_file():
            return False
        return not best.is_file() or json.loads(report.read_text()).get("weights_sha256") == sha256_file(best)

    def check_recipe(self) -> None:
        """Refuse to continue a run folder that was made with another recipe (e.g. another budget), naming the
        fields that differ. A run given in ``train.steps`` is compared at the length it resolved to: the epochs
        its ``metrics.csv`` shows were needed for those steps (a folder from before ``train.steps`` existed
        matches when it trained that many steps)."""
        from ..training.config import EXECUTION_FIELDS
        from ..training.schedule import steps_epochs, with_length

        saved, planned = self.recorded_config(), self.config
        if saved is None:
            return
        changed = []
        if planned.train.steps is not None:
            steps_per_epoch = _steps_per_epoch(self.run_dir / "metrics.csv")
            if steps_per_epoch is not None:
                same_length = saved.train.epochs == steps_epochs(planned.train.steps, steps_per_epoch)
            else:  # nothing trained yet: its recorded request is all there is
                same_length = saved.train.steps == planned.train.steps
            changed = [] if same_length else ["train.steps"]
            planned = with_length(planned, saved.train.epochs)
        budgeted = _PLANNED_BY_TIME_BUDGET if planned.train.time_budget_minutes else ()
        ignored = (*EXECUTION_FIELDS, *_NOT_RECIPE, *budgeted, "train.steps")
        changed += [key for key, _, _ in saved.differences(planned, ignored)]
        if changed:
            shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
            raise ConvUNeXtError(
                f"{self.run_dir}: this run folder was trained with another recipe ({shown} differ: budget or --set "
                "changed); use another --out folder, or delete the folder to start this run again"
            )


def _steps_per_epoch(metrics_csv: Path) -> int | None:
    """The optimiser steps per epoch of a run, from its ``metrics.csv`` (``step`` / ``epoch`` of its last row);
    None when it has no epoch yet."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    return int(rows[-1]["step"]) // int(rows[-1]["epoch"])


def locate_dataset(name: str, data_root: str | Path) -> Path:
    """The folder of dataset ``name`` under ``data_root`` (``DRIVE/``, ``GlaS/``, ``HRF/``, ``STARE/``,
    ``CHASE_DB1/``; any case, with or without ``_`` or ``-``: ``CHASEDB1/`` too), or ``data_root`` itself when it holds
    that dataset's layout; a dataset read from exactly the folder given (``volumes``) is ``data_root`` itself."""
    root = Path(data_root).expanduser()
    if name not in DATASET_DIRS:  # read from exactly the folder given (a volume dataset)
        spec = dataset_spec(name)
        if root.is_dir() and spec.is_root is not None and spec.is_root(root):
            return root
        raise ConvUNeXtError(f"{root}: no {spec.title} dataset ({spec.layout}); pass its folder as --data-root")
    wanted = DATASET_DIRS[name]
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and _folder_key(child.name) == _folder_key(wanted):
                return child
        from ..data.detect import detect_dataset

        try:
            if detect_dataset(root) == name:
                return root
        except ConvUNeXtError:
            pass
    raise ConvUNeXtError(
        f"{wanted} not found under {root} (expected {root / wanted}); pass --data-root, or leave {name} out of "
        "--datasets"
    )


def _folder_key(name: str) -> str:
    """A dataset folder's name as :func:`locate_dataset` compares it: lower case, without ``_`` and ``-``."""
    return name.lower().replace("_", "").replace("-", "")


def available_datasets(data_root: str | Path) -> list[str]:
    """The downloaded datasets with a preset (drive, glas, hrf, stare, chase_db1) present under ``data_root``."""
    found = []
    for name in DATASET_DIRS:
        try:
            locate_dataset(name, data_root)
        except ConvUNeXtError:
            continue
        found.append(name)
    return found


def plan_runs(
    report_dir: str | Path,
    models: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    data_root: str | Path,
    overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """Every run of the reproduction, dataset-major, with its config (preset + budget + ``overrides``)."""
    from ..models import list_models, list_variants
    from ..training.config import ExperimentConfig

    unknown = sorted(set(models) - set(list_models()) - set(list_variants()))
    if unknown:
        raise ConvUNeXtError(
            f"unknown model {unknown[0]!r}; valid models: {', '.join(list_models())} (and the variants of "
            "`convunext models --variants`)"
        )
    bad = sorted(set(datasets) - set(DATASETS))
    if bad:
        raise ConvUNeXtError(f"unknown dataset {bad[0]!r}; choose from {', '.join(DATASETS)}")
    for option, values in (("--models", models), ("--datasets", datasets), ("--seeds", seeds)):
        repeated = next((value for index, value in enumerate(values) if value in values[:index]), None)
        if repeated is not None:  # one run counted twice would weigh twice in the mean and std over seeds
            raise ConvUNeXtError(f"{option} {' '.join(map(str, values))}: {repeated} is given twice; give each once")
    report_dir = Path(report_dir)
    specs = []
    for dataset in datasets:
        root = locate_dataset(dataset, data_root) if dataset_spec(dataset).has_files else None
        for model in models:
            for seed in seeds:
                run_dir = report_dir / "runs" / dataset / model / f"seed{seed}"
                sets = [
                    f"data.name={dataset}",
                    *([f"data.root={root}"] if root is not None else []),
                    *budget.overrides_for(dataset),
                    *overrides,
                    f"model.name={model}",
                    f"train.seed={seed}",
                    f"train.output_dir={run_dir.parent}",
                    f"train.run_name={run_dir.name}",
                ]
                config = ExperimentConfig.from_yaml(dataset, sets)
                specs.append(RunSpec(dataset, model, seed, config, run_dir))
    return specs


def finished_runs(report_dir: str | Path, models: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """``(dataset, model, seed)`` of every finished run (``summary.json``) under ``report_dir/runs`` of one of
    ``models`` (default: the registry's), in the report's order: dataset, then the order of ``models``, then seed."""
    from ..models import list_models

    models = list(models or list_models())
    found = []
    for summary in Path(report_dir).glob("runs/*/*/seed*/summary.json"):
        seed_dir = summary.parent
        dataset, model, seed = seed_dir.parent.parent.name, seed_dir.parent.name, seed_dir.name[len("seed") :]
        if dataset in DATASETS and model in models and seed.isdigit():
            found.append((dataset, model, int(seed)))
    return sorted(found, key=lambda run: (DATASETS.index(run[0]), models.index(run[1]), run[2]))
