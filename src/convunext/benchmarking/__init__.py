"""Benchmarks: the suite behind ``benchmarks/benchmark.py`` / ``convunext benchmark`` and the authors'-style model.

:mod:`.configs` (what to measure), :mod:`.measure` (one measurement, in a fresh process), :mod:`.machine` (the
machine description and matmul peak), :mod:`.report` (the Markdown tables), :mod:`.suite` (the suite run; its
options are ``convunext benchmark``'s, :mod:`convunext.cli.benchmark`), :mod:`.authors` (the reference network).

>>> from convunext.cli.main import main
>>> main(["benchmark", "--quick", "--out", "/tmp/bench.md"])  # doctest: +SKIP
"""

from __future__ import annotations

from .authors import AuthorsConvUNeXt, authors_from_convunext
from .configs import Config
from .machine import machine_description, machine_short_name
from .measure import Result, measure, measure_in_subprocess
from .report import render_report
from .suite import run

__all__ = [
    "AuthorsConvUNeXt",
    "Config",
    "Result",
    "authors_from_convunext",
    "machine_description",
    "machine_short_name",
    "measure",
    "measure_in_subprocess",
    "render_report",
    "run",
]
