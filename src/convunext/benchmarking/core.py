"""The benchmark suite behind ``benchmarks/benchmark.py`` and ``convunext benchmark``.

Every configuration (model x execution path x mode x input shape) is measured in a **fresh Python process**, so its
peak RSS is its own (the allocator keeps freed memory, and one process's high-water mark would hide the next
one's): the worker builds the model, prepares the path (optimise, export, compile), runs warm-up calls, resets
the kernel's RSS high-water mark (``/proc/self/clear_refs``), runs the timed calls and reports median / min / max
latency and the peak RSS. ``--quick`` runs everything in-process at tiny sizes for CI.

Paths (``Config.path``):

* ``authors``: ConvUNeXt as the authors wrote it (:mod:`convunext.benchmarking.authors`: ``nn.Linear`` on
  permuted tensors, no fusion), holding the same weights as the package model;
* ``eager``: the registry model as is (NCHW);
* ``channels_last``: the registry model in channels-last memory format (the training switch ``train.channels_last``);
  in inference also with BatchNorm folded (``optimize_for_inference(fuse=False)``);
* ``fast``: :func:`~convunext.inference.optimize_for_inference` (ConvUNeXt: fused kernels);
* ``compile``: ``optimize_for_inference(compile=True)`` (``torch.compile``; setup time = compile time);
* ``onnx``: exported in memory, run by ONNX Runtime;
* ``fused`` (training): channels-last plus the fused training kernels
  (:func:`~convunext.models.fused.enable_fused_training`).

Training (``mode="train"``) times one optimisation step: forward, cross-entropy on random labels, backward,
AdamW; ``checkpointing=True`` enables activation checkpointing of every block.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.table import markdown_table

__all__ = [
    "Config",
    "Result",
    "build_configs",
    "machine_description",
    "main",
    "matmul_peak_gflops",
    "measure",
    "measure_in_subprocess",
    "render_report",
]

REGISTRY_MODELS = ("convunext", "unet", "attention_unet", "unet_plus_plus", "resunet")
INFERENCE_PATHS = ("authors", "eager", "channels_last", "fast", "compile", "onnx")
RESULT_PREFIX = "BENCHMARK-RESULT "
TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
"""The GLIBC_TUNABLES value docs/speed.md recommends: no mmap for allocations under 1 GiB, never trim the heap."""
OPENMP_ENV = {"CONVUNEXT_FUSED_PARALLELISM": "openmp"}
"""The fast path with PyTorch's per-operator OpenMP parallelism instead of its worker threads."""


@dataclass
class Config:
    """One measurement: ``model`` (registry name) run by ``path`` in ``mode`` (``"infer"``, ``"train"`` or
    ``"window"``: sliding-window prediction of one ``size`` image with tiles of ``tile``) on ``batch`` images of
    ``channels x size``; ``env`` adds environment variables (allocator variants) to the worker process."""

    section: str
    model: str
    path: str
    mode: str = "infer"
    batch: int = 1
    size: tuple[int, int] = (480, 480)
    channels: int = 3
    classes: int = 2
    checkpointing: bool = False
    repeats: int = 10
    warmup: int = 2
    tile: int = 512
    env: dict[str, str] = field(default_factory=dict)
    env_label: str = ""
    device: str = "cpu"
    amp: str = "none"

    @property
    def label(self) -> str:
        """Row label, e.g. ``convunext fast`` or ``convunext channels_last + checkpointing``."""
        names = {
            "authors": "authors' style",
            "channels_last": "channels-last",
            "fused": "channels-last + fused kernels",
        }
        path = names.get(self.path, self.path)
        if self.mode == "infer" and self.path == "channels_last":
            path = "BN-folded channels-last"
        text = f"{self.model} {path}"
        if self.checkpointing:
            text += " + checkpointing"
        if self.env_label:
            text += f" [{self.env_label}]"
        return text


@dataclass
class Result:
    """What a worker measured (times in seconds, memory in MB; ``gflops``: one image's forward pass)."""

    config: Config
    params: int = 0
    gflops: float = 0.0
    times: list[float] = field(default_factory=list)
    setup_s: float = 0.0
    first_call_s: float = 0.0
    peak_rss_mb: float = float("nan")
    rss_before_mb: float = float("nan")
    peak_gpu_mb: float = float("nan")
    rss_reset: bool = False
    threads: int = 0
    max_abs_diff: float = float("nan")
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Memory and machine


def _read_status_kb(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``/proc/self/clear_refs``); ``False`` if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MB (``VmHWM``, else ``ru_maxrss``)."""
    value = _read_status_kb("VmHWM")
    if value == value:  # not NaN
        return value / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size in MB."""
    return _read_status_kb("VmRSS") / 1024


