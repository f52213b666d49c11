"""One measurement of the benchmark suite, in this process or in a fresh worker process.

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
* ``trainer`` (training): what ``convunext train`` runs by default — every ``auto`` speed switch resolved for the
  model and device (:func:`~convunext.training.fast_paths.resolve_fast_paths`; on CPU channels-last, the fused
  kernels where the model has them, and the glibc malloc tuning, applied by :func:`convunext.runtime.configure` as
  the trainer does — not in a run that recomputes activations; ``Config.tune_malloc`` True / False: with or
  without it, as ``train.tune_malloc`` on / off);
* ``fused`` (training): channels-last plus the fused training kernels
  (:meth:`~convunext.models.base.SegmentationModel.set_fused_training`).

Training (``mode="train"``) times one optimisation step: forward, cross-entropy on random labels, backward,
AdamW; ``recompute=True`` makes every block recompute its activations in backward
(:meth:`~convunext.models.base.SegmentationModel.set_grad_checkpointing`).

A worker process runs with the ``convunext`` command's OpenMP wait policy (:data:`convunext.runtime.OMP_WAIT_POLICY`,
unless the environment sets one) and ``Config.env`` on top of this process's environment.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runtime
from ..models.base import SegmentationModel
from ..models.cost import model_cost
from .configs import INFERENCE_PATHS, Config

__all__ = [
    "Result",
    "current_rss_mb",
    "measure",
    "measure_in_subprocess",
    "peak_heap_mb",
    "peak_rss_mb",
    "reset_peak_rss",
]

RESULT_PREFIX = "BENCHMARK-RESULT "


@dataclass
class Result:
    """What a worker measured (times in seconds, memory in MB; ``gflops``: one image's forward pass;
    ``peak_heap_mb``: the most memory allocated at once, :func:`peak_heap_mb`)."""

    config: Config
    params: int = 0
    gflops: float = 0.0
    times: list[float] = field(default_factory=list)
    setup_s: float = 0.0
    first_call_s: float = 0.0
    peak_rss_mb: float = float("nan")
    peak_heap_mb: float = float("nan")
    rss_before_mb: float = float("nan")
    peak_gpu_mb: float = float("nan")
    rss_reset: bool = False
    threads: int = 0
    max_abs_diff: float = float("nan")
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]  # fmt: skip


def _heap_in_use() -> Callable[[], int] | None:
    """glibc's bytes allocated and not freed (``mallinfo2``: heap chunks in use plus mapped ones), or None on
    another C library."""
    mallinfo2 = runtime.glibc_function("mallinfo2")
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


def peak_heap_mb(call: Callable[[], Any], interval: float = 0.001) -> float:
    """The most memory ``call()`` has allocated at once (MB, all threads, sampled every ``interval`` seconds by a
    thread; NaN off glibc). Unlike the peak RSS it does not count what the allocator keeps of freed memory: it is
    what the work needs, whatever the allocator."""
    in_use = _heap_in_use()
    if in_use is None:
        call()
        return float("nan")
    peak, done = [in_use()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], in_use())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], in_use()) / 2**20


def current_rss_mb() -> float:
    """This process's resident set size in MB."""
    return _read_status_kb("VmRSS") / 1024


def _build_model(config: Config) -> tuple[nn.Module, nn.Module]:
    """``(source, runner)``: the registry model (random weights, BN statistics randomised so folding is not
    trivial) and the module the path runs."""
    from ..inference.optimize import make_backend, optimize_for_inference
    from ..models import create_model
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
        runner = copy.deepcopy(source).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        runner.set_fused_training()  # type: ignore[operator]
    elif config.path == "trainer":  # what `convunext train` runs: every auto speed switch resolved for the device
        from ..training.config import TrainConfig
        from ..training.fast_paths import enable_fast_paths, resolve_fast_paths

        runner = copy.deepcopy(source)
        tune = {None: "auto", True: "on", False: "off"}[config.tune_malloc]
        train = TrainConfig(recompute_activations=config.recompute, tune_malloc=tune)  # type: ignore[arg-type]
        paths = resolve_fast_paths(train, runner, device)
        runner = enable_fast_paths(runner, paths)
        runtime.configure(tune_malloc=paths.tune_malloc)
    elif config.path == "fast":
        runner = optimize_for_inference(source)
    elif config.path == "compile":
        runner = optimize_for_inference(source, compile=True)
    elif config.path == "onnx":
        runner = make_backend(source, "onnx")
    else:
        raise ValueError(f"unknown path {config.path!r}; choose one of {', '.join(INFERENCE_PATHS)}")
    if config.recompute:
        if not isinstance(runner, SegmentationModel):
            raise ValueError(f"the {config.path} path has no activation recomputation; use a registry model's path")
        runner.set_grad_checkpointing()
    if config.path != "onnx":
        runner = runner.to(device)
    return source, runner


def channels_last_input(config: Config) -> bool:
    """Whether the path feeds channels-last inputs (as the trainer does where it runs channels-last)."""
    if config.path == "trainer":  # train.channels_last: auto is on for CPUs
        return torch.device(config.device).type == "cpu"
    return config.path in ("channels_last", "fused")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(config: Config) -> Any:
    if config.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=torch.device(config.device).type, dtype=dtype)


def measure(config: Config) -> Result:
    """Run ``config`` in this process and return its timings (see the module docstring)."""
    result = Result(config=config, threads=torch.get_num_threads())
    shape = (config.batch, config.channels, *config.size)
    try:
        side = (config.tile, config.tile) if config.mode == "window" and config.tile else config.size
        result.params, result.gflops = model_cost(
            config.model, side, in_channels=config.channels, num_classes=config.classes
        )
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
        else:  # one more, untimed call: the sampling thread would take time from the timed ones
            result.peak_heap_mb = peak_heap_mb(lambda: (step(), _synchronize(config.device)))
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
        from ..inference import Inferer

        inferer = Inferer(tile_size=config.tile, batch_size=4, device=config.device)

        def window() -> Any:
            with _autocast(config):
                return inferer(runner, x)

        return window
    runner.train()
    labels = torch.randint(0, config.classes, (x.shape[0], *x.shape[2:]), generator=generator).to(x.device)
    inputs = x.contiguous(memory_format=torch.channels_last) if channels_last_input(config) else x
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


def measure_in_subprocess(config: Config, timeout: float | None = None, threads: int | None = None) -> Result:
    """Run ``config`` in a fresh ``python -m convunext.benchmarking.measure`` process (honest peak RSS), with
    ``threads`` OpenMP threads when given."""
    env = {"OMP_WAIT_POLICY": runtime.OMP_WAIT_POLICY, **os.environ, **config.env}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH", "")]))
    payload = json.dumps(asdict(config))
    command = [sys.executable, "-m", "convunext.benchmarking.measure", payload]
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


if __name__ == "__main__":  # the worker process of measure_in_subprocess
    _worker(sys.argv[1])
