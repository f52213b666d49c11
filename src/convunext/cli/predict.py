"""``convunext predict CHECKPOINT INPUT... --out DIR``: masks, optional probabilities and overlays.

The work is the library's: the :class:`~convunext.inference.predictor.Predictor` and its
:class:`~convunext.inference.sliding_window.Inferer`, and the output folder's rules
(:class:`~convunext.inference.prediction_folder.PredictionFolder`), all checked before the first image.
"""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import ConvUNeXtError
from ..inference.prediction_folder import PredictionFolder, expand_inputs
from ..inference.predictor import FOV_SETTINGS, PREDICT_TILE_SIZE, Predictor
from ..inference.volume import VolumePredictionFolder, VolumePredictor, expand_volume_inputs, is_volume_input
from .options import add_checkpoint_argument, add_inference_arguments, apply_threads, inferer_from_args


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.volume is not None:
        return _predict_volumes(args, checkpoint)
    volume = next((item for item in args.inputs if is_volume_input(item)), None)
    if volume is not None:
        raise ConvUNeXtError(
            f"{volume}: a volume, and {args.checkpoint} was trained on 2D images; segment volumes with a checkpoint "
            "trained on their slices (convunext train volumes)"
        )
    files = expand_inputs(args.inputs)
    folder = PredictionFolder(args.out, checkpoint, files, probabilities=args.probabilities, overlay=args.overlay)
    predictor = Predictor.from_checkpoint(checkpoint, inferer_from_args(args), args.threshold, args.scale, fov=args.fov)
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


def _predict_volumes(args: argparse.Namespace, checkpoint: Checkpoint) -> int:
    """``convunext predict`` of a checkpoint trained on slices: each NIfTI file or DICOM series -> a label volume on
    its geometry."""
    inputs = expand_volume_inputs(args.inputs)
    folder = VolumePredictionFolder(
        args.out, checkpoint, inputs, probabilities=args.probabilities, overlay=args.overlay
    )
    predictor = VolumePredictor.from_checkpoint(checkpoint, inferer_from_args(args), args.threshold)
    with folder:
        start = time.perf_counter()
        for path in tqdm(inputs, desc="predict", unit="volume", disable=args.quiet):
            volume, prediction = predictor.predict_path(path)
            folder.save_volume(path, volume, prediction, predictor.settings.slice_axis)
        seconds = time.perf_counter() - start
    print(
        f"{len(inputs)} volume(s) segmented in {seconds:.1f} s -> {folder.out_dir}/ (NAME_mask.nii.gz on each input's "
        f"geometry{', NAME_prob.nii.gz' if args.probabilities else ''}"
        f"{', NAME_overlay.png' if args.overlay else ''})"
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
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image files and/or folders of images; for a checkpoint trained on volumes: NIfTI files (.nii, .nii.gz), "
        "folders of them, or DICOM series folders",
    )
    parser.add_argument("--out", required=True, help="output folder (apart from the images)")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write NAME_prob.npy (K x H x W float16; volumes: NAME_prob.nii.gz, I x J x K x classes)",
    )
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (mask over the image)")
    parser.add_argument(
        "--fov",
        choices=FOV_SETTINGS,
        default="auto",
        help="auto (default): for a model trained within fields of view (fundus models), everything outside the "
        "field of view found in each image is background; off: keep the model's output everywhere",
    )
    add_inference_arguments(parser, tile_size=PREDICT_TILE_SIZE)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