def allocator_description() -> str:
    """The memory allocator in use: LD_PRELOAD'ed tcmalloc/jemalloc (seen in ``/proc/self/maps``), GLIBC_TUNABLES."""
    parts = []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            parts.append(name)
    if not parts:
        parts.append(f"glibc malloc ({platform.libc_ver()[0]} {platform.libc_ver()[1]})".replace(" )", ")"))
    if os.environ.get("LD_PRELOAD"):
        parts.append(f"LD_PRELOAD={os.environ['LD_PRELOAD']}")
    if os.environ.get("GLIBC_TUNABLES"):
        parts.append(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")
    return ", ".join(parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(scale: int = 1, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a few matrix products (square and the tall-skinny shapes of 1x1 layers) on this CPU
    with the current thread count; ``scale`` divides the sizes (``--quick``)."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (8192, 256, 1024), (16384, 128, 512)):
        m, k, n = max(64, m // scale), max(16, k // scale), max(16, n // scale)
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)
        fastest = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            fastest = min(fastest, time.perf_counter() - start)
        best = max(best, 2 * m * k * n / fastest / 1e9)
    return best


def machine_description(device: str = "cpu") -> dict[str, str]:
    """CPU model, cores, threads, PyTorch, Python, OS, allocator and load (name -> text)."""
    info = {
        "CPU": _cpu_model(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "Python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
        "allocator": allocator_description(),
    }
    if hasattr(os, "getloadavg"):
        info["load average (1/5/15 min) at start"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------------------------
# One measurement


def _nominal_gflops(model_name: str, shape: tuple[int, ...], classes: int) -> tuple[int, float]:
    """Parameters and forward GFLOPs of the registry model (counted on the meta device: no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import create_model

    model = create_model(model_name, in_channels=shape[1], num_classes=classes).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.to("meta")(torch.zeros(shape, device="meta"))
    return params, counter.get_total_flops() / 1e9


def _build_model(config: Config) -> tuple[nn.Module, nn.Module]:
    """``(source, runner)``: the registry model (random weights, BN statistics randomised so folding is not
    trivial) and the module the path runs."""
    from ..inference.optimize import make_backend, optimize_for_inference
    from ..models import create_model
    from ..models.checkpointing import enable_activation_checkpointing
    from .authors import authors_from_convunext

    torch.manual_seed(0)
    source = create_model(config.model, in_channels=config.channels, num_classes=config.classes)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    if config.mode != "train":
        source.eval()
    device = torch.device(config.device)
    source = source.to(device)
    if config.path == "authors":
        if config.model != "convunext":
            raise ValueError("the authors' style exists for convunext only")
        runner: nn.Module = authors_from_convunext(source)
    elif config.path == "eager":
        runner = copy.deepcopy(source)
    elif config.path == "channels_last":
        if config.mode == "train":
            runner = copy.deepcopy(source).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        else:
            runner = optimize_for_inference(source, fuse=False)
    elif config.path == "fused":
        from ..models.fused import enable_fused_training

        runner = copy.deepcopy(source).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        enable_fused_training(runner)
    elif config.path == "fast":
        runner = optimize_for_inference(source)
    elif config.path == "compile":
        runner = optimize_for_inference(source, compile=True)
    elif config.path == "onnx":
        runner = make_backend(source, "onnx")
    else:
        raise ValueError(f"unknown path {config.path!r}; choose one of {', '.join(INFERENCE_PATHS)}")
    if config.checkpointing:
        enable_activation_checkpointing(runner)
    if config.path != "onnx":
        runner = runner.to(device)
    return source, runner


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(config: Config) -> Any:
    import contextlib

    if config.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=torch.device(config.device).type, dtype=dtype)


def measure(config: Config) -> Result:
    """Run ``config`` in this process and return its timings (see the module docstring)."""
    result = Result(config=config, threads=torch.get_num_threads())
    shape = (config.batch, config.channels, *config.size)
    try:
        side = (config.tile, config.tile) if config.mode == "window" else config.size
        result.params, result.gflops = _nominal_gflops(config.model, (1, config.channels, *side), config.classes)
        start = time.perf_counter()
        source, runner = _build_model(config)
        result.setup_s = time.perf_counter() - start
        device = torch.device(config.device)
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=generator).to(device)
        step = _make_step(config, runner, x, generator)
        start = time.perf_counter()
        output = step()
        _synchronize(config.device)
        result.first_call_s = time.perf_counter() - start
        if config.mode == "infer" and config.path != "eager":
            with torch.no_grad():
                expected = source(x)
            result.max_abs_diff = (output.float() - expected.float()).abs().max().item()
        del output
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result.rss_reset = reset_peak_rss()
        result.rss_before_mb = current_rss_mb()
        for _ in range(max(0, config.warmup - 1)):
            step()
        _synchronize(config.device)
        for _ in range(config.repeats):
            start = time.perf_counter()
            step()
            _synchronize(config.device)
            result.times.append(time.perf_counter() - start)
        result.peak_rss_mb = peak_rss_mb()
        if device.type == "cuda":
            result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    except Exception as error:  # a failing configuration is reported in its row, the suite goes on
        result.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return result


def _make_step(config: Config, runner: nn.Module, x: torch.Tensor, generator: torch.Generator) -> Callable[[], Any]:
    """The timed callable of ``config``: one inference pass, one sliding-window prediction or one training step."""
    if config.mode == "infer":

        def infer() -> Any:
            with torch.inference_mode(), _autocast(config):
                return runner(x)

        return infer
    if config.mode == "window":
        from ..inference.sliding_window import predict_probabilities

        def window() -> Any:
            with _autocast(config):
                return predict_probabilities(runner, x, tile_size=config.tile, overlap=0.25, batch_size=4)

        return window
    runner.train()
    labels = torch.randint(0, config.classes, (x.shape[0], *x.shape[2:]), generator=generator).to(x.device)
    inputs = x.contiguous(memory_format=torch.channels_last) if config.path in ("channels_last", "fused") else x
    optimizer = torch.optim.AdamW(runner.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=config.amp == "fp16" and x.is_cuda)

    def train_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config):
            loss = nn.functional.cross_entropy(runner(inputs).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    return train_step


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def measure_in_subprocess(config: Config, timeout: float | None = None) -> Result:
    """Run ``config`` in a fresh ``python -m convunext.benchmarking.core`` process (honest peak RSS)."""
    env = dict(os.environ)
    env.update(config.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH", "")]))
    payload = json.dumps(asdict(config))
    command = [sys.executable, "-m", "convunext.benchmarking.core", "--worker", payload]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Result(config=config, error=f"timed out after {timeout:.0f} s")
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            data["config"] = config
            return Result(**data)
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return Result(config=config, error=f"worker failed (exit {completed.returncode}): {tail}")


def _worker(payload: str) -> None:
    data = json.loads(payload)
    data["size"] = tuple(data["size"])
    result = measure(Config(**data))
    out = asdict(result)
    out.pop("config")
    print(RESULT_PREFIX + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The suite


def build_configs(args: argparse.Namespace) -> list[Config]:
    """Every configuration the command line asks for, in table order."""
    configs: list[Config] = []

    def add(section: str, model: str, path: str, mode: str, batch: int, size: int | tuple[int, int], **kw: Any) -> None:
        kw.setdefault("repeats", args.repeats)
        kw.setdefault("warmup", args.warmup)
        hw = (size, size) if isinstance(size, int) else size
        configs.append(Config(section, model, path, mode, batch, hw, device=args.device, amp=args.amp, **kw))

    paths = [p for p in args.paths.split(",") if p]
    for size in args.sizes:
        for path in paths:
            if path != "compile" or size == args.sizes[0]:  # one compile measurement is enough (slow)
                add("inference", "convunext", path, "infer", args.batch, size)
        if "fast" in paths and not args.in_process:
            add(
                "inference",
                "convunext",
                "fast",
                "infer",
                args.batch,
                size,
                env=OPENMP_ENV,
                env_label="OpenMP operators",
            )
        for model in REGISTRY_MODELS[1:]:
            add("inference", model, "eager", "infer", args.batch, size)
        add("inference", "unet", "channels_last", "infer", args.batch, size)
    if args.allocators:
        variants = [("glibc tunables", {"GLIBC_TUNABLES": TUNABLES})]
        if args.tcmalloc:
            variants.append(("tcmalloc", {"LD_PRELOAD": args.tcmalloc}))
        for label, env in variants:
            for model, path in (
                ("convunext", "authors"),
                ("convunext", "eager"),
                ("convunext", "fast"),
                ("unet", "eager"),
            ):
                add("inference", model, path, "infer", args.batch, args.sizes[0], env=env, env_label=label)
            if not args.no_train:
                for model, path in (("convunext", "authors"), ("convunext", "fused"), ("unet", "eager")):
                    add("training", model, path, "train", args.train_batch, args.train_size, env=env, env_label=label,
                        repeats=args.train_repeats)  # fmt: skip
    if not args.no_train:
        runs = [
            ("convunext", "authors"),
            ("convunext", "eager"),
            ("convunext", "channels_last"),
            ("convunext", "fused"),
        ]
        runs += [(model, "eager") for model in REGISTRY_MODELS[1:]]
        for model, path in runs:
            add("training", model, path, "train", args.train_batch, args.train_size, repeats=args.train_repeats)
        if args.checkpointing_size:
            for model, path in (("convunext", "channels_last"), ("convunext", "fused"), ("resunet", "eager")):
                for checkpointing in (False, True):
                    add("checkpointing", model, path, "train", args.checkpointing_batch, args.checkpointing_size,
                        checkpointing=checkpointing, repeats=args.checkpointing_repeats, warmup=1)  # fmt: skip
    if args.hrf:
        for path in [p for p in args.hrf_paths.split(",") if p]:
            if path != "compile":
                add("sliding window", "convunext", path, "window", 1, (2336, 3504), repeats=args.hrf_repeats, warmup=1,
                    tile=args.tile)  # fmt: skip
    configs.sort(key=lambda c: list(SECTION_TITLES).index(c.section))
    return configs


def _fmt(value: float, digits: int = 3) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:.{digits}f}"


def _section_rows(results: Sequence[Result], peak: float) -> list[list[str]]:
    """Table rows with ratios to the authors' style and to UNet (eager) of the same section and shape."""

    def reference(model: str, path: str, result: Result) -> float:
        for other in results:
            c = other.config
            if (c.model, c.path, c.size, c.batch, c.env_label, c.checkpointing) == (
                model,
                path,
                result.config.size,
                result.config.batch,
                "",
                False,
            ) and not other.error:
                return other.median
        return float("nan")

    rows = []
    for result in results:
        c = result.config
        shape = f"{c.batch}x{c.channels}x{c.size[0]}x{c.size[1]}"
        if result.error:
            rows.append([c.label, shape, f"{result.params:,}", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                         f"error: {result.error}"])  # fmt: skip
            continue
        median = result.median
        images = c.batch if c.mode != "window" else 1
        flops = result.gflops * (3 if c.mode == "train" else 1)
        if c.mode == "window":
            flops = float("nan")
        achieved = flops / median if median else float("nan")
        authors = reference("convunext", "authors", result)
        unet = reference("unet", "eager", result)
        memory = result.peak_gpu_mb if c.device.startswith("cuda") else result.peak_rss_mb
        notes = []
        if result.setup_s > 1:
            notes.append(f"setup {result.setup_s:.1f} s")
        if result.first_call_s > 2 * median:
            notes.append(f"first call {result.first_call_s:.1f} s")
        if not result.rss_reset:
            notes.append("RSS peak includes setup")
        if result.max_abs_diff == result.max_abs_diff:
            notes.append(f"max |diff| to eager {result.max_abs_diff:.1e}")
        rows.append(
            [
                c.label,
                shape,
                f"{result.params:,}",
                _fmt(result.gflops * c.batch if c.mode != "window" else result.gflops, 1),
                _fmt(median),
                _fmt(min(result.times)),
                _fmt(max(result.times)),
                _fmt(images / median, 2),
                _fmt(achieved, 1),
                _fmt(100 * achieved / peak, 0) if peak else "-",
                _fmt(memory, 0),
                f"{authors / median:.2f}x" if authors == authors else "-",
                f"{unet / median:.2f}x" if unet == unet else "-",
                "; ".join(notes),
            ]
        )
    return rows


HEADERS = [
    "configuration",
    "input",
    "params",
    "GFLOPs",
    "median s",
    "min s",
    "max s",
    "img/s",
    "GFLOP/s",
    "% peak",
    "peak RSS MB",
    "speed-up vs authors",
    "speed-up vs UNet",
    "notes",
]

SECTION_TITLES = {
    "inference": "Inference (CPU fp32, eval; one forward pass)",
    "training": "Training step (forward + backward + AdamW)",
    "checkpointing": "Activation checkpointing (training step)",
    "sliding window": "Sliding-window prediction of one full image (tiles {tile}, overlap 0.25, Gaussian blending)",
}


def render_report(results: Sequence[Result], machine: dict[str, str], peak: float, notes: Sequence[str]) -> str:
    """The Markdown report: machine description, one table per section, notes."""
    lines = ["# convunext benchmark", "", f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines += [f"- **measured fp32 matmul peak**: {peak:.1f} GFLOP/s (best sgemm of 3 shapes, best of 5)", ""]
    for section in ("inference", "training", "checkpointing", "sliding window"):
        chosen = [r for r in results if r.config.section == section]
        if not chosen:
            continue
        title = SECTION_TITLES[section].format(tile=chosen[0].config.tile)
        lines += [f"## {title}", "", markdown_table(HEADERS, _section_rows(chosen, peak)), ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit(main())
