"""The ConvNeXt block's MLP in training, compiled kernel against PyTorch's matrix products, at ConvUNeXt's shapes.

    python benchmarks/mlp_kernel.py                      # 1 and 2 threads, median of 9 interleaved repeats
    python benchmarks/mlp_kernel.py --repeats 2 --threads 1 --scale 16 --out /tmp/mlp.md   # a smoke run

One forward and backward pass of ``banded_mlp`` (``gelu(x W1 + b1) W2 + b2`` on ``P x C`` rows, hidden width
``4C``; input, weights and biases all recording gradients) per measurement, as ConvUNeXt's blocks run it in a fused
training step, under each ``kernels`` setting of :mod:`convunext.runtime`: ``compiled`` (the compiled kernel of
:mod:`convunext.models.layers.compiled_mlp`) and ``reference`` (the PyTorch path it falls back to). The rows are
the four stages of a training step at batch 4, 256x256 crops: 32 channels at 256x256 (P = 262,144 rows), 64 at
128x128, 128 at 64x64 and 256 at 32x32 (``--scale`` divides P, for smoke runs). The two settings alternate
within each repeat, so a load that comes and goes hits both alike; the table gives medians and the ratio
(reference time over compiled: above 1 = the kernel is faster). GFLOP/s counts the two matrix products of the
forward pass three times (forward, and the two products of each layer's backward): ``3 x 16 P C^2``.

Prints a Markdown table and writes it to ``--out`` (default
``benchmarks/results/cpu-<machine>-mlp-kernel-<YYYYMMDD>.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

try:
    import convunext  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from convunext import runtime
from convunext.benchmarking import machine_description, machine_short_name
from convunext.models.layers.compiled_mlp import LIBRARY
from convunext.models.layers.mlp import banded_mlp
from convunext.utils.table import markdown_table

STAGES = ((32, 256), (64, 128), (128, 64), (256, 32))
"""(channels, side) of ConvUNeXt's four stages at a 256x256 crop."""
BATCH = 4
SETTINGS = ("reference", "compiled")


def step(tensors: list[torch.Tensor], grad: torch.Tensor) -> float:
    """Seconds for one forward and backward pass of ``banded_mlp`` on fresh leaves of ``tensors``."""
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    start = time.perf_counter()
    banded_mlp(*leaves, "gelu").backward(grad)
    return time.perf_counter() - start


def measure(channels: int, rows: int, threads: int, repeats: int) -> dict[str, float]:
    """Median seconds per setting for one stage shape, the settings interleaved within each repeat."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    hidden = 4 * channels
    shapes = ((rows, channels), (channels, hidden), (hidden,), (hidden, channels), (channels,))
    tensors = [torch.randn(shape, generator=generator) * (0.1 if i else 1.0) for i, shape in enumerate(shapes)]
    grad = torch.randn(rows, channels, generator=generator)
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for repeat in range(repeats + 1):  # the first round warms up
        for setting in SETTINGS:
            runtime.configure(kernels=setting)
            seconds = step(tensors, grad)
            if repeat:
                times[setting].append(seconds)
    return {setting: statistics.median(values) for setting, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--scale", type=int, default=1, help="divide every stage's row count by this")
    parser.add_argument("--out", type=Path, default=None, help="where to write the Markdown table")
    args = parser.parse_args(argv)
    runtime.configure(kernels="compiled")
    loaded = LIBRARY.loaded()
    if isinstance(loaded, str):
        print(f"the compiled MLP kernel cannot be loaded on this machine: {loaded}", file=sys.stderr)
        return 1
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for channels, side in STAGES:
            points = BATCH * side * side // args.scale
            seconds = measure(channels, points, threads, args.repeats)
            gflop = 3 * 16 * points * channels**2 / 1e9
            rows.append(
                [
                    threads,
                    f"{channels} x {side}x{side}",
                    f"{points:,}",
                    f"{seconds['reference'] * 1e3:.1f}",
                    f"{seconds['compiled'] * 1e3:.1f}",
                    f"{seconds['reference'] / seconds['compiled']:.2f}x",
                    f"{gflop / seconds['reference']:.0f}",
                    f"{gflop / seconds['compiled']:.0f}",
                ]
            )
            print(rows[-1], flush=True)
    header = ["threads", "C x H x W", "rows P", "PyTorch ms", "compiled ms", "speed-up", "PyTorch GFLOP/s",
              "compiled GFLOP/s"]  # fmt: skip
    table = markdown_table(header, rows)
    stamp = _dt.date.today().strftime("%Y%m%d")
    command = " ".join(["python", "benchmarks/mlp_kernel.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_description()
    text = "\n".join(
        [
            "# The block MLP in training: the compiled kernel against PyTorch's matrix products",
            "",
            f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}. Produced by `{command}`.",
            "",
            *[f"- **{key}**: {value}" for key, value in machine.items() if key != "torch threads"],
            f"- **measured**: one forward + backward of `banded_mlp` (GELU, hidden 4C; input, weights and biases "
            f"recording gradients), batch {BATCH} (rows P = {BATCH} x H x W / {args.scale}), median of "
            f"{args.repeats} repeats after a warm-up, the two settings alternating within each repeat",
            "",
            table,
            "",
            "- speed-up: PyTorch ms / compiled ms; GFLOP/s: 3 x 16 P C^2 (the forward pass's two matrix products, "
            "three times) / median.",
            "",
        ]
    )
    print(text)
    out = args.out or Path("benchmarks/results") / f"cpu-{machine_short_name()}-mlp-kernel-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
