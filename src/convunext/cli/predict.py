"""``convunext predict CHECKPOINT INPUT... --out DIR``: masks, optional probabilities and overlays.

The output folder belongs to one predict at a time (a :class:`~convunext.utils.lock.RunLock`) and to one
checkpoint: its :data:`~convunext.inference.predictor.PREDICTIONS_MARKER` file names the checkpoint, and another
checkpoint's predictions are refused there, so one image's mask and overlay never come from two models. Outputs
never replace an input or a file that predict did not write, and every check runs before the first image.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import ConvUNeXtError
from ..inference.predictor import (
    OUTPUT_SUFFIXES,
    PREDICTIONS_MARKER,
    Predictor,
    expand_inputs,
    output_paths,
    save_prediction,
)
from ..utils.io import atomic_write_json, check_output_folder
from ..utils.lock import RunLock
from .options import (
    add_backend_argument,
    add_checkpoint_argument,
    add_threads_argument,
    apply_threads,
    fraction,
    integer_at_least,
)

MARKER_FORMAT = "convunext-predictions"


def _check_out_dir(out_dir: Path, files: Sequence[Path], probabilities: bool, overlay: bool) -> None:
    """Refuse an ``--out`` that cannot be a folder, or would replace an input or be read back as one."""
    check_output_folder(out_dir)
    if not out_dir.is_dir():
        return
    inputs = {path.resolve(): path for path in files}
    for path in files:
        for output in output_paths(out_dir, path.stem, probabilities, overlay):
            if output.resolve() in inputs:
                raise ConvUNeXtError(
                    f"{inputs[output.resolve()]}: is an input image, and the outputs of {path} would replace it; "
                    "give an --out folder apart from the images"
                )
    folder = out_dir.resolve()
    held = next((path for resolved, path in inputs.items() if resolved.parent == folder), None)
    if held is not None:
        raise ConvUNeXtError(
            f"--out {out_dir}: holds the input image {held}; give an --out folder apart from the images "
            "(masks written beside them would later be read as images)"
        )


def _claim_out_dir(out_dir: Path, checkpoint: Checkpoint, outputs: Sequence[Path]) -> None:
    """Mark the locked ``out_dir`` as holding ``checkpoint``'s predictions, after refusing a folder that holds
    another checkpoint's, or files that predict did not write under the names of ``outputs``."""
    marker = out_dir / PREDICTIONS_MARKER
    weights_sha256 = checkpoint.meta["weights"]["sha256"]
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        recorded = recorded if isinstance(recorded, dict) else {}
        if recorded.get("weights_sha256") != weights_sha256:
            raise ConvUNeXtError(
                f"{out_dir}: holds the predictions of another checkpoint ({recorded.get('checkpoint', 'unknown')}); "
                "give another --out folder, or empty this one"
            )
    else:
        existing = next((path for path in outputs if path.exists()), None)
        if existing is not None:
            raise ConvUNeXtError(
                f"{existing}: exists and was not written by convunext predict; give another --out folder"
            )
        checkpoint_path = str(checkpoint.path.resolve())
        atomic_write_json(
            marker, {"format": MARKER_FORMAT, "checkpoint": checkpoint_path, "weights_sha256": weights_sha256}
        )
    for leftover in out_dir.glob(".*.tmp"):  # temporary files of a predict killed while writing: never complete
        written = leftover.name[1:].rsplit(".", 2)[0]  # ".NAME.RANDOM.tmp" (atomic writes) -> "NAME"
        if written.endswith(OUTPUT_SUFFIXES) or written == PREDICTIONS_MARKER:
            leftover.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    files = expand_inputs(args.inputs)
    out_dir = Path(args.out)
    _check_out_dir(out_dir, files, args.probabilities, args.overlay)
    predictor = Predictor.from_checkpoint(
        checkpoint,
        tile_size=args.tile_size or None,
        overlap=args.overlap,
        tta=args.tta,
        batch_size=args.batch_size,
        device=args.device,
        backend=args.backend,
    )
    outputs = [out for path in files for out in output_paths(out_dir, path.stem, args.probabilities, args.overlay)]
    with RunLock(out_dir, hint="wait for it to finish, or give another --out folder"):
        _claim_out_dir(out_dir, checkpoint, outputs)
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
        "with Gaussian blending, so very large images run in bounded memory. The --out folder holds the "
        "predictions of one checkpoint and is never read as input.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (apart from the images)")
    parser.add_argument(
        "--tile-size",
        type=integer_at_least(0, "a tile side in pixels"),
        default=512,
        help="sliding-window tile side; 0 = whole image",
    )
    parser.add_argument("--overlap", type=fraction, default=0.25, help="tile overlap fraction in [0, 1) (default 0.25)")
    parser.add_argument(
        "--batch-size", type=integer_at_least(1, "a number of tiles"), default=4, help="tiles per forward pass"
    )
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (3 passes)")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_prob.npy (K x H x W float16)")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (mask over the image)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_backend_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
