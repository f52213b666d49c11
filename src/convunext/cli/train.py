"""``convunext train``: train a model with a recipe preset or YAML config; with no arguments, ConvUNeXt on the
built-in synthetic data (no download).

Distributed data parallel: ``convunext train --devices N ...`` re-launches the same command under PyTorch's
elastic launcher (``python -m torch.distributed.run --standalone --nproc_per_node N -m convunext train ...``);
``torchrun --nproc_per_node N -m convunext train ...`` (or a multi-node ``--rdzv-endpoint`` launch) works directly.
``optim.batch_size`` is per process: the global batch is ``batch_size x N``.

A new run never replaces a folder that already holds one: reusing a ``train.run_name`` is refused (continue the old
run with ``--resume RUN_DIR``, or delete it and start again with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError
from ..training.config import ExperimentConfig, list_presets
from ..training.distributed import DistributedContext
from ..training.run_folder import check_new_run_dir, claim_run_dir, default_run_name
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
            "the schedule is compressed to that length (sets train.time_budget_minutes)",
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
            "continue the run in RUN_DIR from its last checkpoint (with its config.yaml)",
            metavar="RUN_DIR",
        ),
        _Flag(
            "--overwrite",
            "delete what the run folder holds (a finished or stopped run of the same train.run_name) and start "
            "again; without it such a folder is refused",
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


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment of the command line: the preset/file, then the shortcut options, then every ``--set``."""
    if args.config:
        source = args.config
    elif args.resume:  # continue with the run's own resolved config
        candidates = [Path(args.resume) / "config.yaml", *sorted(Path(args.resume).glob("seed*/config.yaml"))]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            raise ConvUNeXtError(f"{args.resume}: not a run folder (no config.yaml)")
        source = str(existing[0])
    else:
        source = args.data if args.data in list_presets() else "synthetic"
    overrides = [
        f"{flag.sets}={value}"
        for flag in _flags()
        if flag.sets and (value := getattr(args, flag.dest)) is not None and value != ""
    ]
    return ExperimentConfig.from_yaml(source, overrides + list(args.set or []))


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
    config = build_config(args)  # report a bad preset or --set here, once, rather than in every worker
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

    if args.resume and args.overwrite:
        raise ValueError("--overwrite starts the run again and --resume continues it; give one of them")
    if args.devices is not None:
        if args.devices < 1:
            raise ValueError(f"--devices {args.devices}: expected a positive number of processes")
        if args.devices > 1:
            return _launch(args)
    config = build_config(args)
    from ..training.distributed import context_from_environment

    dist = context_from_environment(config.train.device, sync_batchnorm=args.sync_batchnorm)
    seeds = args.seeds or [config.train.seed]
    results = []
    try:
        run_dirs = _seed_run_dirs(args, config, seeds, dist)
        # --resume restarts a seed that never finished an epoch (no state to continue): its files are replaced
        overwrite = args.overwrite or bool(args.resume)
        resumes = [
            bool(args.resume) and run_dir is not None and (run_dir / "last_state.pt").is_file() for run_dir in run_dirs
        ]
        for run_dir, resume in zip(run_dirs, resumes):
            if run_dir is not None and not (resume or overwrite):
                check_new_run_dir(run_dir)  # every seed's folder, before the first seed trains
        for seed, run_dir, resume in zip(seeds, run_dirs, resumes):
            config.train.seed = seed
            trainer = Trainer(config, run_dir=run_dir, resume=resume, dist=dist, overwrite=overwrite)
            results.append(trainer.fit())
            config = trainer.config  # resolved: later seeds keep the first one's switches and time-budget plan
    finally:  # every rank leaves the process group, also when all of them refuse the run with the same error
        dist.close()
    if dist.is_main:
        print(_summary(results, seeds, config))
    return 0


def _seed_run_dirs(
    args: argparse.Namespace, config: ExperimentConfig, seeds: list[int], dist: DistributedContext
) -> list[Path | None]:
    """The run folder of each seed: ``--resume``'s or the trainer's choice (None) for one seed; with several,
    ``BASE/seed<S>`` under ``--resume``, ``train.output_dir/train.run_name`` or a new automatically named BASE."""
    if len(seeds) == 1:
        return [Path(args.resume) if args.resume else None]
    if args.resume:
        base = Path(args.resume)
    elif config.train.run_name:
        base = Path(config.train.output_dir) / config.train.run_name
    else:  # rank 0 claims a fresh folder, the other ranks use it
        claimed = claim_run_dir(config.train.output_dir, default_run_name(config)) if dist.is_main else None
        base = dist.broadcast_object(claimed)
    return [base / f"seed{seed}" for seed in seeds]


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
