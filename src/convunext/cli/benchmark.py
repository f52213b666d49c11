"""``convunext benchmark`` (also ``python benchmarks/benchmark.py``): speed and memory of the registry models and of
ConvUNeXt's inference paths. The options are read here, in the flag vocabulary of the other commands
(``--batch-size``, ``--tile-size``, ``--device``, ``--threads``); the suite is :mod:`convunext.benchmarking`."""

from __future__ import annotations

import argparse

from ..benchmarking.configs import INFERENCE_PATHS, SECTION_OPTIONS
from .options import (
    add_batch_size_argument,
    add_device_argument,
    add_threads_argument,
    add_tile_size_argument,
    integer_at_least,
)

DESCRIPTION = (
    "Latency, throughput, GFLOP/s and peak RSS of the registry models and of ConvUNeXt's inference paths (authors' "
    "style, eager, BN-folded channels-last, fast, compile, onnx); training steps; activation recomputation memory. "
    "Each configuration runs in a fresh process; the Markdown report goes to stdout and benchmarks/results/."
)


MIN_SIDE = 16  # every registry model halves its input four times
_side = integer_at_least(MIN_SIDE, "an image side in pixels")
_count = integer_at_least(1, "a number of timed calls")
_batch = integer_at_least(1, "a number of images")


def _sides(text: str) -> list[int]:
    """``--sizes``' type: comma-separated image sides of at least :data:`MIN_SIDE` pixels."""
    sides = [_side(part) for part in text.split(",") if part.strip()]
    if not sides:
        raise argparse.ArgumentTypeError(f"{text!r}: expected image sides in pixels, comma-separated")
    return sides


def run(args: argparse.Namespace) -> int:
    from ..benchmarking.suite import finalize_args
    from ..benchmarking.suite import run as run_suite

    return run_suite(finalize_args(args))


def _sections(text: str) -> str:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTION_OPTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTION_OPTIONS)}")
    return ",".join(names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats, in-process (CI smoke test)")
    parser.add_argument(
        "--sizes", type=_sides, default="480,512", help="inference image sides, comma-separated (default 480,512)"
    )
    add_batch_size_argument(parser, 1, "images per forward pass of the inference rows (default 1)")
    parser.add_argument(
        "--paths", default=",".join(INFERENCE_PATHS), help="ConvUNeXt inference paths to run (comma-separated)"
    )
    parser.add_argument("--repeats", type=_count, default=10, help="timed calls per configuration (default 10)")
    parser.add_argument(
        "--warmup",
        type=integer_at_least(0, "a number of calls"),
        default=2,
        help="warm-up calls, the first included (default 2)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training-step and recomputation sections")
    parser.add_argument(
        "--sections",
        default="",
        type=_sections,
        help=f"run only these sections, comma-separated: {', '.join(SECTION_OPTIONS)} (default: all)",
    )
    parser.add_argument("--train-size", type=_side, default=256, help="training crop side (default 256)")
    parser.add_argument("--train-batch-size", type=_batch, default=4, help="training batch size (default 4)")
    parser.add_argument("--train-repeats", type=_count, default=10, help="timed training steps (default 10)")
    parser.add_argument(
        "--recompute-size",
        type=integer_at_least(0, "an image side in pixels (0 = skip)"),
        default=480,
        help="side for the recomputation section; 0 = skip",
    )
    parser.add_argument("--recompute-batch-size", type=_batch, default=4, help="batch size there (default 4)")
    parser.add_argument("--recompute-repeats", type=_count, default=2, help="timed steps there (default 2)")
    parser.add_argument("--hrf", action="store_true", help="also predict a full 3504x2336 HRF-sized image")
    parser.add_argument("--hrf-repeats", type=_count, default=2, help="timed full-image predictions (default 2)")
    parser.add_argument("--hrf-paths", default="authors,eager,fast,onnx", help="paths for --hrf (comma-separated)")
    add_tile_size_argument(parser, 512, "sliding-window tile side of the --hrf rows (default 512)")
    parser.add_argument(
        "--allocators", action="store_true", help="also run key rows with GLIBC_TUNABLES (and tcmalloc)"
    )
    parser.add_argument("--tcmalloc", default="", help="path of libtcmalloc.so to LD_PRELOAD in --allocators rows")
    add_threads_argument(parser)
    add_device_argument(parser, "cpu", "where the models run: cpu (default) or cuda")
    parser.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"), help="autocast dtype (CUDA)")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (peak RSS not per row)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration (default 1800)")
    parser.add_argument("--out", default="", help="report file (default benchmarks/results/DATE-MODE.md)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="measure latency, throughput and memory of the models", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
