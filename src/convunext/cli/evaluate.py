"""``convunext evaluate CHECKPOINT DATA``: the paper's metrics on a dataset split, printed and written to files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..data import open_dataset
from ..data.detect import detect_dataset
from ..errors import ConvUNeXtError
from ..evaluation.evaluate import evaluate_checkpoint, write_report
from ..evaluation.html_report import ReportGallery
from ..pretrained import PRETRAINED_DIR
from ..utils.device import resolve_device
from .options import add_backend_argument, add_checkpoint_argument, add_threads_argument, apply_threads


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    trained_on = checkpoint.meta.get("data", {})
    if args.data == "synthetic":
        name, root, options = (
            "synthetic",
            None,
            trained_on.get("options", {}) if trained_on.get("name") == "synthetic" else {},
        )
    else:
        root = Path(args.data)
        name, options = args.dataset or detect_dataset(root), {}
    dataset = open_dataset(name, root, args.split, **options)
    expected_channels = len(checkpoint.mean)
    if dataset.info.in_channels != expected_channels:
        raise ConvUNeXtError(
            f"{args.data}: images have {dataset.info.in_channels} channels, the checkpoint expects {expected_channels}"
        )
    device = resolve_device(args.device)
    tile = args.tile_size if args.tile_size is not None else trained_on.get("eval_tile_size")
    # a shipped model's report goes to ./NAME/, not into the installed package
    base = Path(checkpoint.path.stem) if checkpoint.path.parent == PRETRAINED_DIR else checkpoint.path.parent
    out_dir = Path(args.out) if args.out else base / f"eval-{name}-{args.split}"
    gallery = ReportGallery(full_maps_dir=out_dir / "maps" if args.full_maps else None) if args.html else None
    start = time.perf_counter()
    metrics = evaluate_checkpoint(
        checkpoint,
        dataset,
        device=device,
        tile_size=tile or None,
        tta=args.tta,
        auc=args.auc,
        backend=args.backend,
        on_image=gallery,
        topology=args.topology,
    )
    seconds = time.perf_counter() - start
    context = {
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.meta["weights"]["sha256"],
        "model": checkpoint.meta["model"]["name"],
        "dataset": name,
        "data": str(root) if root else name,
        "split": args.split,
        "images": len(dataset),
        "tta": args.tta,
        "tile_size": tile,
        "auc": args.auc,
        "topology": args.topology,
        "backend": args.backend,
        "seconds": round(seconds, 1),
    }
    table, _ = write_report(metrics, out_dir, context, checkpoint.class_names, gallery, html=args.html)
    print(f"{checkpoint.meta['model']['name']} on {name} ({args.split}, {len(dataset)} images, {seconds:.1f} s)")
    print(table)
    print(f"written: {out_dir}/metrics.json, per_image.csv, metrics.md" + (", report.html" if args.html else ""))
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
    parser.add_argument("data", help="'synthetic', or a dataset folder (DRIVE, GlaS, HRF layout or images/ + masks/)")
    parser.add_argument(
        "--dataset", choices=["drive", "glas", "hrf", "folder"], help="layout of DATA (default: detect)"
    )
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "trainval"], help="default: test")
    parser.add_argument("--out", help="report folder (default: CHECKPOINT_DIR/eval-DATASET-SPLIT)")
    parser.add_argument("--tile-size", type=int, help="sliding-window tile (default: the checkpoint's; 0 = whole)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_backend_argument(parser)
    add_threads_argument(parser)
    parser.set_defaults(func=run)
