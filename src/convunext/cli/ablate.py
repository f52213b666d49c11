"""``convunext ablate``: the paper's Section 3 studies — the roadmap from UNet to ConvUNeXt and the leave-one-out
study — as a resumable report folder, with ``convunext reproduce``'s runs, budgets and protocol (see
:mod:`convunext.reproduce.ablate`)."""

from __future__ import annotations

import argparse

from ..models.variants import STUDIES
from .reproduce import add_experiment_arguments, budgets_help, command_line, experiment_from_args, plan_only


def run(args: argparse.Namespace) -> int:
    from ..reproduce import ablate, study_models

    experiment = experiment_from_args(args, "ablate", study_models(args.study, args.models)[1])
    if args.estimate or args.dry_run:
        return plan_only(args, experiment)
    result = ablate(experiment, args.study, command_line("ablate"))
    print(f"\n{(result.report_dir / f'{args.study}.md').read_text()}")
    print(
        f"ablate: {result.trained} run(s) trained, {result.skipped} reused, {result.seconds / 60:.1f} min; report in "
        f"{result.report_dir}/ ({args.study}.md, {args.study}.csv, {args.study}-runs.csv, {args.study}.png)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="run the paper's ablation studies (roadmap from UNet, leave-one-out) into a report folder",
        description="Train every model of a study of the paper's Section 3 (roadmap: UNet to ConvUNeXt one choice "
        "at a time, with the alternatives the paper tried as side branches; leave-one-out: ConvUNeXt with one "
        "choice reverted at a time) on the chosen datasets with one recipe and several seeds, as `convunext "
        "reproduce` does: checkpoints chosen on validation, the test split evaluated once per run, resumable runs. "
        "Writes STUDY.md (a table per dataset with the differences to the previous step and to ConvUNeXt), "
        f"STUDY.csv and the roadmap figure STUDY.png. Budgets: {budgets_help()}.",
    )
    parser.add_argument("--study", choices=sorted(STUDIES), default="roadmap", help="the study (default: roadmap)")
    add_experiment_arguments(
        parser,
        "report folder (default: ablate-BUDGET; both studies may share one, sharing their common runs)",
        "a subset of the study's models (default: all; `convunext models --variants` lists them)",
    )
    parser.set_defaults(func=run)
