"""The benchmark's command line (shared by ``benchmarks/benchmark.py`` and ``convunext benchmark``) and the suite
run: every configuration measured, the report printed and written with the raw numbers."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .configs import INFERENCE_PATHS, build_configs
from .machine import machine_description, matmul_peak_gflops
from .measure import measure, measure_in_subprocess
from .report import render_report

__all__ = ["DESCRIPTION", "add_arguments", "finalize_args", "main", "parse_args", "run"]


DESCRIPTION = (
    "Latency, throughput, GFLOP/s and peak RSS of the registry models and of ConvUNeXt's inference paths (authors' "
    "style, eager, BN-folded channels-last, fast, compile, onnx); training steps; activation checkpointing memory. "
    "Each configuration runs in a fresh process; the Markdown report goes to stdout and benchmarks/results/."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``benchmarks/benchmark.py`` and ``convunext benchmark``)."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats, in-process (CI smoke test)")
    parser.add_argument("--sizes", default="480,512", help="inference image sides, comma-separated (default 480,512)")
    parser.add_argument("--batch", type=int, default=1, help="inference batch size (default 1)")
    parser.add_argument("--paths", default=",".join(INFERENCE_PATHS), help="ConvUNeXt inference paths to run")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls, the first included (default 2)")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step and checkpointing sections")
    parser.add_argument("--train-size", type=int, default=256, help="training crop side (default 256)")
    parser.add_argument("--train-batch", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--train-repeats", type=int, default=10, help="timed training steps (default 10)")
    parser.add_argument(
        "--checkpointing-size", type=int, default=480, help="side for the checkpointing section; 0 = skip"
    )
    parser.add_argument("--checkpointing-batch", type=int, default=2, help="batch size there (default 2)")
    parser.add_argument("--checkpointing-repeats", type=int, default=2, help="timed steps there (default 2)")
    parser.add_argument("--hrf", action="store_true", help="also predict a full 3504x2336 HRF-sized image")
    parser.add_argument("--hrf-repeats", type=int, default=2, help="timed full-image predictions (default 2)")
    parser.add_argument("--hrf-paths", default="authors,eager,fast,onnx", help="paths for --hrf (comma-separated)")
    parser.add_argument("--tile", type=int, default=512, help="sliding-window tile side for --hrf (default 512)")
    parser.add_argument(
        "--allocators", action="store_true", help="also run key rows with GLIBC_TUNABLES (and tcmalloc)"
    )
    parser.add_argument("--tcmalloc", default="", help="path of libtcmalloc.so to LD_PRELOAD in --allocators rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"), help="autocast dtype (CUDA)")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (peak RSS not per row)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration (default 1800)")
    parser.add_argument("--out", default="", help="report file (default benchmarks/results/DATE-MODE.md)")


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``--quick`` and parse ``--sizes``."""
    if args.quick:
        args.sizes, args.repeats, args.warmup = "64", 2, 1
        args.train_size, args.train_batch, args.train_repeats = 64, 2, 2
        args.checkpointing_size, args.checkpointing_repeats, args.checkpointing_batch = 64, 1, 2
        args.in_process = True
        if args.paths == ",".join(INFERENCE_PATHS):
            args.paths = "authors,eager,channels_last,fast"
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's command line."""
    parser = argparse.ArgumentParser(prog="benchmark", description=DESCRIPTION)
    add_arguments(parser)
    return finalize_args(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and :func:`run` the suite."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the suite; print the Markdown report and write it (and the raw numbers as JSON) to a file.

    Returns 0, or 1 when a configuration failed (its row shows the error).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark: CUDA requested but not available", file=sys.stderr)
        return 2
    machine = machine_description(args.device)
    peak = matmul_peak_gflops(8 if args.quick else 1)
    configs = build_configs(args)
    results = []
    for i, config in enumerate(configs, 1):
        print(
            f"[{i}/{len(configs)}] {config.section}: {config.label} {config.size[0]}x{config.size[1]}", file=sys.stderr
        )
        result = measure(config) if args.in_process else measure_in_subprocess(config, args.timeout)
        if config.env and args.in_process:
            result.error = result.error or "environment variants need separate processes (drop --in-process)"
        results.append(result)
        summary = result.error or f"median {result.median:.3f} s, peak RSS {result.peak_rss_mb:.0f} MB"
        print(f"    {summary}", file=sys.stderr, flush=True)
    notes = [
        "speed-up = (median of the reference) / (median of the row); reference rows: ConvUNeXt authors' style and "
        "UNet eager at the same input. GFLOP/s = nominal FLOPs of the model (multiply-add = 2; training: 3x the "
        "forward) / median; % peak against the measured matmul peak above.",
        "peak RSS: the process's high-water mark over the warm-up and timed calls (reset after the first call), "
        "Python and PyTorch included"
        + (" — measured in one process (--in-process), so rows are not independent." if args.in_process else "."),
        "The fast path's and exports' outputs are checked against the eager model (notes column).",
    ]
    report = render_report(results, machine, peak, notes)
    print(report)
    mode = "quick" if args.quick else "full"
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{mode}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    raw = [{**asdict(r), "median": r.median} for r in results]
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "matmul_peak_gflops": peak, "results": raw},
                                                   indent=1), encoding="utf-8")  # fmt: skip
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0 if all(not r.error for r in results) else 1
