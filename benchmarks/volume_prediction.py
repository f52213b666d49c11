"""Seconds and peak memory to segment a CT-sized volume on this CPU: ConvUNeXt's fast path against UNet's.

    python benchmarks/volume_prediction.py                       # 512 x 512 x 100, convunext and unet, 2 threads
    python benchmarks/volume_prediction.py --shape 64 64 4 --repeats 1 --threads 1 --out /tmp/vp.md   # a smoke run

Each model (untrained: random weights, seed 0; speed does not depend on training; 1 input channel, 3 classes as a
CT organ task) segments one volume by ``VolumePredictor.predict`` end to end, as ``convunext predict`` does on a
NIfTI file once it is read: CT normalisation (clip, z-score), slicing along axis 2, slices stacked
``--slice-batch`` at a time and run through the ``Inferer`` (``--backend``; tiles of ``PREDICT_TILE_SIZE``, so a
512 x 512 slice runs whole, ``--batch-size`` slices per forward pass), softmax, argmax, and the label and
probability volumes put back in the volume's voxel order. The volume is random noise (seed 0, N(-300, 400^2) HU,
float32): generating a phantom of that size is too slow, and the time does not depend on the values.

Each model runs in a fresh Python process (``--in-process`` for quick checks), so its peak RSS is its own: one
prediction as a warm-up (its time is reported as the first run), then ``--repeats`` timed ones (median). Peak RSS
is the process's high-water mark over all of them, reset just before the first (``/proc/self/clear_refs``): Python,
torch, the model and the input volume included, the outputs (about 8 bytes per voxel and class) too. Ratios are
against UNet measured in the same run. Prints a Markdown table and writes it to ``--out`` (default
``benchmarks/results/cpu-<machine>-volume-prediction-<YYYYMMDD>.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import convunext  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch

from convunext import create_model, runtime
from convunext.benchmarking import machine_description, machine_short_name
from convunext.benchmarking.measure import current_rss_mb, peak_rss_mb, reset_peak_rss
from convunext.data.volumes import IntensityNormalization, Volume, VolumeSettings
from convunext.inference import Inferer
from convunext.inference.optimize import BACKENDS
from convunext.inference.predictor import PREDICT_TILE_SIZE, Predictor
from convunext.inference.volume import SLICE_BATCH, VolumePredictor
from convunext.utils.device import device_description
from convunext.utils.table import markdown_table

RESULT_PREFIX = "VOLUME-PREDICTION-RESULT "
IN_CHANNELS, NUM_CLASSES = 1, 3
SPACING = (0.8, 0.8, 2.5)
"""Voxel size in mm of the made-up volume (an abdominal CT's): the slices run along the coarse axis 2."""
CT_NORMALIZATION = IntensityNormalization("ct", low=-1000.0, high=1000.0, mean=40.0, std=350.0)
"""A fixed CT mapping (clip to [-1000, 1000] HU, z-score); a trained checkpoint's differs only in its numbers."""


@dataclass
class Case:
    """One measurement: a model segmenting a volume of ``shape`` (``I x J x K`` voxels) by ``backend``."""

    model: str
    backend: str
    shape: tuple[int, int, int]
    repeats: int
    threads: int
    slice_batch: int
    batch_size: int
    tile_size: int


@dataclass
class Outcome:
    """What a worker measured: seconds per prediction, memory in MB, ``runs_as``: what the back-end made of the
    model (e.g. ``fused+bn-folded+channels-last``)."""

    params: int = 0
    runs_as: str = ""
    first_s: float = float("nan")
    times: list[float] = field(default_factory=list)
    rss_before_mb: float = float("nan")
    peak_rss_mb: float = float("nan")
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def ct_volume(shape: Sequence[int], seed: int = 0) -> Volume:
    """A CT-like volume of ``shape`` (``I x J x K``): float32 Hounsfield units, random noise N(-300, 400^2)."""
    array = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
    array *= 400.0
    array -= 300.0
    return Volume(array, np.diag([*SPACING, 1.0]))


def measure(case: Case) -> Outcome:
    """Segment the volume of ``case`` once as a warm-up and ``case.repeats`` times more in this process."""
    outcome = Outcome()
    try:
        runtime.configure(threads=case.threads)
        torch.manual_seed(0)
        model = create_model(case.model, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES)
        outcome.params = sum(p.numel() for p in model.parameters())
        inferer = Inferer(
            tile_size=case.tile_size or None, batch_size=case.batch_size, device="cpu", backend=case.backend
        )
        predictor = Predictor(model, [0.0] * IN_CHANNELS, [1.0] * IN_CHANNELS, inferer)
        outcome.runs_as = getattr(predictor.model, "description", "as trained")
        settings = VolumeSettings(2, 1, ("CT",), (CT_NORMALIZATION,), SPACING)
        volumes = VolumePredictor(predictor, settings, case.slice_batch)
        volume = ct_volume(case.shape)
        reset_peak_rss()
        outcome.rss_before_mb = current_rss_mb()
        for run in range(case.repeats + 1):
            start = time.perf_counter()
            result = volumes.predict([volume])
            seconds = time.perf_counter() - start
            if run == 0:
                outcome.first_s = seconds
            else:
                outcome.times.append(seconds)
            del result
        outcome.peak_rss_mb = peak_rss_mb()
    except Exception as error:  # a failing model is reported in its row; the others still run
        outcome.error = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    return outcome


def measure_in_subprocess(case: Case, timeout: float) -> Outcome:
    """:func:`measure` in a fresh Python process (this script with ``--worker``), with ``case.threads`` OpenMP
    threads and the ``convunext`` command's OpenMP wait policy unless the environment sets one."""
    env = {"OMP_WAIT_POLICY": runtime.OMP_WAIT_POLICY, **os.environ, "OMP_NUM_THREADS": str(case.threads)}
    source = str(Path(runtime.__file__).resolve().parents[1])  # the package's src folder
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH", "")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(case))]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {timeout:.0f} s")
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return Outcome(**json.loads(line[len(RESULT_PREFIX) :]))
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return Outcome(error=f"worker failed (exit {completed.returncode}): {tail}")


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if value == value and reference == reference and reference else "-"


