"""``convunext predict CHECKPOINT INPUT... --out DIR``: masks, optional probabilities and overlays."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from ..inference.predictor import Predictor, expand_inputs, save_prediction
from .options import add_backend_argument, add_checkpoint_argument, add_threads_argument, apply_threads


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    tile = None if args.tile_size == 0 else args.tile_size
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        tile_size=tile,
        overlap=args.overlap,
        tta=args.tta,
        batch_size=args.batch_size,
        device=args.device,
        backend=args.backend,
    )
    files = expand_inputs(args.inputs)
    out_dir = Path(args.out)
    start = time.perf_counter()
    for path in tqdm(files, desc="predict", unit="image", disable=args.quiet):
        image, prediction = predictor.predict_file(path)
        save_prediction(
            out_dir, path.stem, prediction, image if args.overlay else None, probabilities=args.probabilities
        )
    seconds = time.perf_counter() - start
    print(
        f"{len(files)} image(s) segmented in {seconds:.1f} s -> {out_dir}/ (NAME_mask.png"
        f"{', NAME_prob.npy' if args.probabilities else ''}{', NAME_overlay.png' if args.overlay else ''})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment image files or folders with a trained checkpoint",
        description="Segment images. Images larger than --tile-size are processed by overlapping sliding windows "
        "with Gaussian blending, so very large images run in bounded memory.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile-size", type=int, default=512, help="sliding-window tile side; 0 = whole image")
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (3 passes)")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_prob.npy (K x H x W float16)")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (mask over the image)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_backend_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
