"""``convunext cross-evaluate CHECKPOINT [CHECKPOINT ...]``: every checkpoint on the test split of every vessel
dataset under a data root, with and without scale matching, as a train-on-X / test-on-Y table
(:func:`~convunext.evaluation.cross_dataset.cross_evaluate`)."""

from __future__ import annotations

import argparse

from ..data.registry import dataset_spec, list_datasets
from ..evaluation.cross_dataset import DEFAULT_OUT, SCALE_SETTINGS, cross_evaluate, vessel_datasets
from ..inference.sliding_window import Inferer
from ..pretrained import resolve_checkpoint
from .options import (
    add_batch_size_argument,
    add_inference_arguments,
    add_tile_size_argument,
    apply_threads,
    inferer_from_args,
)
from .reproduce import command_line


def skip_unannotated_options() -> dict[str, dict[str, bool]]:
    """``{name: {"skip_unannotated": True}}`` for every dataset whose reader takes that option (HRF)."""
    return {
        name: {"skip_unannotated": True}
        for name in list_datasets()
        if "skip_unannotated" in dataset_spec(name).options()
    }


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    result = cross_evaluate(
        args.checkpoints,
        args.data_root,
        datasets=args.datasets,
        scales=args.scales,
        out_dir=args.out,
        inferer=inferer_from_args(args),
        data_options=skip_unannotated_options() if args.skip_unannotated else None,
        html=args.html,
        command=command_line("cross-evaluate"),
    )
    print(f"Dice on the test splits (scale {' / '.join(result.scales)}; bold: in-domain)")
    print(result.table)
    print(f"written: {result.out_dir}/cross-dataset.md, cross-dataset.csv, cross-dataset.json; reports in runs/")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cross-evaluate",
        help="train-on-X / test-on-Y table: checkpoints on the test split of every vessel dataset, scale auto and off",
        description="Evaluate every checkpoint on the test split of every retinal vessel dataset under --data-root "
        "(each at its validation threshold, once per --scales setting), each into a report folder "
        "OUT/runs/LABEL/DATASET-SCALE/, and write OUT/cross-dataset.md, .csv and .json: Dice, AUC and clDice per "
        "model and test dataset, the scale factors applied and the minutes per evaluation. Reports that still "
        "match their checkpoint and settings are reused: run the same command again to continue an interrupted "
        "one.",
    )
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        type=resolve_checkpoint,
        help="run folders, checkpoints or names of shipped pretrained models",
    )
    parser.add_argument(
        "--data-root", help="folder holding DRIVE/, HRF/, STARE/, CHASE_DB1/ (default: $CONVUNEXT_DATA or data/)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="DATASET",
        help=f"test datasets among {', '.join(vessel_datasets())} (default: those found under --data-root)",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        choices=SCALE_SETTINGS,
        default=list(SCALE_SETTINGS),
        help="auto: resize each image to the model's training scale (its field of view's diameter); off: run it as "
        "it is (default: both, each cell 'auto / off')",
    )
    parser.add_argument(
        "--skip-unannotated",
        action="store_true",
        help="HRF: go on without the images whose manual annotation is missing from this copy (they are named)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default: {DEFAULT_OUT})")
    parser.add_argument("--html", action="store_true", help="also write each evaluation's report.html")
    add_tile_size_argument(
        parser,
        None,
        "sliding-window tile side (default: each checkpoint's own, the one it was validated with; 0 = whole images)",
    )
    batch = Inferer.batch_size
    add_batch_size_argument(parser, batch, f"tiles (or whole images) per forward pass (default {batch})")
    add_inference_arguments(parser, windows=False)
    parser.set_defaults(func=run)