def table_rows(cases: Sequence[Case], outcomes: Sequence[Outcome]) -> list[list[str]]:
    """One row per case, ratios against the first UNet row without an error."""
    unet = next((o for c, o in zip(cases, outcomes, strict=True) if c.model == "unet" and not o.error), None)
    rows = []
    for case, outcome in zip(cases, outcomes, strict=True):
        backend = f"{case.backend} ({outcome.runs_as})" if outcome.runs_as else case.backend
        if outcome.error:
            rows.append([case.model, backend, f"{outcome.params:,}", f"error: {outcome.error}", *["-"] * 7])
            continue
        median, slices = outcome.median, case.shape[2]
        rows.append(
            [
                case.model,
                backend,
                f"{outcome.params:,}",
                f"{median:.2f}",
                f"{min(outcome.times):.2f}-{max(outcome.times):.2f}",
                f"{outcome.first_s:.2f}",
                f"{slices / median:.2f}",
                f"{outcome.rss_before_mb / 1024:.2f}",
                f"{outcome.peak_rss_mb / 1024:.2f}",
                _ratio(median, unet.median) if unet else "-",
                _ratio(outcome.peak_rss_mb, unet.peak_rss_mb) if unet else "-",
            ]
        )
    return rows


HEADERS = [
    "model",
    "backend (runs as)",
    "params",
    "seconds (median)",
    "min-max s",
    "first run s",
    "slices/s",
    "RSS before GB",
    "peak RSS GB",
    "seconds vs UNet",
    "peak RSS vs UNet",
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``sys.argv`` when ``argv`` is None); exits with a usage message on a bad one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["convunext", "unet"], help="registry names")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100], metavar=("I", "J", "K"),
                        help="volume size in voxels; slices along K (default 512 512 100)")  # fmt: skip
    parser.add_argument("--backend", nargs="+", default=["fast"], choices=BACKENDS,
                        help="one back-end for every model, or one per model (default fast)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2)")
    parser.add_argument("--slice-batch", type=int, default=SLICE_BATCH, help=f"default {SLICE_BATCH}")
    batch = Inferer.batch_size
    parser.add_argument("--batch-size", type=int, default=batch, help=f"slices per forward pass (default {batch})")
    parser.add_argument("--tile-size", type=int, default=PREDICT_TILE_SIZE,
                        help=f"sliding-window tile (default {PREDICT_TILE_SIZE}; 0: whole slices)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per model (default 3600)")
    parser.add_argument("--in-process", action="store_true", help="measure every model in this process")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.backend) not in (1, len(args.models)):
        parser.error(f"--backend takes one back-end or one per model ({len(args.models)})")
    if min(args.repeats, args.threads, args.slice_batch, args.batch_size, *args.shape) < 1:
        parser.error("--repeats, --threads, --slice-batch, --batch-size and --shape must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every model, print the table and write it; 0, or 1 when a model failed (its row says why)."""
    args = parse_args(argv)
    if args.worker:
        data = json.loads(args.worker)
        data["shape"] = tuple(data["shape"])
        print(RESULT_PREFIX + json.dumps(asdict(measure(Case(**data)))), flush=True)
        return 0
    torch.set_num_threads(args.threads)
    backends = args.backend * len(args.models) if len(args.backend) == 1 else args.backend
    cases = [
        Case(
            model,
            backend,
            tuple(args.shape),
            args.repeats,
            args.threads,
            args.slice_batch,
            args.batch_size,
            args.tile_size,
        )
        for model, backend in zip(args.models, backends, strict=True)
    ]
    outcomes = []
    for case in cases:
        print(f"{case.model} ({case.backend}) ...", file=sys.stderr, flush=True)
        outcome = measure(case) if args.in_process else measure_in_subprocess(case, args.timeout)
        outcomes.append(outcome)
        summary = outcome.error or f"median {outcome.median:.2f} s, peak RSS {outcome.peak_rss_mb:.0f} MB"
        print(f"    {summary}", file=sys.stderr, flush=True)
    table = markdown_table(HEADERS, table_rows(cases, outcomes))
    command = " ".join(["python", "benchmarks/volume_prediction.py", *(sys.argv[1:] if argv is None else argv)])
    shape = "x".join(map(str, args.shape))
    machine = machine_description()
    memory = "each model in a fresh process"
    if args.in_process:
        memory = "one process for every model (--in-process): rows are not independent"
    text = "\n".join(
        [
            f"# Volume prediction: a {shape} CT-like volume on {device_description(torch.device('cpu'))}",
            "",
            f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}. Produced by `{command}`.",
            "",
            *[f"- **{key}**: {value}" for key, value in machine.items()],
            f"- **volume**: {shape} voxels (slices along the last axis, {args.shape[2]} slices), random noise "
            "N(-300, 400^2) HU float32, seed 0; CT normalisation clip [-1000, 1000] HU, z-score",
            f"- **models**: untrained (seed 0), {IN_CHANNELS} input channel, {NUM_CLASSES} classes",
            f"- **prediction**: VolumePredictor.predict end to end; slice batch {args.slice_batch}, "
            f"{args.batch_size} slices per forward pass, tile {args.tile_size or 'none (whole slices)'}",
            "",
            table,
            "",
            f"- seconds: one VolumePredictor.predict of the volume (normalisation, slicing, forward passes, softmax, "
            f"argmax, reassembly), median of {args.repeats} after a warm-up prediction (first run s); slices/s = "
            "slices / median.",
            "- RSS before: the process's resident memory before the first prediction (Python, torch, the model, the "
            "input volume); peak RSS: its high-water mark over every prediction, warm-up included, measured with "
            f"{memory}.",
            "- backend (runs as): the back-end asked for and what it made of the model (UNet's fast path folds "
            "BatchNorm and runs channels-last; ConvUNeXt's also fuses its per-pixel chains).",
            "- ratios: this row's value / UNet's, measured in the same run.",
            "",
        ]
    )
    print(table)
    out = args.out or Path("benchmarks/results") / (
        f"cpu-{machine_short_name()}-volume-prediction-{_dt.date.today():%Y%m%d}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(not outcome.error for outcome in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
