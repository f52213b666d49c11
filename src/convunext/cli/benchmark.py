"""``convunext benchmark``: speed and memory of the registry models and of ConvUNeXt's inference paths."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..benchmarking import main

    return main(args.argv)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("benchmark", help="measure latency, throughput and memory of the models")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="options of benchmarks/benchmark.py")
    parser.set_defaults(func=run)
