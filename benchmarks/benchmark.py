"""Benchmark suite of convunext: ``python benchmarks/benchmark.py [--quick] [--hrf] [--allocators] ...``.

Measures params, FLOPs, latency (median/min/max), img/s, GFLOP/s and peak RSS of the five registry models and of
ConvUNeXt computed the authors' way, eagerly, and by each fast path (fast, compile, onnx); training steps with
peak RSS; activation recomputation memory. Writes a Markdown table with the machine description to
benchmarks/results/. The same command as ``convunext benchmark`` (same options); the suite lives in
``convunext.benchmarking``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import convunext  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convunext.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
