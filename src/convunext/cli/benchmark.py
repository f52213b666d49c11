"""``convunext benchmark``: speed and memory of the registry models and of ConvUNeXt's inference paths.

The same suite as ``python benchmarks/benchmark.py`` (see :mod:`convunext.benchmarking`).
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..benchmarking.cli import finalize_args
    from ..benchmarking.cli import run as run_suite

    return run_suite(finalize_args(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..benchmarking.cli import DESCRIPTION, add_arguments

    parser = subparsers.add_parser("benchmark", help="measure latency, throughput and memory of the models",
                                   description=DESCRIPTION)  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(func=run)
