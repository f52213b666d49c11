"""``convunext evaluate CHECKPOINT DATA``: the paper's metrics on a dataset split, printed and written to files."""

from __future__ import annotations

import argparse

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.volumes import read_layout, synthetic_ct_root_of
from ..evaluation.evaluate import default_report_dir, evaluate_to_report, metrics_table
from ..evaluation.volumes import DEFAULT_NSD_TOLERANCE, evaluate_volumes_to_report, volume_metrics_table
from .options import (
    add_checkpoint_argument,
    add_evaluation_data_arguments,
    add_inference_arguments,
    apply_threads,
    inferer_from_args,
)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.volume is not None:
        return _evaluate_volumes(args, checkpoint)
    report = evaluate_to_report(
        checkpoint,
        args.data,
        args.split,
        layout=args.dataset,
        out_dir=args.out,
        inferer=inferer_from_args(args),
        auc=args.auc,
        topology=args.topology,
        html=args.html,
        full_maps=args.full_maps,
        data_options={"skip_unannotated": True} if args.skip_unannotated else None,
        threshold=args.threshold,
        scale=args.scale,
        surface=args.surface,
        pixel_size=args.pixel_size,
        nsd_tolerance=args.nsd_tolerance,
    )
    what = report.context
    print(f"{what['model']} on {what['dataset']} ({args.split}, {what['images']} images, {what['seconds']:.1f} s)")
    observer = report.context.get("second_observer")
    print(metrics_table(report.results, observer if isinstance(observer, dict) else None))
    if report.replaced:
        print(f"replaced the earlier evaluation in {report.out_dir} (its files only; other files were left alone)")
    print(f"written: {report.out_dir}/metrics.json, per_image.csv, metrics.md" + (", report.html" if args.html else ""))
    return 0


def _evaluate_volumes(args: argparse.Namespace, checkpoint: Checkpoint) -> int:
    """``convunext evaluate`` of a checkpoint trained on slices: per-volume, per-class Dice, HD95, ASSD and NSD."""
    data = args.data
    if data == "synthetic_ct":  # the phantoms the checkpoint was trained on
        data = synthetic_ct_root_of(checkpoint.meta.get("data", {}).get("options", {}))
    name = read_layout(data).name
    out = args.out or default_report_dir(checkpoint.path, name, args.split)
    report = evaluate_volumes_to_report(
        checkpoint,
        data,
        args.split,
        out_dir=out,
        inferer=inferer_from_args(args),
        threshold=args.threshold,
        tolerance=args.nsd_tolerance,
        html_page=args.html,
    )
    what = report.context
    print(f"{what['model']} on {what['dataset']} ({args.split}, {what['volumes']} volumes, {what['seconds']:.1f} s)")
    print(volume_metrics_table(report.evaluation))
    print(
        f"written: {report.out_dir}/metrics.json, per_volume.csv, metrics.md" + (", report.html" if args.html else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compute Dice, mIoU, accuracy (and FOV vessel and topology metrics) of a checkpoint on a dataset split",
        description="Evaluate a checkpoint. Dice = mean over images of the per-image foreground Dice; mIoU = mean "
        "IoU over all classes (background included) from one confusion matrix over the split — as the authors' "
        "code computes them.",
    )
    add_checkpoint_argument(parser)
    add_evaluation_data_arguments(parser)
    parser.add_argument(
        "--skip-unannotated",
        action="store_true",
        help="HRF: go on without the images whose manual annotation is missing from this copy (they are named); "
        "without it such a copy is refused",
    )
    parser.add_argument(
        "--out",
        help="report folder (default: CHECKPOINT_DIR/eval-DATASET-SPLIT; for a shipped model "
        "./convunext-reports/NAME/eval-DATASET-SPLIT); an earlier evaluation there is replaced whole once the new "
        "one is complete, other files are left alone",
    )
    parser.add_argument(
        "--auc",
        default="exact",
        choices=["exact", "binned"],
        help="FOV AUC-ROC: exact (default; keeps 4 bytes per FOV pixel, ~0.7 GB for HRF's test set) or binned "
        "(16 MB whatever the data; metrics.json gives its largest possible error, fov_auc_error_bound)",
    )
    parser.add_argument(
        "--no-html",
        dest="html",
        action="store_false",
        help="do not write report.html (the page with the table, the ROC curve and each image's error map)",
    )
    parser.add_argument(
        "--full-maps",
        action="store_true",
        help="also write each image's full-size prediction and error map under OUT/maps/, linked from report.html",
    )
    parser.add_argument(
        "--topology",
        default="auto",
        choices=["auto", "on", "off"],
        help="clDice and 8-connected component counts per image (skeletons on the CPU, ~1 s per HRF image): "
        "auto (default) = for vessel datasets (those with a field of view: DRIVE, HRF, synthetic vessels)",
    )
    parser.add_argument(
        "--surface",
        action="store_true",
        help="2D images: also HD95, ASSD and NSD per image (in pixels, or mm with --pixel-size); volumes always "
        "get them, in mm from the voxel spacing. GlaS-style instance masks always get object F1 / Dice / Hausdorff",
    )
    parser.add_argument("--pixel-size", type=float, metavar="MM", help="2D images: a pixel's side in mm (--surface)")
    parser.add_argument(
        "--nsd-tolerance",
        type=float,
        default=DEFAULT_NSD_TOLERANCE,
        metavar="MM",
        help=f"the normalised surface Dice's tolerance, in mm (pixels for 2D images without --pixel-size; default "
        f"{DEFAULT_NSD_TOLERANCE:g})",
    )
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
