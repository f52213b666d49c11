"""Benchmarks: the suite behind ``benchmarks/benchmark.py`` / ``convunext benchmark`` and the authors'-style model.

:mod:`.configs` (what to measure), :mod:`.measure` (one measurement, in a fresh process), :mod:`.machine` (the
machine description and matmul peak), :mod:`.report` (the Markdown tables), :mod:`.cli` (options and the suite
run), :mod:`.authors` (the reference network).

>>> from convunext.benchmarking import main
>>> main(["--quick", "--out", "/tmp/bench.md"])  # doctest: +SKIP
"""

from __future__ import annotations

from .authors import AuthorsConvUNeXt, authors_from_convunext
from .cli import main, run
from .configs import Config
from .machine import machine_description
from .measure import Result, measure, measure_in_subprocess
from .report import render_report

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
