"""Command-line options shared by several sub-commands (``CHECKPOINT``, ``--threads``, ``--backend``, the
evaluated data)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..inference.optimize import BACKENDS
from ..pretrained import resolve_checkpoint

THREADS_HELP = (
    "CPU threads for PyTorch's operators (default: the cores this process may use; OpenMP waits sleep, so a "
    "busy machine slows the run down gracefully; 1 is best beside another heavy job)"
)


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
    """``torch.set_num_threads(args.threads)`` when ``--threads`` was given."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


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
    parser.add_argument("data", help="'synthetic', or a dataset folder (DRIVE, GlaS, HRF layout or images/ + masks/)")
    parser.add_argument(
        "--dataset", choices=["drive", "glas", "hrf", "folder"], help="layout of DATA (default: detect)"
    )
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "trainval"], help="default: test")
