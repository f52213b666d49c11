"""``convunext predict CHECKPOINT INPUT... --out DIR``: masks, optional probabilities and overlays.

The work is the library's: the :class:`~convunext.inference.predictor.Predictor` and its
:class:`~convunext.inference.sliding_window.Inferer`, and the output folder's rules
(:class:`~convunext.inference.prediction_folder.PredictionFolder`), all checked before the first image.
"""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..inference.prediction_folder import PredictionFolder, expand_inputs
from ..inference.predictor import PREDICT_TILE_SIZE, Predictor
from .options import add_checkpoint_argument, add_inference_arguments, apply_threads, inferer_from_args


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    files = expand_inputs(args.inputs)
    folder = PredictionFolder(args.out, checkpoint, files, probabilities=args.probabilities, overlay=args.overlay)
    predictor = Predictor.from_checkpoint(checkpoint, inferer_from_args(args), args.threshold, args.scale)
    with folder:
        start = time.perf_counter()
        for path in tqdm(files, desc="predict", unit="image", disable=args.quiet):
            folder.save(path, *predictor.predict_file(path))
        seconds = time.perf_counter() - start
    print(
        f"{len(files)} image(s) segmented in {seconds:.1f} s -> {folder.out_dir}/ (NAME_mask.png"
        f"{', NAME_prob.npy' if args.probabilities else ''}{', NAME_overlay.png' if args.overlay else ''}; "
        "predictions.csv: how each was run)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment image files or folders with a trained checkpoint",
        description="Segment images. Images larger than --tile-size are processed by overlapping sliding windows "
        "with Gaussian blending, so very large images run in bounded memory. The --out folder holds the "
        "predictions of one checkpoint and is never read as input.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (apart from the images)")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_prob.npy (K x H x W float16)")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (mask over the image)")
    add_inference_arguments(parser, tile_size=PREDICT_TILE_SIZE)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
