"""``convunext train``: train a model with a recipe preset or YAML config; with no arguments, ConvUNeXt on the
built-in synthetic data (no download).

Distributed data parallel: ``convunext train --devices N ...`` re-launches the same command under PyTorch's
elastic launcher (``python -m torch.distributed.run --standalone --nproc_per_node N -m convunext train ...``);
``torchrun --nproc_per_node N -m convunext train ...`` (or a multi-node ``--rdzv-endpoint`` launch) works directly.
``optim.batch_size`` is per process: the global batch is ``batch_size x N``.

A new run never replaces a folder that already holds one: reusing a ``train.run_name`` is refused (continue the old
run with ``--resume RUN_DIR``, or delete it and start again with ``--overwrite``, which removes only what a run
writes and refuses a folder that holds anything else). ``--resume`` only ever continues a run, as it was trained
(:mod:`convunext.training.resume`); with several seeds, ``--resume BASE`` continues each seed that started, reports
the finished ones and starts those that never did. Every seed's folder and configuration is checked before the first
seed trains.

A time budget on a dataset preset trains with the recipe validated for short budgets
(:func:`~convunext.training.time_budget.short_budget_overrides`) in place of the preset's full-length one; what the
command line sets still wins.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import STATE_FILE
from ..errors import ConvUNeXtError
from ..training.config import PRESET_DIR, ExperimentConfig, list_presets, resolve_preset
from ..training.distributed import DistributedContext
from ..training.resume import check_resume
from ..training.run_folder import (
    check_new_run_dir,
    check_overwritable,
    check_resumable,
    claim_run_dir,
    default_run_name,
)
from ..training.time_budget import short_budget_overrides
from ..training.trainer import TrainResult
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
        _Flag("--data", "dataset: synthetic, drive, glas, hrf or folder (sets data.name)", sets="data.name"),
        _Flag("--data-root", "dataset folder (sets data.root)", sets="data.root"),
        _Flag("--model", "registry model name (sets model.name); see `convunext models`", sets="model.name"),
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
    """The experiment of the command line — the preset/file, then the shortcut options, then every ``--set`` —
    and, when a time budget replaced the preset's recipe by the short-budget one, a line that says so.

    The short-budget recipe (:func:`~convunext.training.time_budget.short_budget_overrides`) goes between a dataset
    preset and the command line when the run has a time budget: the presets' recipe is the paper's 300 epochs at
    crop 480, which a budget of minutes compresses into a few dozen steps that learn little. The ``synthetic``
    preset is already a short CPU recipe, and a file of the user's (or a run's saved ``config.yaml``) keeps its
    own recipe."""
    source = _config_source(args)
    overrides = [
        f"{flag.sets}={value}"
        for flag in _flags()
        if flag.sets and (value := getattr(args, flag.dest)) is not None and value != ""
    ] + list(args.set or [])
    config = ExperimentConfig.from_yaml(source, overrides)
    file = resolve_preset(source)
    if not (config.train.time_budget_minutes and file.parent == PRESET_DIR and config.data.name != "synthetic"):
        return config, None
    recipe = short_budget_overrides(file.stem)  # the preset's crop (HRF's is larger), whatever data it is given
    note = (
        f"time budget: the short-budget recipe replaces the {file.stem} preset's ({', '.join(recipe)}: "
        "AdamW lr 1.5e-3, poly decay; chosen on DRIVE's validation split); --set any of them to choose otherwise"
    )
    return ExperimentConfig.from_yaml(source, [*recipe, *overrides]), note


def _config_source(args: argparse.Namespace) -> str:
    """The preset or YAML file the command line starts from; under ``--resume`` without one, the run's own
    resolved ``config.yaml`` (with several seeds, the first seed's that has one)."""
    if args.config:
        return args.config
    if not args.resume:
        return args.data if args.data in list_presets() else "synthetic"
    base = Path(args.resume)
    candidates = [base / "config.yaml", *sorted(base.glob("seed*/config.yaml"))]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        check_resumable(base)  # says what the folder lacks
        raise ConvUNeXtError(f"{base}: nothing to resume: no config.yaml")
    return str(existing[0])


def _summary(results: list[TrainResult], seeds: list[int], config: ExperimentConfig) -> str:
    first = results[0]
    lines = ["", "=" * 72, "convunext train: done"]
    for seed, result in zip(seeds, results):
        metrics = result.best_metrics
        lines.append(
            f"  seed {seed}: best validation Dice {metrics.get('dice_fg_mean', float('nan')):.4f}, "
            f"mIoU {metrics.get('miou_cm', float('nan')):.4f} at epoch {result.best_epoch}/{result.epochs_run} "
            f"({result.seconds / 60:.1f} min)"
        )
        if result.planned_seconds is not None:
            lines.append(
                f"    time budget {config.train.time_budget_minutes:g} min: planned {result.planned_seconds / 60:.1f} "
                f"min, took {result.seconds / 60:.1f} min"
            )
    if len(results) > 1:
        dice = [r.best_metrics.get("dice_fg_mean", float("nan")) for r in results]
        miou = [r.best_metrics.get("miou_cm", float("nan")) for r in results]
        lines.append(
            f"  over {len(results)} seeds: Dice {statistics.mean(dice):.4f} ± {statistics.stdev(dice):.4f}, "
            f"mIoU {statistics.mean(miou):.4f} ± {statistics.stdev(miou):.4f}"
        )
    run = first.run_dir
    lines += [
        "  (Dice = mean per-image foreground Dice; mIoU = mean over classes incl. background; validation split)",
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


def launch_command(args: argparse.Namespace) -> list[str]:
    """The single-node torchrun command that ``--devices N`` runs (one process per device, a free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.devices}",
        "-m",
        "convunext",
        "train",
        *forwarded_arguments(args),
    ]


def _launch(args: argparse.Namespace) -> int:
    import torch

    if "WORLD_SIZE" in os.environ:
        raise ValueError("--devices starts torchrun itself; under torchrun, leave --devices out")
    config, _ = build_config(args)  # report a bad preset or --set here, once, rather than in every worker
    wants_cuda = config.train.device != "cpu" and torch.cuda.is_available()
    if args.sync_batchnorm and not wants_cuda:
        raise ValueError("--sync-batchnorm needs CUDA (PyTorch has no CPU implementation); leave it out on CPU")
    if wants_cuda and args.devices > torch.cuda.device_count():
        raise ValueError(f"--devices {args.devices} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    command = launch_command(args)
    print("launching: " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    _check_arguments(args)
    if args.devices is not None and args.devices > 1:
        return _launch(args)
    config, note = build_config(args)
    from ..training.distributed import context_from_environment

    dist = context_from_environment(config.train.device, sync_batchnorm=args.sync_batchnorm)
    results = []
    try:
        runs = _seed_runs(args, config, dist)
        _check_seed_runs(runs, config, overwrite=args.overwrite)  # every seed, before the first one trains
        if note and dist.is_main:
            print(note)
        for run in runs:
            config.train.seed = run.seed
            trainer = Trainer(config, run_dir=run.run_dir, resume=run.resume, dist=dist, overwrite=args.overwrite)
            results.append(trainer.fit())
            config = trainer.config  # resolved: later seeds keep the first one's switches and time-budget plan
    finally:  # every rank leaves the process group, also when all of them refuse the run with the same error
        dist.close()
    if dist.is_main:
        print(_summary(results, [run.seed for run in runs], config))
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse contradicting or repeated options before anything is read or written."""
    if args.resume and args.overwrite:
        raise ValueError("--overwrite starts the run again and --resume continues it; give one of them")
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices {args.devices}: expected a positive number of processes")
    seeds = args.seeds or []
    repeated = next((seed for index, seed in enumerate(seeds) if seed in seeds[:index]), None)
    if repeated is not None:
        raise ConvUNeXtError(
            f"--seeds {' '.join(map(str, seeds))}: seed {repeated} is given twice (its runs would share one folder); "
            "give each seed once"
        )


@dataclass(frozen=True)
class _SeedRun:
    """One seed's run of the command: its seed, its folder (None: the trainer's choice) and whether it resumes."""

    seed: int
    run_dir: Path | None
    resume: bool


def _seed_runs(args: argparse.Namespace, config: ExperimentConfig, dist: DistributedContext) -> list[_SeedRun]:
    """The run of each seed. One seed: ``--resume``'s folder, or the trainer's choice. Several: ``BASE/seed<S>``
    under ``--resume BASE``, ``train.output_dir/train.run_name`` or a new automatically named BASE.

    ``--resume BASE`` without ``--seeds`` continues the seeds whose folders BASE holds; with several seeds, a seed
    whose folder does not exist (or is empty) starts, and the others resume (:func:`_check_seed_runs` refuses a
    folder that holds files but no training state)."""
    if args.resume:
        base = Path(args.resume)
        started = _started_seeds(base)
        seeds = args.seeds or started or [config.train.seed]
        if len(seeds) == 1 and (not started or _is_run(base)):
            return [_SeedRun(seeds[0], base, resume=True)]
        runs = [_SeedRun(seed, base / f"seed{seed}", resume=_started(base / f"seed{seed}")) for seed in seeds]
        if not any(run.resume for run in runs):
            raise ConvUNeXtError(f"{base}: nothing to resume: none of {_seed_names(seeds)} has started")
        return runs
    seeds = args.seeds or [config.train.seed]
    if len(seeds) == 1:
        return [_SeedRun(seeds[0], None, resume=False)]
    if config.train.run_name:
        base = Path(config.train.output_dir) / config.train.run_name
    else:  # rank 0 claims a fresh folder, the other ranks use it
        claimed = claim_run_dir(config.train.output_dir, default_run_name(config)) if dist.is_main else None
        base = dist.broadcast_object(claimed)
    return [_SeedRun(seed, base / f"seed{seed}", resume=False) for seed in seeds]


def _check_seed_runs(runs: list[_SeedRun], config: ExperimentConfig, *, overwrite: bool) -> None:
    """Refuse, before any seed trains, a seed that cannot run: an invalid seed, a resume that cannot continue or
    would change the run, a folder that a new run (or ``overwrite``) may not take."""
    for run in runs:
        seeded = copy.deepcopy(config)
        seeded.train.seed = run.seed
        seeded.validate("--seeds")
        if run.resume:
            check_resume(run.run_dir, seeded)  # type: ignore[arg-type]
        elif run.run_dir is not None:
            (check_overwritable if overwrite else check_new_run_dir)(run.run_dir)


def _is_run(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() or (folder / "config.yaml").is_file()


def _started(folder: Path) -> bool:
    """Whether a seed's folder under ``--resume BASE`` holds anything but hidden files (a lock, temporary files):
    a missing or empty one starts afresh."""
    return folder.is_dir() and any(not path.name.startswith(".") for path in folder.iterdir())


def _started_seeds(base: Path) -> list[int]:
    """The seeds whose ``seed<S>`` folders under ``base`` hold a run's config or state."""
    found = (path for path in base.glob("seed*") if path.name[len("seed") :].isdigit() and _is_run(path))
    return sorted(int(path.name[len("seed") :]) for path in found)


def _seed_names(seeds: list[int]) -> str:
    return ", ".join(f"seed{seed}" for seed in seeds)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (default: ConvUNeXt on the built-in synthetic data)",
        description="Train a registry model with a preset (synthetic, drive, glas, hrf) or a YAML config file. "
        "Every config field can be overridden with --set SECTION.FIELD=VALUE.",
    )
    for flag in _flags():
        flag.add_to(parser)
    parser.set_defaults(func=run)
