"""Command-line options shared by several sub-commands: ``CHECKPOINT``, the evaluated data, and the inference
flags — ``--tile-size``, ``--overlap``, ``--tta``, ``--batch-size``, ``--device``, ``--backend``, ``--threads`` — with
one name and one meaning in every command (``predict``, ``evaluate``, ``compare``, ``reproduce``, ``ablate``,
``benchmark``), built into an :class:`~convunext.inference.sliding_window.Inferer` by :func:`inferer_from_args`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .. import runtime
from ..data import detectable_datasets
from ..inference.optimize import BACKENDS
from ..inference.scale import parse_scale
from ..inference.sliding_window import DEFAULT_OVERLAP, Inferer
from ..inference.threshold import parse_threshold
from ..pretrained import resolve_checkpoint

THREADS_HELP = (
    "CPU threads for PyTorch's operators (default: the cores this process may use; OpenMP waits sleep, so a "
    "busy machine slows the run down gracefully; 1 is best beside another heavy job)"
)
DEVICE_HELP = "where the model runs: auto (default: CUDA when available, else the CPU), cpu, cuda or cuda:N"
INFERENCE_FLAGS = ("tile_size", "overlap", "tta", "batch_size", "device", "backend")
"""The :class:`~convunext.inference.sliding_window.Inferer` settings that are command-line flags."""


def integer_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (``what`` it counts names it in the refusal)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}, an integer of at least {low}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse ``type``: a number in [0, 1) (e.g. ``--overlap``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction, at least 0 and less than 1")
    return value


positive_threads = integer_at_least(1, "a number of threads")
"""``--threads``' type."""


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``."""
    parser.add_argument("--threads", type=positive_threads, metavar="N", help=THREADS_HELP)


def apply_threads(args: argparse.Namespace) -> None:
    """``runtime.configure(threads=args.threads)`` when ``--threads`` was given."""
    if args.threads is not None:
        runtime.configure(threads=args.threads)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend`` (default ``fast``): how the model runs (:func:`~convunext.inference.optimize.make_backend`)."""
    parser.add_argument(
        "--backend",
        default="fast",
        choices=BACKENDS,
        help="fast (default): fused, BN-folded channels-last copy of the model (about 2x faster on CPU, same "
        "output within float32 rounding); eager: the model as trained; compile: torch.compile (slow first image); "
        "onnx: ONNX Runtime (needs convunext[onnx])",
    )


def add_tile_size_argument(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--tile-size PIXELS``: the sliding-window tile side (0: whole images); ``help`` says what it tiles."""
    parser.add_argument(
        "--tile-size", type=integer_at_least(0, "a tile side in pixels"), default=default, metavar="PIXELS", help=help
    )


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    """``--batch-size N``: images (or tiles) per forward pass."""
    parser.add_argument(
        "--batch-size", type=integer_at_least(1, "a number of images"), default=default, metavar="N", help=help
    )


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto", help: str = DEVICE_HELP) -> None:
    """``--device``: where the model runs."""
    parser.add_argument("--device", default=default, help=help)


def add_inference_arguments(
    parser: argparse.ArgumentParser, tile_size: int | None = None, windows: bool = True
) -> None:
    """The flags of a command that runs a model, read by :func:`inferer_from_args`: with ``windows``,
    ``--tile-size`` (default ``tile_size``; None: the checkpoint's own), ``--overlap``, ``--tta`` and
    ``--batch-size``; always ``--device``, ``--backend`` and ``--threads``. Without ``windows`` (``reproduce``,
    ``ablate``) the protocol runs each checkpoint at its own tile size, without TTA."""
    if windows:
        default = "the checkpoint's own, the one it was validated with" if tile_size is None else tile_size
        add_tile_size_argument(parser, tile_size, f"sliding-window tile side (default: {default}; 0 = whole images)")
        parser.add_argument(
            "--overlap",
            type=fraction,
            default=DEFAULT_OVERLAP,
            help=f"fraction of a tile shared with its neighbour, in [0, 1) (default {DEFAULT_OVERLAP})",
        )
        parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (3 passes)")
        batch = Inferer.batch_size
        add_batch_size_argument(parser, batch, f"tiles (or whole images) per forward pass (default {batch})")
        add_operating_arguments(parser)
    add_device_argument(parser)
    add_backend_argument(parser)
    add_threads_argument(parser)


def add_operating_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threshold`` and ``--scale``: how a binary model's probabilities become a mask, and at which scale each
    image is run (:mod:`convunext.inference.threshold`, :mod:`convunext.inference.scale`)."""
    parser.add_argument(
        "--threshold",
        type=parse_threshold,
        default="auto",
        help="foreground probability above which a pixel is foreground (binary models): auto (default) = the "
        "threshold chosen on the validation split and stored with the checkpoint (the argmax if it has none); "
        "argmax or 0.5 = the argmax; or a probability",
    )
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default="auto",
        help="auto (default): resize each image so its field of view matches the scale the model was trained at "
        "(fundus models; results are resized back); off: run images as they are; or a resize factor "
        "(0.5 halves the sides) for data without a field of view",
    )


def inferer_from_args(args: argparse.Namespace) -> Inferer:
    """The :class:`~convunext.inference.sliding_window.Inferer` of the flags :func:`add_inference_arguments` added
    (the inferer's defaults for those the command lacks).

    Raises:
        ConvUNeXtError: an unknown ``--device`` or one this machine lacks, or ``--backend onnx`` without
            onnxruntime.
    """
    return Inferer(**{name: getattr(args, name) for name in INFERENCE_FLAGS if name in vars(args)})


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``CHECKPOINT``: a run folder, a checkpoint file or the name of a shipped model (resolved to its path)."""
    parser.add_argument(
        "checkpoint",
        type=resolve_checkpoint,
        help="run folder (uses best, else last), CHECKPOINT.json or .safetensors, or the name of a pretrained model "
        "shipped with the package (convunext models --pretrained)",
    )


def add_evaluation_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``DATA``, ``--dataset`` and ``--split``: the data a checkpoint is evaluated on."""
    parser.add_argument(
        "data",
        help="'synthetic' / 'synthetic_ct', or a dataset folder (DRIVE, GlaS, HRF, STARE, CHASE_DB1 layout, "
        "images/ + masks/, or a volume dataset: Decathlon, nnU-Net v2 raw, images/ + labels/ NIfTI)",
    )
    parser.add_argument("--dataset", choices=detectable_datasets(), help="layout of DATA (default: detect)")
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "trainval"], help="default: test")
