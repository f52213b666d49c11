"""``convunext compare RUN_A RUN_B [RUN ...] DATA``: paired comparison of runs on the same images of a split."""

from __future__ import annotations

import argparse

from ..evaluation.compare import compare_runs
from ..pretrained import resolve_checkpoint
from .options import add_evaluation_data_arguments, add_inference_arguments, apply_threads, inferer_from_args


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    result = compare_runs(
        args.runs,
        args.data,
        split=args.split,
        metric=args.metric,
        layout=args.dataset,
        out_dir=args.out,
        inferer=inferer_from_args(args),
        threshold=args.threshold,
        scale=args.scale,
    )
    print(f"{result.metric} on {result.dataset} ({result.split}, {result.comparisons[0].n} images)")
    print(result.table)
    print(f"written: {result.out_dir}/comparison.md, comparison.json, paired_differences.csv, paired-*.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired comparison of two or more runs on the same images: mean difference, bootstrap CI, Wilcoxon",
        description="Compare runs image by image on one split. Each run's evaluation report is reused when it "
        "still matches its checkpoint (RUN/eval-DATASET-SPLIT/, or a reproduction's RUN/test/), else the run is "
        "evaluated (as `convunext evaluate`). Every run is compared with the first: per-image differences "
        "(run - reference), their mean with a 95% percentile-bootstrap interval, the two-sided Wilcoxon "
        "signed-rank p-value, wins/ties/losses and a paired plot.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        type=resolve_checkpoint,
        help="run folders, checkpoints or names of shipped pretrained models; the first is the reference",
    )
    add_evaluation_data_arguments(parser)
    parser.add_argument(
        "--metric", default="dice_fg", help="a per-image column of per_image.csv (default: dice_fg; iou_fg, ...)"
    )
    parser.add_argument(
        "--out",
        help="folder for the comparison (default: compare-DATASET-SPLIT); an earlier comparison there is replaced "
        "whole, other files are left alone",
    )
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
