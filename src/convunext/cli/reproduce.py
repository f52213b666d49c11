"""``convunext reproduce``: the paper's comparison table — five models x datasets x seeds, one recipe, an honest
protocol — as a resumable report folder (see :mod:`convunext.reproduce`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..reproduce import BUDGETS, DATASETS
from .options import add_threads_argument, apply_threads


def run(args: argparse.Namespace) -> int:

    from ..data import default_data_root
    from ..reproduce import available_datasets, estimate, plan_runs, reproduce

    apply_threads(args)
    out = args.out or f"reproduce-{args.budget}"
    if args.estimate or args.dry_run:
        budget = BUDGETS[args.budget]
        root = args.data_root or default_data_root()
        datasets = args.datasets or available_datasets(root)
        if not datasets:
            raise ValueError(f"none of DRIVE, GlaS, HRF found under {root}; pass --data-root or --datasets")
        from ..models import list_models

        seeds = args.seeds if args.seeds is not None else list(budget.default_seeds)
        overrides = [*(args.set or []), f"train.device={args.device}"]
        specs = plan_runs(out, args.models or list_models(), datasets, seeds, budget, root, overrides)
        if args.dry_run:
            for spec in specs:
                print(f"{spec.label:40s} {spec.status():9s} {spec.run_dir}")
            return 0
        rows = estimate(specs)
        minutes = sum(row["run_minutes"] for row in rows) * len(seeds)
        print(f"projected: {minutes:.0f} min for {len(specs)} runs ({len(seeds)} seed(s)) at budget {args.budget!r}")
        return 0
    command = "convunext " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    result = reproduce(
        out,
        budget=args.budget,
        datasets=args.datasets,
        models=args.models,
        seeds=args.seeds,
        data_root=args.data_root,
        overrides=args.set or [],
        device=args.device,
        command=command,
    )
    print(f"\n{(result.report_dir / 'results.md').read_text()}")
    print(
        f"reproduce: {result.trained} run(s) trained, {result.skipped} reused, {result.seconds / 60:.1f} min; "
        f"report in {result.report_dir}/ (results.md, results.csv, summary.csv, dice_vs_params.png)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    budgets = "; ".join(
        f"{name}: {budget.description.split(':')[0].split('(')[0].strip()}" for name, budget in BUDGETS.items()
    )
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's comparison table (five models x datasets x seeds) into a report folder",
        description="Train every registry model on the chosen datasets with one recipe and several seeds, select "
        "each run's checkpoint on the validation split, evaluate it once on the test split, and write results.csv, "
        "results.md (mean ± std over seeds) and dice_vs_params.png. Each model/seed is a resumable run: run the "
        f"same command again to continue an interrupted reproduction. Budgets: {budgets}.",
    )
    parser.add_argument("--out", help="report folder (default: reproduce-BUDGET)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="training budget (default: cpu)")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, help="default: those of drive, glas, hrf found under --data-root"
    )
    parser.add_argument("--data-root", help="folder holding DRIVE/, GlaS/, HRF/ (default: $CONVUNEXT_DATA or data/)")
    parser.add_argument("--models", nargs="+", help="registry models (default: all five; see `convunext models`)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the budget's; paper 0 1 2, cpu 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_argument(parser)
    parser.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override for every run")
    parser.add_argument(
        "--estimate", action="store_true", help="time a few steps per model and print the projected duration"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    parser.set_defaults(func=run)
