"""``convunext train``: train a model with a recipe preset or YAML config; with no arguments, ConvUNeXt on the
built-in synthetic data (no download).

The arguments are read here; the work is the library's: the experiment's configuration and the seeds' runs
(:mod:`convunext.training.experiment`: a new run never replaces a folder that holds one, ``--resume`` only ever
continues a run as it was trained, every seed is checked before the first trains) and, for ``--devices N``, the
torchrun launch of the same command in N processes (:mod:`convunext.training.launch`).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from ..training.config import ExperimentConfig, list_presets
from ..training.distributed import context_from_environment
from ..training.experiment import (
    check_seed_options,
    experiment_config,
    saved_config_file,
    short_budget_note,
    train_seeds,
)
from ..training.launch import launch_training
from ..training.trainer import TrainResult
from ..training.validation import selection_dice
from .options import THREADS_HELP, positive_threads


class _Flag:
    """One ``convunext train`` argument, declared once: how the parser reads it, how ``--devices`` forwards it to
    the torchrun workers, and the config field it sets (``sets``), if any.

    Args:
        name: ``--option``, or a positional argument's name.
        help: the ``--help`` text.
        sets: the ``SECTION.FIELD`` that a given value overrides (before every ``--set``).
        forwarded: whether the workers get it (``--devices`` itself is not forwarded).
        options: the rest of ``argparse.ArgumentParser.add_argument``'s keywords (type, nargs, action, metavar).
    """

    def __init__(self, name: str, help: str, *, sets: str | None = None, forwarded: bool = True, **options: Any):
        self.name, self.help, self.sets, self.forwarded, self.options = name, help, sets, forwarded, options
        self.dest = name.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(self.name, help=self.help, **self.options)

    def command_line(self, value: Any) -> list[str]:
        """``value`` (as parsed) as command-line arguments; none when it was not given."""
        if value is None or value is False or value == []:
            return []
        if not self.name.startswith("-"):
            return [str(value)]
        action, nargs = self.options.get("action"), self.options.get("nargs")
        if action == "store_true":
            return [self.name]
        if action == "append":
            return [part for item in value for part in (self.name, str(item))]
        if nargs == "+":
            return [self.name, *map(str, value)]
        return [self.name, str(value)]


def _flags() -> tuple[_Flag, ...]:
    return (
        _Flag("config", f"preset ({', '.join(list_presets())}) or YAML file", nargs="?"),
        _Flag(
            "--data",
            "dataset: a registered name (synthetic, drive, glas, hrf, stare, chase_db1, mixed, folder, volumes, "
            "synthetic_ct; sets data.name)",
            sets="data.name",
        ),
        _Flag("--data-root", "dataset folder (sets data.root)", sets="data.root"),
        _Flag("--model", "registry model name (sets model.name); see `convunext models`", sets="model.name"),
        _Flag(
            "--window",
            "volumes: clip CT to this window in HU, e.g. -160,240, instead of the training foreground's 0.5-99.5 "
            "percentiles (sets data.options.window)",
            sets="data.options.window",
            metavar="LOW,HIGH",
        ),
        _Flag(
            "--context",
            "volumes: slices per input, odd; 3 or 5 give 2.5D input (sets data.options.context)",
            sets="data.options.context",
            type=int,
            metavar="K",
        ),
        _Flag("--epochs", "number of epochs (sets train.epochs)", sets="train.epochs", type=int),
        _Flag("--output-dir", "parent folder of run folders (sets train.output_dir)", sets="train.output_dir"),
        _Flag("--device", "auto, cpu, cuda or cuda:N (sets train.device)", sets="train.device"),
        _Flag(
            "--time-budget",
            "train for about MINUTES: the epochs are fixed from the measured cost of a step and a validation, and "
            "the schedule is compressed to that length (sets train.time_budget_minutes); with a dataset preset, the "
            "recipe validated for short budgets replaces the preset's (reference lr, poly decay, crop 256), and a "
            "plan of too few steps to learn is warned about",
            sets="train.time_budget_minutes",
            type=float,
            metavar="MINUTES",
        ),
        _Flag(
            "--threads",
            f"{THREADS_HELP} (sets train.threads)",
            sets="train.threads",
            type=positive_threads,
            metavar="N",
        ),
        _Flag("--set", "override any config field", action="append", metavar="SECTION.FIELD=VALUE"),
        _Flag(
            "--resume",
            "continue the run in RUN_DIR from its last checkpoint, as it was trained (its config.yaml; only the "
            "length, device, threads and display may change); with several seeds, each RUN_DIR/seed<S>",
            metavar="RUN_DIR",
        ),
        _Flag(
            "--overwrite",
            "delete the old run in the run folder (a finished or stopped run of the same train.run_name: only the "
            "files a run writes) and start again; without it such a folder is refused, and a folder that holds "
            "anything else is refused in any case",
            action="store_true",
        ),
        _Flag("--seeds", "train once per seed and report mean ± std", type=int, nargs="+"),
        _Flag(
            "--sync-batchnorm",
            "DDP only (CUDA): BatchNorm statistics over the global batch instead of each process's own batch",
            action="store_true",
        ),
        _Flag(
            "--devices",
            "train on N processes of this machine (one per GPU, or N CPU processes) with DistributedDataParallel, "
            "via torchrun; optim.batch_size is per process, so the global batch is batch_size x N",
            forwarded=False,
            type=int,
            metavar="N",
        ),
    )


def build_config(args: argparse.Namespace) -> tuple[ExperimentConfig, str | None]:
    """The experiment of the command line — the preset/file, then the shortcut options, then every ``--set`` (with
    the short-budget recipe of :func:`~convunext.training.experiment.experiment_config` under a time budget) — and
    the line that says when that recipe replaced the preset's."""
    source = _config_source(args)
    overrides = [
        f"{flag.sets}={value}"
        for flag in _flags()
        if flag.sets and (value := getattr(args, flag.dest)) is not None and value != ""
    ] + list(args.set or [])
    config = experiment_config(source, overrides)
    return config, short_budget_note(source, config)


