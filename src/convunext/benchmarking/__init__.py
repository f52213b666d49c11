"""Benchmarks: the suite behind ``benchmarks/benchmark.py`` / ``convunext benchmark`` and the authors'-style model.

>>> from convunext.benchmarking import main
>>> main(["--quick", "--out", "/tmp/bench.md"])  # doctest: +SKIP
"""

from __future__ import annotations

from .authors import AuthorsConvUNeXt, authors_from_convunext
from .core import Config, Result, machine_description, main, measure, measure_in_subprocess, render_report, run

__all__ = [
    "AuthorsConvUNeXt",
    "Config",
    "Result",
    "authors_from_convunext",
    "machine_description",
    "main",
    "measure",
    "measure_in_subprocess",
    "render_report",
    "run",
]
