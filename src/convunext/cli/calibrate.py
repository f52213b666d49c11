"""``convunext calibrate CHECKPOINT``: record a checkpoint's training scale and validation threshold in its JSON
(for checkpoints trained before runs recorded them; :mod:`convunext.evaluation.operating_point`)."""

from __future__ import annotations

import argparse

from ..checkpoint import load_checkpoint
from ..evaluation.operating_point import calibrate_checkpoint
from .options import (
    add_backend_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_threads_argument,
    apply_threads,
    inferer_from_args,
)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    entries = calibrate_checkpoint(
        checkpoint,
        args.data_root,
        {"skip_unannotated": True} if args.skip_unannotated else None,
        inferer_from_args(args),
        progress=not args.quiet,
    )
    threshold = entries["threshold"]
    print(
        f"{checkpoint.path}: threshold {threshold['value']:g} (validation Dice {threshold['dice']:.4f}, "
        f"{threshold['dice_at_0.5']:.4f} at the argmax, {threshold['images']} images)"
        + (f"; training scale: fields of view {entries['scale']['fov_diameter']:g} px" if "scale" in entries else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="record a checkpoint's training scale and Dice-optimal validation threshold (older checkpoints)",
        description="Measure, on the data the checkpoint was trained on, the field-of-view diameter of its training "
        "images (the scale predict and evaluate resize inputs to) and the foreground threshold that maximises the "
        "Dice on its validation split, and write both into the checkpoint's JSON. Runs trained with this version "
        "record them as they train; the weights are not changed.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--data-root", help="the folder of the dataset it was trained on (default: $CONVUNEXT_DATA or data/)"
    )
    parser.add_argument(
        "--skip-unannotated",
        action="store_true",
        help="HRF: go on without the images whose manual annotation is missing from this copy (they are named)",
    )
    add_device_argument(parser)
    add_backend_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
