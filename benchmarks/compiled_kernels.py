"""ConvUNeXt's compiled training kernels against PyTorch's operators, at the shapes of its training step.

    python benchmarks/compiled_kernels.py            # MLP and gate, 1 and 2 threads, median of 9 interleaved repeats
    python benchmarks/compiled_kernels.py --repeats 2 --threads 1 --scale 16 --out /tmp/k.md   # a smoke run

Each measurement is one forward and backward pass of an operator of ConvUNeXt's fused training path, every input
recording gradients, under each ``kernels`` setting of :mod:`convunext.runtime`: ``compiled`` (the kernel) and
``reference`` (the PyTorch path it falls back to):

* ``mlp``: ``banded_mlp`` (``gelu(x W1 + b1) W2 + b2`` on ``P x C`` rows, hidden width ``4C``;
  :mod:`convunext.models.layers.compiled_mlp`) at the blocks of the four encoder stages: 32 channels at 256x256,
  64 at 128x128, 128 at 64x64 and 256 at 32x32;
* ``gate``: ``banded_gate`` (the decoder's skip gate and fusion conv on folded weights, ``c`` channels in and out;
  :mod:`convunext.models.layers.compiled_gate`) at the decoder stages: 128 channels at 64x64, 64 at 128x128 and 32
  at 256x256;

all at batch 4, a 256x256 crop (P = 4 x H x W rows; ``--scale`` divides P, for smoke runs). The two settings
alternate within each repeat, so a load that comes and goes hits both alike; the table gives medians and the ratio
(reference time over compiled: above 1 = the kernel is faster). GFLOP/s counts the forward pass's matrix products
three times (forward, and the two products of each layer's backward): ``3 x 16 P C^2`` for the MLP,
``3 x 12 P c^2`` for the gate (``u w_u``: 8 c^2, ``t w_f`` and ``gated w_s``: 2 c^2 each).

Prints a Markdown table and writes it to ``--out`` (default
``benchmarks/results/cpu-<machine>-compiled-kernels-<YYYYMMDD>.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import convunext  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from convunext import runtime
from convunext.benchmarking import machine_description, machine_short_name
from convunext.models.layers import compiled_gate, compiled_mlp
from convunext.models.layers.gate import GateWeights, banded_gate
from convunext.models.layers.mlp import banded_mlp
from convunext.utils.table import markdown_table

BATCH = 4
SETTINGS = ("reference", "compiled")
HEADERS = ["kernel", "threads", "C x H x W", "rows P", "PyTorch ms", "compiled ms", "speed-up", "PyTorch GFLOP/s",
           "compiled GFLOP/s"]  # fmt: skip


def _mlp(
    channels: int, rows: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], Callable[..., torch.Tensor]]:
    hidden = 4 * channels
    shapes = ((rows, channels), (channels, hidden), (hidden,), (hidden, channels), (channels,))
    tensors = [torch.randn(shape, generator=generator) * (0.1 if i else 1.0) for i, shape in enumerate(shapes)]
    return tensors, lambda *t: banded_mlp(*t, "gelu")


def _gate(
    channels: int, rows: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], Callable[..., torch.Tensor]]:
    c = channels
    shapes = ((rows, c), (rows, c), (c, 4 * c), (4 * c,), (c, c), (c, c), (c,))
    tensors = [torch.randn(shape, generator=generator) * (0.1 if i > 1 else 1.0) for i, shape in enumerate(shapes)]
    return tensors, lambda u, s, *weights: banded_gate(u, s, GateWeights(*weights))


KERNELS = {
    "mlp": (compiled_mlp.LIBRARY, _mlp, ((32, 256), (64, 128), (128, 64), (256, 32)), 16),
    "gate": (compiled_gate.LIBRARY, _gate, ((128, 64), (64, 128), (32, 256)), 12),
}
"""name -> (library, inputs and operator, the (channels, side) of its stages, forward FLOPs per row / C^2)."""


def measure(kernel: str, channels: int, rows: int, threads: int, repeats: int) -> dict[str, float]:
    """Median seconds per setting for one stage shape, the settings interleaved within each repeat."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    tensors, operator = KERNELS[kernel][1](channels, rows, generator)
    grad = torch.randn(rows, channels, generator=generator)
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for repeat in range(repeats + 1):  # the first round warms up
        for setting in SETTINGS:
            runtime.configure(kernels=setting)
            leaves = [t.detach().requires_grad_(True) for t in tensors]
            start = time.perf_counter()
            operator(*leaves).backward(grad)
            if repeat:
                times[setting].append(time.perf_counter() - start)
    return {setting: statistics.median(values) for setting, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default="mlp,gate", help="kernels, comma-separated (default mlp,gate)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--scale", type=int, default=1, help="divide every stage's row count by this")
    parser.add_argument("--out", type=Path, default=None, help="where to write the Markdown table")
    args = parser.parse_args(argv)
    kernels = [k for k in args.kernels.split(",") if k]
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        print(f"unknown kernel {unknown[0]!r}; choose from {', '.join(KERNELS)}", file=sys.stderr)
        return 2
    counts = [t.strip() for t in args.threads.split(",")]
    if not all(t.isdigit() and int(t) > 0 for t in counts):
        print(f"--threads {args.threads!r}: expected positive whole numbers separated by commas", file=sys.stderr)
        return 2
    runtime.configure(kernels="compiled")
    for kernel in kernels:
        loaded = KERNELS[kernel][0].loaded()
        if isinstance(loaded, str):
            print(f"{KERNELS[kernel][0].what} cannot be loaded on this machine: {loaded}", file=sys.stderr)
            return 1
    rows = []
    for kernel in kernels:
        _, _, stages, flops = KERNELS[kernel]
        for threads in map(int, counts):
            for channels, side in stages:
                points = BATCH * side * side // args.scale
                seconds = measure(kernel, channels, points, threads, args.repeats)
                gflop = 3 * flops * points * channels**2 / 1e9
                reference, compiled = seconds["reference"], seconds["compiled"]
                rows.append([kernel, threads, f"{channels} x {side}x{side}", f"{points:,}", f"{reference * 1e3:.1f}",
                             f"{compiled * 1e3:.1f}", f"{reference / compiled:.2f}x", f"{gflop / reference:.0f}",
                             f"{gflop / compiled:.0f}"])  # fmt: skip
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    command = " ".join(["python", "benchmarks/compiled_kernels.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_description()
    text = "\n".join(
        [
            "# ConvUNeXt's compiled training kernels against PyTorch's operators",
            "",
            f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}. Produced by `{command}`.",
            "",
            *[f"- **{key}**: {value}" for key, value in machine.items() if key != "torch threads"],
            f"- **measured**: one forward + backward of `banded_mlp` (GELU, hidden 4C) or `banded_gate` (gate and "
            f"fusion, C in and out), every input recording gradients, batch {BATCH} (rows P = {BATCH} x H x W / "
            f"{args.scale}), median of {args.repeats} repeats after a warm-up, the two settings alternating",
            "",
            markdown_table(HEADERS, rows),
            "",
            "- speed-up: PyTorch ms / compiled ms; GFLOP/s: three times the forward pass's matrix products "
            "(MLP 16 P C^2, gate 12 P C^2) / median.",
            "",
        ]
    )
    print(text)
    out = (
        args.out
        or Path("benchmarks/results") / f"cpu-{machine_short_name()}-compiled-kernels-{_dt.date.today():%Y%m%d}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