def _config_source(args: argparse.Namespace) -> str | Path:
    """The preset or YAML file the command line starts from; under ``--resume`` without one, the run's own."""
    if args.config:
        return args.config
    if args.resume:
        return saved_config_file(args.resume)
    return args.data if args.data in list_presets() else "synthetic"


def _summary(results: dict[int, TrainResult], config: ExperimentConfig) -> str:
    lines = ["", "=" * 72, "convunext train: done"]
    for seed, result in results.items():
        metrics = result.best_metrics
        lines.append(
            f"  seed {seed}: best validation Dice {selection_dice(metrics):.4f}, "
            f"mIoU {metrics.get('miou_cm', float('nan')):.4f} at epoch {result.best_epoch}/{result.epochs_run} "
            f"({result.seconds / 60:.1f} min)"
        )
        if result.planned_seconds is not None:
            lines.append(
                f"    time budget {config.train.time_budget_minutes:g} min: planned {result.planned_seconds / 60:.1f} "
                f"min, took {result.seconds / 60:.1f} min"
            )
    if len(results) > 1:
        dice = [selection_dice(r.best_metrics) for r in results.values()]
        miou = [r.best_metrics.get("miou_cm", float("nan")) for r in results.values()]
        lines.append(
            f"  over {len(results)} seeds: Dice {statistics.mean(dice):.4f} ± {statistics.stdev(dice):.4f}, "
            f"mIoU {statistics.mean(miou):.4f} ± {statistics.stdev(miou):.4f}"
        )
    run = next(iter(results.values())).run_dir
    volumes = any("volume_dice_fg_mean" in result.best_metrics for result in results.values())
    lines += [
        "  (Dice = "
        + ("the Dice of whole volumes" if volumes else "mean per-image foreground Dice")
        + "; mIoU = mean over classes incl. background; validation split)",
        f"  run folder: {run}  (metrics.csv, progress.png, best.safetensors + best.json, last checkpoint)",
        "  next:",
        f"    convunext evaluate {run} {config.data.root or config.data.name}      # test-split metrics table",
        f"    convunext predict {run} IMAGE_OR_FOLDER --out predictions --overlay",
        "    convunext train drive --data-root PATH/TO/DRIVE             # the paper's recipe on DRIVE",
        "=" * 72,
    ]
    return "\n".join(lines)


def forwarded_arguments(args: argparse.Namespace) -> list[str]:
    """The ``convunext train`` arguments of ``args`` as a command line, without ``--devices``."""
    return [part for flag in _flags() if flag.forwarded for part in flag.command_line(getattr(args, flag.dest))]


def run(args: argparse.Namespace) -> int:
    resume_from = args.resume or None
    check_seed_options(args.seeds, resume=resume_from is not None, overwrite=args.overwrite)
    if args.devices is not None and args.devices != 1:
        config, _ = build_config(args)  # report a bad preset or --set here, once, rather than in every worker
        arguments = forwarded_arguments(args)
        return launch_training(args.devices, arguments, device=config.train.device, sync_batchnorm=args.sync_batchnorm)
    config, note = build_config(args)
    dist = context_from_environment(config.train.device, sync_batchnorm=args.sync_batchnorm)
    try:
        if note and dist.is_main:
            print(note)
        results = train_seeds(config, args.seeds, resume_from=resume_from, overwrite=args.overwrite, dist=dist)
    finally:  # every rank leaves the process group, also when all of them refuse the run with the same error
        dist.close()
    if dist.is_main:
        print(_summary(results, config))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (default: ConvUNeXt on the built-in synthetic data)",
        description="Train a registry model with a preset (synthetic, drive, glas, hrf, stare, chase_db1, "
        "retina-vessels) or a YAML config file. "
        "Every config field can be overridden with --set SECTION.FIELD=VALUE.",
    )
    for flag in _flags():
        flag.add_to(parser)
    parser.set_defaults(func=run)
