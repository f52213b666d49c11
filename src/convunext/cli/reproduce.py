"""``convunext reproduce``: the paper's comparison table — five models x datasets x seeds, one recipe, an honest
protocol — as a resumable report folder (see :mod:`convunext.reproduce`). The options and the ``--dry-run`` /
``--estimate`` paths are shared with ``convunext ablate``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ..reproduce import BUDGETS, DATASETS, Experiment
from .options import add_inference_arguments, apply_threads, inferer_from_args


def experiment_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, with ``--time-budget`` as ``train.time_budget_minutes``."""
    budget = [] if args.time_budget is None else [f"train.time_budget_minutes={args.time_budget}"]
    return [*(args.set or []), *budget]


def command_line(name: str) -> str | None:
    """The command line to quote in the report, when this process runs ``convunext NAME``."""
    return "convunext " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == [name] else None


def experiment_from_args(args: argparse.Namespace, name: str, models: Sequence[str]) -> Experiment:
    """The :class:`~convunext.reproduce.Experiment` of ``convunext NAME``'s options for ``models`` (``--out``
    defaults to ``NAME-BUDGET``), with ``--threads`` applied."""
    from ..reproduce import resolve_experiment

    apply_threads(args)
    return resolve_experiment(
        args.out or f"{name}-{args.budget}",
        models,
        args.budget,
        args.datasets,
        args.seeds,
        args.data_root,
        experiment_overrides(args),
        inferer_from_args(args),
    )


def plan_only(args: argparse.Namespace, experiment: Experiment) -> int:
    """``--dry-run`` (list the runs of ``experiment`` and their state) or ``--estimate`` (time each model's work and
    project the runs' length); neither writes anything."""
    from ..reproduce import estimate

    specs = experiment.plan()
    if args.dry_run:
        width = max(len(spec.label) for spec in specs)
        for spec in specs:
            print(f"{spec.label:{width}s}  {spec.status():9s} {spec.run_dir}")
        return 0
    rows = estimate(specs)
    minutes = sum(row["run_minutes"] for row in rows) * len(experiment.seeds)
    print(
        f"projected: {minutes:.0f} min for {len(specs)} runs ({len(experiment.seeds)} seed(s)) at budget "
        f"{args.budget!r}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from ..models import list_models
    from ..reproduce import reproduce

    experiment = experiment_from_args(args, "reproduce", args.models or list_models())
    if args.estimate or args.dry_run:
        return plan_only(args, experiment)
    result = reproduce(experiment, command_line("reproduce"))
    print(f"\n{(result.report_dir / 'results.md').read_text()}")
    print(
        f"reproduce: {result.trained} run(s) trained, {result.skipped} reused, {result.seconds / 60:.1f} min; "
        f"report in {result.report_dir}/ (results.md, results.csv, summary.csv, dice_vs_params.png)"
    )
    return 0


def add_experiment_arguments(parser: argparse.ArgumentParser, out: str, models: str) -> None:
    """The options of ``reproduce`` and ``ablate``; ``out`` and ``models`` are the help of ``--out`` and
    ``--models``."""
    parser.add_argument("--out", help=out)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="training budget (default: cpu)")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="train each run for about MINUTES instead of a fixed number of steps: the same minutes for every model, "
        "not the same steps (sets train.time_budget_minutes on top of the budget)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        help="default: those found under --data-root (DRIVE/, GlaS/, HRF/, STARE/, CHASE_DB1/)",
    )
    parser.add_argument("--data-root", help="folder holding DRIVE/, HRF/, ... (default: $CONVUNEXT_DATA or data/)")
    parser.add_argument("--models", nargs="+", help=models)
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the budget's; paper 0 1 2, cpu 0)")
    add_inference_arguments(parser, windows=False)
    parser.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override for every run")
    parser.add_argument(
        "--estimate", action="store_true", help="time a few steps per model and print the projected duration"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")


def budgets_help() -> str:
    """One line per budget for a command's description."""
    return "; ".join(
        f"{name}: {budget.description.split(':')[0].split('(')[0].strip()}" for name, budget in BUDGETS.items()
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's comparison table (five models x datasets x seeds) into a report folder",
        description="Train every registry model on the chosen datasets with one recipe and several seeds, select "
        "each run's checkpoint on the validation split, evaluate it once on the test split, and write results.csv, "
        "results.md (mean ± std over seeds) and dice_vs_params.png. Each model/seed is a resumable run: run the "
        f"same command again to continue an interrupted reproduction. Budgets: {budgets_help()}.",
    )
    models = "registry models (default: all five; see `convunext models`)"
    add_experiment_arguments(parser, "report folder (default: reproduce-BUDGET)", models)
    parser.set_defaults(func=run)
