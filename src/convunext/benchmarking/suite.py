"""The benchmark suite's run: every configuration the command line (``convunext benchmark``, or
``python benchmarks/benchmark.py``) asks for measured, the report printed and written with the raw numbers."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .. import runtime
from ..errors import ConvUNeXtError
from .configs import INFERENCE_PATHS, build_configs
from .machine import machine_description, matmul_peak_gflops
from .measure import measure, measure_in_subprocess
from .report import render_report

__all__ = ["finalize_args", "run"]


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``--quick``."""
    if args.quick:
        args.sizes, args.repeats, args.warmup = [64], 2, 1
        args.train_size, args.train_batch_size, args.train_repeats = 64, 2, 2
        args.recompute_size, args.recompute_repeats, args.recompute_batch_size = 64, 1, 2
        args.in_process = True
        if args.paths == ",".join(INFERENCE_PATHS):
            args.paths = "authors,eager,channels_last,fast"
    return args


def run(args: argparse.Namespace) -> int:
    """Run the suite; print the Markdown report and write it (and the raw numbers as JSON) to a file.

    Returns 0, or 1 when a configuration failed (its row shows the error).
    """
    if args.threads:
        runtime.configure(threads=args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark: CUDA requested but not available", file=sys.stderr)
        return 2
    machine = machine_description(args.device)
    peak = matmul_peak_gflops(8 if args.quick else 1)
    configs = build_configs(args)
    if not configs:
        raise ConvUNeXtError(
            f"--sections {args.sections}: nothing to measure with these options (window needs --hrf; training and "
            "recompute need no --no-train, recompute a --recompute-size)"
        )
    results = []
    for i, config in enumerate(configs, 1):
        print(
            f"[{i}/{len(configs)}] {config.section}: {config.label} {config.size[0]}x{config.size[1]}", file=sys.stderr
        )
        result = measure(config) if args.in_process else measure_in_subprocess(config, args.timeout, args.threads)
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
        "peak in use: the most memory allocated at once during one more, untimed call (glibc's mallinfo2, sampled "
        "every millisecond; what the work needs, without what the allocator keeps of freed memory: the difference "
        "to the peak RSS is the allocator's, plus the libraries' code). Trainer rows run as convunext train does: "
        "glibc malloc tuning on, but off with recomputation; [malloc untuned] / [malloc tuned]: the other way "
        "(train.tune_malloc=off / on).",
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
