"""Running a comparison (a reproduction or an ablation study): train and test every planned run, then write the
report files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..errors import ConvUNeXtError
from ..inference.sliding_window import DEFAULT_OVERLAP, Inferer
from ..utils.device import device_description
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.lock import RunLock
from .budgets import BUDGETS, Budget
from .plan import DATASET_DIRS, RunSpec, available_datasets, finished_runs, plan_runs
from .plots import plot_dice_vs_params
from .report import collect_row, results_markdown, summarize, write_csv

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

PROTOCOL_THRESHOLD = "argmax"
"""Comparisons score every model at its argmax (the paper's protocol; for a binary model the threshold 0.5), not at
its validation threshold, so that their tables compare with the paper's and with each other. Each image is run at
the model's training scale (in-domain, within tolerance: as it is)."""
REPORT_LOCK_WAIT_S = 120.0  # writing the report files takes seconds; another process may be writing them
RUN_IN_USE = (
    "another `convunext reproduce` or `ablate` (or `convunext train`) is working on this run; give it other --models"
)


def train_run(spec: RunSpec) -> None:
    """Train (or resume) one run to its end; a finished run is left alone."""
    from ..training.trainer import Trainer

    if (spec.run_dir / "summary.json").is_file():
        return
    spec.check_recipe()
    resume = (spec.run_dir / "last_state.pt").is_file()
    # not resumable = killed before its first epoch ended: the files it wrote are replaced (anything else there is
    # refused, never deleted)
    Trainer(spec.config, run_dir=spec.run_dir, resume=resume, overwrite=not resume).fit()


def evaluate_run(spec: RunSpec, inferer: Inferer | None = None) -> dict[str, Any]:
    """Evaluate the run's best (validation-selected) checkpoint on the test split by ``inferer`` (default
    ``Inferer()``: at the checkpoint's own tile size, :meth:`~convunext.inference.sliding_window.Inferer.
    for_checkpoint`); return the test metrics.

    Writes ``test/metrics.json``, ``per_image.csv`` and ``metrics.md`` (as ``convunext evaluate``), with the
    SHA-256 of the evaluated weights so that a later invocation knows the report is current. The run folder is
    locked meanwhile.
    """
    if spec.status() == "done":
        return json.loads((spec.test_dir / "metrics.json").read_text())["metrics"]
    with RunLock(spec.run_dir, hint=RUN_IN_USE):
        return _evaluate_best(spec, inferer or Inferer())


def _evaluate_best(spec: RunSpec, inferer: Inferer) -> dict[str, Any]:
    """:func:`evaluate_run`'s work, in the locked run folder."""
    from ..checkpoint import load_checkpoint
    from ..data import open_dataset
    from ..evaluation.evaluate import evaluate_checkpoint, operating_point, write_report
    from ..evaluation.html_report import ReportGallery
    from ..training.run_folder import remove_temp_files

    remove_temp_files(spec.test_dir)
    checkpoint = load_checkpoint(spec.run_dir / "best.json")
    if checkpoint.volume is not None:
        return _evaluate_volumes(spec, checkpoint, inferer)
    data = spec.config.data
    dataset = open_dataset(data.name, data.root, "test", **data.options)
    inferer = inferer.for_checkpoint(checkpoint.meta)
    start = time.perf_counter()
    gallery = ReportGallery()
    metrics = evaluate_checkpoint(
        checkpoint, dataset, inferer, threshold=PROTOCOL_THRESHOLD, scale="auto", progress=False, on_image=gallery
    )
    context = {
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.meta["weights"]["sha256"],
        "model": spec.model,
        "dataset": spec.dataset,
        "split": "test",
        "seed": spec.seed,
        "best_val_epoch": checkpoint.meta.get("epoch"),
        "images": len(dataset),  # type: ignore[arg-type]
        **inferer.record(),
        **operating_point(checkpoint.meta, PROTOCOL_THRESHOLD, "auto"),
        "backend": inferer.backend,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _, results = write_report(metrics, spec.test_dir, context, checkpoint.class_names, gallery)
    return results


def _evaluate_volumes(spec: RunSpec, checkpoint: Checkpoint, inferer: Inferer) -> dict[str, Any]:
    """:func:`_evaluate_best` of a model trained on slices: each test volume scored whole
    (:func:`~convunext.evaluation.volumes.evaluate_volumes_to_report`: per-class Dice, HD95, ASSD, NSD)."""
    from ..data.volumes import synthetic_ct_root_of
    from ..evaluation.volumes import evaluate_volumes_to_report

    data = spec.config.data
    root = Path(data.root) if data.root is not None else synthetic_ct_root_of(data.options)  # else the phantoms
    report = evaluate_volumes_to_report(
        checkpoint, root, "test", out_dir=spec.test_dir, inferer=inferer, threshold=PROTOCOL_THRESHOLD, progress=False
    )
    return report.evaluation.flat_metrics()


def write_results(
    report_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    context: Mapping[str, Any],
    specs: Sequence[RunSpec],
) -> None:
    """Write ``results.csv``, ``summary.csv``, ``results.md`` and ``dice_vs_params.png`` into ``report_dir``."""
    report_dir = Path(report_dir)
    write_csv(report_dir / "results.csv", rows)
    write_csv(report_dir / "summary.csv", summarize(rows))
    atomic_write_text(report_dir / "results.md", results_markdown(rows, budget, context, specs))
    plot_dice_vs_params(rows, report_dir / "dice_vs_params.png", budget.name)


@dataclass
class ReproduceResult:
    """What :func:`reproduce` (or :func:`~convunext.reproduce.ablate.ablate`) did: the report folder, one row per
    run, and how many runs it trained."""

    report_dir: Path
    rows: list[dict[str, Any]]
    trained: int
    skipped: int
    seconds: float


@dataclass
class Experiment:
    """A comparison with its defaults resolved (:func:`resolve_experiment`): every model x dataset x seed trained
    with one budget (and the same ``overrides``) into one report folder, and each run's best checkpoint tested by
    ``inferer`` — what :func:`reproduce` and :func:`~convunext.reproduce.ablate.ablate` run."""

    report_dir: Path
    budget: Budget
    datasets: list[str]
    models: list[str]
    seeds: list[int]
    data_root: Path
    overrides: list[str]  # ``train.device`` included
    inferer: Inferer

    def plan(self) -> list[RunSpec]:
        """Every run, dataset-major (:func:`~convunext.reproduce.plan.plan_runs`)."""
        return plan_runs(
            self.report_dir, self.models, self.datasets, self.seeds, self.budget, self.data_root, self.overrides
        )

    def record(self, command: str | None) -> dict[str, Any]:
        """What was asked (the report folder's JSON record): budget, datasets, models, seeds, overrides, versions."""
        return {
            "budget": self.budget.name,
            "budget_description": self.budget.description,
            "datasets": self.datasets,
            "models": self.models,
            "seeds": self.seeds,
            "data_root": str(self.data_root),
            "overrides": self.overrides,
            "command": command,
            "convunext": __version__,
            "torch": torch.__version__,
        }


def resolve_experiment(
    report_dir: str | Path,
    models: Sequence[str],
    budget: str | Budget = "cpu",
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    inferer: Inferer | None = None,
    log: Callable[[str], None] = print,
) -> Experiment:
    """The :class:`Experiment` of ``models``, filling in the defaults: the paper's datasets found under
    ``data_root`` and the budget's seeds.

    Args:
        report_dir: the report folder (created; runs live under ``report_dir/runs``).
        models: registry names (:func:`~convunext.models.list_models`), or a study's models
            (:func:`~convunext.reproduce.ablate.study_models`).
        budget: ``paper``, ``cpu``, ``smoke`` or a :class:`Budget`.
        datasets: among :data:`~convunext.reproduce.plan.DATASETS` (default: the downloaded ones found under
            ``data_root``).
        seeds: default: the budget's (paper: 0 1 2, cpu: 0, smoke: 0 1).
        data_root: folder holding ``DRIVE/``, ``GlaS/``, ``HRF/``, ``STARE/``, ``CHASE_DB1/``
            (default :func:`convunext.data.default_data_root`).
        overrides: extra ``section.field=value`` settings for every run (after the budget's).
        inferer: the device every run trains and tests on, and how the test split is run (back-end, batch size;
            default ``Inferer()``). The protocol fixes the rest: each run is tested at its dataset's tile size
            (``data.eval_tile_size``) with the default overlap and without TTA.
        log: receives the line naming the datasets found.

    Raises:
        ConvUNeXtError: none of the paper's datasets under ``data_root`` (when ``datasets`` is not given), or an
            ``inferer`` with a tile size, overlap or TTA of its own.
    """
    from ..data import default_data_root

    inferer = inferer or Inferer()
    if inferer.tile_size is not None or inferer.overlap != DEFAULT_OVERLAP or inferer.tta:
        raise ConvUNeXtError(
            "reproduce and ablate test every run at its dataset's tile size, with the default overlap and without "
            "TTA (the protocol); give an inferer without tile_size, overlap or tta"
        )
    chosen = BUDGETS[budget] if isinstance(budget, str) else budget
    root = Path(data_root) if data_root is not None else default_data_root()
    if not datasets:
        datasets = available_datasets(root)
        if not datasets:
            raise ConvUNeXtError(
                f"none of {', '.join(DATASET_DIRS.values())} found under {root}; pass --data-root, or --datasets "
                "synthetic"
            )
        log(f"datasets found under {root}: {', '.join(datasets)}")
    return Experiment(
        Path(report_dir),
        chosen,
        list(datasets),
        list(models),
        list(seeds if seeds is not None else chosen.default_seeds),
        root,
        [*overrides, f"train.device={inferer.device}"],
        inferer,
    )


def run_experiment(
    experiment: Experiment,
    report_models: Sequence[str],
    record_file: str,
    record: Mapping[str, Any],
    log: Callable[[str], None] = print,
) -> tuple[list[RunSpec], list[dict[str, Any]], int, int]:
    """Train and test every run of ``experiment``: finished runs are skipped, interrupted ones resumed, each best
    validation checkpoint tested once; ``record`` (what was asked; with every invocation on the folder:
    :func:`record_with_invocations`) is written to ``report_dir/record_file`` first. Then every other finished run
    of the folder of one of ``report_models`` (other models, seeds or datasets, trained by an earlier invocation or
    another process) joins the rows: the report covers them all, in the order of ``report_models``.

    Returns:
        ``(specs, rows, trained, skipped)``: the runs (asked, then found), one ``results.csv`` row per run in the
        report's order, and how many runs were trained and reused.
    """
    from ..training.run_folder import TEMP_FILES

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConvUNeXtError(
            "reproduce and ablate run one process per model; for several GPUs start one command per GPU "
            "(CUDA_VISIBLE_DEVICES), each with its own --models, on the same --out folder, then run it once more "
            "to write the report"
        )
    report_dir = experiment.report_dir
    specs = experiment.plan()
    for spec in specs:  # before training anything: a report never mixes budgets
        spec.check_recipe()
    with report_lock(report_dir):
        for stale in report_dir.glob(TEMP_FILES):  # the run folders below clean their own, under their locks
            stale.unlink(missing_ok=True)
        atomic_write_json(report_dir / record_file, record_with_invocations(report_dir / record_file, record))
    rows, trained, skipped = [], 0, 0
    for index, spec in enumerate(specs, 1):
        status = spec.status()
        prefix = f"[{index}/{len(specs)}] {spec.label}"
        if status == "done":
            skipped += 1
            log(f"{prefix}: finished earlier, skipped")
        else:
            if status in ("new", "resume"):
                log(f"{prefix}: {'resuming' if status == 'resume' else 'training'} ({spec.run_dir})")
                run_start = time.perf_counter()
                train_run(spec)
                trained += 1
                log(f"{prefix}: trained in {(time.perf_counter() - run_start) / 60:.1f} min")
            else:
                skipped += 1
            log(f"{prefix}: testing the best validation checkpoint")
        test_metrics = evaluate_run(spec, experiment.inferer)
        rows.append(collect_row(spec, test_metrics, report_dir))
        log(
            f"{prefix}: test Dice {rows[-1]['test_dice_fg_mean']:.4f}, mIoU {rows[-1]['test_miou_cm']:.4f} "
            f"(best validation epoch {rows[-1]['best_val_epoch']})"
        )
    finished = finished_runs(report_dir, report_models)
    for spec in _earlier_runs(experiment, finished, specs):
        specs.append(spec)
        rows.append(collect_row(spec, evaluate_run(spec, experiment.inferer), report_dir))
        log(
            f"{spec.label}: finished by an earlier invocation, in the report (test Dice "
            f"{rows[-1]['test_dice_fg_mean']:.4f})"
        )
    order = {run: i for i, run in enumerate(finished)}
    rows.sort(key=lambda row: order.get((row["dataset"], row["model"], row["seed"]), len(order)))
    return specs, rows, trained, skipped


INVOCATION_KEYS = ("command", "models", "datasets", "seeds")


def record_with_invocations(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` (what this invocation asked) with ``invocations``: the command, models, datasets and seeds of
    every invocation on the report folder, oldest first — the earlier ones from the folder's previous record at
    ``path`` (one written before this list existed counts as one invocation), then this one with its start time.
    A report's tables cover every finished run of the folder, so they may come from several invocations."""
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):  # written atomically, so only a hand-edited file: start the list afresh
            previous = {}
        earlier = previous.get("invocations") or (
            [{key: previous.get(key) for key in INVOCATION_KEYS}] if previous.get("command") else []
        )
    now = {"started": datetime.now().strftime("%Y-%m-%d %H:%M"), **{key: record[key] for key in INVOCATION_KEYS}}
    return {**record, "invocations": [*earlier, now]}


def report_context(command: str, device: torch.device, record_file: str) -> dict[str, str]:
    """The report's header facts: the command, the record of every invocation, when it finished, the hardware."""
    return {
        "command": command,
        "record_file": record_file,
        "finished": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": device_description(device),
    }


def reproduce(
    experiment: Experiment, command: str | None = None, log: Callable[[str], None] = print
) -> ReproduceResult:
    """Train, test and tabulate every model x dataset x seed of ``experiment`` (:func:`resolve_experiment`); see the
    module docstring.

    Args:
        experiment: the runs and how they are made.
        command: the command line to quote in ``results.md``.
        log: receives a line per step of every run.
    """
    from ..models import list_models

    start = time.perf_counter()
    record = experiment.record(command)
    specs, rows, trained, skipped = run_experiment(experiment, list_models(), "reproduce.json", record, log)
    context = report_context(command or "convunext reproduce", experiment.inferer.device, "reproduce.json")
    with report_lock(experiment.report_dir):
        write_results(experiment.report_dir, rows, experiment.budget, context, specs)
    return ReproduceResult(experiment.report_dir, rows, trained, skipped, time.perf_counter() - start)


def _earlier_runs(
    experiment: Experiment, finished: Sequence[tuple[str, str, int]], specs: Sequence[RunSpec]
) -> list[RunSpec]:
    """The ``finished`` runs of the report folder (:func:`finished_runs`) that this invocation did not ask for
    (e.g. other seeds or datasets, run by an earlier invocation or another process). Each is checked to have
    this invocation's recipe."""
    asked = {(spec.dataset, spec.model, spec.seed) for spec in specs}
    earlier = []
    for dataset, model, seed in finished:
        if (dataset, model, seed) not in asked:
            (spec,) = plan_runs(
                experiment.report_dir,
                [model],
                [dataset],
                [seed],
                experiment.budget,
                experiment.data_root,
                experiment.overrides,
            )
            spec.check_recipe()
            earlier.append(spec)
    return earlier


def report_lock(report_dir: Path) -> RunLock:
    """The report folder's lock: processes sharing the folder write its files one at a time (waiting their turn)."""
    return RunLock(
        report_dir, timeout=REPORT_LOCK_WAIT_S, hint="another `convunext reproduce` or `ablate` is writing its report"
    )
